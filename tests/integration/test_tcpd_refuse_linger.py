"""The listener's lingering close of refused clients (issue 7, bad input).

A refusal (MAXPERIP, MAXDAEMONS, access deny, ...) is answered by the listener
itself: reply, FIN, then the socket stays in its loop, what the client still sends
read and dropped until its EOF (at most LINGER_SECONDS and LINGER_LIMIT octets, at
most MAX_LINGERING sockets at once). Closing at once with unread input makes the
kernel answer RST; a client that pipelines on after connecting then gets EPIPE or
ECONNRESET on its next write and never reads why it was refused.

Real daemons (esmtpd, imapd through `courier start`; the echo daemon) on loopback.
"""

from __future__ import annotations

import functools
import resource
import select
import socket
import subprocess
import time

import psutil
import pytest

from libcourier.tcpd.connection import LINGER_SECONDS
from libcourier.tcpd.listener import MAX_LINGERING
from tests.integration.test_tcpd_listener import readline, server_factory, wait_for  # noqa: F401

IO_TIMEOUT = 30.0      # generous: the machine is shared
ROUNDS = 50


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def refused_talker(port: int, first: bytes, then: bytes | None, sndbuf: int = 0) -> bytes:
    """Connect and send `first` at once (an early talker); with `then`, send it once
    the listener has surely dealt with this connection, before reading anything (a
    client pipelining on); everything read until EOF. OSError (a reset) propagates."""
    with socket.socket() as s:
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.settimeout(IO_TIMEOUT)
        s.connect(("127.0.0.1", port))
        s.sendall(first)
        if then is not None:
            # A second refused connection, accepted after this one: once its reply
            # is here, the listener has answered (and, before the lingering close,
            # closed) this one; no timing guess.
            with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as probe:
                ready, _w, _x = select.select([probe], [], [], IO_TIMEOUT)
                assert ready, "no reply to a refused client"
                s.sendall(then)
                read_to_eof(probe)
        return read_to_eof(s)


def refusals(port: int, first: bytes, then: bytes | None, expect: bytes) -> dict[str, int]:
    """ROUNDS refused clients; how each ended ("ok": the whole reply, then EOF)."""
    seen: dict[str, int] = {}
    for _ in range(ROUNDS):
        try:
            got = refused_talker(port, first, then)
            how = "ok" if got == expect else f"got {got[:80]!r}"
        except OSError as exc:
            how = type(exc).__name__
        seen[how] = seen.get(how, 0) + 1
    return seen


SERVICES = {
    # service: (its config file, greeting start, busy reply, early command, next command)
    "esmtpd": ("smtp", b"220 ", b"421 4.7.0 Too many connections, try again later.\r\n",
               b"EHLO x\r\n", b"MAIL FROM:<a@example.com>\r\n"),
    "imapd": ("imap", b"* OK ", b"* BYE Too many connections, try again later\r\n",
              b"a1 LOGIN alice@example.com alice-secret\r\n", b"a2 SELECT INBOX\r\n"),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize("pipelining", [False, True], ids=["early", "pipelining"])
def test_over_maxperip_client_reads_the_reply_then_eof(new_instance, service, pipelining):
    """MAXPERIP=1 and one session held: an early talker (its command sent right
    after connecting) and one that goes on sending as the refusal arrives both read
    the whole reply, then EOF, ROUNDS times. Closed at once, the second got EPIPE in
    50 of 50 rounds here; the first never failed on Linux loopback (the reply and
    FIN arrive before the RST, and Linux keeps them readable), but may where the
    RST overtakes a lost segment: kept as the regression the issue names."""
    port_name, greeting, busy, first, then = SERVICES[service]
    inst = new_instance
    with open(inst.etc / service, "a") as f:
        f.write("MAXPERIP=1\n")
    inst.adduser("alice@example.com", "alice-secret")
    inst.start("authdaemond", service)
    port = inst.port(port_name)
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as held:
        assert readline(held).startswith(greeting)
        seen = refusals(port, first, then if pipelining else None, busy)
        assert seen == {"ok": ROUNDS}, seen


def test_deny_reaches_a_client_that_sent_half_a_megabyte(server_factory, tmp_path):  # noqa: F811
    """An access-file deny to a client that sends 512 KB (under LINGER_LIMIT, more
    than its 16 KB send buffer and our untouched receive buffer hold) before reading:
    all of it is taken, then the client reads the reply and EOF (closed at once with
    the rest unread, the client got EPIPE on every round)."""
    access = tmp_path / "access"
    access.write_text("127.0.0.1\tdeny\n")
    srv = server_factory(access=str(access), deny="554 5.7.1 Access denied.\r\n")
    blob = b"EHLO x\r\n" + b"x" * (512 * 1024)
    seen: dict[str, int] = {}
    for _ in range(10):
        try:
            got = refused_talker(srv.port, blob, None, sndbuf=16384)
            how = "ok" if got == b"554 5.7.1 Access denied.\r\n" else f"got {got[:80]!r}"
        except OSError as exc:
            how = type(exc).__name__
        seen[how] = seen.get(how, 0) + 1
    assert seen == {"ok": 10}, seen


def flood(srv, clients_n: int, bound: int) -> None:
    """clients_n refused clients that never close: each reads its reply and EOF at
    once; the listener holds at most `bound` of their sockets, closes them all at
    the deadline, and serves another address meanwhile."""
    listener = psutil.Process(srv.proc.pid)
    held = srv.connect()
    clients: list[socket.socket] = []
    try:
        assert readline(held).startswith(b"+OK echod")
        base = listener.num_fds()
        started = time.monotonic()
        most = 0
        for _ in range(clients_n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=IO_TIMEOUT)
            clients.append(s)
            if len(clients) % 10 == 0:
                most = max(most, listener.num_fds() - base)
        for s in clients:
            assert read_to_eof(s) == b"-ERR busy\r\n"
        flood = time.monotonic() - started
        most = max(most, listener.num_fds() - base)
        # (+1: a socket just accepted, not yet refused, when the count was taken)
        assert most <= bound + 1, most
        if flood < LINGER_SECONDS / 2:
            # Nothing reached its deadline yet: the bound itself was hit.
            assert most >= bound, (most, flood)
        # Meanwhile another address is served, by a child that holds no copy of the
        # lingering sockets (the listener's deadline alone must end them).
        with srv.connect(source="127.0.0.2") as other:
            assert readline(other).startswith(b"+OK echod [127.0.0.2]")
            other.sendall(b"PID\r\n")
            child = psutil.Process(int(readline(other).split()[1]))
            mine = [c for c in child.net_connections(kind="tcp") if c.raddr]
            assert [c.raddr[0] for c in mine] == ["127.0.0.2"], mine
        # The clients never sent EOF: the deadline closes every lingering socket.
        wait_for(lambda: listener.num_fds() <= base, LINGER_SECONDS + IO_TIMEOUT,
                 "the lingering sockets to be closed")
        assert srv.proc.poll() is None
    finally:
        for s in clients:
            s.close()
        held.close()
    assert srv.stop() == 0


def test_lingering_is_bounded_ends_at_the_deadline_and_blocks_nobody(server_factory):  # noqa: F811
    flood(server_factory(maxperip=1, busy="-ERR busy\r\n"), 300, MAX_LINGERING)


def test_lingering_bound_leaves_descriptors_for_sessions(server_factory, monkeypatch):  # noqa: F811
    """With RLIMIT_NOFILE at 80 the listener lingers on at most 20 refused sockets."""
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80))

    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen,
                                                               preexec_fn=low_limit))
    srv = server_factory(maxperip=1, busy="-ERR busy\r\n")
    monkeypatch.undo()
    assert psutil.Process(srv.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (80, 80)
    flood(srv, 60, 20)
