"""The hibernation blob (courier_imapd.hibernate): round trip, and every way a blob
that is not ours is refused with BlobError (truncated, oversize, inflating past
its limit, nonsense inside); and resume's answer to one (a BYE, the connection closed)."""

from __future__ import annotations

import socket
import struct
import zlib

import pytest
from courier_imapd import hibernate as h
from courier_imapd import resume
from courier_imapd.config import load_config
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.tcpd.connection import Connection, Resumed


def image(n: int = 5) -> h.SessionImage:
    uids = list(range(10, 10 + 3 * n, 3))
    return h.SessionImage(
        "alice@example.com", utf8=True, condstore=True, qresync=False, rcvd=123, sent=4567,
        body=89, elapsed=42, copied=[10, 13], nap=2.0, asleep_since=1800000000.5,
        folder=h.FolderImage(
            "INBOX.Caf\u00e9", readonly=False, uidvalidity=1700000000, cur_id=(2049, 99),
            uids=uids, flags=["S" if u % 2 else "FS" for u in uids],
            keywords=[frozenset({"Work"}) if u == 13 else frozenset() for u in uids],
            recent=[uids[-1]], ghosts=[uids[0]], announced=["Work"], tracked=True,
            snapshot=(2049, 1234, 1800000000123456789)))


def test_round_trip() -> None:
    img = image()
    assert h.decode(h.encode(img)) == img
    assert h.login_of(h.encode(img)) == "alice@example.com"


def test_round_trip_authenticated_state() -> None:
    img = h.SessionImage("bob@example.net")
    assert h.decode(h.encode(img)) == img


def test_a_big_folder_stays_small() -> None:
    """100,000 messages with the usual few flag sets: well inside one datagram."""
    img = image(100_000)
    blob = h.encode(img)
    assert len(blob) < 16 * 1024
    assert h.decode(blob) == img


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "S", "FS", "DRST", "a"]),
                          st.frozensets(st.sampled_from(["$Junk", "Work", "x\u00e9"]))),
                max_size=200),
       st.booleans(), st.booleans())
def test_round_trip_any(pairs, readonly, tracked) -> None:
    uids = list(range(1, 2 * len(pairs) + 1, 2))
    img = h.SessionImage("u", folder=h.FolderImage(
        "INBOX", readonly, 7, (1, 2), uids, [p[0] for p in pairs], [p[1] for p in pairs],
        tracked=tracked))
    assert h.decode(h.encode(img)) == img


def test_every_truncation_is_refused() -> None:
    blob = h.encode(image())
    for n in range(len(blob)):
        with pytest.raises(h.BlobError):
            h.decode(blob[:n])


def test_oversize_is_refused_both_ways() -> None:
    with pytest.raises(h.BlobError):
        h.decode(h.encode(image()) + b"\0" * h.MAX_BLOB)
    # Random flags per message do not compress: too big to send, the session stays awake.
    import random
    rnd = random.Random(1)
    n = 200_000
    img = h.SessionImage("u", folder=h.FolderImage(
        "INBOX", False, 1, (1, 1), sorted(rnd.sample(range(1, 10**9), n)),
        ["".join(rnd.sample("DFPRST", 3)) for _ in range(n)], [frozenset()] * n))
    with pytest.raises(h.BlobError):
        h.encode(img)


def _with_body(raw: bytes, login: bytes = b"u") -> bytes:
    return struct.pack("<4sBH", h.MAGIC, h.VERSION, len(login)) + login + zlib.compress(raw)


def test_inflating_past_the_limit_is_refused() -> None:
    bomb = _with_body(b"\0" * (h.MAX_RAW + 1))
    assert len(bomb) < h.MAX_BLOB
    with pytest.raises(h.BlobError, match="over"):
        h.decode(bomb)


@pytest.mark.parametrize("blob, why", [
    (b"", "truncated"),
    (b"XXXX\x01\x01\x00u" + zlib.compress(b""), "not a session blob"),
    (struct.pack("<4sBH", h.MAGIC, 9, 1) + b"u", "version"),
    (struct.pack("<4sBH", h.MAGIC, h.VERSION, 0), "login"),
    (struct.pack("<4sBH", h.MAGIC, h.VERSION, 1) + b"u" + b"not zlib", "body"),
    (_with_body(b"\0" + b"\0" * 48 + struct.pack("<I", 10**6)), "truncated"),
    (_with_body(b"\0" + b"\0" * 48 + struct.pack("<I", 0) + b"junk"), "trailing"),
])
def test_nonsense_is_refused(blob: bytes, why: str) -> None:
    with pytest.raises(h.BlobError, match=why):
        h.decode(blob)


def _folder_body(uids: list[int], index: list[int], ntable: int = 1) -> bytes:
    w = h._Writer()
    w.u8(8)
    for _ in range(6):
        w.u64(0)
    w.uints([])
    w.text("INBOX")
    w.u8(0)
    for _ in range(3):
        w.u64(1)
    w.uints(uids)
    w.parts.append(struct.pack("<I", ntable))
    for _ in range(ntable):
        w.text("S")
        w.texts([])
    w.uints(index)
    w.uints([])
    w.uints([])
    w.texts([])
    return b"".join(w.parts)


def test_inconsistent_folders_are_refused() -> None:
    assert h.decode(_with_body(_folder_body([1, 1], [0, 0]))).folder.uids == [1, 2]
    with pytest.raises(h.BlobError, match="ascending"):
        h.decode(_with_body(_folder_body([2, 0], [0, 0])))
    with pytest.raises(h.BlobError, match="out of its table"):
        h.decode(_with_body(_folder_body([1, 2], [0, 1])))
    with pytest.raises(h.BlobError, match="differ"):
        h.decode(_with_body(_folder_body([1, 2], [0])))


def test_resume_of_a_bad_blob_says_bye_and_closes(tmp_path) -> None:
    """Read before anything else (still root, no authd asked): BYE, closed."""
    (tmp_path / "imapd").write_text("")
    cfg, _ = load_config(tmp_path, "imapd")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = Connection(ours, "127.0.0.1", 1, "127.0.0.1", 143, False, {},
                          resumed=Resumed(b"garbage", 1000))
        resume.resume(conn, cfg, tmp_path / "no-authd")
        theirs.settimeout(5)
        assert theirs.recv(200).startswith(b"* BYE ")


def test_a_session_woken_soon_naps_longer() -> None:
    img = h.SessionImage("u", nap=1.0, asleep_since=1000.0)
    assert h.next_nap(img, 1, 1000.5) == 2.0          # woken half a second later
    img.nap = 48.0
    assert h.next_nap(img, 1, 1001.0) == h.MAX_NAP     # bounded
    assert h.next_nap(img, 1, 1000.0 + h.LONG_SLEEP) == 1.0   # a long sleep: back to 1
    assert h.next_nap(img, 1, 900.0) == 1.0            # a clock that went back: no guess
    assert h.next_nap(h.SessionImage("u"), 5, 1000.0) == 5.0
