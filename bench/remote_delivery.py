#!/usr/bin/env python3
"""Remote delivery throughput, courier-py beside Postfix in one run (issue 8:
"500 messages to a remote loopback server").

    .venv/bin/python bench/remote_delivery.py [-n 500] [--size 4096] [--rounds 3]
        [--mta ours,postfix] [--mode prequeue,smtp] [--sessions 10] [--dns]
        [--maxdels N] [--profile FILE]

Both MTAs relay every message to the same kind of receiver: Postfix's smtp-sink
(C, its own process, PIPELINING/8BITMIME/DSN, keeps nothing) on 127.0.0.2, a fresh
one for every trial, so its count starts at 0. Routing is static by default, no
DNS: courier-py by an `esmtproutes` line (`remote.bench: 127.0.0.2,PORT`), Postfix
by `relayhost = [127.0.0.2]:PORT`. With --dns both look the mail exchanger up:
dnsmasq on a 127.53.0.x address, port 53, answers `remote.bench MX 10
mx.remote.bench`, `mx.remote.bench A 127.0.0.2`; courier-py asks it through
ESMTP_RESOLVER (with ESMTPPORT = the sink's port), Postfix through a resolv.conf
of its own mount namespace (bench/postfix_private.py; `relayhost =
remote.bench:PORT`, which is an MX lookup).
Every trial uses a fresh instance: `courier init` in a temp dir, or a private
Postfix (bench/postfix_private.py) that is not the anchors' one.

Modes (the messages always enter through each MTA's own SMTP server, from
127.0.0.1, relaying as a trusted client: RELAYCLIENT in smtpaccess / mynetworks):

- prequeue: the N messages are accepted while nothing delivers (courier-py:
  esmtpd runs, courierd does not; Postfix: every message is put on hold), the
  MTA is stopped (Postfix's held mail released to the deferred queue with
  `postsuper -H ALL`), and the clock runs from the start command (`courier
  start courierd` / `postfix start`) until the sink has all N and the queue is
  empty: the queue run alone, start-up included.
- smtp: the whole MTA runs; the clock runs from the first connection of
  --sessions concurrent SMTP sessions (N/sessions messages each, MAIL/RCPT/DATA
  pipelined) until the sink has all N and the queue is empty.

Rounds interleave the MTAs (the order flips every round) so machine load hits
both alike. CPU seconds are user+system of the MTA's daemon process trees
(live processes plus the children they reaped: courier-py's daemons by their
pid files, Postfix's master and everything under it), taken before and after
the timed part; in prequeue mode the daemons start inside it, so "before" is 0,
and the start command's own CPU (our control CLI, postfix-script) is reported
apart. The machine's load average and how many CPUs were busy during the trial
(all processes, from /proc/stat) are printed with every trial, since other
work on the machine slows wall figures but not CPU seconds.

Besides the clock above, the sink's first-to-last accepted message gives the
delivery rate without start-up or feeding ("first to last"). One JSON line per
trial, then a table of medians over the rounds. Run as root (Postfix's master and
`smtp-sink -u nobody` need it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.resolver
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from postfix_private import PostfixInstance  # noqa: E402

from libcourier.layout import load_layout  # noqa: E402
from libcourier.spool import list_queue  # noqa: E402

PYSPY = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
WAIT = 600.0                 # seconds for one trial's deliveries
FEED_TIMEOUT = 120.0         # seconds for one SMTP reply while feeding
SINK_ADDR = "127.0.0.2"      # the receiving server: another loopback address
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
POLL = 0.01
FROM = "bench@bench.test"


# ------------------------------------------------------------------ receiver
class Sink:
    """Postfix's smtp-sink on SINK_ADDR, run as nobody; `-c` prints its counters
    ("sess=N quit=N mesg=N", CR-terminated) as they change, read by a thread."""

    _COUNTS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")

    def __init__(self) -> None:
        self.port = free_port(SINK_ADDR)
        self.sessions = 0
        self.count = 0
        self.first = 0.0          # monotonic time the first message was accepted
        self.last = 0.0           # ... and the latest
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-c", "-a", "-C", "-F", "-u", "nobody", "-h", "sink.bench",
             f"{SINK_ADDR}:{self.port}", "256"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: port_open(SINK_ADDR, self.port), 20, "smtp-sink listening")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(4096):
            buf = (buf + chunk)[-4096:]
            records = buf.split(b"\r")
            buf = records[-1]
            for rec in records[:-1]:
                m = self._COUNTS.search(rec)
                if m:
                    count = int(m.group(3))
                    if count > self.count:
                        self.last = time.monotonic()
                        self.first = self.first or self.last
                    self.sessions, self.count = int(m.group(1)), count

    def close(self) -> None:
        stop(self.proc)


class Dns:
    """dnsmasq, authoritative for remote.bench only (no upstream, no /etc/hosts), on
    port 53 of a free 127.53.0.x address: port 53 because resolv.conf, where Postfix
    takes its server from, cannot name another port."""

    def __init__(self, ttl: int) -> None:
        self.addr = next((a for a in (f"127.53.0.{k}" for k in range(1, 50))
                          if port_free(a, 53)), None)
        if self.addr is None:
            raise RuntimeError("no 127.53.0.x address with port 53 free")
        self.proc = subprocess.Popen(
            [DNSMASQ, "-k", "--no-resolv", "--no-hosts", "-C", "/dev/null", "--port=53",
             f"--listen-address={self.addr}", "--bind-interfaces", "--local=/remote.bench/",
             # dnsmasq answers its own records with TTL 0 unless told: real MX and A
             # records live minutes to days, and a resolver may cache them so long.
             f"--local-ttl={ttl}",
             "--mx-host=remote.bench,mx.remote.bench,10",
             f"--host-record=mx.remote.bench,{SINK_ADDR}", "--pid-file=", "--log-facility=-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 20, "dnsmasq answering")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with status {self.proc.returncode}")
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.addr]
        r.lifetime = 1.0
        try:
            return bool(r.resolve("remote.bench", "MX"))
        except dns.exception.DNSException:
            return False

    def close(self) -> None:
        stop(self.proc)


# ------------------------------------------------------------------ helpers
def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a helper process we started: TERM, then KILL if it has not gone in 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def port_free(addr: str, port: int) -> bool:
    """Both UDP and TCP `port` free on `addr` (dnsmasq binds both)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return False
    return True


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def free_base() -> int:
    """A port base whose courier init ports (base+25, +110, ...) are all free."""
    for _ in range(200):
        base = free_port("127.0.0.1") // 1000 * 1000
        if base < 10000 or base > 60000:
            continue
        try:
            for off in (25, 110, 143, 465, 587, 993, 995):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def port_open(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(cond: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)


def proc_cpu(p: psutil.Process) -> float:
    """CPU seconds of one process and of the children it reaped. utime/stime come
    in 10 ms ticks, truncated per process, which is most of a light Postfix
    service's total: live threads' on-CPU time is taken from schedstat (ns), the
    ticks only when larger (threads that have exited). Reaped children's times are
    summed by the kernel in ns before the one truncation, so ticks do there."""
    t = p.cpu_times()
    ns = 0
    try:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            with open(f"/proc/{p.pid}/task/{tid}/schedstat") as fh:
                ns += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return max(ns / 1e9, t.user + t.system) + t.children_user + t.children_system


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds of the processes and all their descendants, with the times of
    the children each of them has reaped, by "root label:process name"."""
    out: dict[str, float] = {}
    seen: set[int] = set()
    for label, pid in roots.items():
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                # Our daemons set a process title with their state after the name.
                key = f"{label}:{p.name().split(':')[0].split()[0]}"
                out[key] = out.get(key, 0.0) + proc_cpu(p)
            except psutil.NoSuchProcess:
                continue
    return out


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in sorted(after.items())
            if v - before.get(k, 0.0) >= 0.0005}


def own_children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    return t.idle + t.iowait, sum(t)


def message(i: int, size: int) -> bytes:
    head = (f"From: {FROM}\r\nTo: u{i}@remote.bench\r\nSubject: bench {i}\r\n"
            f"Date: Fri, 27 Nov 2026 00:00:00 +0000\r\n"
            f"Message-ID: <bench.{i}.{os.getpid()}@bench.test>\r\n\r\n").encode()
    lines = max(1, (size - len(head)) // 77)
    return head + b"x" * 75 + b"\r\n" + (b"x" * 75 + b"\r\n") * (lines - 1)


# ------------------------------------------------------------------ SMTP feed
async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), FEED_TIMEOUT)
        if not line:
            raise RuntimeError("feed: connection closed")
        if line[3:4] != b"-":
            return line


async def _feed_session(port: int, numbers: range, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    try:
        await _reply(reader)
        writer.write(b"EHLO client.bench\r\n")
        if not (await _reply(reader)).startswith(b"250"):
            raise RuntimeError("feed: EHLO refused")
        for i in numbers:
            writer.write(f"MAIL FROM:<{FROM}>\r\nRCPT TO:<u{i}@remote.bench>\r\nDATA\r\n"
                         .encode())
            for what in (b"MAIL", b"RCPT", b"DATA"):
                r = await _reply(reader)
                if not r.startswith(b"354" if what == b"DATA" else b"250"):
                    raise RuntimeError(f"feed: {what.decode()} -> {r!r}")
            writer.write(message(i, size) + b".\r\n")
            r = await _reply(reader)
            if not r.startswith(b"250"):
                raise RuntimeError(f"feed: end of data -> {r!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


def feed(port: int, n: int, sessions: int, size: int) -> None:
    """N messages to 127.0.0.1:port over `sessions` concurrent SMTP sessions."""
    async def run() -> None:
        await asyncio.gather(*(_feed_session(port, range(k, n, sessions), size)
                               for k in range(min(sessions, n))))
    asyncio.run(run())


# ------------------------------------------------------------------ the MTAs
def courier(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "libcourier.control", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"courier {args[0]}: {r.stdout.strip()} {r.stderr.strip()}")


class Ours:
    name = "courier-py"

    def __init__(self, tmp: Path, sink_port: int, maxdels: int, dns: str | None) -> None:
        self.etc = tmp / "inst" / "etc"
        courier("init", str(tmp / "inst"), "--port-base", str(free_base()),
                "--hostname", "bench.test")
        if dns:
            with open(self.etc / "courierd", "a") as fh:
                fh.write(f"ESMTP_RESOLVER={dns}:53\nESMTPPORT={sink_port}\n")
        else:
            (self.etc / "esmtproutes").write_text(f"remote.bench: {SINK_ADDR},{sink_port}\n")
        (self.etc / "smtpaccess.txt").write_text("127.0.0.1\tallow,RELAYCLIENT\n")
        with open(self.etc / "esmtpd", "a") as fh:
            fh.write(f"ACCESSFILE={self.etc / 'smtpaccess.txt'}\n")
        if maxdels:
            with open(self.etc / "courierd", "a") as fh:
                fh.write(f"MAXDELS={maxdels}\n")
        self.lay = load_layout(self.etc)
        self.smtp_port = int(re.search(r"^PORT=(\d+)", (self.etc / "esmtpd").read_text(),
                                       re.M).group(1))   # type: ignore[union-attr]

    def start(self, *, delivering: bool, accepting: bool) -> None:
        names = (["authdaemond", "esmtpd"] if accepting else []) + (
            ["courierd"] if delivering else [])
        courier("start", "-C", str(self.etc), *names)

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "libcourier.control", "stop", "-C",
                        str(self.etc)], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=120)

    def pids(self) -> dict[str, int]:
        out = {}
        for svc in ("authdaemond", "courierd", "esmtpd"):
            try:
                out[svc] = int(self.lay.pidfile(svc).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return out

    def queued(self) -> int:
        return len(list_queue(self.lay.spooldir))


class Postfix:
    name = "postfix"

    def __init__(self, tmp: Path, sink_port: int, maxdels: int, dns: str | None) -> None:
        self.pf = PostfixInstance(tmp / "postfix", free_port("127.0.0.1"),
                                  "remote.bench" if dns else SINK_ADDR, sink_port,
                                  nameserver=dns)
        self.smtp_port = self.pf.smtp_port

    def start(self, *, delivering: bool, accepting: bool) -> None:
        # "Accepting only": every message accepted is held (hold queue); before
        # delivering, the held mail is released to the deferred queue, which qmgr
        # scans at start. Postfix's master starts its services on demand, so the
        # smtpd listener costs nothing when only the queue is to be run.
        if delivering and self.pf.queued():
            self.pf.release()
        self.pf.configure(hold=not delivering)
        self.pf.start()
        if accepting:
            wait_for(lambda: port_open("127.0.0.1", self.smtp_port), 30, "postfix smtpd")

    def stop(self) -> None:
        self.pf.stop()

    def pids(self) -> dict[str, int]:
        pid = self.pf.master_pid()
        return {"master": pid} if pid else {}

    def queued(self) -> int:
        return self.pf.queued()


MTAS: dict[str, type[Ours] | type[Postfix]] = {"ours": Ours, "postfix": Postfix}


@dataclass
class Trial:
    mta: str
    mode: str
    n: int
    delivered: int
    sessions: int
    seconds: float
    run_seconds: float       # first to last message at the sink
    feed_seconds: float      # smtp mode: until the last message was accepted
    cpu: float               # daemon trees, seconds
    cpu_by: dict[str, float]  # ... by "service:process name"
    start_cpu: float         # the start command's own processes, seconds
    busy_cpus: float         # machine-wide CPUs busy during the timed part
    load: float
    round: int = 0

    @property
    def run_rate(self) -> float:
        return (self.delivered - 1) / self.run_seconds if self.run_seconds > 0 else 0.0

    def row(self) -> dict[str, object]:
        return {"bench": "remote-delivery", "mta": self.mta, "mode": self.mode,
                "messages": self.n, "delivered": self.delivered, "sink_sessions": self.sessions,
                "seconds": round(self.seconds, 3),
                "per_second": round(self.delivered / self.seconds, 1),
                "feed_seconds": round(self.feed_seconds, 3),
                "sink_first_to_last_seconds": round(self.run_seconds, 3),
                "per_second_first_to_last": round(self.run_rate, 1),
                "cpu_seconds": round(self.cpu, 3),
                "cpu_ms_per_msg": round(1000 * self.cpu / max(1, self.delivered), 3),
                "start_cmd_cpu_seconds": round(self.start_cpu, 3),
                "cpu_by_process": self.cpu_by,
                "machine_busy_cpus": round(self.busy_cpus, 2), "load1": round(self.load, 2),
                "complete": self.delivered >= self.n}


def profiler(pid: int, out: str) -> subprocess.Popen[bytes]:
    """py-spy sampling courierd and its children while they hold the GIL (Python
    CPU; not the system calls, which let go of it), collapsed stacks (--format raw),
    attached after `courier start` returned, so start-up is mostly not in it."""
    return subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--subprocesses",
                             "--gil", "--rate", "500", "--format", "raw", "--output", out],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def trial(kind: str, mode: str, args: argparse.Namespace, dns: str | None) -> Trial:
    sink = Sink()
    tmp = Path(tempfile.mkdtemp(prefix=f"courier-bench-remote-{kind}-", dir="/tmp"))
    os.chmod(tmp, 0o755)
    mta: Ours | Postfix | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        mta = MTAS[kind](tmp, sink.port, args.maxdels, dns)
        n = args.n
        done = lambda: sink.count >= n and mta.queued() == 0   # noqa: E731
        if mode == "prequeue":
            mta.start(delivering=False, accepting=True)
            feed(mta.smtp_port, n, args.sessions, args.size)
            wait_for(lambda: mta.queued() >= n, 60, "the pre-queued messages on disk")
            mta.stop()
            if sink.count:
                raise RuntimeError(f"{kind}: {sink.count} delivered while pre-queueing")
            load = os.getloadavg()[0]
            idle0, all0 = machine_busy()
            c0 = own_children_cpu()
            t0 = time.monotonic()
            mta.start(delivering=True, accepting=False)
            start_cpu = own_children_cpu() - c0
            fed = 0.0
            if args.profile and kind == "ours":
                spy = profiler(mta.pids()["courierd"], args.profile)
            cpu0: dict[str, float] = {}
        else:
            mta.start(delivering=True, accepting=True)
            load = os.getloadavg()[0]
            idle0, all0 = machine_busy()
            cpu0 = tree_cpu(mta.pids())
            start_cpu = 0.0
            t0 = time.monotonic()
            feed(mta.smtp_port, n, args.sessions, args.size)
            fed = time.monotonic() - t0
        deadline = t0 + WAIT
        while not done() and time.monotonic() < deadline:
            time.sleep(POLL)
        seconds = time.monotonic() - t0
        if spy is not None:
            spy.send_signal(signal.SIGINT)     # py-spy writes its file on SIGINT
            spy.wait(60)
        cpu_by = cpu_delta(tree_cpu(mta.pids()), cpu0)
        cpu = sum(cpu_by.values())
        idle1, all1 = machine_busy()
        busy = psutil.cpu_count() * (1 - (idle1 - idle0) / max(1e-9, all1 - all0))
        return Trial(MTAS[kind].name, mode, n, sink.count, sink.sessions, seconds,
                     sink.last - sink.first, fed, cpu, cpu_by,
                     start_cpu, busy, load)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        if mta is not None:
            mta.stop()
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)


def summary(trials: list[Trial]) -> str:
    lines = ["| MTA | mode | msg/s | msg/s first to last at sink | CPU ms/msg | "
             "start cmd CPU s | sink sessions | rounds | load1 | busy CPUs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(t.mode, t.mta) for t in trials})
    for mode, mta in keys:
        ts = [t for t in trials if (t.mode, t.mta) == (mode, mta)]
        rate = statistics.median(t.delivered / t.seconds for t in ts)
        run_rate = statistics.median(t.run_rate for t in ts)
        cpu = statistics.median(1000 * t.cpu / max(1, t.delivered) for t in ts)
        start = statistics.median(t.start_cpu for t in ts)
        lines.append(
            f"| {mta} | {mode} | {rate:.0f} | {run_rate:.0f} | {cpu:.2f} | {start:.2f} | "
            f"{statistics.median(t.sessions for t in ts):.0f} | {len(ts)} | "
            f"{min(t.load for t in ts):.1f}-{max(t.load for t in ts):.1f} | "
            f"{statistics.median(t.busy_cpus for t in ts):.2f} |")
    lines += ["", "CPU ms per message by process (median over the rounds):", ""]
    for mode, mta in keys:
        ts = [t for t in trials if (t.mode, t.mta) == (mode, mta)]
        names = sorted({k for t in ts for k in t.cpu_by})
        per_msg = {k: statistics.median(1000 * t.cpu_by.get(k, 0.0) / max(1, t.delivered)
                                        for t in ts) for k in names}
        parts = [f"{k} {v:.2f}" for k, v in per_msg.items()]
        lines.append(f"- {mta} {mode}: " + ", ".join(parts))
    # Both MTAs of one round ran back to back under about the same load: their
    # ratio per round is steadier than either figure.
    for mode in sorted({t.mode for t in trials}):
        pairs = [(a, b) for a in trials for b in trials
                 if a.mode == b.mode == mode and a.round == b.round
                 and a.mta == Ours.name and b.mta == Postfix.name]
        if pairs:
            rate = statistics.median(
                (b.delivered / b.seconds) / (a.delivered / a.seconds) for a, b in pairs)
            run = statistics.median(b.run_rate / a.run_rate for a, b in pairs if a.run_rate)
            cpu = statistics.median(
                (a.cpu / max(1, a.delivered)) / (b.cpu / max(1, b.delivered))
                for a, b in pairs if b.cpu)
            lines.append(f"- {mode}, per round (median of {len(pairs)}): Postfix's msg/s "
                         f"/ ours {rate:.2f}, first to last {run:.2f}; "
                         f"our CPU per message / Postfix's {cpu:.2f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mta", default="ours,postfix", help="comma list of: ours, postfix")
    ap.add_argument("--mode", default="prequeue,smtp", help="comma list of: prequeue, smtp")
    ap.add_argument("--prequeue", action="store_true", help="same as --mode prequeue")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions feeding")
    ap.add_argument("--profile", metavar="FILE",
                    help="py-spy courierd in the prequeue queue runs into FILE (raw, "
                         "collapsed stacks; one round, use a larger -n)")
    ap.add_argument("--dns", action="store_true",
                    help="route by MX records from a loopback dnsmasq instead of static routes")
    ap.add_argument("--dns-ttl", type=int, default=300,
                    help="TTL of those records (dnsmasq's own default is 0: nothing cached)")
    ap.add_argument("--maxdels", type=int, default=0, help="courierd MAXDELS (0: default)")
    args = ap.parse_args()
    kinds = args.mta.split(",")
    modes = ["prequeue"] if args.prequeue else args.mode.split(",")
    if not set(kinds) <= set(MTAS) or not set(modes) <= {"prequeue", "smtp"}:
        ap.error("unknown --mta or --mode value")
    if not (0 <= args.dns_ttl <= 86400 and 1 <= args.n <= 100000 and 1 <= args.sessions <= 100 and 1 <= args.rounds <= 50):
        ap.error("-n 1..100000, --sessions 1..100, --rounds 1..50, --dns-ttl 0..86400")
    if os.geteuid() != 0:
        ap.error("run as root: Postfix's master and smtp-sink -u need it")
    if args.dns and not os.access(DNSMASQ, os.X_OK):
        ap.error(f"{DNSMASQ} (Debian package dnsmasq) is missing")
    if not os.access(SMTP_SINK, os.X_OK):
        ap.error(f"{SMTP_SINK} (Postfix's smtp-sink, Debian package postfix) is missing")
    trials: list[Trial] = []
    ok = True
    dnsd = Dns(args.dns_ttl) if args.dns else None
    try:
        ok = run_rounds(args, kinds, modes, dnsd, trials)
    finally:
        if dnsd:
            dnsd.close()
    print(f"\n{args.n} messages of {args.size} bytes, {args.sessions} feeding sessions, "
          f"{f'MX from a loopback DNS, TTL {args.dns_ttl}' if dnsd else 'static routes'}, "
          f"{psutil.cpu_count()} CPUs\n")
    print(summary(trials))
    return 0 if ok else 1


def run_rounds(args: argparse.Namespace, kinds: list[str], modes: list[str],
               dnsd: Dns | None, trials: list[Trial]) -> bool:
    ok = True
    for r in range(args.rounds):
        for mode in modes:
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                t = trial(kind, mode, args, dnsd.addr if dnsd else None)
                t.round = r + 1
                ok &= t.delivered >= t.n
                trials.append(t)
                print(json.dumps({"round": r + 1, **t.row()}), flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
