#!/usr/bin/env python3
"""`make bench`: measure a fresh courier-py instance with ../shared/bench/mailbench.py.

Makes an instance on free loopback ports with the user benchuser@example.com,
starts it, runs the mailbench subcommands (each prints one JSON line, echoed
here), measures one SMTP-to-Maildir delivery and one IMAP login by hand, then
stops the instance. If the anchor servers (Postfix, Dovecot, Courier; see
../shared/bench/README.md) answer on their ports, the same login-rate and SMTP
commands run against them and ratios are printed; otherwise the reference
figures of ../shared/bench/RESULTS.md are shown next to ours, marked as such
(different run, and RESULTS.md used larger workloads: compare with care).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAILBENCH = Path(os.environ.get(
    "MAILBENCH", Path(__file__).resolve().parents[2] / "shared" / "bench" / "mailbench.py"))
PORT_OFFSETS = {"smtp": 25, "submission": 587, "smtps": 465, "imap": 143,
                "imaps": 993, "pop3": 110, "pop3s": 995}
USER, PASSWORD = "benchuser@example.com", "benchpass"
IMAP_OPS = ("select", "fetch-envelope", "bodystructure", "search", "body-peek", "store")
RUN_TIMEOUT = 600
DELIVERY_WAIT = 30.0

# Anchors (../shared/bench/anchors-common.sh defaults).
ANCHOR_USER, ANCHOR_PASSWORD = "benchuser", "benchpass"
ANCHORS = {"postfix-smtp": 10025, "dovecot-imap": 10143, "courier-imap": 10243,
           "dovecot-pop3": 10110, "courier-pop3": 10210}
# Reference figures from ../shared/bench/RESULTS.md (run B/C medians, 2-CPU VM;
# 2,000 x 4 KB messages over 10 sessions, 10 concurrent logins, 10,000-message
# mailboxes): NOT measured by this run.
REFERENCE = {
    "smtp accepted msg/s": {"Postfix": 930, "aiosmtpd": 926},
    "smtp delivered msg/s": {"Postfix": 673, "aiosmtpd": 925},
    "imap logins/s": {"Dovecot": 98.9, "Courier": 169},
    "imap FETCH ENVELOPE 10k (s)": {"Dovecot": 0.553, "Courier": 0.806},
    "pop3 RETR 10k (s)": {"Dovecot": 1.34, "Courier (quickack)": 2.11},
}


def free_port_base(tries: int = 200) -> int:
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20000, 64000, 1000) + rng.randrange(0, 500)
        socks = []
        try:
            for off in PORT_OFFSETS.values():
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port base")


def courier(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "libcourier.control", *args], check=True,
                   stdin=subprocess.DEVNULL, timeout=120)


def mailbench(*args: str) -> dict | None:
    """Run one mailbench subcommand; echo and return its JSON line (None on failure)."""
    cmd = [sys.executable, str(MAILBENCH), *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           cwd=MAILBENCH.parent, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"# {args[0]}: timed out after {RUN_TIMEOUT} s", flush=True)
        return None
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if r.returncode != 0 or line is None:
        err = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"# {' '.join(args[:2])}: failed (exit {r.returncode}): {err}", flush=True)
        return None
    print(line, flush=True)
    return json.loads(line)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def one_delivery(port: int, maildir: Path) -> float:
    """Seconds from connect to the message being a file in Maildir/new."""
    before = set(os.listdir(maildir / "new"))
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("bench@example.net", [USER],
                   b"Subject: one delivery\r\n\r\nmeasuring one delivery\r\n")
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        if set(os.listdir(maildir / "new")) - before:
            return time.perf_counter() - t0
        time.sleep(0.001)
    raise RuntimeError("the message was not delivered")


def one_login(port: int) -> float:
    t0 = time.perf_counter()
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    imap.login(USER, PASSWORD)
    elapsed = time.perf_counter() - t0
    imap.logout()
    return elapsed


def g(rec: dict | None, *keys: str):
    if rec is None:
        return None
    res = rec.get("results", {})
    for k in keys:
        if k in res:
            return res[k]
    return None


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--mailbox-count", type=int, default=1000)
    ap.add_argument("--login-seconds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the instance directory")
    args = ap.parse_args(argv)
    if not MAILBENCH.is_file():
        print(f"bench: {MAILBENCH} not found (set MAILBENCH)", file=sys.stderr)
        return 1

    base_dir = Path(tempfile.mkdtemp(prefix="courier-bench-", dir="/tmp"))
    os.chmod(base_dir, 0o755)  # the daemon account must reach it when run as root
    inst = base_dir / "inst"
    pb = free_port_base()
    port = {k: pb + off for k, off in PORT_OFFSETS.items()}
    etc = inst / "etc"
    maildir = inst / "mail" / "example.com" / "benchuser" / "Maildir"
    auth = ["--user", USER, "--password", PASSWORD]
    rows: list[tuple[str, object, str]] = []
    started = False
    try:
        courier("init", str(inst), "--port-base", str(pb), "--hostname", "bench.test")
        courier("adduser", "-C", str(etc), USER, PASSWORD)
        courier("start", "-C", str(etc))
        started = True

        t = one_delivery(port["smtp"], maildir)
        rows.append(("one SMTP -> Maildir delivery (ms)", t * 1000, ""))
        t = one_login(port["imap"])
        rows.append(("one IMAP connect+LOGIN (ms)", t * 1000, ""))

        for p in (maildir / "new").iterdir():
            p.unlink()
        smtp = mailbench("smtp-throughput", "--label", "courier-py", "--port", str(port["smtp"]),
                         "--messages", str(args.messages), "--concurrency", str(args.concurrency),
                         "--size", "4096", "--rcpt", USER, "--maildir", str(maildir))
        rows.append((f"smtp accepted msg/s ({args.messages} x 4 KB, {args.concurrency} sessions)",
                     g(smtp, "accepted_per_s"), "smtp accepted msg/s"))
        rows.append(("smtp delivered msg/s, end to end", g(smtp, "delivered_per_s"),
                     "smtp delivered msg/s"))
        rows.append(("smtp transaction p50 (s)", g(smtp, "txn_p50"), ""))

        login = mailbench("imap-login-rate", "--label", "courier-py", "--port", str(port["imap"]),
                          *auth, "--seconds", str(args.login_seconds), "--concurrency", "10")
        rows.append(("imap logins/s (10 concurrent)", g(login, "logins_per_s"), "imap logins/s"))

        n = str(args.mailbox_count)
        mailbench("imap-populate", "--label", "courier-py", "--maildir", str(maildir),
                  "--count", n, "--fresh")
        for op in IMAP_OPS:
            rec = mailbench("imap-mailbox", "--label", "courier-py", "--port", str(port["imap"]),
                            *auth, "--count", n, "--ops", op)
            if rec is None:
                rows.append((f"imap {op} ({n} msgs)", "not supported", ""))
                continue
            res = rec.get("results", {})
            for k, v in res.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k.endswith(
                        ("seconds", "_s")):
                    rows.append((f"imap {op}: {k} ({n} msgs)", v,
                                 "imap FETCH ENVELOPE 10k (s)" if op == "fetch-envelope" else ""))
        pop = mailbench("pop3-retr", "--label", "courier-py", "--port", str(port["pop3"]),
                        *auth, "--count", n)
        res = pop.get("results", {}) if pop else {}
        for k, v in res.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append((f"pop3 {k} ({n} msgs)", v, ""))
        if pop is None:
            rows.append((f"pop3-retr ({n} msgs)", "failed", ""))

        anchor_rows = run_anchors(args)
    finally:
        if started:
            subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C", str(etc)],
                           stdin=subprocess.DEVNULL, timeout=120)
        if not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)

    print("\n## courier-py (this run)\n")
    width = max(len(r[0]) for r in rows)
    for name, value, _ in rows:
        print(f"{name:<{width}}  {fmt(value)}")
    if anchor_rows:
        print("\n## anchors measured in this run (same commands)\n")
        ours = {ref: v for _, v, ref in rows if ref}
        for name, ref, value in anchor_rows:
            mine = ours.get(ref)
            ratio = (f"  courier-py/anchor = {mine / value:.2f}"
                     if isinstance(mine, (int, float)) and value else "")
            print(f"{name:<{width}}  {fmt(value)}{ratio}")
    else:
        print("\n## reference figures (NOT this run: ../shared/bench/RESULTS.md, larger "
              "workloads, anchors not running here)\n")
        ours = {ref: v for _, v, ref in rows if ref}
        for ref, figures in REFERENCE.items():
            others = ", ".join(f"{k} {v}" for k, v in figures.items())
            print(f"{ref:<{width}}  courier-py {fmt(ours.get(ref))}   [reference: {others}]")
    return 0


def run_anchors(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """Run the login and SMTP commands against anchors that answer."""
    out: list[tuple[str, str, float]] = []
    auth = ["--user", ANCHOR_USER, "--password", ANCHOR_PASSWORD]
    for label in ("dovecot-imap", "courier-imap"):
        if answers(ANCHORS[label]):
            rec = mailbench("imap-login-rate", "--label", label, "--port", str(ANCHORS[label]),
                            *auth, "--seconds", str(args.login_seconds), "--concurrency", "10")
            v = g(rec, "logins_per_s")
            if v:
                out.append((f"{label} logins/s", "imap logins/s", v))
    if answers(ANCHORS["postfix-smtp"]):
        md = Path(os.environ.get("ANCHOR_DIR", "/tmp/anchors-bench")) / "home" / "benchuser" / "Maildir"
        extra = ["--maildir", str(md)] if md.is_dir() else []
        rec = mailbench("smtp-throughput", "--label", "postfix", "--port",
                        str(ANCHORS["postfix-smtp"]), "--messages", str(args.messages),
                        "--concurrency", str(args.concurrency), "--size", "4096",
                        "--rcpt", "benchuser@localhost", *extra)
        v = g(rec, "accepted_per_s")
        if v:
            out.append(("postfix smtp accepted msg/s", "smtp accepted msg/s", v))
        v = g(rec, "delivered_per_s")
        if v:
            out.append(("postfix smtp delivered msg/s", "smtp delivered msg/s", v))
    return out


if __name__ == "__main__":
    sys.exit(main())
