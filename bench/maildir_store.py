#!/usr/bin/env python3
"""The Maildir store at size (issue 3 benchmark): one folder of N messages written by
../shared/bench/mailbench.py imap-populate, then, cold (no courierimapuiddb, no
courierpyindex) and warm (second run), the time our IMAP session takes for

    SELECT, UID FETCH 1:* (FLAGS), FETCH 1:* (ENVELOPE), FETCH 1:* (BODYSTRUCTURE)

and the peak RSS of the session process; and the same commands by Courier-IMAP's own
imapd (pre-authenticated on stdin, no network, as tests/integration/test_maildir_courier
runs it) on a copy of the same folder, when its binary is unpacked. The session runs
in a forked child on a socketpair: no TCP, TLS or login in the figures, and the same
for Courier (pipes). Prints one JSON line.

    .venv/bin/python bench/maildir_store.py --count 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve()
MAILBENCH = Path(os.environ.get("MAILBENCH", HERE.parents[2] / "shared" / "bench" / "mailbench.py"))
COURIER = Path(os.environ.get("COURIER_IMAPD", "/var/tmp/mail-anchors/courier/usr/bin/imapd"))
COMMANDS = [("select", b"SELECT INBOX"), ("uid_flags", b"UID FETCH 1:* (FLAGS)"),
            ("envelope", b"FETCH 1:* (ENVELOPE)"), ("bodystructure", b"FETCH 1:* (BODYSTRUCTURE)")]
TIMEOUT = 1800.0


class Pair:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_ip, self.peer_port, self.tls = "127.0.0.1", 1, False

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        return self.sock.recv(n)

    def starttls(self, ctx) -> None:
        raise OSError("no TLS")


def serve(sock: socket.socket, root: Path, etc: Path) -> None:
    from courier_imapd import login
    from courier_imapd.config import load_config
    from courier_imapd.core import ImapConnection
    from courier_imapd.session import Session
    cfg, _ = load_config(etc, "imapd")
    conn, core, counters = Pair(sock), ImapConnection(), login.Counters()
    ok = login.prelogin(conn, core, cfg, lambda u, p, ip: SimpleNamespace(options={}),
                        None, counters, sleep=lambda s: None)
    if ok:
        login.send(conn, f"{ok.tag} OK LOGIN Ok.\r\n".encode(), counters)
        Session(conn, core, root, cfg, ok.user, counters).run()


def until_tag(read, tag: bytes, deadline: float) -> int:
    """Read until the tagged reply; bytes read."""
    buf = b""
    total = 0
    while time.monotonic() < deadline:
        chunk = read()
        if not chunk:
            raise EOFError("server closed")
        total += len(chunk)
        buf = (buf + chunk)[-4096:]
        i = buf.rfind(b"\r\n" + tag + b" ")
        if i >= 0 and buf.endswith(b"\r\n") and buf.find(b"\r\n", i + 2) == len(buf) - 2:
            return total
    raise TimeoutError(tag)


def ours(root: Path, etc: Path) -> dict:
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        code = 0
        try:
            serve(b, root, etc)
        except BaseException:
            code = 1
        os._exit(code)
    b.close()
    a.settimeout(TIMEOUT)
    out: dict = {}
    deadline = time.monotonic() + TIMEOUT
    a.sendall(b"a LOGIN bench pw\r\n")
    until_tag(lambda: a.recv(1 << 20), b"a", deadline)
    for i, (name, cmd) in enumerate(COMMANDS):
        tag = b"t%d" % i
        t0 = time.monotonic()
        a.sendall(tag + b" " + cmd + b"\r\n")
        n = until_tag(lambda: a.recv(1 << 20), tag, deadline)
        out[name + "_s"] = round(time.monotonic() - t0, 3)
        out[name + "_bytes"] = n
    a.sendall(b"z LOGOUT\r\n")
    until_tag(lambda: a.recv(1 << 20), b"z", deadline)
    a.close()
    _, status, ru = os.wait4(pid, 0)
    out["maxrss_mb"] = round(ru.ru_maxrss / 1024, 1)
    out["exit"] = status
    return out


def courier(root: Path) -> dict:
    env = {"AUTHENTICATED": "bench", "HOME": str(root.parent), "IMAP_KEYWORDS": "1",
           "PATH": "/usr/bin:/bin"}
    p = subprocess.Popen([str(COURIER), str(root)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdin is not None and p.stdout is not None
    fd = p.stdout.fileno()
    deadline = time.monotonic() + TIMEOUT
    out: dict = {}
    os.read(fd, 4096)   # * PREAUTH
    for i, (name, cmd) in enumerate(COMMANDS):
        tag = b"t%d" % i
        t0 = time.monotonic()
        p.stdin.write(tag + b" " + cmd + b"\r\n")
        p.stdin.flush()
        n = until_tag(lambda: os.read(fd, 1 << 20), tag, deadline)
        out[name + "_s"] = round(time.monotonic() - t0, 3)
        out[name + "_bytes"] = n
    p.stdin.write(b"z LOGOUT\r\n")
    p.stdin.close()
    _, _, ru = os.wait4(p.pid, 0)
    p.returncode = 0
    out["maxrss_mb"] = round(ru.ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--dir", help="work directory (default: a new temporary one, removed)")
    args = ap.parse_args(argv)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="maildir-bench-"))
    try:
        home = work / "home"
        (home / "etc").mkdir(parents=True, exist_ok=True)
        (home / "etc" / "imapd").write_text("PORT=143\n")
        md = home / "Maildir"
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(MAILBENCH), "imap-populate", "--maildir", str(md),
                        "--count", str(args.count), "--fresh", "--no-sync"], check=True, stdout=subprocess.DEVNULL,
                       timeout=TIMEOUT)
        populate = round(time.monotonic() - t0, 1)
        copy = None
        if os.access(COURIER, os.X_OK):
            copy = work / "courier" / "Maildir"
            shutil.copytree(md, copy, symlinks=True)
        res: dict = {"count": args.count, "populate_s": populate}
        res["ours_cold"] = ours(md, home / "etc")
        res["ours_warm"] = ours(md, home / "etc")
        res["index_mb"] = round(os.path.getsize(md / "courierpyindex") / 1e6, 1) \
            if (md / "courierpyindex").exists() else None
        if copy is not None:
            res["courier_cold"] = courier(copy)
            res["courier_warm"] = courier(copy)
        print(json.dumps(res))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
