"""Shared by every test folder: the instance fixtures the integration and
client tests use, and who runs the tests (root changes what they check).

An instance per test: `courier init` on free loopback ports, users,
`courier start`, and on the way out `courier stop` plus proof (psutil) that no
process of the instance is left.

Every daemon is started by `courier start` in its own session, so "a process
of the instance" is any live process whose session id is one of the
services' pids; forked session children and courierlocal stay in it.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from libcourier.control.init import PORT_OFFSETS
from libcourier.control.services import SERVICES
from libcourier.layout import load_layout
from libcourier.pidfile import read_pidfile

IS_ROOT = os.geteuid() == 0
COMMAND_TIMEOUT = 60  # seconds for one `courier` command (start waits up to 20 s)
LEFTOVER_WAIT = 5.0


def free_port_base(tries: int = 200) -> int:
    """A base whose seven ports (base+25 ... base+995) are all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20000, 64000, 1000) + rng.randrange(0, 500)
        socks = []
        try:
            for off in PORT_OFFSETS.values():
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port base found")


def courier(*args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
            ) -> subprocess.CompletedProcess[str]:
    """Run the admin command as an admin would (a fresh process)."""
    r = subprocess.run([sys.executable, "-m", "libcourier.control", *args],
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"courier {' '.join(args)} exited {r.returncode}\n"
                             f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


@dataclass
class Instance:
    root: Path
    port_base: int
    users: dict[str, str] = field(default_factory=dict)  # address -> password
    sessions: set[int] = field(default_factory=set)  # service pids seen running

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def port(self, name: str) -> int:
        return self.port_base + PORT_OFFSETS[name]

    @property
    def layout(self):
        return load_layout(self.etc)

    def courier(self, command: str, *args: str, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """`courier COMMAND -C ETC ARGS...` (init takes no -C: use run)."""
        return courier(command, "-C", str(self.etc), *args, check=check)

    @staticmethod
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return courier(*args, check=check)

    def adduser(self, address: str, password: str) -> None:
        self.courier("adduser", address, password)
        self.users[address] = password

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.root / "mail" / domain / local.lower() / "Maildir"

    def logs(self) -> str:
        out = []
        for p in sorted((self.root / "var" / "log").glob("*.log")):
            text = p.read_text(errors="replace")[-4000:]
            out.append(f"--- {p.name}\n{text}")
        return "\n".join(out)

    def record_pids(self) -> None:
        for svc in SERVICES:
            pid = read_pidfile(self.layout.pidfile(svc.name))
            if pid is not None:
                self.sessions.add(pid)

    def start(self, *services: str) -> None:
        r = self.courier("start", *services, check=False)
        self.record_pids()
        if r.returncode != 0:
            raise AssertionError(f"courier start failed ({r.returncode}):\n{r.stdout}{r.stderr}"
                                 f"\n{self.logs()}")

    def pid(self, service: str) -> int | None:
        return read_pidfile(self.layout.pidfile(service))

    def leftovers(self) -> list[psutil.Process]:
        left = []
        for p in psutil.process_iter(["status"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if os.getsid(p.pid) in self.sessions:
                    left.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return left

    def assert_no_process_left(self) -> None:
        deadline = time.monotonic() + LEFTOVER_WAIT
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.leftovers()
        desc = []
        for p in left:
            try:
                desc.append(f"{p.pid} {p.name()} {' '.join(p.cmdline())}")
            except psutil.Error:
                pass
        assert not desc, "processes of the instance left after stop:\n" + "\n".join(desc)


def _instance_root() -> Path:
    # As root the daemon account must reach the instance: pytest's tmp_path
    # base is 0700, so use a fresh 0755 dir directly under /tmp.
    d = Path(tempfile.mkdtemp(prefix="courier-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def new_instance() -> Iterator[Instance]:
    """An initialised instance (not started) that is stopped and removed afterwards."""
    root = _instance_root()
    inst = Instance(root / "inst", free_port_base())
    courier("init", str(inst.root), "--port-base", str(inst.port_base), "--hostname", "mx.test")
    try:
        yield inst
    finally:
        inst.record_pids()
        try:
            inst.courier("stop", check=False)
            inst.assert_no_process_left()
        finally:
            for p in inst.leftovers():  # only our own instance's processes
                try:
                    p.kill()
                except psutil.Error:
                    pass
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running_instance(new_instance: Instance) -> Instance:
    """The instance with two users, every enabled service started."""
    new_instance.adduser("alice@example.com", "alice-secret")
    new_instance.adduser("bob@example.net", "bob-secret")
    new_instance.start()
    return new_instance


def pytest_report_header(config):  # noqa: ARG001 - pytest's hook signature
    uid = os.geteuid()
    return f"courier-py tests running as {pwd.getpwuid(uid).pw_name} (uid {uid})"
