"""Shared folders both ways against Courier-IMAP's own imapd (5.0.13, Debian's .deb unpacked
as ../shared/bench/anchors-install does; run pre-authenticated on stdin as in
test_maildir_courier.py): a sharable maildir made by our `maildirmake -S/-s/--add` is
listed and served by Courier, a private copy Courier made and flagged opens here with
the same UIDs and flags, and the reverse. Skipped where the binary is not unpacked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from courier_deliver import maildirmake

from libcourier.maildir import shared
from libcourier.maildir.flags import letters_to_imap
from tests.integration.test_maildir_courier import courier, courier_view, needs_courier

NAME = b"shared.notices.Weekly"
BODIES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n", b"Subject: three\n\nthird\n"]


def setup(tmp_path: Path) -> tuple[Path, Path]:
    md, sh = tmp_path / "Maildir", tmp_path / "Maildir-shared"
    assert maildirmake.main([str(md)]) == 0
    assert maildirmake.main(["-S", str(sh)]) == 0
    assert maildirmake.main(["-s", "write", "-f", "Weekly", str(sh)]) == 0
    assert maildirmake.main(["--add", f"notices={sh}", str(md)]) == 0
    for i, body in enumerate(BODIES):
        (sh / ".Weekly" / "new" / f"{1_700_000_000 + i}.M{i}P1.test,S={len(body)}").write_bytes(body)
    return md, sh


def ours(private: Path) -> tuple[int, list[tuple[int, set[str]]]]:
    st = shared.PrivateCopy(private).scan()
    return st.uidvalidity, [(m.uid, set(letters_to_imap(m.flags)) | set(m.keywords))
                            for m in st.messages]


@needs_courier
def test_courier_lists_and_flags_we_read(tmp_path: Path) -> None:
    md, sh = setup(tmp_path)
    out = courier(md, b'a LIST "" "shared*"\r\n'
                      b"b SELECT shared.notices.Weekly\r\n"
                      b"c STORE 1 +FLAGS (\\Flagged)\r\n"
                      b"d STORE 2 +FLAGS (\\Seen \\Deleted)\r\n"
                      b"e EXPUNGE\r\n"
                      b"f FETCH 1:* (UID FLAGS)\r\n")
    # The same LIST lines ours gives (tests/integration/test_imapd_shared.py).
    lines = set(re.findall(rb"^\* LIST .*$", out, re.M))
    assert lines == {b'* LIST (\\HasNoChildren) "." "shared.notices.Weekly"\r',
                     b'* LIST (\\Noselect \\HasChildren) "." "shared.notices"\r',
                     b'* LIST (\\Noselect \\HasChildren) "." "shared"\r'}
    assert b"e OK" in out
    # Courier's expunge removed the sharable folder's file, as ours does.
    assert len(os.listdir(sh / ".Weekly" / "cur")) == 2
    private = md / "shared-folders" / "notices" / "Weekly"
    assert os.readlink(private / "shared") == f"{sh}/.Weekly"
    uidv, msgs = courier_view(out)
    assert [u for u, _ in msgs] == [1, 3]
    assert ours(private) == (uidv, msgs)
    assert dict(msgs)[1] == {"\\Flagged"}


@needs_courier
def test_we_flag_and_append_courier_reads(tmp_path: Path) -> None:
    md, sh = setup(tmp_path)
    private = shared.open_private(md, None, "notices.Weekly")
    assert private is not None
    box = shared.PrivateCopy(private)
    st = box.scan()
    box.change_flags(st.messages[0], add="S")
    box.change_keywords([st.messages[2]], "+", frozenset({"Later"}))
    uidv, uids = shared.store(private, [(b"Subject: four\n\nfourth\n", 22, "F", None, frozenset())])
    assert uids == (4,)
    mine = ours(private)
    out = courier(md, b"a SELECT shared.notices.Weekly\r\nb FETCH 1:* (UID FLAGS)\r\n")
    assert courier_view(out) == mine == (uidv, mine[1])
    assert dict(mine[1])[4] == {"\\Flagged"}
    # A message another user added to the sharable folder reaches both.
    (sh / ".Weekly" / "new" / "1800000000.M9P9.other,S=5").write_bytes(b"x\n\ny\n")
    out = courier(md, b"a SELECT shared.notices.Weekly\r\nb FETCH 1:* (UID FLAGS)\r\n")
    assert courier_view(out) == ours(private)
    assert [u for u, _ in ours(private)[1]] == [1, 2, 3, 4, 5]


COURIER_MAILDIRMAKE = "/usr/bin/maildirmake.courier"


@needs_courier
def test_courier_made_shared_folder_opens_here(tmp_path: Path) -> None:
    """Everything made by Courier's own tools (maildirmake.courier -S/-s/--add, its
    imapd's private copy and flags); we open it with the same UIDs and flags."""
    if shutil.which(COURIER_MAILDIRMAKE) is None:
        pytest.skip(f"{COURIER_MAILDIRMAKE} is not installed (courier-base)")
    md, sh = tmp_path / "Maildir", tmp_path / "Maildir-shared"
    for args in ([str(md)], ["-S", str(sh)], ["-s", "write", "-f", "Weekly", str(sh)],
                 ["--add", f"notices={sh}", str(md)]):
        subprocess.run([COURIER_MAILDIRMAKE, *args], check=True, timeout=60)
    for i, body in enumerate(BODIES):
        (sh / ".Weekly" / "new" / f"{1_700_000_000 + i}.M{i}P1.test,S={len(body)}").write_bytes(body)
    out = courier(md, b"a SELECT shared.notices.Weekly\r\nb STORE 2 +FLAGS (\\Answered)\r\n"
                      b"c FETCH 1:* (UID FLAGS)\r\n")
    private = md / "shared-folders" / "notices" / "Weekly"
    assert ours(private) == courier_view(out)
    assert dict(ours(private)[1])[2] == {"\\Answered"}
