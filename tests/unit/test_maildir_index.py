"""libcourier.maildir.index: the per-folder FETCH cache (issue 3)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from courier_imapd import fetch as f
from courier_imapd.core import FetchItem
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import index as mindex
from libcourier.maildir.folder import Maildir
from libcourier.mime import imapview, parse

MSG = (b"From: A <a@example.com>\nTo: b@example.com\nSubject: hi\n"
       b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@x>\n"
       b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\nbody\n--zz\n"
       b"Content-Type: text/html\n\n<p>x</p>\n--zz--\n")


def folder(tmp_path: Path) -> Path:
    for d in ("cur", "new", "tmp"):
        (tmp_path / d).mkdir()
    return tmp_path


def full(disk: int = 10) -> mindex.Entry:
    return mindex.Entry(disk, 12, 3, b"(env)", b"(body)", b"(bs)",
                        (b"d", None, b"f", b"", None, b"<m>"))


def test_encode_decode_round_trip() -> None:
    for e in (full(), mindex.Entry(5), mindex.Entry(5, envelope=b"x\r\n{3}\r\nabc")):
        assert mindex.decode(mindex.encode(e)) == e


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decode_arbitrary_bytes_only_raises_our_error(data: bytes) -> None:
    try:
        mindex.decode(data)
    except mindex.IndexError_:
        pass


def test_put_get_and_persist(tmp_path: Path) -> None:
    d = folder(tmp_path)
    idx = mindex.FolderIndex(d)
    assert idx.get("a", 10) is None
    assert idx.put("a", full())
    assert idx.get("a", 10) == full()
    assert idx.get("a", 11) is None          # other bytes on disk: a miss
    idx.put("a", mindex.Entry(10, crlf_size=99))
    again = mindex.FolderIndex(d)
    assert again.get("a", 10) == mindex.Entry(10, crlf_size=99)   # the later record wins
    assert (d / mindex.INDEX_NAME).read_bytes().startswith(mindex.MAGIC)


def test_merge_keeps_known_fields() -> None:
    e = mindex.Entry(10, envelope=b"E").merge(mindex.Entry(10, crlf_size=4))
    assert (e.envelope, e.crlf_size) == (b"E", 4)
    assert mindex.Entry(10, envelope=b"E").merge(mindex.Entry(11)).envelope is None


def test_sees_other_writers_appends(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "REFRESH_EVERY", 0.0)
    d = folder(tmp_path)
    a, b = mindex.FolderIndex(d), mindex.FolderIndex(d)
    assert a.get("m", 10) is None and b.get("m", 10) is None
    b.put("m", full())
    assert a.get("m", 10) == full()


def test_damaged_file_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    d = folder(tmp_path)
    idx = mindex.FolderIndex(d)
    idx.put("a", full())
    idx.put("b", full())
    path = d / mindex.INDEX_NAME
    data = bytearray(path.read_bytes())
    # flip a byte inside the last payload: that record fails its CRC
    data[-2] ^= 0x55
    path.write_bytes(bytes(data))
    fresh = mindex.FolderIndex(d)
    assert fresh.get("a", 10) == full()
    assert fresh.get("b", 10) is None
    # garbage appended: the frame is broken, the file is replaced with what verified
    with open(path, "ab") as fh:
        fh.write(b"junk junk junk\n" * 3)
    fresh = mindex.FolderIndex(d)
    assert fresh.get("a", 10) == full()
    assert fresh.rebuilt == 1
    assert b"junk" not in path.read_bytes()


def test_bad_magic_and_deleted_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "REFRESH_EVERY", 0.0)
    d = folder(tmp_path)
    (d / mindex.INDEX_NAME).write_bytes(b"courierpy-index 999\nR 1 00000000 a\nx")
    idx = mindex.FolderIndex(d)
    assert idx.get("a", 1) is None
    assert (d / mindex.INDEX_NAME).read_bytes() == mindex.MAGIC
    idx.put("a", full())
    os.unlink(d / mindex.INDEX_NAME)            # a pure cache: deleting it loses nothing
    assert idx.get("zz", 1) is None             # the miss notices the file is gone
    assert idx.get("a", 10) is None
    assert idx.put("a", full()) and mindex.FolderIndex(d).get("a", 10) == full()


def test_torn_tail_is_not_read(tmp_path: Path) -> None:
    d = folder(tmp_path)
    idx = mindex.FolderIndex(d)
    idx.put("a", full())
    rec = mindex.frame("b", mindex.encode(full()))
    with open(d / mindex.INDEX_NAME, "ab") as fh:
        fh.write(rec[:-5])                       # a writer still appending (or died)
    other = mindex.FolderIndex(d)
    assert other.get("a", 10) == full() and other.get("b", 10) is None


def test_unwritable_folder_is_no_cache_and_no_error(tmp_path: Path) -> None:
    d = folder(tmp_path)
    (d / mindex.INDEX_NAME).mkdir()             # cannot be opened as a file
    idx = mindex.FolderIndex(d)
    assert idx.get("a", 1) is None
    assert not idx.put("a", full())
    assert idx.get("a", 1) is None


def test_compact_drops_dead_records(tmp_path: Path) -> None:
    d = folder(tmp_path)
    idx = mindex.FolderIndex(d)
    for b in "abc":
        idx.put(b, full())
    idx.compact({"b"})
    fresh = mindex.FolderIndex(d)
    assert fresh.get("b", 10) == full() and fresh.get("a", 10) is None and len(fresh) == 1


def _writer(d: str, k: int) -> None:
    idx = mindex.FolderIndex(Path(d))
    for i in range(200):
        idx.put(f"{k}-{i}", mindex.Entry(i, envelope=b"E" * (i * 37 % 3000)))


def test_several_processes_append_at_once(tmp_path: Path) -> None:
    d = folder(tmp_path)
    mindex.FolderIndex(d).get("x", 1)            # create the file first
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(d), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    idx = mindex.FolderIndex(d)
    assert idx.rebuilt == 0
    for k in range(4):
        for i in range(200):
            assert idx.get(f"{k}-{i}", i) == mindex.Entry(i, envelope=b"E" * (i * 37 % 3000))


def test_fetch_fills_and_uses_the_index(tmp_path: Path) -> None:
    d = folder(tmp_path)
    (d / "new" / f"1.M1.host,S={len(MSG)}").write_bytes(MSG)
    md = Maildir(d)
    msg = md.scan().messages[0]
    items = (FetchItem("ENVELOPE"), FetchItem("BODYSTRUCTURE"), FetchItem("RFC822.SIZE"))
    with open(md.path_of(msg), "rb") as fh:
        cold, size = f.message_parts(items, msg, fh, "()", None)
    idx = mindex.FolderIndex(d)
    e = idx.get(msg.base, msg.size)
    assert e is not None and e.crlf_size == size == len(f.to_crlf(MSG))
    with open(md.path_of(msg), "rb") as fh:
        root = parse(fh)
    assert e.envelope == imapview.envelope(root)
    assert e.bodystructure == imapview.bodystructure(root)
    assert e.headers is not None and e.headers[1] is not None and e.headers[1].strip() == b"hi"
    # warm: the answer comes from the index (prove it: a changed cached value shows)
    idx.put(msg.base, e.merge(mindex.Entry(msg.size, envelope=b"(CACHED)")))
    f._indexes.clear()
    with open(md.path_of(msg), "rb") as fh:
        warm, _ = f.message_parts(items, msg, fh, "()", None)
    assert warm[0] == b"ENVELOPE (CACHED)" and warm[1:] == cold[1:]
    # deleted index: rebuilt on the next FETCH with the same bytes as the cold answer
    os.unlink(d / mindex.INDEX_NAME)
    f._indexes.clear()
    with open(md.path_of(msg), "rb") as fh:
        again, _ = f.message_parts(items, msg, fh, "()", None)
    assert again == cold
    assert mindex.FolderIndex(d).get(msg.base, msg.size) is not None


def test_counting_the_size_parses_for_bodystructure_too(tmp_path: Path) -> None:
    """A cold FETCH of ENVELOPE and RFC822.SIZE reads the whole file to count the size:
    it leaves the BODYSTRUCTURE in the index as well, equal to a fresh parse's."""
    d = folder(tmp_path)
    (d / "new" / f"1.M1.host,S={len(MSG)}").write_bytes(MSG)
    md = Maildir(d)
    msg = md.scan().messages[0]
    f._indexes.clear()
    with open(md.path_of(msg), "rb") as fh:
        parts, size = f.message_parts((FetchItem("ENVELOPE"), FetchItem("RFC822.SIZE")),
                                      msg, fh, "()", None)
    with open(md.path_of(msg), "rb") as fh:
        root = parse(fh)
    assert parts == [b"ENVELOPE " + imapview.envelope(root), b"RFC822.SIZE %d" % size]
    assert size == len(f.to_crlf(MSG))
    e = mindex.FolderIndex(d).get(msg.base, msg.size)
    assert e is not None and e.bodystructure == imapview.bodystructure(root)
    # ENVELOPE alone (no size to count) still reads only the header
    f._indexes.clear()
    os.unlink(d / mindex.INDEX_NAME)
    with open(md.path_of(msg), "rb") as fh:
        f.message_parts((FetchItem("ENVELOPE"),), msg, fh, "()", None)
    e = mindex.FolderIndex(d).get(msg.base, msg.size)
    assert e is not None and e.envelope is not None and e.bodystructure is None


def test_table_written_after_many_hops_and_loaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "TABLE_AFTER", 10 ** 6)
    d = folder(tmp_path)
    w = mindex.FolderIndex(d)
    for k in range(20):
        assert w.put(f"m{k}", mindex.Entry(k + 1, crlf_size=k))
    w.close()
    assert w.tabled == 0
    # a new reader hops over 20 records: it rewrites the file with a table
    monkeypatch.setattr(mindex, "TABLE_AFTER", 5)
    r = mindex.FolderIndex(d)
    assert r.get("m3", 4) == mindex.Entry(4, crlf_size=3)
    assert r.tabled == 1 and r.rebuilt == 0
    data = (d / mindex.INDEX_NAME).read_bytes()
    assert data.startswith(mindex.MAGIC + b"T ")
    # a record appended after the table supersedes the table's
    assert r.put("m3", mindex.Entry(4, crlf_size=99))
    t = mindex.FolderIndex(d)
    assert t.get("m3", 4) == mindex.Entry(4, crlf_size=99)
    assert [t.get(f"m{k}", k + 1) is not None for k in range(20)] == [True] * 20
    assert t.tabled == 0 and t.rebuilt == 0 and len(t) == 20
    recs = t.records([("m0", 1), ("m5", 6), ("m5", 7), ("nope", 1)])
    assert recs[0] is not None and recs[1] is not None and recs[2:] == [None, None]


def test_damaged_table_is_hopped_over(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "TABLE_AFTER", 5)
    d = folder(tmp_path)
    w = mindex.FolderIndex(d)
    for k in range(10):
        w.put(f"m{k}", mindex.Entry(k + 1, crlf_size=k))
    w.close()
    mindex.FolderIndex(d).get("m0", 1)                    # writes the table
    path = d / mindex.INDEX_NAME
    data = bytearray(path.read_bytes())
    i = data.index(b"m4\n")                               # a name in the table
    data[i] = ord("x")
    path.write_bytes(bytes(data))
    r = mindex.FolderIndex(d)
    assert [r.get(f"m{k}", k + 1) for k in range(10)] == \
        [mindex.Entry(k + 1, crlf_size=k) for k in range(10)]


def test_view_refuses_a_table_pointing_outside_the_record() -> None:
    payload = mindex.encode(full())
    t = list(mindex._TOC.unpack_from(payload))
    assert mindex.view(payload, tuple(t), 2) == b"(bs)"
    t[7] = len(payload)                                   # bodystructure's start past the end
    assert mindex.view(payload, tuple(t), 2) is None
    t[7] = 0                                              # inside the table itself
    assert mindex.view(payload, tuple(t), 2) is None


def test_header_fields_one_at_a_time() -> None:
    e = full()
    payload = mindex.encode(e)
    t = mindex._TOC.unpack_from(payload)
    assert [mindex.header(payload, t, i) for i in range(len(e.headers))] == \
        [(True, h) for h in e.headers]
    # a record made with fewer fields than HEADER_FIELDS: the rest are not known
    assert mindex.header(payload, t, len(e.headers)) == (False, None)
    bare = mindex.encode(mindex.Entry(5))
    assert mindex.header(bare, mindex._TOC.unpack_from(bare), 0) == (False, None)


def test_a_writer_filling_the_index_writes_tables_as_it_grows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mindex, "TABLE_AFTER", 5)
    d = folder(tmp_path)
    w = mindex.FolderIndex(d)
    for k in range(40):
        assert w.put(f"m{k}", mindex.Entry(k + 1, crlf_size=k))
    assert w.tabled == 3 and w.rebuilt == 0           # at 6, 13 and 27 records
    r = mindex.FolderIndex(d)
    assert [r.get(f"m{k}", k + 1) for k in range(40)] == \
        [mindex.Entry(k + 1, crlf_size=k) for k in range(40)]
    assert r.tabled == 1               # it hopped over the 13 records past the table of 27
    again = mindex.FolderIndex(d)
    assert again.get("m39", 40) == mindex.Entry(40, crlf_size=39) and again.tabled == 0


def test_views_as_records_and_view(tmp_path: Path) -> None:
    d = folder(tmp_path)
    w = mindex.FolderIndex(d)
    w.put("a", full(10))
    w.put("b", mindex.Entry(7, envelope=b"(e)"))
    msgs = [("a", 10), ("a", 11), ("b", 7), ("nope", 1)]
    for k in range(3):
        want = [None if r is None else mindex.view(r[0], r[1], k) for r in w.records(msgs)]
        assert w.views(msgs, k) == want
    assert w.views(msgs, 2) == [b"(bs)", None, None, None]
    assert w.views(msgs, 0) == [b"(env)", None, b"(e)", None]


def test_a_table_that_cannot_be_written_leaves_the_index_working(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(mindex, "TABLE_AFTER", 10 ** 6)
    d = folder(tmp_path)
    w = mindex.FolderIndex(d)
    for k in range(20):
        w.put(f"m{k}", mindex.Entry(k + 1, crlf_size=k))
    monkeypatch.setattr(mindex, "TABLE_AFTER", 5)

    def refuse(self, where):                     # a folder this process cannot write
        raise PermissionError(13, "read-only")
    monkeypatch.setattr(mindex.FolderIndex, "_replace", refuse)
    r = mindex.FolderIndex(d)
    assert [r.get(f"m{k}", k + 1) for k in range(20)] == \
        [mindex.Entry(k + 1, crlf_size=k) for k in range(20)]
    assert r.tabled == 0 and r.views([("m3", 4)], 0) == [None]
    assert r.records([("m3", 4)])[0] is not None
    # a writer past the threshold keeps appending
    assert w.put("m20", mindex.Entry(21)) and w.get("m20", 21) == mindex.Entry(21)
