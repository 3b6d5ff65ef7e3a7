"""esmtpd's lingering close: after its 421 (or 221) the session half-closes and drains
what the client still sends, for a bounded time and size, before the listener closes
the socket; a plain close with unread input would be a TCP reset that can lose the
421. Driven over a real loopback TCP connection (a socketpair never resets)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from courier_smtpd import session as session_mod
from courier_smtpd.config import load_config
from courier_smtpd.core import AcceptAll
from courier_smtpd.session import Session

from libcourier import spool
from libcourier.tcpd.connection import Connection

BAD = b"BOGUS garbage\r\n"


def _tcp_session(tmp_path: Path) -> tuple[Session, socket.socket]:
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "esmtpd").write_text("PORT=2525\nADDRESS=127.0.0.1\nTARPIT=0\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    spooldir = tmp_path / "spool"
    spool.ensure_spool(spooldir)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname(), timeout=10)
        server, _ = lsock.accept()
    server.settimeout(10)
    conn = Connection(server, "127.0.0.1", 4000, "127.0.0.1", 25, False, {})
    return Session(conn, cfg, spooldir, tmp_path / "no-courierd.sock", AcceptAll(), None,
                   sleep=lambda s: None), client


def _run(sess: Session) -> threading.Thread:
    def serve() -> None:
        try:
            sess.run()
        finally:
            sess.conn.close()         # what the listener does after the handler
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_421_then_eof_for_a_client_that_keeps_pipelining(tmp_path: Path) -> None:
    sess, client = _tcp_session(tmp_path)
    t = _run(sess)
    # 20 errors close the session; far more than one recv's worth follows them, so
    # input is unread when the 421 goes out.
    client.sendall(b"EHLO c.example\r\n" + BAD * 20000)
    out = b""
    while chunk := client.recv(65536):      # a reset would raise here
        out += chunk
    client.close()
    t.join(10)
    assert not t.is_alive()
    assert out.endswith(b"421 4.7.0 mx.example.com Too many errors, closing connection.\r\n")


def test_linger_is_bounded_for_a_client_that_never_closes(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(session_mod, "LINGER_SECONDS", 0.5)
    sess, client = _tcp_session(tmp_path)
    t = _run(sess)
    started = time.monotonic()
    client.sendall(b"EHLO c.example\r\nQUIT\r\n")
    out = b""
    while chunk := client.recv(65536):      # our EOF comes at once, after the 221
        out += chunk
    assert out.endswith(b"221 2.0.0 mx.example.com closing connection.\r\n")
    # The client neither sends nor closes: the session still ends after the bound.
    t.join(10)
    assert not t.is_alive()
    assert 0.4 <= time.monotonic() - started < 5
    client.close()


def test_linger_stops_at_its_octet_bound(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(session_mod, "LINGER_SECONDS", 30.0)
    monkeypatch.setattr(session_mod, "LINGER_OCTETS", 100_000)
    sess, client = _tcp_session(tmp_path)
    t = _run(sess)
    client.sendall(b"QUIT\r\n")
    f = client.makefile("rb")
    assert f.readline().startswith(b"220 ") and f.readline().startswith(b"221 ")
    sent = 0
    client.settimeout(10)
    try:
        while t.is_alive() and sent < 50_000_000:
            sent += client.send(b"x" * 65536)
    except OSError:
        pass        # reset once the session closed: what the bound allows
    t.join(10)
    assert not t.is_alive()
    f.close()
    client.close()
