#!/usr/bin/env python3
"""The time one IMAP login takes at our imapd, with our authd behind it and with
Courier's authdaemond behind it (same userdb, same run): what the authentication
daemon adds to a login.

    .venv/bin/python bench/imap_login_latency.py [-n 200]

Makes a throw-away instance (`courier init`, one user), measures `n` sequential
connect + LOGIN + LOGOUT with imaplib against imapd using our authd, then points
the instance's authdaemonvar at Courier's authdaemond (started on the same userdb
source, compiled by Courier's makeuserdb, in a private mount namespace:
tests/integration/courier_ns.py) and measures again. Prints one JSON line per
daemon: median and 90th percentile milliseconds. Needs root.
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
    for base in range(30000, 60000, 1000):
        try:
            for off in (25, 587, 465, 143, 993, 110, 995):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port base")


def measure(port: int, n: int) -> dict:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        c.login(USER, PASSWORD)
        c.logout()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"logins": n, "median_ms": round(statistics.median(times), 2),
            "p90_ms": round(times[int(len(times) * 0.9) - 1], 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args()
    reason = skip_reason("/usr/lib/courier/courier-authlib/authdaemond", "/usr/sbin/makeuserdb")
    if reason:
        print(f"imap_login_latency: {reason}", file=sys.stderr)
        return 1
    n = max(1, min(args.n, MAX_N))
    tmp = Path(tempfile.mkdtemp(prefix="imap-login-"))
    tmp.chmod(0o755)   # the mailbox owner (not root) must reach its home below it
    inst, base = tmp / "inst", free_base()
    etc = inst / "etc"
    courier("init", str(inst), "--port-base", str(base), "--hostname", "mx.test")
    # Plain LOGIN on port 143 for the measurement (no TLS cost in the figure).
    with open(etc / "imapd", "a") as f:
        f.write("IMAP_TLS_REQUIRED=0\nIMAPDSTARTTLS=NO\n")
    courier("adduser", "-C", str(etc), USER, PASSWORD)
    courier_authd = None
    try:
        courier("start", "-C", str(etc), "authdaemond", "imapd")
        measure(base + 143, 5)
        print(json.dumps({"authd": "courier-py authd", **measure(base + 143, n)}), flush=True)
        courier("stop", "-C", str(etc))
        courier_authd = CourierAuthdaemond(tmp / "courier", etc / "userdb")
        with open(etc / "authdaemonrc", "a") as f:
            f.write(f"authdaemonvar={courier_authd.socket.parent}\n")
        courier("start", "-C", str(etc), "imapd")
        measure(base + 143, 5)
        print(json.dumps({"authd": "courier-authdaemond", **measure(base + 143, n)}), flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C", str(etc)],
                       capture_output=True, timeout=120)
        if courier_authd is not None:
            courier_authd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
