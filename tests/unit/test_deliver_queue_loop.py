"""courierd's common message (one local recipient) is delivered from the event
loop, through local.LocalBatches, against a fake courierlocal socket:
MAXDELS still bounds the deliveries, anything else still goes to
process_message in a thread, and the answers settle the queue as before."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import threading
import time

import courier_deliver.queue as queue_mod
import pytest
from courier_deliver.config import load_config
from courier_deliver.local import LocalBatches, LocalClient
from courier_deliver.localproto import (
    DeliverRequest,
    Reply,
    Status,
    format_reply,
    format_request,
    parse_request_line,
)
from courier_deliver.queue import QueueManager, bind_queue_socket, serve

from libcourier.spool import (
    DataFile,
    Envelope,
    Recipient,
    SpoolWriter,
    ensure_spool,
    list_queue,
    read_envelope,
)
from tests.unit.test_deliver_queue import make_etc

WAIT = 20.0


class FakeCourierlocal:
    """A listening courierlocal.sock: each connection served by a thread, one
    request (line + passed fd) after another; TEMP for recipients in `temp`."""

    def __init__(self, path, temp=(), delay=0.05, close_after=None):
        self.temp = set(temp)
        self.delay = delay
        self.close_after = close_after      # requests per connection before closing it
        self.lock = threading.Lock()
        self.now = self.max = 0
        self.seen: list[tuple[str, bytes]] = []
        self.connections = 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(WAIT)
        served = 0
        buf = b""
        fds: list[int] = []      # courierd may send several requests (fds with them) at once
        try:
            while True:
                while b"\n" not in buf:
                    data, got, _f, _a = socket.recv_fds(conn, 65536, 64)
                    fds += got
                    if not data:
                        return
                    buf += data
                line, _, buf = buf.partition(b"\n")
                req = parse_request_line(line)
                fd = fds.pop(0)
                with DataFile.of(fd) as data:       # the message alone, as courierlocal reads it
                    body = data.read(4096)
                with self.lock:
                    self.now += 1
                    self.max = max(self.max, self.now)
                    self.seen.append((req.recipient, body))
                time.sleep(self.delay)
                with self.lock:
                    self.now -= 1
                status = Status.TEMP if req.recipient in self.temp else Status.OK
                conn.sendall(format_reply(Reply(status, "1.M1P1.h,S=1" if status is Status.OK
                                                else "4.2.0 try later")))
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    return
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.srv.close()


def make_cfg(tmp_path, maxdels=2):
    etc = make_etc(tmp_path, f"MAXDELS={maxdels}\nRETRYFIRST=3600\nRESCAN=3600\n")
    cfg = dataclasses.replace(load_config(etc), esmtp=None)
    ensure_spool(cfg.layout.spooldir)
    return cfg


def spool(cfg, *rcpts):
    w = SpoolWriter(cfg.layout.spooldir, 10_000)
    w.write(b"Subject: t\n\n" + ",".join(rcpts).encode() + b"\n")
    return w.commit(Envelope("s@x.test", tuple(Recipient(r) for r in rcpts), time.time()))


def run(cfg, until):
    async def main():
        sock = bind_queue_socket(cfg.layout.queue_socket, None)
        mgr = QueueManager(cfg)             # the real LocalClient
        task = asyncio.create_task(serve(mgr, sock))
        try:
            deadline = time.monotonic() + WAIT
            while not until() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            mgr.stop()
            await asyncio.wait_for(task, WAIT)
            sock.close()
    asyncio.run(main())


def test_one_local_recipient_goes_without_a_thread_and_maxdels_holds(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, maxdels=2)
    threaded = []
    real = queue_mod.process_message

    def counting(config, qid, *a, **k):
        threaded.append(qid)
        return real(config, qid, *a, **k)
    monkeypatch.setattr(queue_mod, "process_message", counting)
    fake = FakeCourierlocal(cfg.layout.local_socket, temp={"later@mx.test"})
    try:
        singles = [spool(cfg, f"u{i}@mx.test") for i in range(8)]
        pair = spool(cfg, "a@mx.test", "b@mx.test")          # two recipients: a thread
        later = spool(cfg, "later@mx.test")                   # TEMP: settled in a thread
        run(cfg, lambda: list_queue(cfg.layout.spooldir) == [later] and len(fake.seen) == 11)
    finally:
        fake.close()
    assert list_queue(cfg.layout.spooldir) == [later]
    assert read_envelope(cfg.layout.spooldir, later).recipients == (Recipient("later@mx.test"),)
    assert sorted(r for r, _ in fake.seen) == sorted(
        [f"u{i}@mx.test" for i in range(8)] + ["a@mx.test", "b@mx.test", "later@mx.test"])
    assert all(body.startswith(b"Subject: t") for _, body in fake.seen)
    assert fake.max <= 2                                       # MAXDELS, loop and threads
    assert threaded == [pair]                                  # only the pair took a thread
    assert not set(singles) & set(threaded)


def _lines(*rcpts):
    return [format_request(DeliverRequest("s@x", r)) for r in rcpts]


def test_request_batch_async_reuses_and_replaces_connections(tmp_path):
    path = tmp_path / "local.sock"
    fake = FakeCourierlocal(path, temp={"t@x"}, delay=0, close_after=3)
    data = tmp_path / "m.dat"
    data.write_bytes(b"Subject: x\n\nbody\n")
    client = LocalClient(timeout=WAIT)

    async def main():
        out = []
        with open(data, "rb") as fh:
            for rcpts in (("a@x", "b@x"), ("t@x",), ("c@x", "d@x")):
                out += await client.request_batch_async(path, _lines(*rcpts),
                                                        [fh.fileno()] * len(rcpts))
        return out
    try:
        replies = asyncio.run(main())
    finally:
        client.close()
        fake.close()
    assert [r.status for r in replies] == [Status.OK, Status.OK, Status.TEMP, Status.OK,
                                           Status.OK]
    # Three requests per connection, then the fake closed it: the kept connection
    # that turned out closed was replaced and the batch sent again.
    assert fake.connections == 2
    assert [r for r, _ in fake.seen] == ["a@x", "b@x", "t@x", "c@x", "d@x"]


def test_request_batch_async_cut_short_is_temporary_for_the_rest(tmp_path):
    # The connection closes after two replies of a batch of three: those two
    # stand, the third is TEMP (not sent again: its delivery may have run).
    path = tmp_path / "local.sock"
    fake = FakeCourierlocal(path, delay=0, close_after=2)
    data = tmp_path / "m.dat"
    data.write_bytes(b"Subject: x\n\nbody\n")
    client = LocalClient(timeout=WAIT)

    async def main():
        with open(data, "rb") as fh:
            return await client.request_batch_async(path, _lines("a@x", "b@x", "c@x"),
                                                    [fh.fileno()] * 3)
    try:
        replies = asyncio.run(main())
    finally:
        client.close()
        fake.close()
    assert [r.status for r in replies] == [Status.OK, Status.OK, Status.TEMP]
    assert fake.connections == 1


def test_request_batch_async_without_courierlocal_is_temporary(tmp_path):
    client = LocalClient(timeout=WAIT)
    replies = asyncio.run(client.request_batch_async(tmp_path / "none.sock", _lines("a@x"),
                                                     [0]))
    assert len(replies) == 1
    assert replies[0].status is Status.TEMP and "not running" in replies[0].text


@pytest.mark.parametrize("streams", [1, 2])
def test_local_batches_gather_one_accounts_messages_under_one_slot(tmp_path, streams):
    # While the first request for a@x is with a slow courierlocal, the next ones
    # for a@x wait and then go together on one connection; b@x goes beside it.
    # With two streams, the other three go at once on a second connection.
    path = tmp_path / "local.sock"
    fake = FakeCourierlocal(path, delay=0.3)
    data = tmp_path / "m.dat"
    data.write_bytes(b"Subject: x\n\nbody\n")
    client = LocalClient(timeout=WAIT)
    held = []

    async def main():
        sem = asyncio.Semaphore(4)

        async def slot():
            await sem.acquire()
            held.append(1)
            return sem.release
        batches = LocalBatches(client, slot, streams=streams)
        with open(data, "rb") as fh:
            first = asyncio.create_task(batches.request(path, fh.fileno(), "s@x", "a@x"))
            await asyncio.sleep(0.1)        # the first is being delivered
            rest = [asyncio.create_task(batches.request(path, fh.fileno(), "s@x", r))
                    for r in ("a@x", "a@x", "A@x", "b@x")]
            await asyncio.sleep(0)          # they are all queued before any answer
            return await asyncio.gather(first, *rest)
    try:
        replies = asyncio.run(main())
    finally:
        client.close()
        fake.close()
    assert [r.status for r in replies] == [Status.OK] * 5
    assert sorted(r for r, _ in fake.seen) == ["A@x", "a@x", "a@x", "a@x", "b@x"]
    if streams == 1:
        assert len(held) == 3       # a@x alone, then a@x's three together, and b@x
        assert fake.connections == 2    # a@x's batches one after the other on one
    else:
        assert len(held) == 3       # a@x, the other three beside it at once, and b@x
        assert fake.connections == 3    # a@x's second batch on a second connection


def test_stopping_with_a_kept_notice_connection_open_is_quick_and_quiet(tmp_path, caplog):
    # spool.notify keeps its connection: courierd stopping under it closes it at
    # once (not after its 10 s idle timeout: `courier stop` kills after 10 s)
    # and does not log the cancelled notice handler as an error.
    cfg = make_cfg(tmp_path)
    fake = FakeCourierlocal(cfg.layout.local_socket)
    stop_took = []
    try:
        qid = spool(cfg, "a@mx.test")

        async def main():
            sock = bind_queue_socket(cfg.layout.queue_socket, None)
            mgr = QueueManager(cfg)
            task = asyncio.create_task(serve(mgr, sock))
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(str(cfg.layout.queue_socket))
            conn.sendall(f"NEW {qid}\n".encode())
            deadline = time.monotonic() + WAIT
            while ((list_queue(cfg.layout.spooldir) or not mgr._notices)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.02)
            assert mgr._notices                 # the connection is open and served
            mgr.stop()
            await asyncio.wait_for(task, WAIT)
            sock.close()
            return conn
        with caplog.at_level("ERROR", logger="asyncio"):
            t0 = time.monotonic()
            conn = asyncio.run(main())
            stop_took.append(time.monotonic() - t0)
        conn.settimeout(WAIT)
        assert conn.recv(10) == b""             # courierd closed it
        conn.close()
    finally:
        fake.close()
    assert list_queue(cfg.layout.spooldir) == []
    assert stop_took[0] < queue_mod.NOTICE_TIMEOUT / 2
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_delivered_messages_are_settled_off_the_loop_many_per_hop(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, maxdels=8)        # 8 in hand: they go as one batch
    hops: list[tuple[int, bool]] = []           # (messages, in the loop's thread?)
    real = queue_mod._conclude_all
    loop_thread = threading.get_ident()

    def counting(work, clock):
        hops.append((len(work), threading.get_ident() == loop_thread))
        return real(work, clock)
    monkeypatch.setattr(queue_mod, "_conclude_all", counting)
    fake = FakeCourierlocal(cfg.layout.local_socket, delay=0.02)
    try:
        qids = [spool(cfg, "same@mx.test") for _ in range(12)]
        run(cfg, lambda: list_queue(cfg.layout.spooldir) == [])
    finally:
        fake.close()
    assert list_queue(cfg.layout.spooldir) == [] and len(qids) == 12
    assert sum(n for n, _ in hops) == 12
    assert not any(in_loop for _, in_loop in hops)
    assert len(hops) < 12                       # the replies of a batch settle together
