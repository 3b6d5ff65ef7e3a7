#!/usr/bin/env python3
"""Logins per second through the authdaemon socket: our authd against Courier's
authdaemond (Debian's courier-authlib), on the same userdb, in the same run.

    .venv/bin/python bench/authd_vs_courier.py [-n 2000] [-c 4] [--daemons 5]

One userdb source with 100 accounts (SHA-512 crypt, 5000 rounds, as userdbpw
makes); our makeuserdb compiles it for ours, Courier's makeuserdb for Courier's.
Courier's authdaemond runs in a private mount namespace over its compiled-in
/etc/courier and /run/courier/authdaemon (tests/integration/courier_ns.py), so the
machine's own are untouched. Both get `--daemons` workers. The same client
(libcourier.authclient, `c` threads) sends `n` AUTH login requests, then `n` PRE
lookups, to each, alternating for `--rounds` rounds. Prints one JSON line per
daemon and kind (median and every round). Needs root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from courier_authd.passwords import hash_password  # noqa: E402
from courier_ns import CourierAuthdaemond, skip_reason  # noqa: E402

from libcourier.authclient import auth_login, auth_pre  # noqa: E402
from libcourier.userdb import compile_userdb, set_user  # noqa: E402

USERS = 100
MAX_REQUESTS = 100_000
START_TIMEOUT = 30.0


def measure(sock: Path, n: int, clients: int) -> list[dict]:
    for i in range(20):   # warm every worker before the clock starts
        if auth_login(sock, "imap", f"user{i}@example.com", f"pw{i}") is None:
            raise RuntimeError(f"warm-up login failed on {sock}")
    out = []

    def login(i: int) -> bool:
        u = i % USERS
        return auth_login(sock, "imap", f"user{u}@example.com", f"pw{u}") is not None

    def pre(i: int) -> bool:
        return auth_pre(sock, "imap", f"user{i % USERS}@example.com") is not None

    for kind, fn in (("login", login), ("pre", pre)):
        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as ex:
            ok = sum(ex.map(fn, range(n)))
        secs = time.monotonic() - t0
        out.append({"kind": kind, "requests": n, "seconds": round(secs, 3),
                    "per_s": round(n / secs, 1), "failures": n - ok})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=4, help="client threads")
    ap.add_argument("--daemons", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    reason = skip_reason("/usr/lib/courier/courier-authlib/authdaemond", "/usr/sbin/makeuserdb")
    if reason:
        print(f"authd_vs_courier: {reason}", file=sys.stderr)
        return 1
    n = max(1, min(args.n, MAX_REQUESTS))
    tmp = Path(tempfile.mkdtemp(prefix="authd-vs-courier-"))
    try:
        etc = tmp / "ours" / "etc"
        etc.mkdir(parents=True)
        (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
        (etc / "authdaemonrc").write_text(f'authmodulelist="authuserdb"\ndaemons={args.daemons}\n'
                                          "authdaemonvar=../var/run/authdaemon\n")
        for i in range(USERS):
            set_user(etc / "userdb", f"user{i}@example.com",
                     {"uid": "1000", "gid": "1000", "home": f"/home/u{i}",
                      "systempw": hash_password(f"pw{i}")})
        compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
        common = {"clients": args.c, "daemons": args.daemons, "rounds": args.rounds}
        courier = CourierAuthdaemond(tmp / "courier", etc / "userdb", daemons=args.daemons)
        sock = etc.parent / "var/run/authdaemon/socket"
        log = open(etc.parent / "authd.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not sock.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((etc.parent / "authd.log").read_text())
                time.sleep(0.05)
            # Rounds alternate between the two, so a load spike on this shared
            # machine hits both; the median of the rounds is reported.
            runs: dict[tuple[str, str], list[dict]] = {}
            for _ in range(args.rounds):
                for name, s in (("courier-authdaemond", courier.socket), ("courier-py authd", sock)):
                    for r in measure(s, n, args.c):
                        runs.setdefault((name, r["kind"]), []).append(r)
            for (name, kind), rs in runs.items():
                rates = sorted(r["per_s"] for r in rs)
                print(json.dumps({"daemon": name, "kind": kind, **common, "requests": n,
                                  "median_per_s": statistics.median(rates), "all_per_s": rates,
                                  "failures": sum(r["failures"] for r in rs)}), flush=True)
        finally:
            courier.stop()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
