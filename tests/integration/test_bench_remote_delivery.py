"""bench/remote_delivery.py end to end, small: courier-py and a private Postfix each
deliver 20 messages to smtp-sink in both modes by static routes, and over SMTP
routed by MX from the loopback dnsmasq; every trial must be complete, with CPU measured. Needs
root (Postfix's master, smtp-sink -u) and the Debian packages postfix and dnsmasq;
skips without them. The anchors' Postfix, if running, is not touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "remote_delivery.py"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="Postfix's master needs root"),
    pytest.mark.skipif(shutil.which("postfix") is None or shutil.which("smtp-sink") is None,
                       reason="Postfix is not installed (Debian package postfix)"),
]


def run_bench(*args: str) -> list[dict]:
    r = subprocess.run([sys.executable, str(BENCH), "-n", "20", "--rounds", "1",
                        "--sessions", "4", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| courier-py | smtp |" in r.stdout and "| postfix | smtp |" in r.stdout
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def check(rows: list[dict], modes: tuple[str, ...]) -> None:
    assert {(t["mta"], t["mode"]) for t in rows} == {
        (m, mode) for m in ("courier-py", "postfix") for mode in modes}
    for t in rows:
        assert t["complete"] and t["delivered"] == 20, t
        assert t["cpu_seconds"] > 0 and t["per_second"] > 0, t
    by = {(t["mta"], t["mode"]): t["cpu_by_process"] for t in rows}
    # The work was done, and measured, where it should have been.
    for mode in modes:
        assert any(k.startswith("courierd:") for k in by["courier-py", mode])
        assert "master:smtp" in by["postfix", mode]
    if "smtp" in modes:
        assert any(k.startswith("esmtpd:") for k in by["courier-py", "smtp"])
        assert "master:smtpd" in by["postfix", "smtp"]


def test_static_routes() -> None:
    check(run_bench(), ("prequeue", "smtp"))


@pytest.mark.skipif(shutil.which("dnsmasq") is None,
                    reason="dnsmasq is not installed (Debian package dnsmasq)")
def test_mx_from_loopback_dns() -> None:
    before = Path("/etc/resolv.conf").read_bytes()
    check(run_bench("--dns", "--mode", "smtp"), ("smtp",))
    # Postfix's resolv.conf was bind-mounted in its own mount namespace only.
    assert Path("/etc/resolv.conf").read_bytes() == before
