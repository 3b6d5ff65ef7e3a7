"""Damaged courierimapuiddb and courierpyindex (issue 3): where the uiddb is intact in part,
no UID of a surviving line is lost; where its header is gone, a new UIDVALIDITY; the
index is a cache that recovers, compacts and goes with its folder. Hypothesis for the
uiddb parser: any bytes give a database or None, and format -> parse is the identity."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import folders, uiddb
from libcourier.maildir import index as mindex
from libcourier.maildir.folder import Maildir


def mkmaildir(tmp_path: Path, n: int) -> Path:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i in range(n):
        (md / "new" / f"{1_700_000_000 + i}.M{i}P1.host").write_bytes(b"Subject: %d\n\nx\n" % i)
    return md


# -- courierimapuiddb ---------------------------------------------------------------

def test_damaged_lines_lose_only_themselves(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, 5)
    st0 = Maildir(md).scan()
    raw = (md / uiddb.IMAPDB).read_bytes().split(b"\n")
    # Line 3 (UID 2) garbled, a junk line added, the file truncated mid-line at the end.
    raw[2] = b"\xff\xfe garbage"
    damaged = b"\n".join(raw[:3] + [b"not a line"] + raw[3:]).rstrip(b"\n")[:-3]
    (md / uiddb.IMAPDB).write_bytes(damaged)
    st1 = Maildir(md).scan()
    assert st1.uidvalidity == st0.uidvalidity
    before = {m.base: m.uid for m in st0.messages}
    after = {m.base: m.uid for m in st1.messages}
    kept = [b for b in before if after[b] == before[b]]
    # UIDs 1, 3, 4 survive; the garbled one and the truncated one get new UIDs past
    # nextuid, never a UID that was handed out before.
    assert len(kept) == 3
    for b in set(before) - set(kept):
        assert after[b] >= st0.uidnext
    assert len(set(after.values())) == 5


def test_lost_header_means_new_uidvalidity(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, 3)
    st0 = Maildir(md).scan(now=1_800_000_000)
    data = (md / uiddb.IMAPDB).read_bytes()
    (md / uiddb.IMAPDB).write_bytes(b"2" + data[1:])          # unknown version
    st1 = Maildir(md).scan(now=1_800_000_100)
    assert st1.uidvalidity != st0.uidvalidity
    assert [m.uid for m in st1.messages] == [1, 2, 3]
    (md / uiddb.IMAPDB).write_bytes(b"")
    assert Maildir(md).scan(now=1_800_000_200).uidvalidity not in (st0.uidvalidity,
                                                                   st1.uidvalidity)


uid_lines = st.lists(st.tuples(st.integers(1, 10**9),
                               st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                                       min_size=1, max_size=40)),
                     max_size=20, unique_by=lambda t: t[0])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2**31), st.integers(1, 2**31), uid_lines)
def test_uiddb_round_trip(uidv: int, nextuid: int, entries: list[tuple[int, str]]) -> None:
    db = uiddb.UidDb(uidv, nextuid, tuple(sorted(entries)))
    assert uiddb.parse(uiddb.format_db(db)) == db


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_uiddb_any_bytes(data: bytes) -> None:
    db = uiddb.parse(data)
    if db is not None:
        assert all(uid > 0 and name for uid, name in db.entries)
        assert list(db.entries) == sorted(db.entries)


# -- courierpyindex -------------------------------------------------------------------

def entry(size: int, fill: int) -> mindex.Entry:
    return mindex.Entry(size, crlf_size=size + 1, envelope=b"E" * fill)


def test_index_compacts_past_threshold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "COMPACT_SLACK", 4096)
    md = mkmaildir(tmp_path, 3)
    msgs = Maildir(md).scan().messages
    idx = mindex.FolderIndex(md)
    for m in msgs:
        assert idx.put(m.base, entry(m.size, 100))
    # The same records written again and again: the file grows, the live part does not.
    for round_ in range(200):
        m = msgs[round_ % 3]
        assert idx.put(m.base, entry(m.size, 100 + round_ % 7))
    assert idx.compacted >= 1
    assert os.path.getsize(md / mindex.INDEX_NAME) < 2 * 3 * 200 + 4096 + len(mindex.MAGIC)
    for m in msgs:
        assert idx.get(m.base, m.size) is not None
    # An expunged message's record goes at the next compaction.
    os.unlink(md / "cur" / msgs[0].filename)
    for round_ in range(200):
        assert idx.put(msgs[1].base, entry(msgs[1].size, round_ % 9 + 1))
    fresh = mindex.FolderIndex(md)
    assert fresh.get(msgs[0].base, msgs[0].size) is None
    assert fresh.get(msgs[2].base, msgs[2].size) is not None


def test_damaged_index_recovers_nothing_lost(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, 2)
    msgs = Maildir(md).scan().messages
    idx = mindex.FolderIndex(md)
    for m in msgs:
        idx.put(m.base, entry(m.size, 10))
    idx.close()
    data = bytearray((md / mindex.INDEX_NAME).read_bytes())
    data[len(mindex.MAGIC) + 2] ^= 0xFF                     # break the first header
    (md / mindex.INDEX_NAME).write_bytes(bytes(data))
    idx2 = mindex.FolderIndex(md)
    assert idx2.get(msgs[0].base, msgs[0].size) is None      # a miss, never a wrong answer
    assert idx2.rebuilt >= 1
    # The folder itself is untouched: same UIDs, the cache fills again.
    assert [m.uid for m in Maildir(md).scan().messages] == [1, 2]
    assert idx2.put(msgs[0].base, entry(msgs[0].size, 10))
    assert mindex.FolderIndex(md).get(msgs[0].base, msgs[0].size) is not None


def test_delete_folder_takes_its_index(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, 0)
    sub = folders.create_folder(md, "INBOX.Old")
    (sub / "new" / "1.M1P1.host").write_bytes(b"Subject: x\n\nx\n")
    [m] = Maildir(sub).scan().messages
    assert mindex.FolderIndex(sub).put(m.base, entry(m.size, 5))
    assert (sub / mindex.INDEX_NAME).exists()
    folders.delete_folder(md, "INBOX.Old")
    assert not sub.exists()
    # Created again under the same name: empty, no stale cache.
    sub = folders.create_folder(md, "INBOX.Old")
    assert not (sub / mindex.INDEX_NAME).exists()
    assert not any(n.startswith(".rmdir") for n in os.listdir(md / "tmp"))
