#!/usr/bin/env python3
"""The time one IMAP login takes at our imapd, with our authd behind it and with
Courier's authdaemond behind it (same userdb, same run): what the authentication
daemon adds to a login.

    .venv/bin/python bench/imap_login_latency.py [-n 200]

Makes two throw-away instances (`courier init`, the same user): A's imapd asks
our authd, B's asks Courier's authdaemond (B's userdb compiled by Courier's
makeuserdb, in a private mount namespace: tests/integration/courier_ns.py).
Measures `n` sequential connect + LOGIN + LOGOUT with imaplib on each, in
alternating rounds. Prints one JSON line per daemon: median and 90th percentile
milliseconds. Needs root.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from courier_ns import CourierAuthdaemond, skip_reason  # noqa: E402

USER, PASSWORD = "bench@example.com", "bench-secret"
MAX_N = 10_000


def courier(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "libcourier.control", *args], check=True,
                   capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def free_base() -> int:
    """A base whose instance ports are free for base and base+1000 (the two instances)."""
    for base in range(30000, 58000, 2000):
        try:
            for off in (25, 587, 465, 143, 993, 110, 995, 1025, 1587, 1465, 1143, 1993, 1110,
                        1995):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port base")


def measure(port: int, n: int) -> list[float]:
    """Milliseconds of each connect + LOGIN + LOGOUT."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        c.login(USER, PASSWORD)
        c.logout()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def make_instance(root: Path, base: int) -> Path:
    etc = root / "etc"
    courier("init", str(root), "--port-base", str(base), "--hostname", "mx.test")
    # Plain LOGIN on port 143 for the measurement (no TLS cost in the figure).
    with open(etc / "imapd", "a") as f:
        f.write("IMAP_TLS_REQUIRED=0\nIMAPDSTARTTLS=NO\n")
    courier("adduser", "-C", str(etc), USER, PASSWORD)
    return etc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    reason = skip_reason("/usr/lib/courier/courier-authlib/authdaemond", "/usr/sbin/makeuserdb")
    if reason:
        print(f"imap_login_latency: {reason}", file=sys.stderr)
        return 1
    n = max(1, min(args.n, MAX_N))
    rounds = max(1, min(args.rounds, 20))
    tmp = Path(tempfile.mkdtemp(prefix="imap-login-"))
    tmp.chmod(0o755)   # the mailbox owner (not root) must reach its home below it
    # Two instances side by side: A's imapd asks our authd, B's asks Courier's
    # authdaemond (on B's userdb, compiled by Courier's makeuserdb).
    base_a = free_base()
    etc_a = make_instance(tmp / "a", base_a)
    base_b = base_a + 1000
    etc_b = make_instance(tmp / "b", base_b)
    courier_authd = None
    try:
        courier("start", "-C", str(etc_a), "authdaemond", "imapd")
        courier_authd = CourierAuthdaemond(tmp / "courier", etc_b / "userdb")
        with open(etc_b / "authdaemonrc", "a") as f:
            f.write(f"authdaemonvar={courier_authd.socket.parent}\n")
        courier("start", "-C", str(etc_b), "imapd")
        ports = {"courier-py authd": base_a + 143, "courier-authdaemond": base_b + 143}
        for port in ports.values():
            measure(port, 5)
        # Rounds alternate, so a load spike on this shared machine hits both.
        runs: dict[str, list[float]] = {name: [] for name in ports}
        for _ in range(rounds):
            for name, port in ports.items():
                runs[name] += measure(port, max(1, n // rounds))
        for name, times in runs.items():
            times.sort()
            print(json.dumps({"authd": name, "logins": len(times), "rounds": rounds,
                              "median_ms": round(statistics.median(times), 2),
                              "p90_ms": round(times[int(len(times) * 0.9) - 1], 2)}), flush=True)
    finally:
        for etc in (etc_a, etc_b):
            subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C", str(etc)],
                           capture_output=True, timeout=120)
        if courier_authd is not None:
            courier_authd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
