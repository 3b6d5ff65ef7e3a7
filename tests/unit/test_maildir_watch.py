"""libcourier.maildir.watch: inotify on new/, cur/ and courierimapkeywords/ (ctypes on libc)."""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from libcourier.maildir import keywords as kw
from libcourier.maildir import watch as watchmod
from libcourier.maildir.delivery import deliver_to_maildir
from libcourier.maildir.folder import Maildir

WAIT = 10.0   # seconds: generous, the event is normally there at once


def readable(w: watchmod.FolderWatch) -> bool:
    return bool(select.select([w], [], [], WAIT)[0])


@pytest.fixture
def md(tmp_path: Path) -> Path:
    d = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True)
    return d


def test_events_for_delivery_flags_keywords_expunge(md: Path) -> None:
    w = watchmod.open_watch(md)
    if w is None:
        pytest.skip("no inotify here")
    with w:
        assert w.watches == 2            # no courierimapkeywords/ yet
        assert not w.drain()
        deliver_to_maildir(md, [b"Subject: x\n\nbody\n"])
        assert readable(w) and w.drain() and not w.drain()
        box = Maildir(md)
        [m] = box.scan().messages        # new/ -> cur/, makes courierimapkeywords/
        w.drain()
    with watchmod.FolderWatch(md) as w:
        assert w.watches == 3
        m = box.change_flags(m, add="S")
        assert readable(w) and w.drain()
        box.change_keywords([m], "+", frozenset({"k"}))
        assert readable(w) and w.drain()
        assert os.listdir(md / kw.KEYWORDDIR)
        box.remove(m)
        assert readable(w) and w.drain()


def test_missing_folder_means_polling(tmp_path: Path) -> None:
    assert watchmod.open_watch(tmp_path / "nope") is None
