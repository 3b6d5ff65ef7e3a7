"""Start, stop, reload and report the suite's daemons (docs/INTERNALS.md, "Services").

Each daemon runs in the foreground and writes RUNDIR/<service>.pid only once it
accepts connections, so "started" means: the pid file exists and names a live
process. We start each daemon in its own session (its pid is its process
group and session id), which lets `stop` reach forked children if a daemon
ignores SIGTERM, and lets the tests find every process of an instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import to_bool
from libcourier.layout import Layout, load_layout
from libcourier.pidfile import pid_alive, read_pidfile

START_TIMEOUT = 20.0  # seconds for every daemon to write its pid file
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
POLL = 0.05
STRAGGLER_GRACE = 2.0  # seconds for a stopped daemon's leftover children
LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    module: str
    config_files: tuple[str, ...]
    start_key: str | None  # None: always started
    listener: bool  # listeners stop before courierd and authd

    def command(self, etc: Path) -> list[str]:
        cmd = [sys.executable, "-m", self.module, "-C", str(etc)]
        if self.listener:
            cmd += ["--service", self.name]
        return cmd


# The table of docs/INTERNALS.md, in start order.
SERVICES: tuple[Service, ...] = (
    Service("authdaemond", "courier_authd", ("authdaemonrc",), None, False),
    Service("courierd", "courier_deliver", ("courierd",), None, False),
    Service("esmtpd", "courier_smtpd", ("esmtpd",), "ESMTPDSTART", True),
    Service("esmtpd-msa", "courier_smtpd", ("esmtpd", "esmtpd-msa"), "ESMTPDSTART", True),
    Service("esmtpd-ssl", "courier_smtpd", ("esmtpd", "esmtpd-ssl"), "ESMTPDSSLSTART", True),
    Service("imapd", "courier_imapd", ("imapd",), "IMAPDSTART", True),
    Service("imapd-ssl", "courier_imapd", ("imapd", "imapd-ssl"), "IMAPDSSLSTART", True),
    Service("pop3d", "courier_pop3d", ("pop3d",), "POP3DSTART", True),
    Service("pop3d-ssl", "courier_pop3d", ("pop3d", "pop3d-ssl"), "POP3DSSLSTART", True),
)
BY_NAME = {s.name: s for s in SERVICES}


class ControlError(Exception):
    """A problem `courier` reports in one line and exits 1 for."""


def select(names: Sequence[str]) -> list[Service]:
    """The named services in table order; all of them when none are named."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ControlError(f"unknown service {', '.join(unknown)} "
                           f"(known: {' '.join(BY_NAME)})")
    if not names:
        return list(SERVICES)
    wanted = set(names)
    return [s for s in SERVICES if s.name in wanted]


def is_enabled(etc: Path, svc: Service) -> bool:
    """Courier's *START keys: a listener whose file says NO (or is missing) is not started."""
    if svc.start_key is None:
        return True
    paths = [etc / f for f in svc.config_files]
    if not paths[-1].exists():
        return False
    scope = read_rc_files(paths, missing_ok=True)
    value = scope.get(svc.start_key)
    if value is None:
        return False
    try:
        return to_bool(value.value)
    except ValueError as e:
        raise ControlError(f"{value.path}:{value.line}: {svc.start_key}: {e}") from None


def running_pid(layout: Layout, svc: Service) -> int | None:
    pid = read_pidfile(layout.pidfile(svc.name))
    return pid if pid is not None and pid_alive(pid) else None


def _log_tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 16384))
        data = fh.read()
    lines = data.decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


@dataclass(slots=True)
class Started:
    svc: Service
    proc: subprocess.Popen[bytes]
    log: Path | None


def _spawn(layout: Layout, svc: Service, foreground: bool) -> Started:
    # A stale pid file (a daemon killed with -9) must not look like success.
    try:
        layout.pidfile(svc.name).unlink()
    except FileNotFoundError:
        pass
    log: Path | None = None
    if foreground or layout.logdir is None:
        out: int | TextIO = sys.stderr if foreground else subprocess.DEVNULL
    else:
        layout.logdir.mkdir(parents=True, exist_ok=True)
        log = layout.logdir / f"{svc.name}.log"
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    try:
        proc = subprocess.Popen(
            svc.command(layout.etc), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True, cwd="/")
    finally:
        if isinstance(out, int) and out >= 0 and log is not None:
            os.close(out)
    return Started(svc, proc, log)


def _wait_ready(layout: Layout, started: list[Started], timeout: float
                ) -> tuple[Started | None, str]:
    """Wait until every started daemon's pid file names a live process.

    Returns (None, "") on success, else the first failure and why."""
    pending = list(started)
    deadline = time.monotonic() + timeout
    while pending:
        for st in list(pending):
            rc = st.proc.poll()
            if rc is not None:
                return st, f"exited with status {rc}"
            pid = read_pidfile(layout.pidfile(st.svc.name))
            if pid is not None and pid_alive(pid):
                pending.remove(st)
        if not pending:
            break
        if time.monotonic() > deadline:
            return pending[0], f"no pid file after {timeout:.0f} s"
        time.sleep(POLL)
    return None, ""


def start(etc: Path, names: Sequence[str], *, foreground: bool = False,
          out: TextIO = sys.stdout, err: TextIO = sys.stderr,
          timeout: float = START_TIMEOUT) -> tuple[int, list[Started]]:
    """Start the named (or all enabled) services; (exit status, what was started)."""
    layout = load_layout(etc)
    explicit = bool(names)
    wanted = [s for s in select(names) if explicit or is_enabled(etc, s)]
    layout.rundir.mkdir(parents=True, exist_ok=True)
    started: list[Started] = []
    # authd and courierd first: listeners ask authd and hand mail to courierd.
    phases = ([s for s in wanted if not s.listener], [s for s in wanted if s.listener])
    for phase in phases:
        batch: list[Started] = []
        for svc in phase:
            pid = running_pid(layout, svc)
            if pid is not None:
                print(f"{svc.name}: already running (pid {pid})", file=out)
                continue
            batch.append(_spawn(layout, svc, foreground))
        started += batch
        failed, why = _wait_ready(layout, batch, timeout)
        if failed is not None:
            print(f"courier: {failed.svc.name} did not start: {why}", file=err)
            tail = _log_tail(failed.log)
            if tail:
                print(f"--- last lines of {failed.log}:", file=err)
                print(tail, file=err)
            terminate([st.proc.pid for st in reversed(started)], layout,
                      [st.svc for st in reversed(started)])
            return 1, []
        for st in batch:
            print(f"{st.svc.name}: started (pid {st.proc.pid})", file=out)
    return 0, started


def _order_for_stop(services: Iterable[Service]) -> list[list[Service]]:
    """Listeners together first, then courierd, then authd last (mail in flight
    is handed to courierd, which may still ask authd)."""
    svcs = list(services)
    return [[s for s in svcs if s.listener],
            [s for s in svcs if s.name == "courierd"],
            [s for s in svcs if s.name == "authdaemond"]]


def _signal_group(pid: int, sig: int) -> None:
    """Signal a daemon and the children it forked: we started it with
    start_new_session, so its pid names its process group, which outlives the
    leader as long as one member is left (the kernel does not reuse the id)."""
    try:
        os.killpg(pid, sig)
        return
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    try:
        os.kill(pid, sig)  # not a group leader (started by someone else)
    except ProcessLookupError:
        pass


def _group_alive(pid: int) -> bool:
    if pid_alive(pid):
        return True
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return _group_has_live_member(pid)


def _group_has_live_member(pgid: int) -> bool:
    # killpg(0) also succeeds for a group of zombies; ask /proc who is left.
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def terminate(pids: Sequence[int], layout: Layout, services: Sequence[Service],
              timeout: float = STOP_TIMEOUT,
              reap: Callable[[], None] | None = None) -> list[str]:
    """SIGTERM the daemons and wait (bounded); SIGKILL a daemon that will not
    stop. Children a daemon leaves behind in its process group (a session it
    did not end) get SIGTERM, a short grace, then SIGKILL: `stop` means no
    process of the service is left. Returns the names killed hard."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def wait(check: Callable[[int], bool], todo: Sequence[int], limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if reap:
                reap()
            if not any(check(p) for p in todo):
                return
            time.sleep(POLL)

    wait(pid_alive, pids, timeout)
    killed: list[str] = []
    for pid, svc in zip(pids, services, strict=True):
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            killed.append(svc.name)
            # It could not remove its pid file itself.
            try:
                if read_pidfile(layout.pidfile(svc.name)) == pid:
                    layout.pidfile(svc.name).unlink()
            except FileNotFoundError:
                pass
    leftovers = [p for p in pids if _group_alive(p)]
    if leftovers:
        wait(_group_alive, leftovers, STRAGGLER_GRACE)  # they may be finishing already
        for p in leftovers:
            if _group_alive(p):
                _signal_group(p, signal.SIGTERM)
        wait(_group_alive, leftovers, STRAGGLER_GRACE)
        for p in leftovers:
            if _group_alive(p):
                _signal_group(p, signal.SIGKILL)
        wait(_group_alive, leftovers, STRAGGLER_GRACE)
    if reap:
        reap()
    return killed


def stop(etc: Path, names: Sequence[str], *, out: TextIO = sys.stdout,
         timeout: float = STOP_TIMEOUT) -> int:
    layout = load_layout(etc)
    for group in _order_for_stop(select(names)):
        running = [(s, running_pid(layout, s)) for s in group]
        todo = [(s, pid) for s, pid in running if pid is not None]
        if not todo:
            continue
        killed = terminate([pid for _, pid in todo], layout, [s for s, _ in todo], timeout)
        for svc, pid in todo:
            how = "killed (did not stop on SIGTERM)" if svc.name in killed else "stopped"
            print(f"{svc.name}: {how} (pid {pid})", file=out)
    return 0


def status(etc: Path, names: Sequence[str], *, out: TextIO = sys.stdout) -> int:
    """One line per service; exit 0 when every enabled (or named) service runs,
    3 otherwise (the LSB status code for "not running")."""
    layout = load_layout(etc)
    explicit = bool(names)
    rc = 0
    for svc in select(names):
        pid = running_pid(layout, svc)
        enabled = explicit or is_enabled(etc, svc)
        if pid is not None:
            line = f"running (pid {pid})"
        else:
            line = "stopped" if enabled else "stopped (disabled)"
            if enabled:
                rc = 3
        print(f"{svc.name}: {line}", file=out)
    return rc


def reload(etc: Path, names: Sequence[str], *, out: TextIO = sys.stdout) -> int:
    layout = load_layout(etc)
    for svc in select(names):
        pid = running_pid(layout, svc)
        if pid is None:
            if names:
                print(f"{svc.name}: not running", file=out)
            continue
        os.kill(pid, signal.SIGHUP)
        print(f"{svc.name}: reloaded (pid {pid})", file=out)
    return 0


def hup_if_running(layout: Layout, names: Iterable[str]) -> list[str]:
    """SIGHUP the named services that run; return which were signalled."""
    done = []
    for name in names:
        pid = running_pid(layout, BY_NAME[name])
        if pid is not None:
            try:
                os.kill(pid, signal.SIGHUP)
                done.append(name)
            except ProcessLookupError:
                pass
    return done


def foreground(etc: Path, names: Sequence[str], *, out: TextIO = sys.stdout,
               err: TextIO = sys.stderr) -> int:
    """`courier start --foreground`: start, stay attached, stop all on SIGINT/SIGTERM."""
    rc, started = start(etc, names, foreground=True, out=out, err=err)
    if rc != 0:
        return rc
    if not started:
        print("courier: nothing to start", file=err)
        return 0
    layout = load_layout(etc)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print("courier: running in the foreground; Ctrl-C stops everything", file=out)
        out.flush()
        while not stopping and any(st.proc.poll() is None for st in started):
            time.sleep(0.2)
        for st in started:
            if st.proc.poll() is not None and not stopping:
                print(f"courier: {st.svc.name} exited with status {st.proc.returncode}",
                      file=err)
        alive = [st for st in started if st.proc.poll() is None]
        for group in _order_for_stop(st.svc for st in alive):
            members = [st for st in alive if st.svc in group]
            if not members:
                continue
            terminate([st.proc.pid for st in members], layout, [st.svc for st in members],
                      reap=lambda: [st.proc.poll() for st in started])
        print("courier: stopped", file=out)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
