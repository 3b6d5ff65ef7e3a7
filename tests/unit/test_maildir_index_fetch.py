"""A session answers ENVELOPE, BODY, BODYSTRUCTURE and RFC822.SIZE from the folder's index
without opening the message file (issue 3: the index is what SELECT and FETCH read)."""

from __future__ import annotations

import re
from pathlib import Path

from courier_imapd import fetch as fetchmod
from courier_imapd.core import FetchItem

from libcourier.maildir import index as mindex
from tests.unit.test_imap_session import session

MSG = b"From: a@example.com\nSubject: original\n\nline 1\n"


def test_needs_file_honours_the_index() -> None:
    env, bs, size = FetchItem("ENVELOPE"), FetchItem("BODYSTRUCTURE"), FetchItem("RFC822.SIZE")
    full = mindex.Entry(10, crlf_size=12, envelope=b"(x)", body=b"(b)", bodystructure=b"(bs)")
    assert fetchmod.needs_file((env, bs, size), False)
    assert not fetchmod.needs_file((env, bs, size), False, full)
    assert fetchmod.needs_file((env, size), False, mindex.Entry(10, envelope=b"(x)"))
    assert fetchmod.needs_file((FetchItem("BODY", section="TEXT"),), True, full)


def test_warm_fetch_does_not_open_the_file(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "new" / f"1.M1P1.host,S={len(MSG)}").write_bytes(MSG)
    q = b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc FETCH 1 (ENVELOPE BODYSTRUCTURE RFC822.SIZE)\r\n"
    out1 = session(tmp_path, q + b"d LOGOUT\r\n")
    assert b"original" in out1
    # The message file replaced by a directory of the same name (its size is in the
    # name, ,S=): a session that opened it would fail; one using the index answers.
    [name] = list((root / "cur").iterdir())
    name.unlink()
    name.mkdir()
    out2 = session(tmp_path, q + b"d LOGOUT\r\n")
    fetch2 = re.search(rb"\* 1 FETCH \(ENVELOPE.*?\r\n", out2).group(0)
    assert b"original" in fetch2 and b"RFC822.SIZE" in fetch2
    assert b"c OK" in out2
