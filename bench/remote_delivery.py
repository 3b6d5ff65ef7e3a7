#!/usr/bin/env python3
"""Remote delivery throughput: N messages queued on a fresh courier-py instance,
delivered by courierd over SMTP to a receiving server on loopback.

    .venv/bin/python bench/remote_delivery.py [-n 500] [--size 4096] [--maxdels N]

The receiver is a minimal asyncio SMTP server in this process (PIPELINING,
8BITMIME, SIZE; it counts messages and keeps nothing), reached through an
esmtproutes line (`remote.bench: 127.0.0.1,PORT`), so DNS is not measured.
The clock runs from the first message spooled to the last one accepted by the
receiver with the queue empty. With --prequeue the messages are spooled while
courierd is stopped and the clock runs from `courier start` (so it measures
the queue run alone, start-up included). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libcourier.layout import load_layout  # noqa: E402
from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify  # noqa: E402

WAIT = 600.0


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.sessions = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(b"220 bench ESMTP\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                 b"250 SIZE 100000000\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.count += 1
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(10)


def free_base() -> int:
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 1000) + rng.randrange(0, 500)
        try:
            for off in (25, 110, 143, 465, 587, 993, 995):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def courier(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "libcourier.control", *args], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--maxdels", type=int, default=0, help="courierd MAXDELS (0: default)")
    ap.add_argument("--prequeue", action="store_true",
                    help="spool everything first, then start courierd and time the queue run")
    args = ap.parse_args()
    rx = Receiver()
    rx.start()
    tmp = Path(tempfile.mkdtemp(prefix="courier-bench-remote-", dir="/tmp"))
    os.chmod(tmp, 0o755)
    inst = tmp / "inst"
    etc = inst / "etc"
    try:
        courier("init", str(inst), "--port-base", str(free_base()), "--hostname", "bench.test")
        (etc / "esmtproutes").write_text(f"remote.bench: 127.0.0.1,{rx.port}\n")
        if args.maxdels:
            with open(etc / "courierd", "a") as fh:
                fh.write(f"MAXDELS={args.maxdels}\n")
        courier("start", "-C", str(etc), "courierd")
        lay = load_layout(etc)
        body = (b"From: bench@bench.test\nSubject: bench\n\n"
                + (b"x" * 75 + b"\n") * max(1, args.size // 76))
        if args.prequeue:
            courier("stop", "-C", str(etc))
        t0 = time.monotonic()
        for i in range(args.n):
            w = SpoolWriter(lay.spooldir, 0)
            w.write(body)
            qid = w.commit(Envelope("bench@bench.test", (Recipient(f"u{i}@remote.bench"),),
                                    time.time()))
            if not args.prequeue:
                notify(lay.queue_socket, qid)
        t_spooled = time.monotonic() - t0
        if args.prequeue:
            t0 = time.monotonic()
            courier("start", "-C", str(etc), "courierd")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if rx.count >= args.n and not list_queue(lay.spooldir):
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        ok = rx.count >= args.n
        print(json.dumps({"bench": "remote-delivery", "prequeue": args.prequeue,
                          "messages": args.n,
                          "size": len(body), "delivered": rx.count,
                          "sessions": rx.sessions, "seconds": round(elapsed, 2),
                          "spool_seconds": round(t_spooled, 2),
                          "per_second": round(rx.count / elapsed, 1), "complete": ok}))
        return 0 if ok else 1
    finally:
        subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C", str(etc)],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
