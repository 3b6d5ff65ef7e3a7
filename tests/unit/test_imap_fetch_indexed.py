"""FETCH of the index-only items (fetch.indexed_responses): the same bytes as the long
way (message_parts + fetch_response), None for what the index does not hold."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from courier_imapd import fetch as fetchmod
from courier_imapd.core import FetchItem, fetch_response
from courier_imapd.mailbox import flags_text
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import index as mindex
from libcourier.maildir.folder import Maildir
from tests.unit.test_imap_session import session

MSGS = [
    b"From: A <a@example.com>\nTo: b@example.net\nSubject: plain\nDate: Mon, 1 Jan 2024"
    b" 10:00:00 +0100\nMessage-ID: <1@x>\n\nline 1\nline 2\n",
    b"From: c@example.com\nSubject: =?utf-8?q?caf=C3=A9?=\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"b\"\n\npre\n--b\nContent-Type: text/plain;"
    b" charset=utf-8\n\nhello\n--b\nContent-Type: application/octet-stream; name=x.bin\n"
    b"Content-Transfer-Encoding: base64\n\nAAAA\n--b--\n",
    b"Subject: no from\n\nbody\n",
]
ALL = (FetchItem("UID"), FetchItem("FLAGS"), FetchItem("INTERNALDATE"),
       FetchItem("RFC822.SIZE"), FetchItem("ENVELOPE"), FetchItem("BODYSTRUCTURE"),
       FetchItem("BODY.STRUCTURE"))


def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for k, m in enumerate(MSGS):
        flags = ":2,S" if k == 1 else ":2,FR"
        p = root / "cur" / f"{1000 + k}.M{k}P1.host{flags}"
        p.write_bytes(m)
        os.utime(p, (1_700_000_000 + 7 * k, 1_700_000_000 + 7 * k))
    return root


def slow(md: Maildir, items: tuple[FetchItem, ...], modseq=None) -> list[bytes]:
    """The long way, one message at a time, recording in the index."""
    out = []
    for n, msg in enumerate(md.scan().messages, 1):
        with open(fetchmod.message_path(md, msg), "rb") as fh:
            parts, _ = fetchmod.message_parts(
                items, msg, fh, flags_text(msg.flags, False, msg.keywords), None,
                modseq=modseq(msg.uid) if modseq else None)
            out.append(fetch_response(n, parts))
    return out


def fast(md: Maildir, items: tuple[FetchItem, ...], modseq=None) -> list[bytes | None] | None:
    picked = list(enumerate(md.scan().messages, 1))
    got = fetchmod.indexed_responses(items, md, picked, set(), {}, modseq)
    return None if got is None else list(got)


def damage_first_record(md: Maildir) -> None:
    """Flip a bit inside the first record's payload, rewriting the index file."""
    path = md.path / mindex.INDEX_NAME
    data = bytearray(path.read_bytes())
    data[data.index(b"plain")] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("batch", [1, 2, 2048])
def test_same_bytes_as_the_long_way(tmp_path: Path, monkeypatch, batch: int) -> None:
    monkeypatch.setattr(fetchmod, "INDEXED_BATCH", batch)
    md = Maildir(maildir(tmp_path))
    assert fast(md, ALL) == [None] * len(MSGS)           # nothing in the index yet
    cold = slow(md, ALL)
    fetchmod._indexes.clear()                            # a new session's view of it
    assert fast(md, ALL) == cold
    for items in (ALL[::-1], ALL[4:5], ALL[:3], (ALL[5], ALL[0])):
        assert fast(md, items) == slow(md, items)


def test_flags_and_uid_need_no_index(tmp_path: Path) -> None:
    md = Maildir(maildir(tmp_path))
    got = fast(md, (FetchItem("FLAGS"), FetchItem("UID")))
    assert got == [b"* 1 FETCH (FLAGS (\\Answered \\Flagged) UID 1)\r\n",
                   b"* 2 FETCH (FLAGS (\\Seen) UID 2)\r\n",
                   b"* 3 FETCH (FLAGS (\\Answered \\Flagged) UID 3)\r\n"]
    assert not (md.path / mindex.INDEX_NAME).exists()    # not even opened


def test_items_beyond_the_index_go_the_long_way(tmp_path: Path) -> None:
    md = Maildir(maildir(tmp_path))
    slow(md, ALL)
    for item in (FetchItem("BODY", section="TEXT", peek=True),
                 FetchItem("RFC822.HEADER")):
        assert fast(md, (FetchItem("UID"), item)) is None


def test_a_record_made_for_other_bytes_is_a_miss(tmp_path: Path) -> None:
    root = maildir(tmp_path)
    md = Maildir(root)
    slow(md, ALL)
    fetchmod._indexes.clear()
    first = md.scan().messages[0]
    # the same base, other bytes (sizes differ): the record is not for this file
    os.rename(fetchmod.message_path(md, first), root / "cur" / (first.base + ":2,FR"))
    (root / "cur" / (first.base + ":2,FR")).write_bytes(MSGS[0] + b"more\n")
    got = fast(md, ALL)
    assert got[0] is None and got[1] is not None


def test_a_damaged_record_is_a_miss(tmp_path: Path) -> None:
    md = Maildir(maildir(tmp_path))
    slow(md, ALL)
    fetchmod._indexes.clear()
    damage_first_record(md)
    got = fast(md, ALL)
    assert got[0] is None and got[1] is not None and got[2] is not None


@pytest.mark.parametrize("item", ["BODYSTRUCTURE", "ENVELOPE", "BODY.STRUCTURE"])
def test_a_damaged_record_is_a_miss_for_one_view(tmp_path: Path, item: str) -> None:
    # FETCH 1:* of one view takes FolderIndex.views(), not records(): the same check
    md = Maildir(maildir(tmp_path))
    items = (FetchItem(item),)
    cold = slow(md, items)
    fetchmod._indexes.clear()
    assert fast(md, items) == cold
    fetchmod._indexes.clear()
    damage_first_record(md)
    got = fast(md, items)
    assert got[0] is None and got[1:] == cold[1:]
    assert fast(md, items)[0] is None                    # forgotten, not served later either


def test_records_are_checksummed_once_per_open_file(tmp_path: Path, monkeypatch) -> None:
    md = Maildir(maildir(tmp_path))
    items = (FetchItem("BODYSTRUCTURE"),)
    cold = slow(md, items)
    fetchmod._indexes.clear()
    calls = []
    real = mindex.zlib.crc32

    def counting(data, value=0):
        calls.append(len(data))
        return real(data, value)

    monkeypatch.setattr(mindex.zlib, "crc32", counting)
    assert fast(md, items) == cold
    first = len(calls)
    assert first >= len(MSGS)                            # each record checked once...
    assert fast(md, items) == cold
    assert fast(md, (FetchItem("ENVELOPE"),)) == slow(md, (FetchItem("ENVELOPE"),))
    assert fast(md, (FetchItem("UID"), FetchItem("ENVELOPE"))) is not None
    calls.clear()
    assert fast(md, items) == cold and fast(md, ALL) is not None
    assert calls == []                                   # ...not again while the file is open
    # a replaced file (another inode) is checked again, and its damage is caught
    path = md.path / mindex.INDEX_NAME
    data = bytearray(path.read_bytes())
    data[data.index(b"plain")] ^= 0x20
    tmp = path.with_name("new-index")
    tmp.write_bytes(bytes(data))
    os.rename(tmp, path)
    monkeypatch.setattr(mindex, "REFRESH_EVERY", 0.0)
    got = fast(md, items)
    assert got[0] is None and got[1:] == cold[1:] and calls


@pytest.mark.parametrize("item", ["BODYSTRUCTURE", "UID ENVELOPE"])
def test_a_record_not_yet_checked_is_checked(tmp_path: Path, item: str) -> None:
    # the others' marks (a byte per 64 bytes of the file) do not cover it
    md = Maildir(maildir(tmp_path))
    items = tuple(FetchItem(n) for n in item.split())
    cold = slow(md, items)
    fetchmod._indexes.clear()
    msgs = md.scan().messages
    later = list(enumerate(msgs, 1))[1:]
    got = fetchmod.indexed_responses(items, md, later, set(), {})
    assert got is not None and list(got) == cold[1:]     # records 2 and 3 checked
    path = md.path / mindex.INDEX_NAME
    data = path.read_bytes()
    fd = os.open(path, os.O_WRONLY)                      # damaged in place: the same inode
    try:
        i = data.index(b"plain")
        os.pwrite(fd, bytes([data[i] ^ 0x20]), i)
    finally:
        os.close(fd)
    got = fast(md, items)
    assert got[0] is None and got[1:] == cold[1:]


def test_session_answers_warm_fetch_the_same(tmp_path: Path) -> None:
    maildir(tmp_path)
    q = (b"a LOGIN alice pw\r\nb SELECT INBOX\r\n"
         b"c FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)\r\n"
         b"d LOGOUT\r\n")
    fetchmod._indexes.clear()
    cold = session(tmp_path, q)
    fetchmod._indexes.clear()
    warm = session(tmp_path, q)
    lines = re.findall(rb"\* \d+ FETCH .*?\r\n", warm)
    assert len(lines) == len(MSGS) and b"c OK" in warm
    assert lines == re.findall(rb"\* \d+ FETCH .*?\r\n", cold)


ZONES = ("UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu")


@given(st.lists(st.floats(min_value=0, max_value=4e9), max_size=30),
       st.sampled_from(ZONES))
@settings(max_examples=200, deadline=None)
def test_internaldates_as_internaldate(times: list[float], zone: str) -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        memo = fetchmod.InternalDates()
        for t in times + [t + 1 for t in times]:
            assert memo.item(t) == b"INTERNALDATE " + fetchmod.internaldate(t).encode()
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_modseq_as_the_long_way(tmp_path: Path) -> None:
    md = Maildir(maildir(tmp_path))
    items = (FetchItem("UID"), FetchItem("FLAGS"), FetchItem("MODSEQ"))
    assert fast(md, items, lambda uid: 40 + uid) == slow(md, items, lambda uid: 40 + uid)
    assert fast(md, items) == slow(md, items)            # no tracker: MODSEQ (1)
    assert b"MODSEQ (41)" in fast(md, items, lambda uid: 40 + uid)[0]


def test_ghosts_go_the_long_way(tmp_path: Path) -> None:
    md = Maildir(maildir(tmp_path))
    slow(md, ALL)
    picked = list(enumerate(md.scan().messages, 1))
    for items in (ALL, ALL[5:6], ALL[:2]):
        got = list(fetchmod.indexed_responses(items, md, picked, set(), {}, None, {2}))
        assert got[1] is None and got[0] is not None and got[2] is not None
