#!/usr/bin/env python3
"""authdaemond logins per second through the socket: userdb against PostgreSQL.

    .venv/bin/python bench/authd_backends.py [-n 2000] [-c 4] [--daemons 4]

Starts a throw-away PostgreSQL (initdb in a temp dir, loopback, free port, as
`postgres` when run as root; tests/integration/authservers.py), fills a table
and a userdb with the same 100 accounts (SHA-512 crypt, 5000 rounds, as
userdbpw makes), starts authdaemond once per backend, and sends `n` AUTH login
requests from `c` client threads with libcourier.authclient. Prints one JSON
line per backend: requests, seconds, logins per second, failures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from authservers import pg_admin, start_postgres  # noqa: E402
from courier_authd.passwords import hash_password  # noqa: E402

from libcourier.authclient import AuthTempFail, auth_login  # noqa: E402
from libcourier.userdb import compile_userdb, set_user  # noqa: E402

USERS = 100
MAX_REQUESTS = 100_000
START_TIMEOUT = 30.0


def make_etc(root: Path, modules: str, daemons: int, extra: dict[str, str]) -> Path:
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text(f'authmodulelist="{modules}"\ndaemons={daemons}\n'
                                      "authdaemonvar=../var/run/authdaemon\n")
    for name, text in extra.items():
        (etc / name).write_text(text)
        (etc / name).chmod(0o600)
    return etc


def run_authd(etc: Path, n: int, clients: int) -> dict:
    sock = etc.parent / "var/run/authdaemon/socket"
    log = open(etc.parent / "authd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((etc.parent / "authd.log").read_text())
            time.sleep(0.05)
        # Warm every worker (its connection, its imports) before the clock starts.
        for i in range(20):
            try:
                ok = auth_login(sock, "imap", f"user{i}@example.com", f"pw{i}") is not None
            except (OSError, AuthTempFail) as e:
                ok = False
                print(e, file=sys.stderr)
            if not ok:
                raise RuntimeError("warm-up login failed:\n"
                                   + (etc.parent / "authd.log").read_text()[-3000:])

        def one(i: int) -> bool:
            u = i % USERS
            return auth_login(sock, "imap", f"user{u}@example.com", f"pw{u}") is not None

        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as ex:
            ok = sum(ex.map(one, range(n)))
        secs = time.monotonic() - t0
        return {"requests": n, "seconds": round(secs, 3), "logins_per_s": round(n / secs, 1),
                "failures": n - ok}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=4, help="client threads")
    ap.add_argument("--daemons", type=int, default=4)
    args = ap.parse_args()
    n = max(1, min(args.n, MAX_REQUESTS))
    hashes = [hash_password(f"pw{i}") for i in range(USERS)]
    tmp = Path(tempfile.mkdtemp(prefix="authd-bench-"))
    srv = start_postgres()
    try:
        with pg_admin(srv) as c:
            c.execute("CREATE ROLE courier LOGIN PASSWORD 'bench'")
            c.execute("CREATE DATABASE mail OWNER courier")
        with pg_admin(srv, "mail") as c:
            c.execute("CREATE TABLE passwd (id text PRIMARY KEY, crypt text, uid int, gid int, "
                      "home text)")
            c.execute("ALTER TABLE passwd OWNER TO courier")
            for i, h in enumerate(hashes):
                c.execute("INSERT INTO passwd VALUES (%s, %s, 1000, 1000, %s)",
                          (f"user{i}@example.com", h, f"/home/u{i}"))
        etc = make_etc(tmp / "userdb", "authuserdb", args.daemons, {})
        for i, h in enumerate(hashes):
            set_user(etc / "userdb", f"user{i}@example.com",
                     {"uid": "1000", "gid": "1000", "home": f"/home/u{i}", "systempw": h})
        compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
        res = run_authd(etc, n, args.c)
        print(json.dumps({"backend": "authuserdb", "clients": args.c, "daemons": args.daemons,
                          **res}))
        rc = (f"PGSQL_CONNECTION host=127.0.0.1 port={srv.port} user=courier password=bench\n"
              "PGSQL_DATABASE mail\nPGSQL_USER_TABLE passwd\nPGSQL_CRYPT_PWFIELD crypt\n")
        etc = make_etc(tmp / "pgsql", "authpgsql", args.daemons, {"authpgsqlrc": rc})
        res = run_authd(etc, n, args.c)
        print(json.dumps({"backend": "authpgsql", "clients": args.c, "daemons": args.daemons,
                          "postgres_startup_s": round(srv.startup_seconds, 2), **res}))
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
