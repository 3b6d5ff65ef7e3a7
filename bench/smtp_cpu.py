#!/usr/bin/env python3
"""esmtpd CPU per accepted message (issue 7): `mailbench.py smtp-throughput` against a
fresh `courier init` instance running esmtpd and authdaemond only (no courierd, so the
figure is the accept path alone), with psutil cpu_times (user+system) of

- the esmtpd listener and its connection children (an exited child's times are in the
  listener's children_user/children_system once reaped, a live one's are read from it:
  measured once every session of the run is over), and
- authdaemond's process tree (RCPT checks ask it), reported apart,

taken before and after each round, divided by the messages accepted. CPU time is
what the other daemons on a shared machine lose, so it is steadier than wall figures
under load; the wall rate is printed too, with the load average.

    .venv/bin/python bench/smtp_cpu.py                       # 3 rounds of 2,000 x 4 KB
    .venv/bin/python bench/smtp_cpu.py --rounds 1 --profile /tmp/esmtpd.svg   # py-spy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
WAIT_CHILDREN = 60.0      # seconds for the sessions' children to exit after a run


def tree_cpu(pid: int) -> float:
    """Seconds of user+system CPU of a process and its reaped and live descendants."""
    p = psutil.Process(pid)
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return total


def wait_no_children(pid: int) -> None:
    """Until every session is over: the listener counts no connection and no child is
    a zombie (its CPU would be in neither the listener's children_* nor a live child's).
    Idle children esmtpd keeps for the next connection (ListenerSpec.reuse) stay; their
    CPU is counted live by tree_cpu."""
    deadline = time.monotonic() + WAIT_CHILDREN
    while time.monotonic() < deadline:
        p = psutil.Process(pid)
        try:
            zombies = [c for c in p.children() if c.status() == psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            zombies = [None]
        if "(0 connections)" in " ".join(p.cmdline()) and not zombies:
            return
        time.sleep(0.05)


def pid_of(layout, service: str) -> int:
    return int(layout.pidfile(service).read_text().split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--profile", help="py-spy record the listener and children into this file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.smtp_goals import USER, WARMUP, Ours, mailbench
    from libcourier.layout import load_layout

    inst = Ours(courierd=False)
    rows = []
    try:
        layout = load_layout(Path(inst.etc))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                smtpd, authd = pid_of(layout, "esmtpd"), pid_of(layout, "authdaemond")
                break
            except (FileNotFoundError, ValueError):
                time.sleep(0.1)
        else:
            raise SystemExit("esmtpd/authdaemond pid files did not appear")
        mailbench("warmup", inst.port, USER, None, WARMUP, args.concurrency, args.size)
        inst.empty_spool()
        wait_no_children(smtpd)
        for _ in range(args.rounds):
            spy = None
            if args.profile:
                spy = subprocess.Popen(["py-spy", "record", "--subprocesses", "--pid", str(smtpd),
                                        "--rate", "250", "--nonblocking", "-o", args.profile,
                                        "--format", "speedscope" if args.profile.endswith(".json")
                                        else "raw" if args.profile.endswith(".txt")
                                        else "flamegraph"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            load = os.getloadavg()[0]
            s0, a0 = tree_cpu(smtpd), tree_cpu(authd)
            rec = mailbench("ours-accept", inst.port, USER, None, args.messages,
                            args.concurrency, args.size)
            wait_no_children(smtpd)
            s1, a1 = tree_cpu(smtpd), tree_cpu(authd)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            inst.empty_spool()
            if rec is None:
                continue
            n = rec["results"]["accepted"] or 1
            row = {"esmtpd_ms_per_msg": round((s1 - s0) * 1000 / n, 3),
                   "authd_ms_per_msg": round((a1 - a0) * 1000 / n, 3),
                   "accepted_per_s": rec["results"]["accepted_per_s"],
                   "accepted": rec["results"]["accepted"], "load1": round(load, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        inst.close()
    if rows:
        med = statistics.median(r["esmtpd_ms_per_msg"] for r in rows)
        print(f"esmtpd CPU per message: median {med:.3f} ms over {len(rows)} rounds "
              f"({args.messages} x {args.size} B, {args.concurrency} sessions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
