"""The Received: line esmtpd writes per message is made once per second and session
state and reused: each message still gets the line its own second and state call
for (HELO name, date). Driven over a socketpair with a set clock."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from courier_smtpd.config import load_config
from courier_smtpd.core import AcceptAll
from courier_smtpd.session import Session

from libcourier import spool
from libcourier.tcpd.connection import Connection


def _received_lines(tmp_path: Path, script: list[tuple[float, bytes]]) -> list[bytes]:
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "esmtpd").write_text("PORT=2525\nADDRESS=127.0.0.1\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    spooldir = tmp_path / "spool"
    spool.ensure_spool(spooldir)
    server, client = socket.socketpair()
    server.settimeout(10)
    client.settimeout(10)
    now = [0.0]
    conn = Connection(server, "192.0.2.9", 4000, "192.0.2.1", 25, False, {})
    sess = Session(conn, cfg, spooldir, tmp_path / "no-courierd.sock", AcceptAll(), None,
                   clock=lambda: now[0], sleep=lambda s: None)
    sess._rdns = None                        # no reverse lookup of a test address
    t = threading.Thread(target=sess.run, daemon=True)
    t.start()
    f = client.makefile("rwb")
    assert f.readline().startswith(b"220 ")
    qids: list[str] = []
    for when, helo in script:
        now[0] = when
        for line in (b"HELO " + helo, b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@d.example>",
                     b"DATA", b"Subject: x\r\n\r\ny\r\n."):
            f.write(line + b"\r\n")
            f.flush()
            reply = f.readline()
            assert reply[:1] in (b"2", b"3"), reply
        qids.append(reply.split()[-1].decode())
    f.write(b"QUIT\r\n")
    f.flush()
    f.readline()
    client.shutdown(socket.SHUT_WR)
    t.join(10)
    assert not t.is_alive()
    out = []
    for qid in qids:
        with spool.open_data(spooldir, qid) as fh:
            data = fh.read()
        out.append(data[:data.index(b"\n", data.index(b";"))])    # from ... by ...; date
    return out


def test_received_line_follows_the_second_and_the_helo(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    lines = _received_lines(tmp_path, [(t0 + 0.2, b"one.example"), (t0 + 0.7, b"one.example"),
                                       (t0 + 1.1, b"one.example"), (t0 + 1.3, b"two.example")])
    assert lines[0] == lines[1]                       # same second, same state: reused
    assert lines[1] != lines[2]                       # the next second: a new date
    date = lines[2].rpartition(b"; ")[2]
    assert lines[3].rpartition(b"; ")[2] == date      # same second ...
    assert b"from one.example " in lines[2] and b"from two.example " in lines[3]  # ... new HELO
    s0, s1 = (int(x.rpartition(b"; ")[2].split()[4].split(b":")[2]) for x in lines[1:3])
    assert (s1 - s0) % 60 == 1
