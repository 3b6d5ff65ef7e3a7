"""A cold FETCH 1:* whose records are built by worker processes (fetch._ColdFill,
libcourier.maildir.indexbuild): the same answers and the same index records as the
long way, one message at a time; a worker that dies or a FETCH left half read costs
nothing but speed, and no process or descriptor outlives the command."""

from __future__ import annotations

import array
import io
import logging
import os
import pathlib
import shutil

import psutil
import pytest
from courier_imapd import core
from courier_imapd import fetch as fetchmod
from courier_imapd.core import FetchItem, fetch_response
from courier_imapd.mailbox import flags_text

from libcourier.maildir import index as mindex
from libcourier.maildir import indexbuild
from libcourier.maildir.folder import Maildir
from libcourier.maildir.msglist import MessageList, Picked
from libcourier.mime import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
OWN = [
    b"From: A <a@example.com>\nTo: b@example.net\nSubject: plain\nDate: Mon, 1 Jan 2024"
    b" 10:00:00 +0100\nMessage-ID: <1@x>\n\nline 1\nline 2\n",
    b"From: c@example.com\nSubject: =?utf-8?q?caf=C3=A9?=\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"b\"\n\npre\n--b\nContent-Type: text/plain;"
    b" charset=utf-8\n\nhello\n--b\nContent-Type: message/rfc822\n\nSubject: in\n\nx\n"
    b"--b--\n",
    b"Subject: no from\r\n\r\nbody\r\n",
    b"",
    b"no header at all",
]
ITEM_SETS = [
    ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    ("ENVELOPE",),
    ("BODYSTRUCTURE",),
    ("FLAGS", "BODY.STRUCTURE", "ENVELOPE"),
    ("RFC822.SIZE",),
]


def messages() -> list[bytes]:
    corpus = sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []
    return [p.read_bytes() for p in corpus] + OWN


def make_folder(root: pathlib.Path, copies: int = 2) -> pathlib.Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    k = 0
    for _ in range(copies):
        for data in messages():
            p = root / "cur" / f"{1_700_000_000 + k}.M{k}P1.host,S={len(data)}:2,{'S' if k % 3 else ''}"
            p.write_bytes(data)
            os.utime(p, (1_700_000_000 + 61 * k, 1_700_000_000 + 61 * k))
            k += 1
    return root


def cold_list(md: Maildir) -> MessageList:
    """The folder's message list as a session holds it (columns)."""
    return MessageList.of(md.scan().messages)


def answer(md: Maildir, names: tuple[str, ...], sizes: dict[int, int] | None = None
           ) -> list[bytes]:
    """FETCH 1:* as session.fetch makes it: the index's lines, the long way for a None."""
    items = tuple(FetchItem(n) for n in names)
    msgs = cold_list(md)
    sizes = {} if sizes is None else sizes
    picked = Picked(msgs, list(range(len(msgs))))
    fast = fetchmod.indexed_responses(items, md, picked, set(), sizes, None, set())
    out = []
    for i in range(len(msgs)):
        line = next(fast) if fast is not None else None
        if line is None:
            m = msgs[i]
            with open(fetchmod.message_path(md, m), "rb") as fh:
                parts, _ = fetchmod.message_parts(items, m, fh, flags_text(m.flags, False, m.keywords),
                                                  sizes.get(m.uid))
            line = fetch_response(i + 1, parts)
        out.append(line)
    del fast
    return out


def records(folder: pathlib.Path) -> dict[str, bytes]:
    idx = mindex.FolderIndex(folder)
    try:
        idx.unknown([])             # opens it
        return {b: os.pread(idx._fd, n, off) for b, (off, n, _) in idx._where.items()}
    finally:
        idx.close()


@pytest.fixture()
def parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers for any folder of more than 3 messages, 3 of them whatever the CPUs,
    small chunks so every worker takes several."""
    monkeypatch.setattr(fetchmod, "COLD_LEAST", 4)
    monkeypatch.setattr(indexbuild, "CHUNK", 3)
    monkeypatch.setattr(indexbuild, "worker_count", lambda jobs, least: 3 if jobs >= least else 0)
    fetchmod._indexes.clear()
    yield
    fetchmod._indexes.clear()


def serial_twin(tmp_path: pathlib.Path, names: tuple[str, ...],
                sizes: dict[int, int] | None = None) -> tuple[list[bytes], dict[str, bytes]]:
    md = Maildir(make_folder(tmp_path / "serial"))
    saved = fetchmod.COLD_LEAST
    fetchmod.COLD_LEAST = 1 << 60
    try:
        got = answer(md, names, sizes)
    finally:
        fetchmod.COLD_LEAST = saved
    return got, records(md.path)


_children_before: set[int] = set()


def _children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def _note_children() -> None:
    """The processes this one had before the test: in a whole-suite run, servers
    other tests' fixtures started (slapd, PostgreSQL, ...) are children too."""
    global _children_before
    _children_before = _children()


def no_children() -> bool:
    """No process left that the test itself started (a worker not reaped)."""
    return _children() <= _children_before


def open_fds() -> int:
    """Descriptors open, the folder indexes FETCH keeps open closed first."""
    for idx in fetchmod._indexes.values():
        idx.close()
    fetchmod._indexes.clear()
    return psutil.Process().num_fds()


@pytest.mark.parametrize("names", ITEM_SETS)
def test_same_answers_and_records_as_one_at_a_time(tmp_path: pathlib.Path, parallel: None,
                                                   names: tuple[str, ...]) -> None:
    want, want_recs = serial_twin(tmp_path, names)
    md = Maildir(make_folder(tmp_path / "par"))
    fds = open_fds()
    got = answer(md, names)
    assert got == want
    assert records(md.path) == want_recs
    assert len(want_recs) == len(messages()) * 2      # every message recorded
    assert no_children() and open_fds() == fds
    assert answer(md, names) == want                   # and served warm the same


def test_sizes_the_session_knows_are_not_parsed_for(tmp_path: pathlib.Path,
                                                    parallel: None) -> None:
    # RFC822.SIZE known to the session: ENVELOPE alone comes from the header only, as
    # the long way does; FETCH RFC822.SIZE alone records nothing.
    md0 = Maildir(make_folder(tmp_path / "probe"))
    sizes = {m.uid: len(fetchmod.to_crlf(open(fetchmod.message_path(md0, m), "rb").read()))
             for m in md0.scan().messages}
    for names in (("RFC822.SIZE", "ENVELOPE"), ("RFC822.SIZE",)):
        want, want_recs = serial_twin(tmp_path / names[-1], names, sizes)
        md = Maildir(make_folder(tmp_path / ("p" + names[-1])))
        assert answer(md, names, dict(sizes)) == want
        assert records(md.path) == want_recs
    assert no_children()


def test_the_mtimes_the_workers_read_are_the_files(tmp_path: pathlib.Path, parallel: None) -> None:
    md = Maildir(make_folder(tmp_path / "m"))
    msgs = cold_list(md)
    msgs._mtimes = array.array("d", [float("nan")] * len(msgs))     # not read yet
    picked = Picked(msgs, list(range(len(msgs))))
    fast = fetchmod.indexed_responses((FetchItem("ENVELOPE"),), md, picked, set(), {}, None, set())
    assert all(line is not None for line in fast)
    assert list(msgs._mtimes) == [os.stat(md.path / "cur" / n).st_mtime for n in msgs._names]


def test_a_dead_worker_costs_only_speed(tmp_path: pathlib.Path, parallel: None,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    names = ITEM_SETS[0]
    want, want_recs = serial_twin(tmp_path, names)
    md = Maildir(make_folder(tmp_path / "par"))
    record = indexbuild.record
    calls = []

    def dying(fh, disk, tree, want_body):      # (in a worker) the fifth message kills it
        calls.append(1)
        if len(calls) == 2 and os.getpid() != parent:
            os._exit(3)
        return record(fh, disk, tree, want_body)

    parent = os.getpid()
    monkeypatch.setattr(indexbuild, "record", dying)
    with caplog.at_level(logging.WARNING, logger="courier.imapd"):
        assert answer(md, names) == want
    assert "record builder failed" in caplog.text
    assert records(md.path) == want_recs
    assert no_children()


def test_a_fetch_left_half_read_reaps_its_workers(tmp_path: pathlib.Path, parallel: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetchmod, "INDEXED_BATCH", 4)
    md = Maildir(make_folder(tmp_path / "m", copies=4))
    msgs = cold_list(md)
    fds = open_fds()
    fast = fetchmod.indexed_responses((FetchItem("BODYSTRUCTURE"),), md,
                                      Picked(msgs, list(range(len(msgs)))), set(), {}, None, set())
    assert next(fast) is not None
    assert psutil.Process().children()            # the workers are busy
    fast.close()                                  # the client went away
    assert no_children() and open_fds() == fds


def test_workers_hand_out_jobs_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexbuild, "CHUNK", 5)
    w = indexbuild.Workers(103, lambda k: (None if k % 7 == 0 else b"%d" % k * (k % 50), k / 2), 4)
    try:
        got = [w.next() for _ in range(103)]
    finally:
        w.close()
    assert got == [(None if k % 7 == 0 else b"%d" % k * (k % 50), k / 2) for k in range(103)]
    with pytest.raises(indexbuild.WorkerFailed):
        w.next()
    assert no_children()


def test_a_worker_that_raises_is_a_failure_not_a_hang() -> None:
    def job(k: int) -> tuple[bytes | None, float]:
        if k == 3:
            raise ValueError("bug")
        return b"x", 0.0

    w = indexbuild.Workers(10, job, 2)
    got = []
    try:
        with pytest.raises(indexbuild.WorkerFailed):
            for _ in range(10):
                got.append(w.next())
    finally:
        w.close()
    # (what the worker made before the bug may or may not have been sent)
    assert len(got) <= 3 and got == [(b"x", 0.0)] * len(got)
    assert no_children()


def test_record_is_the_long_ways_entry(tmp_path: pathlib.Path) -> None:
    for data in messages():
        for tree in (True, False):
            got = mindex.decode(indexbuild.record(io.BytesIO(data), len(data), tree, tree))
            root = parse(io.BytesIO(data), header_only=not tree)
            assert got.envelope is not None and got.headers is not None
            assert (got.bodystructure is not None) == tree == (got.crlf_size == root.body_end)


def test_put_payloads_one_write_and_one_table(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mindex, "TABLE_AFTER", 10)
    folder = make_folder(tmp_path / "m", copies=1)
    idx = mindex.FolderIndex(folder)
    payload = mindex.encode(mindex.Entry(5, envelope=b"(NIL)"))
    assert idx.put_payloads([(f"b{k}", payload) for k in range(25)], table=False) == 25
    assert idx.tabled == 0
    assert idx.put_payloads([("bad\nbase", payload), ("", payload)], table=False) == 0
    idx.settle()
    assert idx.tabled == 1
    idx.close()
    again = mindex.FolderIndex(folder)
    assert again.get("b24", 5) == mindex.Entry(5, envelope=b"(NIL)")
    assert again.unknown(["b3", "zz", "b7", "yy"]) == [1, 3]
    again.close()
    shutil.rmtree(folder)


def test_the_callers_own_chunks_are_made_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexbuild, "CHUNK", 2)
    parent = os.getpid()
    assert [indexbuild.owner(c, 2) for c in range(6)] == [0, 1, 0, 1, 2, 0]

    def job(k: int) -> tuple[bytes | None, float]:
        if k == 10 and os.getpid() == parent:
            raise ValueError("bug")
        return b"%d %d" % (k, os.getpid() == parent), 0.0

    w = indexbuild.Workers(13, job, 1)        # chunks: worker, worker, caller, worker...
    try:
        got = [w.next()[0] for _ in range(10)]
        with pytest.raises(indexbuild.WorkerFailed, match="ValueError"):
            w.next()
    finally:
        w.close()
    assert got == [b"%d %d" % (k, k in (4, 5)) for k in range(10)]
    assert no_children()


def once_then(real, error: OSError):
    """real the first time it is called, then error: the second pipe or fork fails."""
    calls = []

    def call():
        if calls:
            raise error
        calls.append(1)
        return real()
    return call


def test_no_descriptor_or_process_left_when_pipes_or_forks_fail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fds = open_fds()
    for name, error in (("pipe", OSError(24, "Too many open files")),
                        ("fork", OSError(11, "Resource temporarily unavailable"))):
        with monkeypatch.context() as m:
            m.setattr(os, name, once_then(getattr(os, name), error))
            with pytest.raises(OSError):
                indexbuild.Workers(10, lambda k: (b"x", 0.0), 2)
    assert no_children() and open_fds() == fds


def session_answer(md: Maildir, items: tuple[FetchItem, ...]) -> list[bytes]:
    """As session.fetch for items indexed_responses does not take: cold_records ahead,
    each message the long way."""
    msgs = cold_list(md)
    picked = Picked(msgs, list(range(len(msgs))))
    assert fetchmod.indexed_responses(items, md, picked, set(), {}, None, set()) is None
    ahead = fetchmod.cold_records(items, md, picked, {}, set())
    out = []
    for i in range(len(msgs)):
        if ahead is not None:
            next(ahead, None)
        m = msgs[i]
        idx = fetchmod.folder_index(fetchmod.message_path(md, m))
        cached = idx.get(m.base, m.size)
        with open(fetchmod.message_path(md, m), "rb") as fh:
            parts, _ = fetchmod.message_parts(items, m, fh, flags_text(m.flags, False, m.keywords),
                                              None, idx, cached)
            out.append(b"".join(core.fetch_response_pieces(i + 1, parts)))
    del ahead
    return out


@pytest.mark.parametrize("spec", [
    "UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date Message-ID)]",
    "ENVELOPE BODY.PEEK[HEADER]",
    "BODYSTRUCTURE RFC822.HEADER BODY.PEEK[HEADER.FIELDS.NOT (Received)]<0.50>",
])
def test_header_sections_with_index_items(tmp_path: pathlib.Path, parallel: None,
                                          spec: str) -> None:
    cmd = core.parse_command([(f"a FETCH 1:* ({spec})".encode(), None)], core.State.SELECTED)
    assert isinstance(cmd, core.Fetch), cmd
    saved = fetchmod.COLD_LEAST
    fetchmod.COLD_LEAST = 1 << 60
    try:
        md0 = Maildir(make_folder(tmp_path / "serial"))
        want = session_answer(md0, cmd.items)
    finally:
        fetchmod.COLD_LEAST = saved
    md = Maildir(make_folder(tmp_path / "par"))
    msgs = cold_list(md)
    assert fetchmod.cold_records(cmd.items, md, Picked(msgs, list(range(len(msgs)))), {},
                                 set()) is not None
    fetchmod._indexes.clear()
    fds = open_fds()
    assert session_answer(md, cmd.items) == want
    assert records(md.path) == records(md0.path)
    assert no_children() and open_fds() == fds


def test_items_that_need_the_tree_take_no_workers(tmp_path: pathlib.Path, parallel: None) -> None:
    md = Maildir(make_folder(tmp_path / "m"))
    msgs = cold_list(md)
    picked = Picked(msgs, list(range(len(msgs))))
    for spec in ("ENVELOPE BODY.PEEK[1]", "RFC822.SIZE BODY.PEEK[]", "ENVELOPE BODY.PEEK[TEXT]"):
        cmd = core.parse_command([(f"a FETCH 1:* ({spec})".encode(), None)], core.State.SELECTED)
        assert fetchmod.cold_records(cmd.items, md, picked, {}, set()) is None, spec


def test_a_worker_says_what_it_is_in_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    from libcourier import proctitle
    monkeypatch.setattr(proctitle, "_last", "imapd: alice [127.0.0.1] SELECTED INBOX")

    def job(k: int) -> tuple[bytes | None, float]:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").strip(), 0.0

    w = indexbuild.Workers(1, job, 1)
    try:
        title = w.next()[0]
    finally:
        w.close()
    if proctitle._setproctitle is not None:
        assert title == b"imapd: alice [127.0.0.1] SELECTED INBOX: index 1/1"
