#!/usr/bin/env python3
"""The imapd goals of issues 5 and 3, measured in one run: our imapd (a fresh `courier
init` instance, user benchuser@example.com with a SHA-512 crypt password, 5000 rounds,
as the anchors' /etc/shadow hash) against Dovecot and Courier's imapd (the anchors of
../shared/bench, started with `anchors-up dovecot courier`), with the same
../shared/bench/mailbench.py commands. Prints a table with ratios and the goals.

Per mailbox size (default 10,000 and 100,000 messages) and server: `imap-populate
--fresh` (the anchors share one Maildir: populated again before each of them, so no
server sees another's index), then `imap-mailbox` twice: cold (the first run, no index
yet) and warm (the second). On 10,000 also: FETCH BODY.PEEK[] x 200 with and without a
quick-ACK client (the Nagle check), and 100 idle SELECTed connections (PSS). While our
imapd works, the peak RSS (VmHWM) of its session processes is sampled (issue 3: < 200 MB).

    .venv/bin/python bench/imap_goals.py                   # everything (~40 min on 2 CPUs)
    .venv/bin/python bench/imap_goals.py --counts 10000 --servers ours
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
MAILBENCH = Path(os.environ.get("MAILBENCH", HERE.parents[2] / "shared" / "bench" / "mailbench.py"))
ANCHOR_DIR = Path(os.environ.get("ANCHOR_DIR", "/tmp/anchors-bench"))
ANCHOR_MAILDIR = ANCHOR_DIR / "home" / "benchuser" / "Maildir"
ANCHOR_PORTS = {"dovecot": 10143, "courier": 10243}
USER, PASSWORD = "benchuser@example.com", "benchpass"
ANCHOR_USER, ANCHOR_PASSWORD = "benchuser", "benchpass"
RUN_TIMEOUT = 3600          # one mailbench command, seconds
OP_TIMEOUT = "1800"         # mailbench's per-operation socket timeout
BASE_OPS = "select,fetch-envelope,bodystructure,search"
SAMPLE_PERIOD = 0.2         # seconds between memory samples of our sessions
NAGLE_STALL_MS = 40.0       # Linux's delayed ACK: a stalled reply waits this long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mailbench(*args: str, log: list[dict]) -> dict | None:
    """One mailbench subcommand; its JSON line (also appended to log), None on failure."""
    cmd = [sys.executable, str(MAILBENCH), *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                           cwd=MAILBENCH.parent, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"# {args[0]}: timed out after {RUN_TIMEOUT} s", file=sys.stderr, flush=True)
        return None
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if r.returncode != 0 or line is None:
        err = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"# {' '.join(args[:3])}: failed (exit {r.returncode}): {err}",
              file=sys.stderr, flush=True)
        return None
    rec = json.loads(line)
    log.append(rec)
    print(f"# {rec.get('bench')} {rec.get('label')}: {json.dumps(rec.get('results'))}",
          file=sys.stderr, flush=True)
    return rec


class PeakSampler:
    """Peak VmHWM (MB) of the descendants of one pid, sampled in a thread while used."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        import psutil
        try:
            return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD):
            for pid in self._children():
                try:
                    with open(f"/proc/{pid}/status", "rb") as fh:
                        for line in fh:
                            if line.startswith(b"VmHWM:"):
                                self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    pass    # the session ended between listing and reading

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class Server:
    name: str
    port: int
    user: str
    password: str
    maildir: Path
    memory_pids: list[int]
    pattern: str | None = None
    sampler_pid: int | None = None      # ours: sample its sessions' peak memory
    # Seconds to wait before the idle-memory baseline: ours keeps a finished session's
    # process as a warm worker for IMAP_REUSE_TIMEOUT; one that expired during the
    # measurement would count against the 100 connections (a negative figure).
    idle_wait: float = 0.0
    results: dict = field(default_factory=dict)

    def auth(self) -> list[str]:
        return ["--port", str(self.port), "--user", self.user, "--password", self.password,
                "--label", self.name]


class Instance:
    """A `courier init` instance running authdaemond and imapd on free loopback ports."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="imap-goals-", dir="/tmp"))
        os.chmod(self.base, 0o755)  # the daemon account must reach it when run as root
        self.etc = self.base / "inst" / "etc"
        self.port = free_port()
        self.started = False

    def start(self) -> Server:
        inst = self.base / "inst"
        self.courier("init", str(inst), "--hostname", "bench.test")
        imapd = self.etc / "imapd"
        text = imapd.read_text()
        # Our port on loopback only, room for the idle connections (the anchors allow
        # as many); the rest of the shipped file as it is.
        imapd.write_text(text + f"\nPORT={self.port}\nADDRESS=127.0.0.1\n"
                         "MAXDAEMONS=300\nMAXPERIP=300\n")   # 100 idle connections
        self.courier("adduser", "-C", str(self.etc), USER, PASSWORD)
        self.courier("start", "-C", str(self.etc), "authdaemond", "imapd")
        self.started = True
        run = inst / "var" / "run"
        pids = [int((run / f"{n}.pid").read_text().split()[0]) for n in ("imapd", "authdaemond")]
        maildir = inst / "mail" / "example.com" / "benchuser" / "Maildir"
        reuse = re.findall(r"^IMAP_REUSE_TIMEOUT=(\d+)", text, re.M)
        return Server("ours", self.port, USER, PASSWORD, maildir, pids, sampler_pid=pids[0],
                      idle_wait=int(reuse[-1]) + 1.0 if reuse else 0.0)

    def courier(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "libcourier.control", *args], check=True,
                       stdin=subprocess.DEVNULL, timeout=120, stdout=subprocess.DEVNULL)

    def stop(self, keep: bool) -> None:
        if self.started:
            subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C",
                            str(self.etc)], stdin=subprocess.DEVNULL, timeout=120,
                           stdout=subprocess.DEVNULL)
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


def anchors() -> list[Server]:
    out = []
    pids = ANCHOR_DIR / "pids"
    for name, port in ANCHOR_PORTS.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            print(f"# {name} does not answer on {port}: left out", file=sys.stderr)
            continue
        if name == "dovecot":
            mem = [int((pids / "dovecot.pid").read_text().split()[0])]
            out.append(Server(name, port, ANCHOR_USER, ANCHOR_PASSWORD, ANCHOR_MAILDIR, mem))
        else:
            mem = [int((pids / f"{p}.pid").read_text().split()[0])
                   for p in ("courier-imapd", "courier-authdaemond")]
            out.append(Server(name, port, ANCHOR_USER, ANCHOR_PASSWORD, ANCHOR_MAILDIR, mem,
                              pattern="^gam_server$"))
    return out


def owner_of(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def measure(srv: Server, count: int, log: list[dict], idle_connections: int) -> None:
    n = str(count)
    res = srv.results.setdefault(count, {})
    owner = owner_of(srv.maildir.parent if not srv.maildir.exists() else srv.maildir)
    pop = mailbench("imap-populate", "--maildir", str(srv.maildir), "--count", n, "--fresh",
                    "--owner", owner, "--label", srv.name, log=log)
    res["search_expected"] = (pop or {}).get("results", {}).get("messages_with_search_word")
    big = count > 20000
    for phase in ("cold", "warm"):
        ops = BASE_OPS if big or phase == "cold" else BASE_OPS + ",body-peek"
        args = ["imap-mailbox", *srv.auth(), "--count", n, "--ops", ops, "--timeout", OP_TIMEOUT]
        if srv.sampler_pid:
            with PeakSampler(srv.sampler_pid) as s:
                rec = mailbench(*args, log=log)
            res[f"{phase}_session_peak_mb"] = round(s.peak_mb, 1)
        else:
            rec = mailbench(*args, log=log)
        res[phase] = (rec or {}).get("results", {})
    if big:
        return
    rec = mailbench("imap-mailbox", *srv.auth(), "--count", n, "--ops", "body-peek",
                    "--quickack", log=log)
    res["quickack"] = (rec or {}).get("results", {})
    time.sleep(srv.idle_wait)
    args = ["imap-idle-memory", *srv.auth(), "--connections", str(idle_connections),
            "--server-pids", ",".join(map(str, srv.memory_pids))]
    if srv.pattern:
        args += ["--process-pattern", srv.pattern]
    rec = mailbench(*args, log=log)
    res["idle"] = (rec or {}).get("results", {})


def fmt(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return str(v)


def table(servers: list[Server], counts: list[int], login: dict[str, float]) -> str:
    by = {s.name: s for s in servers}
    rows: list[tuple[str, dict[str, object], str, str]] = []   # label, values, goal, against

    def get(name: str, count: int, *path: str) -> object:
        v: object = by[name].results.get(count, {}) if name in by else {}
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    rows.append(("logins/s (LOGIN+LOGOUT, 10 clients; median of rounds)", dict(login), ">= courier", "courier"))
    for count in counts:
        for phase in ("cold", "warm"):
            goal, against = ("<= 3x courier", "courier") if phase == "cold" else \
                ("<= 2x dovecot", "dovecot")
            for label, key in (("SELECT", "select_cold_s" if phase == "cold" else "select_warm_s"),
                               ("UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)",
                                "fetch_envelope_s"),
                               ("FETCH 1:* BODYSTRUCTURE", "bodystructure_s"),
                               ("UID SEARCH TEXT", "search_s")):
                vals = {s.name: get(s.name, count, phase, key) for s in servers}
                rows.append((f"{count:,} {phase}: {label} (s)", vals, goal, against))
        vals = {s.name: get(s.name, count, "warm", "search_hits") for s in servers}
        rows.append((f"{count:,}: SEARCH TEXT hits", vals, "equal", ""))
        if "ours" in by:
            peak = max((v for k, v in by["ours"].results.get(count, {}).items()
                        if k.endswith("_session_peak_mb")), default=None)
            rows.append((f"{count:,}: our session peak RSS (MB)", {"ours": peak}, "< 200", ""))
    small = min(counts)
    if small <= 20000:
        for label, key, mult in (("BODY.PEEK[] x200 MB/s", "body_peek", None),
                                 ("BODY.PEEK[] p50 ms", "body_peek_p50_ms", 1)):
            for phase in ("warm", "quickack"):
                vals: dict[str, object] = {}
                for s in servers:
                    r = get(s.name, small, phase) or {}
                    if mult is None:
                        b, t = r.get("body_peek_bytes"), r.get("body_peek_s")
                        vals[s.name] = round(b / 1e6 / t, 1) if b and t else None
                    else:
                        vals[s.name] = r.get(key)
                goal = f"< {NAGLE_STALL_MS:.0f} ms" if mult and phase == "warm" else ""
                rows.append((f"{small:,}: {label}{' (quickack client)' if phase == 'quickack' else ''}",
                             vals, goal, ""))
        vals = {s.name: get(s.name, small, "idle", "per_conn_pss_mb") for s in servers}
        rows.append((f"{small:,}: PSS per idle SELECTed connection (MB)", vals,
                     "<= courier", "courier"))
        vals = {s.name: get(s.name, small, "idle", "per_conn_rss_mb") for s in servers}
        rows.append((f"{small:,}: RSS per idle SELECTed connection (MB)", vals, "", ""))

    names = [s.name for s in servers]
    head = ["measure", *names, "ours/dovecot", "ours/courier", "goal", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, vals, goal, against in rows:
        ours = vals.get("ours")
        ratios = []
        for other in ("dovecot", "courier"):
            o = vals.get(other)
            ok = isinstance(ours, (int, float)) and isinstance(o, (int, float)) and o
            ratios.append(f"{ours / o:.2f}" if ok else "")
        met = verdict(ours, vals.get(against) if against else None, goal)
        lines.append("| " + " | ".join([label, *(fmt(vals.get(n)) for n in names), *ratios,
                                        goal, met]) + " |")
    return "\n".join(lines)


def verdict(ours: object, other: object, goal: str) -> str:
    if not goal or not isinstance(ours, (int, float)):
        return ""
    if goal.startswith("<= ") and "x" in goal:
        if not isinstance(other, (int, float)):
            return ""
        return "yes" if ours <= float(goal[3:goal.index("x")]) * other else "NO"
    if goal.startswith(">= "):
        return "" if not isinstance(other, (int, float)) else ("yes" if ours >= other else "NO")
    if goal.startswith("<= "):
        return "" if not isinstance(other, (int, float)) else ("yes" if ours <= other else "NO")
    if goal.startswith("< "):
        return "yes" if ours < float(goal[2:].split()[0]) else "NO"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="10000,100000")
    ap.add_argument("--servers", default="ours,dovecot,courier")
    ap.add_argument("--login-seconds", type=int, default=5)
    ap.add_argument("--login-rounds", type=int, default=3)
    ap.add_argument("--idle-connections", type=int, default=100)
    ap.add_argument("--out", help="append every mailbench JSON line to this file")
    ap.add_argument("--keep", action="store_true", help="leave our instance directory")
    args = ap.parse_args(argv)
    if not MAILBENCH.is_file():
        print(f"imap_goals: {MAILBENCH} not found (set MAILBENCH)", file=sys.stderr)
        return 1
    counts = [int(c) for c in args.counts.split(",") if c]
    wanted = [s for s in args.servers.split(",") if s]
    log: list[dict] = []
    inst = Instance() if "ours" in wanted else None
    try:
        servers = [inst.start()] if inst else []
        servers += [s for s in anchors() if s.name in wanted]
        # Rounds, the servers in a new order each time, and the median: the machine is
        # shared, and a load spike during one server's only run would decide the ratio.
        rates: dict[str, list[float]] = {s.name: [] for s in servers}
        rng = random.Random(1)
        for _ in range(args.login_rounds):
            for s in rng.sample(servers, len(servers)):
                rec = mailbench("imap-login-rate", *s.auth(), "--seconds",
                                str(args.login_seconds), "--concurrency", "10", log=log)
                v = (rec or {}).get("results", {}).get("logins_per_s")
                if v:
                    rates[s.name].append(v)
        login = {k: statistics.median(v) for k, v in rates.items() if v}
        for count in counts:
            for s in servers:
                measure(s, count, log, args.idle_connections)
        if any(s.maildir == ANCHOR_MAILDIR for s in servers):
            # Leave the shared Maildir small, as bench-anchors does.
            mailbench("imap-populate", "--maildir", str(ANCHOR_MAILDIR), "--count", "0",
                      "--fresh", "--owner", "benchuser", log=log)
    finally:
        if inst:
            inst.stop(args.keep)
        if args.out:
            with open(args.out, "a") as fh:
                for rec in log:
                    fh.write(json.dumps(rec) + "\n")
    print(table(servers, counts, login))
    return 0


if __name__ == "__main__":
    sys.exit(main())
