"""A tiny line-echo daemon on libcourier.tcpd.serve, for tests/integration/test_tcpd_*.py.

Usage: python3 tcpd_echo_server.py CONFIG.json. The JSON is re-read on every
load(), so a test changes it and sends SIGHUP to see a reload take effect.
Commands (one a line): ECHO text | ENV NAME | STARTTLS | RAISE | WHOAMI | PID |
STUBBORN (ignore SIGTERM) | SLEEP blob (hibernate: hand the connection and the blob
to the listener, with "hibernate" set in the config) | QUIT. A resumed connection is
greeted with "+OK resumed <blob> uid=<uid>".
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from libcourier import log
from libcourier.config.errors import ConfigError
from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer
from libcourier.tcpd import Connection, ListenerSpec, serve, server_context
from libcourier.tcpd.listener import hibernate

CONFIG = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tcpd.json")


def load():
    try:
        cfg = json.loads(CONFIG.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"bad test config: {exc}", str(CONFIG)) from None
    if cfg.get("fail"):
        raise ConfigError("asked to fail", str(CONFIG), 1)
    tls = server_context(cfg["cert"]) if cfg.get("cert") else None
    spec = ListenerSpec(
        name="echod",
        addresses=tuple((h, p) for h, p in cfg["addresses"]),
        maxdaemons=cfg.get("maxdaemons", 40),
        maxperip=cfg.get("maxperip", 4),
        access_file=Path(cfg["access"]) if cfg.get("access") else None,
        tls_context=tls if cfg.get("tls_on_connect") else None,
        busy_reply=cfg.get("busy", "-ERR busy\r\n").encode(),
        deny_reply=cfg.get("deny", "-ERR denied\r\n").encode(),
        pidfile=Path(cfg["pidfile"]) if cfg.get("pidfile") else None,
        grace_seconds=cfg.get("grace", 2.0),
        child_user=tuple(cfg["child_user"]) if cfg.get("child_user") else None,
        timeout=cfg.get("timeout", 30.0),
        reuse=cfg.get("reuse", 0),
        hibernate_socket=Path(cfg["hibernate"]) if cfg.get("hibernate") else None,
        hibernate_linger=cfg.get("linger", 60.0),
        hibernate_bye=b"* BYE asleep too long\r\n",
    )
    greeting = cfg.get("greeting", "+OK echod").encode()

    def handler(conn: Connection) -> None:
        if conn.resumed is not None:
            conn.sendall(b"+OK resumed " + conn.resumed.blob +
                         f" uid={conn.resumed.uid}\r\n".encode())
        else:
            conn.sendall(greeting + f" [{conn.peer_ip}] tls={int(conn.tls)}\r\n".encode())
        buf = ReceiveBuffer(1000)
        while True:
            try:
                line = buf.next_line()
            except LineTooLong:
                conn.sendall(b"-ERR line too long\r\n")
                continue
            if line is NEED_DATA:
                data = conn.recv()
                if not data:
                    return
                buf.feed(data)
                continue
            cmd, _, arg = line.rstrip(b"\r\n").decode("ascii", "replace").partition(" ")
            match cmd.upper():
                case "ECHO":
                    conn.sendall(f"+OK {arg}\r\n".encode())
                case "ENV":
                    conn.sendall(f"+OK {conn.env.get(arg, '(unset)')}\r\n".encode())
                case "PID":
                    conn.sendall(f"+OK {os.getpid()}\r\n".encode())
                case "WHOAMI":
                    conn.sendall(f"+OK {os.getuid()} {os.getgid()}\r\n".encode())
                case "STARTTLS":
                    conn.sendall(b"+OK begin TLS\r\n")
                    assert tls is not None
                    conn.starttls(tls)
                    buf = ReceiveBuffer(1000)
                case "RAISE":
                    raise RuntimeError("asked to raise")
                case "STUBBORN":
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    conn.sendall(b"+OK ignoring SIGTERM\r\n")
                case "SLEEP":
                    if conn.hibernate is not None and not len(buf) and \
                            hibernate(conn.hibernate, conn.sock, arg.encode()):
                        return
                    conn.sendall(b"-ERR cannot sleep\r\n")
                case "QUIT":
                    conn.sendall(b"+OK bye\r\n")
                    return
                case _:
                    conn.sendall(b"-ERR unknown\r\n")

    return spec, handler


def main() -> int:
    log.setup("echod", foreground=True, debug=True)
    try:
        return serve(load)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
