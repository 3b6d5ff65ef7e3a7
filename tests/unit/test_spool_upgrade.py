"""A queue written before the one-file layout (msgs/<qid>.dat + msgs/<qid>.env)
after an upgrade: listed, read, rewritten, delivered, listed by mailq,
quarantined and purged as before, beside entries of the new layout; and
entry.py's reading of either kind of file from a bare descriptor (courierlocal)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
from courier_deliver import mailq
from courier_deliver.config import load_config
from courier_deliver.localproto import Reply, Status
from courier_deliver.queue import Outcome, process_message
from hypothesis import given
from hypothesis import strategies as st

from libcourier.spool import (
    DataFile,
    Envelope,
    Recipient,
    SpoolError,
    SpoolWriter,
    data_span,
    ensure_spool,
    list_queue,
    new_qid,
    open_data,
    purge_tmp,
    quarantine,
    read_envelope,
    remove,
    rewrite_envelope,
)
from libcourier.spool.entry import HEADER_LEN, MAGIC, format_header, parse_header
from libcourier.spool.envelope import format_envelope
from tests.unit.test_deliver_queue import make_etc

BODY = b"Received: from x by y\nSubject: old\n\nwritten before the upgrade\n"


def env_for(*rcpts: str, sender: str = "s@x.test") -> Envelope:
    # Whole seconds: the envelope keeps six decimals, so a round trip is exact.
    return Envelope(sender, tuple(Recipient(r) for r in rcpts), float(int(time.time())),
                    client="test")


def old_entry(spool: Path, env: Envelope, body: bytes = BODY) -> str:
    """What the former SpoolWriter left: the message, then the envelope (the commit point)."""
    qid = new_qid()
    (spool / "msgs" / f"{qid}.dat").write_bytes(body)
    (spool / "msgs" / f"{qid}.env").write_bytes(format_envelope(env))
    return qid


def new_entry(spool: Path, env: Envelope, body: bytes = b"Subject: new\n\nhi\n") -> str:
    w = SpoolWriter(spool, 0)
    w.write(body)
    return w.commit(env)


def files(spool: Path) -> list[str]:
    return sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())


@pytest.fixture
def cfg(tmp_path):
    c = dataclasses.replace(load_config(make_etc(tmp_path, "RETRYFIRST=1\nRESCAN=3600\n")),
                            esmtp=None)
    ensure_spool(c.layout.spooldir)
    return c


def test_old_and_new_entries_side_by_side(tmp_path):
    spool = tmp_path / "spool"
    ensure_spool(spool)
    old_env = env_for("a@x.test", "b@x.test")
    old = old_entry(spool, old_env)
    new = new_entry(spool, env_for("c@x.test"))
    assert list_queue(spool) == [old, new]             # creation order across both layouts
    assert read_envelope(spool, old) == old_env
    with open_data(spool, old) as fh:
        assert (fh.offset, fh.length) == (0, len(BODY))
        assert fh.read() == BODY
    # courierd's rewrite of an old entry stays in its .env (no .st appears).
    later = dataclasses.replace(old_env, recipients=old_env.recipients[1:], warned=True)
    rewrite_envelope(spool, old, later)
    assert read_envelope(spool, old) == later
    assert sorted(p.name for p in (spool / "msgs").iterdir()) == \
        sorted([f"{old}.dat", f"{old}.env", new])
    remove(spool, old)
    assert files(spool) == [f"msgs/{new}"]
    assert list_queue(spool) == [new]
    with pytest.raises(SpoolError):
        read_envelope(spool, old)
    with pytest.raises(OSError):
        open_data(spool, old)


def test_old_leftovers_are_purged_when_old(tmp_path):
    spool = tmp_path / "spool"
    ensure_spool(spool)
    lone_dat = old_entry(spool, env_for("a@x.test"))
    os.unlink(spool / "msgs" / f"{lone_dat}.env")
    lone_env = old_entry(spool, env_for("a@x.test"))
    os.unlink(spool / "msgs" / f"{lone_env}.dat")
    whole = old_entry(spool, env_for("a@x.test"))
    for p in (spool / "msgs").iterdir():
        os.utime(p, (1, 1))
    assert purge_tmp(spool) == 2
    assert files(spool) == [f"msgs/{whole}.dat", f"msgs/{whole}.env"]


def test_old_entry_quarantined_whole(tmp_path):
    spool = tmp_path / "spool"
    ensure_spool(spool)
    qid = old_entry(spool, env_for("a@x.test"))
    quarantine(spool, qid)
    assert files(spool) == [f"quarantine/{qid}.dat", f"quarantine/{qid}.env"]


class Local:
    """Stands for courierlocal: reads the message from the passed descriptor
    the way localuser does (data_span), whichever layout it is."""

    def __init__(self):
        self.got: list[tuple[str, bytes]] = []

    def __call__(self, sock, fd, sender, rcpt, user):
        offset, length = data_span(fd)
        self.got.append((rcpt, os.pread(fd, length, offset)))
        return Reply(Status.TEMP if rcpt.startswith("later") else Status.OK, "ok")


def test_courierd_delivers_an_old_entry(cfg):
    spool = cfg.layout.spooldir
    qid = old_entry(spool, env_for("a@mx.test", "later@mx.test"))
    local = Local()
    assert process_message(cfg, qid, local).outcome is Outcome.DEFERRED
    assert local.got == [("a@mx.test", BODY), ("later@mx.test", BODY)]
    # The deferral is recorded in the old .env, the message untouched.
    assert [r.address for r in read_envelope(spool, qid).recipients] == ["later@mx.test"]
    assert (spool / "msgs" / f"{qid}.dat").read_bytes() == BODY
    local.got.clear()
    process_message(cfg, qid, lambda *a: Reply(Status.OK, "ok"))
    assert files(spool) == []


def test_mailq_lists_both_with_the_message_size(cfg):
    spool = cfg.layout.spooldir
    old = old_entry(spool, env_for("a@mx.test"))
    new = new_entry(spool, env_for("b@mx.test"), b"x" * 1234)
    rewrite_envelope(spool, new, env_for("c@mx.test"))
    entries = {e.qid: e for e in mailq.scan(cfg.layout)}
    assert (entries[old].size, entries[old].recipients) == (len(BODY), ("a@mx.test",))
    assert (entries[new].size, entries[new].recipients) == (1234, ("c@mx.test",))
    assert [e.qid for e in mailq.scan_for(cfg.layout, None)] == [old, new]


def test_mailq_shows_a_damaged_entry(cfg):
    spool = cfg.layout.spooldir
    qid = new_entry(spool, env_for("b@mx.test"))
    raw = (spool / "msgs" / qid).read_bytes()
    (spool / "msgs" / qid).write_bytes(b"\0" * HEADER_LEN + raw[HEADER_LEN:])
    [entry] = mailq.scan(cfg.layout)
    assert entry.qid == qid and entry.damaged


def test_data_span_and_datafile(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.write_bytes(BODY)
    entry = tmp_path / "entry"
    env = format_envelope(env_for("a@x.test"))
    entry.write_bytes(format_header(len(BODY), len(env)) + BODY + env)
    for path in (legacy, entry):
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, length = data_span(fd)
            assert os.pread(fd, length, offset) == BODY
        finally:
            os.close(fd)
        with DataFile.of(os.open(path, os.O_RDONLY)) as d:
            assert b"".join(iter(lambda: d.read(5), b"")) == BODY
        with pytest.raises(ValueError):
            d.fileno()
    bad = tmp_path / "bad"
    bad.write_bytes(MAGIC + b"zz\n" + BODY)
    fd = os.open(bad, os.O_RDONLY)
    with pytest.raises(SpoolError):
        DataFile.of(fd)
    with pytest.raises(OSError):
        os.fstat(fd)            # DataFile.of closed the descriptor it was given


@given(st.integers(0, 16**16 - 1), st.integers(0, 4 * 1024 * 1024))
def test_header_round_trip(data_len, env_len):
    head = format_header(data_len, env_len)
    assert len(head) == HEADER_LEN and parse_header(head) == (data_len, env_len)


@given(st.binary(max_size=HEADER_LEN + 5))
def test_header_parser_never_crashes(data):
    try:
        parse_header(data)
    except SpoolError:
        pass


@pytest.mark.parametrize("layout", ["old", "new"])
def test_dsn_ret_full_carries_the_message_alone(cfg, layout):
    spool = cfg.layout.spooldir
    env = dataclasses.replace(env_for("a@mx.test"), ret="FULL")
    qid = old_entry(spool, env) if layout == "old" else new_entry(spool, env, BODY)
    result = process_message(cfg, qid, lambda *a: Reply(Status.PERM, "5.1.1 no such user"))
    assert result.outcome is Outcome.DONE and len(result.injected) == 1
    with open_data(spool, result.injected[0]) as fh:
        report = fh.read()
    assert BODY in report
    assert b"courier-py-" not in report        # neither the header nor the envelope
    assert list_queue(spool) == list(result.injected)


def test_courier_flush_announces_entries_of_both_layouts(cfg, capsys):
    """`courier flush` lists the queue with list_queue (it globbed *.env) and
    hands each to courierd's socket (it passed the Layout itself: a TypeError)."""
    import socket

    from libcourier.control.main import flush
    spool = cfg.layout.spooldir
    qids = [old_entry(spool, env_for("a@mx.test")), new_entry(spool, env_for("b@mx.test"))]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(cfg.layout.queue_socket))
    srv.listen(1)
    srv.settimeout(10)
    try:
        assert flush(spool.parent / "etc") == 0
        conn, _ = srv.accept()
        conn.settimeout(10)
        got = b""
        while got.count(b"\n") < 2:
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
        conn.close()
    finally:
        srv.close()
    assert got == b"".join(f"NEW {q}\n".encode() for q in qids)
    assert "2 queued message(s)" in capsys.readouterr().out
