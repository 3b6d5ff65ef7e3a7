"""Listener pieces that run in-process: address display, binding, Connection I/O."""

from __future__ import annotations

import socket

import pytest

from libcourier.tcpd.connection import Connection, plain_ip
from libcourier.tcpd.listener import bind_addresses


@pytest.mark.parametrize("raw, shown", [
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("::1", "::1"),
    ("garbage", "garbage"),
])
def test_plain_ip(raw, shown):
    assert plain_ip(raw) == shown


def test_bind_addresses_listens_and_cleans_up_on_failure():
    socks = bind_addresses((("127.0.0.1", 0),))
    try:
        assert len(socks) == 1 and not socks[0].getblocking()
        port = socks[0].getsockname()[1]
        # The second address is taken: the first one bound must be closed again.
        with pytest.raises(OSError):
            bind_addresses((("127.0.0.2", 0), ("127.0.0.1", port)))
    finally:
        for s in socks:
            s.close()


def test_connection_io_and_eof():
    a, b = socket.socketpair()
    conn = Connection(a, "192.0.2.7", 1234, "192.0.2.1", 143, False, {})
    conn.sendall(b"* OK ready\r\n")
    assert b.recv(100) == b"* OK ready\r\n"
    b.sendall(b"a1 NOOP\r\n")
    assert conn.recv() == b"a1 NOOP\r\n"
    b.close()
    assert conn.recv() == b""
    conn.close()
    conn.close()   # twice is harmless
