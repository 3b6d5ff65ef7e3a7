"""The listener's deadline heap (libcourier.tcpd.listener, _Listener.wake_heap) stays
bounded by what it holds: a woken sleeper's entry is only skipped, not removed, and
it keeps the sleeper's blob alive until its deadline (hibernate_linger, up to the
rest of IMAP's 30-minute autologout), so a client that wakes its session every few
seconds must not pile up entries (and blobs) until they expire."""

from __future__ import annotations

import socket

from libcourier.tcpd.connection import ListenerSpec
from libcourier.tcpd.listener import _Listener


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname())
        server, _addr = lsock.accept()
    return client, server


def test_woken_sleepers_do_not_pile_up_in_the_heap() -> None:
    spec = ListenerSpec(name="t", addresses=(), hibernate_linger=1800.0)
    lst = _Listener(lambda: (spec, lambda conn: None), spec, lambda conn: None, None)
    client, server = _loopback_pair()
    try:
        for pid in range(1, 2001):        # sleep, wake (as wake() does), sleep again...
            lst.children[pid] = "127.0.0.1"
            assert lst._adopt(server, b"x" * 1000, 0, (pid, 0, 0))
            sleeper = lst.sleepers[server.fileno()]
            lst._forget(sleeper)
        assert not lst.sleepers
        assert len(lst.wake_heap) <= 2 * 64
        assert lst._next_deadline() is None
        # A live entry survives every compaction, and is due first.
        lst.children[1] = "127.0.0.1"
        assert lst._adopt(server, b"live", 0, (1, 0, 0))
        for pid in range(2, 500):
            other_client, other = _loopback_pair()
            with other_client, other:
                lst.children[pid] = "127.0.0.1"
                assert lst._adopt(other, b"y", 0, (pid, 0, 0))
                lst._forget(lst.sleepers[other.fileno()])
        assert lst.sleepers[server.fileno()].blob == b"live"
        assert any(item is lst.sleepers[server.fileno()] for _d, _fd, item in lst.wake_heap)
        assert lst._next_deadline() == lst.sleepers[server.fileno()].deadline
        assert len(lst.wake_heap) <= 2 * 64
    finally:
        client.close()
        server.close()
