"""The listener's side of hibernation (libcourier.tcpd.listener, ListenerSpec.hibernate_socket)
with the echo daemon: a child hands its connection and a blob over and exits; the
listener holds them (still counted for MAXPERIP), forks a child with the blob when
the client speaks, closes on hangup, says hibernate_bye after hibernate_linger,
ends them at stop, and ignores what a process that is not its child sends."""

from __future__ import annotations

import os
import socket
import struct

from tests.integration.test_tcpd_listener import chat, readline, server_factory, wait_for  # noqa: F401

WAIT = 20.0


def start(server_factory, tmp_path, **cfg):  # noqa: F811
    return server_factory(hibernate=str(tmp_path / "echod.hibernate"), **cfg)


def asleep(srv, sock: socket.socket, blob: bytes) -> int:
    """SLEEP the session on sock; the pid of the child that served it (now gone)."""
    pid = int(chat(sock, b"PID").split()[1])
    sock.sendall(b"SLEEP " + blob + b"\r\n")
    wait_for(lambda: pid not in [c.pid for c in srv.children()], WAIT, "the child to exit")
    return pid


def test_sleep_and_resume_in_a_new_child(server_factory, tmp_path) -> None:  # noqa: F811
    srv = start(server_factory, tmp_path)
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK echod")
        first = asleep(srv, s, b"state-1")
        s.sendall(b"ECHO again\r\n")
        assert readline(s) == b"+OK resumed state-1 uid=%d\r\n" % os.getuid()
        assert readline(s) == b"+OK again\r\n"
        assert int(chat(s, b"PID").split()[1]) != first
        assert chat(s, b"ENV TCPREMOTEIP") == b"+OK 127.0.0.1\r\n"
        # And again, from the resumed child.
        asleep(srv, s, b"state-2")
        assert chat(s, b"ECHO x") == b"+OK resumed state-2 uid=%d\r\n" % os.getuid()
        assert readline(s) == b"+OK x\r\n"
    assert srv.stop() == 0


def test_sleeping_connection_counts_for_maxperip_until_hangup(server_factory, tmp_path) -> None:  # noqa: F811
    srv = start(server_factory, tmp_path, maxperip=1, busy="-ERR busy\r\n")
    s = srv.connect()
    assert readline(s).startswith(b"+OK echod")
    asleep(srv, s, b"x")
    with srv.connect() as t:
        assert readline(t) == b"-ERR busy\r\n"
    s.close()                  # the listener sees the hangup and frees the slot

    def admitted() -> bool:
        with srv.connect() as t:
            return readline(t).startswith(b"+OK echod")
    wait_for(admitted, WAIT, "the slot of the closed sleeping connection")
    assert srv.stop() == 0


def test_linger_says_bye_and_closes(server_factory, tmp_path) -> None:  # noqa: F811
    srv = start(server_factory, tmp_path, linger=1.0)
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK echod")
        asleep(srv, s, b"x")
        s.settimeout(WAIT)
        assert readline(s) == b"* BYE asleep too long\r\n"
        assert s.recv(10) == b""
    assert srv.stop() == 0


def test_stop_closes_sleeping_connections_and_the_socket(server_factory, tmp_path) -> None:  # noqa: F811
    srv = start(server_factory, tmp_path)
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK echod")
        asleep(srv, s, b"x")
        assert srv.stop() == 0
        s.settimeout(WAIT)
        assert s.recv(10) == b""
    assert not (tmp_path / "echod.hibernate").exists()


def test_a_stranger_cannot_hand_over_a_socket(server_factory, tmp_path) -> None:  # noqa: F811
    srv = start(server_factory, tmp_path)
    a, b = socket.socketpair()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as h, a, b:
        h.connect(str(tmp_path / "echod.hibernate"))
        h.sendmsg([b"blob"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               struct.pack("i", a.fileno()))])
        h.sendmsg([b"no descriptor"])
        a.close()
        b.settimeout(WAIT)
        assert b.recv(10) == b""          # the listener closed what it was given
    wait_for(lambda: "not a session of this listener" in srv.log(), WAIT, "the refusal")
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK echod")
        assert chat(s, b"ECHO fine") == b"+OK fine\r\n"
    assert srv.stop() == 0


def test_no_hibernation_socket_no_sleep(server_factory) -> None:  # noqa: F811
    srv = server_factory()
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK echod")
        assert chat(s, b"SLEEP x") == b"-ERR cannot sleep\r\n"
        assert chat(s, b"ECHO still") == b"+OK still\r\n"
    assert srv.stop() == 0


def test_many_sleep_at_once_and_all_wake(server_factory, tmp_path) -> None:  # noqa: F811
    """Children exiting right after their message, many at a time: none is reaped
    before its message is taken (which would drop its client)."""
    srv = start(server_factory, tmp_path, maxdaemons=200, maxperip=200)
    socks = [srv.connect() for _ in range(60)]
    try:
        for s in socks:
            assert readline(s).startswith(b"+OK echod")
        for i, s in enumerate(socks):
            s.sendall(b"SLEEP n%d\r\n" % i)
        wait_for(lambda: not srv.children(), WAIT, "every child to exit")
        for i, s in enumerate(socks):
            s.settimeout(WAIT)
            assert chat(s, b"ECHO hi") == b"+OK resumed n%d uid=%d\r\n" % (i, os.getuid())
            assert readline(s) == b"+OK hi\r\n"
        assert "refused" not in srv.log()
    finally:
        for s in socks:
            s.close()
    assert srv.stop() == 0
