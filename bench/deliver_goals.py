#!/usr/bin/env python3
"""courierd's side of issue 8's benchmark, without the SMTP server in front.

Two measurements on a fresh `courier init` instance (authdaemond + courierd only):

- `rate`: N messages of SIZE bytes for one local user written straight into the
  spool with libcourier.spool.SpoolWriter (as esmtpd writes them: fsync'd, then
  announced with `NEW <qid>`), timed until all N files are in the user's
  Maildir/new: delivered/s of the queue manager and courierlocal alone.
- `memory`: COUNT deferred messages (one remote recipient each, routed by
  esmtproutes to a closed loopback port, so every attempt is a quick 4xx) written
  into the spool while courierd is stopped (envelope and data written directly,
  no fsync: this is set-up, not the measured part); then courierd is started and
  its RSS (and that of courierlocal) sampled every second while it scans the
  queue and makes its first attempts. Goal: below 300 MB with 100,000 queued.

    .venv/bin/python bench/deliver_goals.py rate --messages 2000 --rounds 3
    .venv/bin/python bench/deliver_goals.py memory --count 100000 --seconds 120
    .venv/bin/python bench/deliver_goals.py smtp --messages 2000 --rounds 3

`smtp`: as `rate`, but the messages come in through esmtpd (mailbench.py
smtp-throughput over SESSIONS sessions, as bench/smtp_goals.py runs it), with
esmtpd's CPU per message beside courierd's and courierlocal's.

End to end through esmtpd beside Postfix: bench/smtp_goals.py --servers ours,postfix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
USER = "bench@example.com"
REMOTE = "nobody@remote.test"
WAIT_MAX = 900.0          # seconds: the longest a delivery round may take
MAILBENCH = Path(os.environ.get("MAILBENCH", HERE.parents[2] / "shared" / "bench" / "mailbench.py"))


def courier(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "libcourier.control", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SystemExit(f"courier {' '.join(args)} failed: {r.stdout}{r.stderr}")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Instance:
    def __init__(self, maxdels: int | None, with_esmtpd: bool = False) -> None:
        from bench.run import free_port_base
        from libcourier.control.init import PORT_OFFSETS
        from libcourier.layout import load_layout
        self.with_esmtpd = with_esmtpd
        base = free_port_base()
        self.smtp_port = base + PORT_OFFSETS["smtp"]
        self.top = Path(tempfile.mkdtemp(prefix="deliver-goals-", dir="/tmp"))
        os.chmod(self.top, 0o755)
        self.root = self.top / "inst"
        courier("init", str(self.root), "--port-base", str(base),
                "--hostname", "mx.bench")
        self.etc = self.root / "etc"
        courier("adduser", "-C", str(self.etc), USER, "bench-secret")
        if maxdels is not None:
            with open(self.etc / "courierd", "a") as f:
                f.write(f"\nMAXDELS={maxdels}\n")
        (self.etc / "esmtproutes").write_text(f"remote.test: [127.0.0.1],{closed_port()}\n")
        self.layout = load_layout(self.etc)
        self.maildir = self.root / "mail" / "example.com" / "bench" / "Maildir"

    def start(self, *services: str) -> None:
        courier("start", "-C", str(self.etc), *services)

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C", str(self.etc)],
                       cwd=ROOT, capture_output=True, timeout=120)

    def pid(self, service: str) -> int:
        return int(self.layout.pidfile(service).read_text().split()[0])

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


def message(i: int, size: int) -> bytes:
    head = (f"Received: from bench by mx.bench; {time.ctime()}\n"
            f"From: <b@bench.test>\nTo: <{USER}>\nSubject: deliver bench {i}\n"
            f"Message-ID: <{i}.{time.time_ns()}@bench.test>\n\n").encode()
    line = b"x" * 75 + b"\n"
    return head + line * max(0, (size - len(head)) // len(line))


def cpu_ticks(pid: int) -> int:
    """utime+stime of a process and of its children already reaped, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15])


def _ticks_or_0(pid: int) -> int:
    try:
        return cpu_ticks(pid)
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def cpu_snapshot(inst: Instance) -> dict[str, int]:
    """CPU so far of courierd, courierlocal (with its children, live or reaped),
    authd (with its long-lived workers). A child that exits between two reads is
    missed: the figures are a little low, never high."""
    courierd, authd = inst.pid("courierd"), inst.pid("authdaemond")
    local, workers, todo = [], [], [(p, 1) for p in children(courierd)]
    while todo:                         # courierlocal, connection children, workers
        p, depth = todo.pop()
        (workers if depth >= 3 else local).append(p)
        try:
            todo += [(c, depth + 1) for c in children(p)]
        except OSError:
            pass
    snap = {"courierd": cpu_ticks(courierd),
            "courierlocal": sum(_ticks_or_0(p) for p in local + workers),
            "(of which its delivery workers)": sum(_ticks_or_0(p) for p in workers),
            "authd": cpu_ticks(authd) + sum(cpu_ticks(p) for p in children(authd))}
    if inst.with_esmtpd:
        esmtpd = inst.pid("esmtpd")
        snap["esmtpd"] = cpu_ticks(esmtpd) + sum(_ticks_or_0(p) for p in children(esmtpd))
    return snap


def cpu_line(inst: Instance, cpu0: dict[str, int], n: int) -> str:
    cpu1 = cpu_snapshot(inst)
    hz = os.sysconf("SC_CLK_TCK")
    return ", ".join(f"{k} {(cpu1[k] - cpu0[k]) * 1000 / hz / n:.2f}" for k in cpu0)


def rate_round(inst: Instance, n: int, size: int) -> float:
    from libcourier.spool import Envelope, Recipient, SpoolWriter, notify
    new = inst.maildir / "new"
    before = len(os.listdir(new))
    cpu0 = cpu_snapshot(inst)
    t0 = time.monotonic()
    for i in range(n):
        with SpoolWriter(inst.layout.spooldir, 0) as w:
            w.write(message(i, size))
            qid = w.commit(Envelope("b@bench.test", (Recipient(USER),), time.time(),
                                    client="deliver_goals"))
        notify(inst.layout.queue_socket, qid)
    deadline = time.monotonic() + WAIT_MAX
    while len(os.listdir(new)) - before < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(os.listdir(new)) - before} of {n} delivered")
        time.sleep(0.05)
    rate = n / (time.monotonic() - t0)
    time.sleep(0.5)         # the last replies and reaps
    print(f"# {rate:.1f} msg/s; CPU ms per message: {cpu_line(inst, cpu0, n)}",
          file=sys.stderr)
    return rate


def smtp_round(inst: Instance, n: int, size: int, sessions: int) -> tuple[float, float]:
    """mailbench smtp-throughput into esmtpd, waiting for the Maildir: (accepted/s,
    delivered/s), with each daemon's CPU per message on stderr."""
    cpu0 = cpu_snapshot(inst)
    cmd = [sys.executable, str(MAILBENCH), "smtp-throughput", "--label", "deliver-goals",
           "--port", str(inst.smtp_port), "--messages", str(n), "--concurrency",
           str(sessions), "--size", str(size), "--rcpt", USER, "--timeout", "120",
           "--maildir", str(inst.maildir), "--deliver-timeout", str(int(WAIT_MAX))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_MAX + 60,
                       stdin=subprocess.DEVNULL)
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if r.returncode != 0 or line is None:
        raise SystemExit(f"mailbench failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    res = json.loads(line)["results"]
    if not res.get("delivery_complete"):
        raise SystemExit(f"not every message was delivered: {res}")
    time.sleep(0.5)         # the last replies and reaps
    print(f"# accepted {res['accepted_per_s']:.1f}/s, delivered {res['delivered_per_s']:.1f}/s;"
          f" CPU ms per message: {cpu_line(inst, cpu0, n)}", file=sys.stderr)
    for name in os.listdir(inst.maildir / "new"):   # keep new/ small between rounds
        (inst.maildir / "new" / name).unlink()
    return res["accepted_per_s"], res["delivered_per_s"]


def cmd_rate(args: argparse.Namespace) -> int:
    inst = Instance(args.maxdels)
    try:
        inst.start("authdaemond", "courierd")
        rate_round(inst, 100, args.size)           # warm-up, not recorded
        rates = [rate_round(inst, args.messages, args.size) for _ in range(args.rounds)]
    finally:
        inst.close()
    print(f"spool -> Maildir, {args.messages} x {args.size} B, MAXDELS="
          f"{args.maxdels or 'default'}: delivered/s median {statistics.median(rates):.1f} "
          f"(runs {', '.join(f'{r:.1f}' for r in rates)})")
    return 0


def cmd_smtp(args: argparse.Namespace) -> int:
    if not MAILBENCH.is_file():
        raise SystemExit(f"mailbench.py not found at {MAILBENCH} (set MAILBENCH=)")
    inst = Instance(args.maxdels, with_esmtpd=True)
    try:
        inst.start("authdaemond", "esmtpd", "courierd")
        smtp_round(inst, 200, args.size, args.sessions)      # warm-up, not recorded
        runs = [smtp_round(inst, args.messages, args.size, args.sessions)
                for _ in range(args.rounds)]
    finally:
        inst.close()
    acc, dlv = [a for a, _ in runs], [d for _, d in runs]
    print(f"SMTP -> spool -> Maildir, {args.messages} x {args.size} B over {args.sessions} "
          f"sessions: accepted/s median {statistics.median(acc):.1f}, delivered/s median "
          f"{statistics.median(dlv):.1f} (runs {', '.join(f'{a:.0f}/{d:.0f}' for a, d in runs)})")
    return 0


def write_deferred(spooldir: Path, count: int) -> None:
    """Committed queue entries as SpoolWriter leaves them, without the fsyncs."""
    from libcourier.spool import Envelope, Recipient, new_qid
    from libcourier.spool.entry import format_header
    from libcourier.spool.envelope import format_envelope
    msgs = spooldir / "msgs"
    body = message(0, 4096)
    env = format_envelope(Envelope("b@bench.test", (Recipient(REMOTE),), time.time(),
                                   client="deliver_goals"))
    entry = format_header(len(body), len(env)) + body + env
    for _ in range(count):
        (msgs / new_qid()).write_bytes(entry)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def attempts_logged(log: Path) -> int:
    """Attempts courierd finished so far: its "deferred, next attempt" log lines."""
    try:
        with open(log, "rb") as f:
            return f.read().count(b": deferred, next attempt in ")
    except OSError:
        return -1


def cmd_memory(args: argparse.Namespace) -> int:
    from libcourier.spool import list_queue
    inst = Instance(None)
    try:
        inst.start("authdaemond")
        t0 = time.monotonic()
        write_deferred(inst.layout.spooldir, args.count)
        print(f"# {args.count} messages written in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
        inst.start("courierd")
        pid = inst.pid("courierd")
        peak, samples = 0, []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            try:
                kb = rss_kb(pid)
            except OSError:
                raise SystemExit("courierd exited") from None
            peak = max(peak, kb)
            samples.append(kb)
            time.sleep(1.0)
        left = len(list_queue(inst.layout.spooldir))
        tried = attempts_logged(inst.layout.logdir / "courierd.log")
    finally:
        inst.close()
    print(f"courierd with {args.count} deferred messages: RSS peak {peak / 1024:.1f} MB, "
          f"last {samples[-1] / 1024:.1f} MB after {args.seconds} s "
          f"({left} still queued, {tried} attempts made; goal < 300 MB)")
    return 0 if peak < 300 * 1024 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--messages", type=int, default=2000)
    r.add_argument("--size", type=int, default=4096)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--maxdels", type=int, default=None)
    s = sub.add_parser("smtp")
    s.add_argument("--messages", type=int, default=2000)
    s.add_argument("--size", type=int, default=4096)
    s.add_argument("--sessions", type=int, default=10)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--maxdels", type=int, default=None)
    m = sub.add_parser("memory")
    m.add_argument("--count", type=int, default=100000)
    m.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    return {"rate": cmd_rate, "smtp": cmd_smtp, "memory": cmd_memory}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
