"""A real DNS server for tests: dnsmasq on 127.0.0.1, a free UDP/TCP port, a zone
given as dnsmasq options (--mx-host, --host-record, --dns-rr ...), authoritative
for the listed domains and answering nothing else (no upstream, no /etc/hosts)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq"
                                       if Path("/usr/sbin/dnsmasq").exists() else None)
needs_dnsmasq = pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq is not installed "
                                   "(Debian package dnsmasq)")


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(200):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def _answers(port: int, probe: str) -> bool:
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = 1.0
    try:
        r.resolve(probe, "A")
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextmanager
def dnsmasq(zone_args: list[str], local_domains: list[str], probe: str,
            port: int | None = None, query_log: Path | None = None) -> Iterator[int]:
    """Run dnsmasq with the zone; yield its port once `probe` (a name with an A
    record in the zone) resolves; stop it by its pid. query_log: every query
    is logged there ("query[MX] name from ..."), for tests counting lookups."""
    assert DNSMASQ is not None
    port = port or free_udp_tcp_port()
    proc = subprocess.Popen(
        [DNSMASQ, "-k", "--no-resolv", "--no-hosts", "-C", "/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces",
         *(f"--local=/{d}/" for d in local_domains),
         "--pid-file=",
         *(("--log-facility=-",) if query_log is None
           else ("--log-queries", f"--log-facility={query_log}")),
         *zone_args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not _answers(port, probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None \
                    else ""
                pytest.fail(f"dnsmasq did not start: {err}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
