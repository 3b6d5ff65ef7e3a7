"""libcourier.spool: round-trips, crash-safety, the queue API the queue manager uses."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolError,
    SpoolWriter,
    ensure_spool,
    list_queue,
    new_qid,
    notify,
    open_data,
    purge_tmp,
    read_envelope,
    remove,
    rewrite_envelope,
)
from libcourier.spool.envelope import format_envelope, parse_envelope


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    ensure_spool(d)
    return d


def files(spool):
    return sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())


ENV = Envelope("alice@example.com", (Recipient("bob@example.com"),
                                     Recipient("ünï@exämple.org", "rfc822;x@y", "SUCCESS,FAILURE")),
               1700000000.5, "8BITMIME", True, "env\tid", "HDRS", "[127.0.0.1] helo=x")


def test_commit_leaves_exactly_one_entry(spool):
    w = SpoolWriter(spool, 1000)
    w.write(b"Subject: hi\n\nbody\n")
    assert files(spool) == [f"tmp/{w.qid}"]
    qid = w.commit(ENV)
    assert files(spool) == [f"msgs/{qid}"]
    assert list_queue(spool) == [qid]
    assert read_envelope(spool, qid) == ENV
    with open_data(spool, qid) as fh:
        assert fh.read() == b"Subject: hi\n\nbody\n"
        assert fh.read() == b""         # the message only, not the envelope behind it
        assert fh.length == 18
    assert oct((spool / "msgs" / qid).stat().st_mode & 0o777) == "0o640"


def test_abort_leaves_nothing(spool):
    w = SpoolWriter(spool, 1000)
    w.write(b"x" * 100)
    w.abort()
    w.abort()  # idempotent
    assert files(spool) == []
    with pytest.raises(SpoolError):
        w.write(b"more")


def test_too_big_stops_writing_and_refuses_commit(spool):
    w = SpoolWriter(spool, 10)
    w.write(b"12345")
    w.write(b"678901")
    assert w.too_big and w.size == 11
    assert (spool / "tmp" / w.qid).stat().st_size == 0    # still all in the buffer
    with pytest.raises(SpoolError):
        w.commit(ENV)
    assert files(spool) == []


def test_context_manager_aborts_on_error(spool):
    with pytest.raises(RuntimeError):
        with SpoolWriter(spool, 0) as w:
            w.write(b"data")
            raise RuntimeError("client went away")
    assert files(spool) == []


def test_commit_failure_leaves_nothing(spool, monkeypatch):
    import libcourier.spool.writer as writer
    w = SpoolWriter(spool, 0)
    w.write(b"data\n")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(writer, "fsync_dir", boom)     # the last step, after the rename
    with pytest.raises(SpoolError):
        w.commit(ENV)
    assert files(spool) == []


def test_queue_order_rewrite_remove(spool):
    qids = []
    for i in range(3):
        w = SpoolWriter(spool, 0)
        w.write(b"m%d\n" % i)
        qids.append(w.commit(Envelope("", (Recipient(f"r{i}@x"),), 1.0)))
    assert list_queue(spool) == qids
    new = Envelope("", (), 2.0)
    rewrite_envelope(spool, qids[1], new)
    assert read_envelope(spool, qids[1]) == new
    # The new envelope is a .st beside the entry; the entry is not rewritten.
    assert files(spool) == sorted([f"msgs/{q}" for q in qids] + [f"msgs/{qids[1]}.st"])
    with open_data(spool, qids[1]) as fh:
        assert fh.read() == b"m1\n"
    remove(spool, qids[0])
    remove(spool, qids[1])
    assert list_queue(spool) == qids[2:]
    assert files(spool) == [f"msgs/{qids[2]}"]
    with pytest.raises(SpoolError):
        rewrite_envelope(spool, qids[0], new)


def test_bad_qid_is_refused(spool):
    for bad in ("../etc/passwd", "", "x" * 200, "0123.1.1/../x"):
        with pytest.raises(SpoolError):
            read_envelope(spool, bad)


def test_damaged_envelopes(spool):
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")
    qid = w.commit(ENV)
    rewrite_envelope(spool, qid, ENV)
    envfile = spool / "msgs" / f"{qid}.st"
    good = envfile.read_bytes()
    for damaged in (good[:-4], b"", b"garbage\n", good.replace(b"smtputf8 1", b"smtputf8 7"),
                    good.replace(b"end\n", b"frob 1\nend\n"), b"\xff" + good,
                    good.replace(b"received 1700000000.500000", b"received soon")):
        envfile.write_bytes(damaged)
        with pytest.raises(SpoolError):
            read_envelope(spool, qid)


def test_purge_tmp(spool):
    old = spool / "tmp" / "stale"
    old.write_bytes(b"x")
    orphan = spool / "msgs" / f"{new_qid()}.st"        # a crash inside remove()
    orphan.write_bytes(b"y")
    w = SpoolWriter(spool, 0)
    w.write(b"kept\n")
    kept = w.commit(ENV)
    rewrite_envelope(spool, kept, ENV)
    for p in (old, orphan, spool / "msgs" / kept, spool / "msgs" / f"{kept}.st"):
        os.utime(p, (1, 1))
    fresh = SpoolWriter(spool, 0)
    assert purge_tmp(spool) == 2
    assert files(spool) == sorted([f"tmp/{fresh.qid}", f"msgs/{kept}", f"msgs/{kept}.st"])


def test_qids_unique_and_sorted():
    ids = [new_qid() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


def test_notify(tmp_path):
    path = tmp_path / "q.sock"
    assert notify(path, new_qid(), timeout=0.5) is False   # nobody listening
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    got = []

    def accept():
        c, _ = srv.accept()
        got.append(c.recv(100))
        c.close()
    t = threading.Thread(target=accept)
    t.start()
    qid = new_qid()
    assert notify(path, qid) is True
    t.join(5)
    srv.close()
    assert got == [f"NEW {qid}\n".encode()]


_text = st.text(max_size=40)


@given(st.builds(Envelope, _text, st.lists(st.builds(
    Recipient, _text.filter(bool), st.none() | _text.filter(bool), st.none() | _text.filter(bool)),
    max_size=5).map(tuple), st.floats(0, 4e9).map(lambda f: round(f, 6)), _text, st.booleans(),
    st.none() | _text, st.none() | _text, _text))
def test_envelope_round_trip(env):
    assert parse_envelope(format_envelope(env)) == env


@given(st.binary(max_size=300))
def test_envelope_parser_never_crashes(data):
    try:
        parse_envelope(data)
    except SpoolError:
        pass


def test_notify_keeps_its_connection_and_replaces_a_closed_one(tmp_path):
    from libcourier.spool import queue as spool_queue
    path = tmp_path / "q.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(10)
    first, second, third = new_qid(), new_qid(), new_qid()
    assert notify(path, first) is True
    assert notify(path, second) is True
    c, _ = srv.accept()
    c.settimeout(10)
    got = b""
    while got.count(b"\n") < 2:
        got += c.recv(100)
    assert got == f"NEW {first}\nNEW {second}\n".encode()    # one connection, both notices
    c.close()                                # courierd restarted, or its idle timeout
    assert notify(path, third) is True
    c2, _ = srv.accept()                     # the notice came over a new connection
    c2.settimeout(10)
    assert c2.recv(100) == f"NEW {third}\n".encode()
    # A forked child does not write into its parent's kept connection.
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not spool_queue._kept else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert str(path) in spool_queue._kept
    c2.close()
    srv.close()
