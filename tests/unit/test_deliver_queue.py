"""courier_deliver config and queue manager with a fake courierlocal: the retry
schedule, which recipients are local, envelope rewriting, NEW notices."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import pytest
from courier_deliver.config import (
    Domains,
    RetrySchedule,
    load_config,
    local_user,
    to_duration,
)
from courier_deliver.localproto import Reply, Status
from courier_deliver.queue import (
    Outcome,
    QueueManager,
    bind_queue_socket,
    process_message,
    serve,
)

from libcourier.config import ConfigError
from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolWriter,
    data_span,
    list_queue,
    new_qid,
    notify,
    read_envelope,
)
from libcourier.spool.envelope import format_envelope


def test_retry_schedule_is_courier_s():
    # man courier(8): 5m/3/15m/3 gives 5,5,5,15,5,5,30,5,5,60,5,5,120,5,5,120 minutes.
    minutes = [RetrySchedule().delay(n) // 60 for n in range(1, 17)]
    assert minutes == [5, 5, 5, 15, 5, 5, 30, 5, 5, 60, 5, 5, 120, 5, 5, 120]
    assert RetrySchedule().delay(0) == 0
    assert RetrySchedule().delay(10**9) in (300, 7200)   # no overflow for many attempts
    assert RetrySchedule(1, 3, 1, 3, cap=1).delay(7) == 1


def test_retry_schedule_from_control_files_and_keys(tmp_path):
    etc = make_etc(tmp_path)
    for name, value in (("retryalpha", "1m"), ("retrybeta", "2"), ("retrygamma", "10m"),
                        ("retrymaxdelta", "1"), ("queuetime", "2d"), ("warntime", "1h")):
        (etc / name).write_text(value + "\n")
    cfg = load_config(etc)
    assert cfg.retry == RetrySchedule(60, 2, 600, 1)
    assert [cfg.retry.delay(n) for n in range(1, 8)] == [60, 60, 600, 60, 1200, 60, 1200]
    assert (cfg.queuetime, cfg.warntime) == (2 * 86400, 3600)
    (etc / "retrybeta").write_text("x\n")
    with pytest.raises(ConfigError) as ei:
        load_config(etc)
    assert str(ei.value).endswith("retrybeta:1: must be a non-negative integer") or \
        "retrybeta:1:" in str(ei.value)


def test_durations():
    assert to_duration("300") == 300 and to_duration("5m") == 300
    assert to_duration("7d") == 7 * 86400 and to_duration("1w") == 7 * 86400
    for bad in ("", "m", "-1", "1y", "1.5h"):
        with pytest.raises(ValueError):
            to_duration(bad)


DOMAINS = Domains("mx.test", ("mx.test", "localhost", ".sub.test"), ("example.com",))


@pytest.mark.parametrize("addr,user", [
    ("alice@mx.test", "alice"),
    ("Alice@MX.Test", "Alice"),
    ("bob@a.sub.test", "bob"),
    ("postmaster", "postmaster"),
    ("alice@example.com", "alice@example.com"),
    ("alice@EXAMPLE.com", "alice@example.com"),
    ("x@remote.example", None),
    ("x@sub.test", None),
    ('"a@b"@mx.test', '"a@b"'),
])
def test_local_user(addr, user):
    assert local_user(addr, DOMAINS) == user


def make_etc(tmp_path: Path, extra: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "courierd").write_text(f"SPOOLDIR=../spool\nRUNDIR=../run\n{extra}")
    (etc / "me").write_text("mx.test\n")
    (etc / "hosteddomains").write_text("example.com\nalias.example\texample.com\n")
    (tmp_path / "run").mkdir()
    return etc


def test_load_config(tmp_path):
    cfg = load_config(make_etc(tmp_path, "RETRYFIRST=10\nQUEUETIME=2d\nMAXDELS=2\n"))
    assert (cfg.retry, cfg.queuetime, cfg.maxdels) == (RetrySchedule(10, 3, 10, 3), 172800, 2)
    assert cfg.warntime == 4 * 3600 and cfg.esmtp is not None and cfg.esmtp.helo == "mx.test"
    assert cfg.domains == Domains("mx.test", ("mx.test",), ("example.com", "alias.example",
                                                             "example.com"))
    assert cfg.layout.spooldir == tmp_path / "spool"


def test_bad_config_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(make_etc(tmp_path, "MAXDELS=0\n"))
    assert str(ei.value).endswith("courierd:3: MAXDELS: must be at least 1")


class FakeLocal:
    """Stands in for courierlocal: answers by recipient, records what it saw."""

    def __init__(self, answers: dict[str, Status]):
        self.answers = answers
        self.calls: list[tuple[str, str, str | None, bytes]] = []

    def __call__(self, sock: Path, fd: int, sender: str, rcpt: str, user: str | None) -> Reply:
        import os
        offset, length = data_span(fd)         # the message alone, as courierlocal reads it
        self.calls.append((sender, rcpt, user, os.pread(fd, min(length, 64 * 1024), offset)))
        status = self.answers.get(rcpt, Status.OK)
        return Reply(status, "1.M1P1.h,S=1" if status is Status.OK else "x")


def spool_message(spooldir: Path, *rcpts: str, sender: str = "s@x", received=None) -> str:
    w = SpoolWriter(spooldir, 10_000)
    w.write(b"Subject: t\n\nhi\n")
    return w.commit(Envelope(sender, tuple(Recipient(r) for r in rcpts),
                             time.time() if received is None else received))


@pytest.fixture
def cfg(tmp_path):
    c = load_config(make_etc(tmp_path, "RETRYFIRST=1\nRETRYMAX=1\nRESCAN=3600\n"))
    # No remote delivery here (it would ask the real DNS): remote recipients wait.
    c = dataclasses.replace(c, esmtp=None)
    from libcourier.spool import ensure_spool
    ensure_spool(c.layout.spooldir)
    return c


def test_all_delivered_removes_the_entry(cfg):
    qid = spool_message(cfg.layout.spooldir, "alice@mx.test", "bob@example.com", sender="")
    fake = FakeLocal({})
    assert process_message(cfg, qid, fake).outcome is Outcome.DONE
    assert list_queue(cfg.layout.spooldir) == []
    assert [c[:3] for c in fake.calls] == [("", "alice@mx.test", "alice"),
                                           ("", "bob@example.com", None)]
    assert fake.calls[0][3] == b"Subject: t\n\nhi\n"
    assert list((cfg.layout.spooldir / "msgs").iterdir()) == []


def test_temp_and_remote_stay_perm_is_dropped(cfg):
    qid = spool_message(cfg.layout.spooldir, "a@mx.test", "b@mx.test", "c@mx.test",
                        "far@remote.example")
    fake = FakeLocal({"a@mx.test": Status.TEMP, "b@mx.test": Status.PERM})
    assert process_message(cfg, qid, fake).outcome is Outcome.DEFERRED
    env = read_envelope(cfg.layout.spooldir, qid)
    assert [r.address for r in env.recipients] == ["a@mx.test", "far@remote.example"]
    assert len(fake.calls) == 3  # the remote one never reaches courierlocal
    fake.answers.clear()
    assert process_message(cfg, qid, fake).outcome is Outcome.DEFERRED
    assert [r.address for r in read_envelope(cfg.layout.spooldir, qid).recipients] == \
        ["far@remote.example"]


def test_crash_after_first_recipient_keeps_the_rest(cfg):
    qid = spool_message(cfg.layout.spooldir, "a@mx.test", "b@mx.test")

    def crashing(sock, fd, sender, rcpt, user):
        if rcpt == "b@mx.test":
            raise KeyboardInterrupt  # stands for the process dying here
        return Reply(Status.OK, "f")

    with pytest.raises(KeyboardInterrupt):
        process_message(cfg, qid, crashing)
    assert [r.address for r in read_envelope(cfg.layout.spooldir, qid).recipients] == \
        ["b@mx.test"]


def old_layout_message(spooldir: Path, *rcpts: str, sender: str = "s@x") -> str:
    """A queue entry as the writer before the one-file layout left it: .dat + .env."""
    qid = new_qid()
    (spooldir / "msgs" / f"{qid}.dat").write_bytes(b"Subject: t\n\nhi\n")
    (spooldir / "msgs" / f"{qid}.env").write_bytes(format_envelope(Envelope(
        sender, tuple(Recipient(r) for r in rcpts), time.time())))
    return qid


@pytest.mark.parametrize("damage", ["garbage state", "garbage entry", "old: garbage envelope",
                                    "old: data missing"])
def test_undeliverable_entry_is_quarantined_not_deleted(cfg, damage, caplog):
    """Issue 8, bad input: a spool entry that cannot be read is moved aside to
    SPOOLDIR/quarantine with a log line, never deleted, and no longer retried."""
    spool = cfg.layout.spooldir
    msgs = spool / "msgs"
    if damage.startswith("old"):
        qid = old_layout_message(spool, "alice@mx.test")
        before = {n: (msgs / f"{qid}{n}").read_bytes() for n in (".dat", ".env")}
        if damage == "old: garbage envelope":
            before[".env"] = b"\x00 not an envelope\n"
            (msgs / f"{qid}.env").write_bytes(before[".env"])
        else:
            (msgs / f"{qid}.dat").unlink()
            del before[".dat"]
    else:
        qid = spool_message(spool, "alice@mx.test")
        if damage == "garbage state":
            (msgs / f"{qid}.st").write_bytes(b"\x00 not an envelope\n")
        else:
            raw = (msgs / qid).read_bytes()
            (msgs / qid).write_bytes(raw.replace(b"\nend\n", b"\nfrob\n"))
        before = {n: (msgs / f"{qid}{n}").read_bytes() for n in ("", ".st")
                  if (msgs / f"{qid}{n}").exists()}
    fake = FakeLocal({})
    with caplog.at_level("ERROR", logger="courier.courierd"):
        assert process_message(cfg, qid, fake).outcome is Outcome.GONE
    assert fake.calls == [] and list_queue(spool) == [] and list(msgs.iterdir()) == []
    kept = {p.name[len(qid):]: p.read_bytes() for p in (spool / "quarantine").iterdir()}
    assert kept == before
    assert f"id={qid}" in caplog.text and "quarantine" in caplog.text


def test_vanished_entry_is_gone(cfg):
    assert process_message(cfg, "0123456789abcdef.1.1", FakeLocal({})).outcome is Outcome.GONE


def run_manager(cfg, fake, until, timeout=5.0, before=None):
    async def main():
        sock = bind_queue_socket(cfg.layout.queue_socket, None)
        mgr = QueueManager(cfg, deliver=fake)
        task = asyncio.create_task(serve(mgr, sock))
        try:
            if before is not None:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(before)
            deadline = time.monotonic() + timeout
            while not until(mgr) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            mgr.stop()
            await asyncio.wait_for(task, 10)
            sock.close()
        return mgr
    return asyncio.run(main())


def test_manager_scans_at_start_and_retries(cfg):
    qid = spool_message(cfg.layout.spooldir, "a@mx.test")
    fake = FakeLocal({"a@mx.test": Status.TEMP})
    tries = []

    def until(mgr):
        tries.append(len(fake.calls))
        if len(fake.calls) >= 2:
            fake.answers.clear()
        return not list_queue(cfg.layout.spooldir)

    mgr = run_manager(cfg, fake, until)
    assert list_queue(cfg.layout.spooldir) == [] and len(fake.calls) == 3
    assert qid not in mgr.pending


def test_manager_takes_new_notices(cfg):
    fake = FakeLocal({})
    qids = []

    def submit():
        for _ in range(3):
            qid = spool_message(cfg.layout.spooldir, "a@mx.test")
            qids.append(qid)
            assert notify(cfg.layout.queue_socket, qid)
        # A bad notice is logged and dropped; the manager goes on.
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(cfg.layout.queue_socket))
        s.sendall(b"NEW ../../etc/passwd\n" + b"x" * 500)
        s.close()

    run_manager(cfg, fake, lambda m: len(fake.calls) == 3 and not list_queue(
        cfg.layout.spooldir), before=submit)
    assert len(fake.calls) == 3 and list_queue(cfg.layout.spooldir) == []


def test_manager_bounces_after_queuetime_and_delivers_the_bounce(cfg):
    qid = spool_message(cfg.layout.spooldir, "far@remote.example", sender="s@mx.test",
                        received=time.time() - 8 * 86400)
    fake = FakeLocal({})
    run_manager(cfg, fake, lambda m: not list_queue(cfg.layout.spooldir))
    assert list_queue(cfg.layout.spooldir) == []
    # The bounce went from the null sender to s@mx.test, and says why.
    [(sender, rcpt, user, data)] = fake.calls
    assert (sender, rcpt, user) == ("", "s@mx.test", "s")
    assert b"report-type=delivery-status" in data and b"Reporting-MTA: dns; mx.test" in data
    assert qid.encode() in data   # in the DSN's Message-ID


def test_manager_bounds_concurrency(tmp_path):
    c = load_config(make_etc(tmp_path, "MAXDELS=2\nRESCAN=3600\n"))
    from libcourier.spool import ensure_spool
    ensure_spool(c.layout.spooldir)
    for _ in range(6):
        spool_message(c.layout.spooldir, "a@mx.test")
    import threading
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "n": 0}

    def slow(sock, fd, sender, rcpt, user):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
            state["n"] += 1
        return Reply(Status.OK, "f")

    run_manager(c, slow, lambda m: not list_queue(c.layout.spooldir))
    assert state["n"] == 6 and state["max"] == 2
