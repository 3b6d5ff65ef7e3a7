"""TARPIT (Courier's teergrube) in the esmtpd driver: after each 5xx the session
stalls 8 s, then 16, 32 ... 128; a delivered message starts over; relay clients
and TARPIT=0 are never slowed. Driven over a socketpair with a recording sleep."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from pathlib import Path

import pytest
from courier_smtpd.config import load_config
from courier_smtpd.core import AcceptAll
from courier_smtpd.session import Session

from libcourier import spool
from libcourier.tcpd.connection import Connection


def _session(tmp_path: Path, *, tarpit: bool, relayclient: bool = False):
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "esmtpd").write_text(f"PORT=2525\nADDRESS=127.0.0.1\nTARPIT={int(tarpit)}\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    spooldir = tmp_path / "spool"
    spool.ensure_spool(spooldir)
    server, client = socket.socketpair()
    server.settimeout(10)       # as the listener does: a stuck test ends, never hangs
    client.settimeout(10)
    conn = Connection(server, "192.0.2.9", 4000, "192.0.2.1", 25, False, {})
    sleeps: list[float] = []
    sess = Session(conn, cfg, spooldir, tmp_path / "no-courierd.sock", AcceptAll(), None,
                   sleep=sleeps.append, relayclient=relayclient)
    return sess, client, sleeps


def _talk(sess: Session, client: socket.socket, script: bytes) -> bytes:
    """Send the whole script, half-close; the session ends at EOF (the listener
    closes the socket after run(), so the test does it here)."""
    client.sendall(script)
    client.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=sess.run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()
    sess.conn.sock.close()
    out = b""
    while chunk := client.recv(65536):
        out += chunk
    return out


BAD = b"BOGUS\r\n"
MSG = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\ny\r\n.\r\n"


def test_one_stall_per_batch(tmp_path: Path) -> None:
    # Several errors in one batch of input are one stall (replies go out, then the wait).
    sess, client, sleeps = _session(tmp_path, tarpit=True)
    out = _talk(sess, client, b"EHLO c.example\r\n" + BAD + BAD)
    assert out.count(b"500 5.5.2") == 2 and sleeps == [8.0]


def test_tarpit_sequence_over_batches(tmp_path: Path) -> None:
    sess, client, sleeps = _session(tmp_path, tarpit=True)
    server_side = threading.Thread(target=sess.run, daemon=True)
    server_side.start()
    f = client.makefile("rwb")

    def cmd(line: bytes) -> bytes:
        f.write(line)
        f.flush()
        reply = b""
        while True:
            ln = f.readline()
            reply += ln
            if ln[3:4] != b"-":
                return reply

    def stalls(n: int) -> list[float]:
        # The stall comes just after the reply is flushed: wait for it to be recorded.
        deadline = time.monotonic() + 10
        while len(sleeps) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return sleeps

    assert f.readline().startswith(b"220")
    cmd(b"EHLO c.example\r\n")
    for i in range(6):
        assert cmd(BAD).startswith(b"500")
        stalls(i + 1)
    assert sleeps == [8.0, 16.0, 32.0, 64.0, 128.0, 128.0]
    for line in MSG.split(b"\r\n")[:3]:
        cmd(line + b"\r\n")
    assert cmd(b"Subject: x\r\n\r\ny\r\n.\r\n").startswith(b"250")
    assert cmd(BAD).startswith(b"500")
    assert stalls(7)[-1] == 8.0                   # a delivered message starts over
    cmd(b"QUIT\r\n")
    client.shutdown(socket.SHUT_WR)    # as a client does after 221: ends the lingering close
    server_side.join(10)
    assert not server_side.is_alive()


@pytest.mark.parametrize("relay, tarpit", [(True, True), (False, False)])
def test_no_tarpit_for_relay_clients_or_when_off(tmp_path: Path, relay: bool, tarpit: bool) -> None:
    sess, client, sleeps = _session(tmp_path, tarpit=tarpit, relayclient=relay)
    out = _talk(sess, client, b"EHLO c.example\r\n" + BAD * 3)
    assert out.count(b"500 5.5.2") == 3 and sleeps == []


def test_config_default_off(tmp_path: Path) -> None:
    (tmp_path / "esmtpd").write_text("PORT=2525\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    assert dataclasses.replace(cfg).tarpit is False
