"""authdaemond: `python -m courier_authd -C ETC`.

The parent binds the socket the way authdaemond does (socket.tmp, chmod 0666,
rename to socket, in a 0750 directory owned by root:MAILGROUP), forks `daemons`
workers, restarts any that die, reloads on SIGHUP (config and userdb; a bad new
config is logged and the old one kept) by replacing the workers, and on SIGTERM
stops them all, removes the socket and the pid file.

The parent keeps SIGCHLD/SIGTERM/SIGINT/SIGHUP blocked and takes them with
sigtimedwait, so no signal can arrive between "check" and "wait".
"""

from __future__ import annotations

import argparse
import gc
import grp
import logging
import logging.handlers
import mmap
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

from courier_authd.config import AuthdConfig, load_config
from courier_authd.core import Authenticator
from courier_authd.modules import BackendTempFail, make_modules
from courier_authd.throttle import ThrottlePolicy, ThrottleTable, table_size
from courier_authd.worker import fork_worker

from libcourier.authclient import MECHANISMS_FILE
from libcourier.config import ConfigError, config_dir
from libcourier.durable import write_atomic
from libcourier.layout import load_layout
from libcourier.pidfile import pid_alive, read_pidfile, remove_pidfile, write_pidfile

log = logging.getLogger("courier.authd")

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STOP_GRACE = 5.0
RESTART_BURST = 10       # more worker deaths than this within RESTART_WINDOW: slow down
RESTART_WINDOW = 10.0
PUBLISH_EVERY = 10.0     # seconds between checks of what the modules can verify


def setup_logging() -> None:
    root = logging.getLogger("courier")
    if root.handlers:
        return
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter("%(asctime)s authdaemond: %(message)s"))
    root.addHandler(err)
    if os.path.exists("/dev/log"):
        try:
            sl = logging.handlers.SysLogHandler("/dev/log", logging.handlers.SysLogHandler.LOG_MAIL)
            sl.setFormatter(logging.Formatter("authdaemond: %(message)s"))
            root.addHandler(sl)
        except OSError:
            pass
    root.setLevel(logging.INFO)


# The failed-login table, shared by every worker: mapped once before the first fork
# and kept across reloads (a SIGHUP must not forgive an attacker).
_SHARED: dict[str, object] = {}


def _shared_throttle():
    if "buf" not in _SHARED:
        _SHARED["buf"] = mmap.mmap(-1, table_size())
        _SHARED["lock"] = multiprocessing.Lock()   # a POSIX semaphore: no thread
    return _SHARED["buf"], _SHARED["lock"]


def build(etc: Path) -> tuple[AuthdConfig, Authenticator]:
    cfg = load_config(etc)
    try:
        modules = make_modules(cfg.modules, etc)
    except BackendTempFail as e:
        raise ConfigError(str(e)) from None
    throttle, lock = None, None
    if cfg.throttle_failures > 0:
        buf, lock = _shared_throttle()
        throttle = ThrottleTable(buf, ThrottlePolicy(
            after=cfg.throttle_failures, base=cfg.throttle_delay,
            cap=max(cfg.throttle_delay, cfg.throttle_maxdelay)))
    return cfg, Authenticator(modules, default_options=cfg.default_options,
                              debug_login=cfg.debug_login, throttle=throttle,
                              lock=lock, cache_ttl=cfg.cache_ttl)  # type: ignore[arg-type]


def publish_mechanisms(sockdir: Path, auth: Authenticator, last: str | None = None) -> str | None:
    """Tell the mail daemons which SASL mechanisms our modules can verify (read by
    libcourier.authclient.verifiable_mechanisms): they offer no more than that.
    Written only when it differs from `last`; returns what the file now says."""
    try:
        text = " ".join(sorted(auth.mechanisms())) + "\n"
        if text != last:
            write_atomic(sockdir / MECHANISMS_FILE, text.encode(), mode=0o644)
        return text
    except (OSError, BackendTempFail) as e:
        log.warning("cannot write %s: %s", sockdir / MECHANISMS_FILE, e)
        return last


def bind_socket(path: Path, mailgroup: str) -> socket.socket:
    d = path.parent
    d.mkdir(parents=True, exist_ok=True, mode=0o750)
    os.chmod(d, 0o750)
    if os.geteuid() == 0:
        try:
            os.chown(d, 0, grp.getgrnam(mailgroup).gr_gid)
        except KeyError:
            log.warning("group %s does not exist: %s stays root:root", mailgroup, d)
    tmp = d / "socket.tmp"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.bind(os.fspath(tmp))
    os.chmod(tmp, 0o666)   # the directory's mode is the access control
    s.listen(128)
    os.rename(tmp, path)
    return s


class Supervisor:
    def __init__(self, etc: Path, cfg: AuthdConfig, auth: Authenticator, listener: socket.socket):
        self.etc, self.cfg, self.auth, self.listener = etc, cfg, auth, listener
        self.workers: set[int] = set()
        self.replaced: set[int] = set()   # told to stop at a reload, maybe still finishing
        self.deaths: list[float] = []
        self.sockdir = Path(listener.getsockname()).parent
        self.published: str | None = None
        self.next_publish = 0.0

    def spawn(self) -> None:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW]
        if len(self.deaths) > RESTART_BURST:
            return  # crashing in a loop: try again on the next tick, not in a fork storm
        while len(self.workers) < self.cfg.daemons:
            self.workers.add(fork_worker(self.listener, self.auth))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.replaced.discard(pid)
            if pid in self.workers:
                self.workers.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if code != 0 and code != -signal.SIGTERM:
                    log.error("worker %d exited with %d; restarting", pid, code)
                    self.deaths.append(time.monotonic())

    def reload(self) -> None:
        try:
            cfg, auth = build(self.etc)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        if cfg.authdaemonvar != self.cfg.authdaemonvar:
            log.warning("authdaemonvar changed: the socket moves only on a restart")
        for w in cfg.warnings:
            log.warning("%s", w)
        self.cfg, self.auth = cfg, auth
        self.published = publish_mechanisms(self.sockdir, auth)
        old = set(self.workers)
        self.replaced |= old
        self.workers.clear()
        for pid in old:
            self._kill(pid, signal.SIGTERM)
        # Old workers finish their request and exit; reap() forgets them.
        gc.collect()
        gc.freeze()
        self.spawn()
        log.info("reloaded configuration and userdb")

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def all_children(self) -> None:
        """SIGTERM the workers, wait STOP_GRACE for every child (replaced workers were
        sent SIGTERM at the reload), then SIGKILL what lingers."""
        for pid in self.workers:
            self._kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.02)
        for pid in self.workers | self.replaced:
            self._kill(pid, signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def run(self) -> int:
        self.spawn()
        while True:
            info = signal.sigtimedwait(SIGNALS, 1.0)
            sig = info.si_signo if info is not None else None
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping")
                self.all_children()
                return 0
            if sig == signal.SIGHUP:
                self.reap()
                self.reload()
                continue
            self.reap()
            self.spawn()
            # A makeuserdb that adds hmac-*pw or SCRAM fields changes what the
            # daemons may offer; look every PUBLISH_EVERY seconds.
            now = time.monotonic()
            if now >= self.next_publish:
                self.next_publish = now + PUBLISH_EVERY
                self.published = publish_mechanisms(self.sockdir, self.auth, self.published)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="authdaemond", description="courier-py authentication daemon")
    ap.add_argument("-C", dest="etc", help="configuration directory")
    args = ap.parse_args(argv)
    etc = config_dir(args.etc)
    try:
        cfg, auth = build(etc)
        layout = load_layout(etc)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    setup_logging()
    for w in cfg.warnings:
        log.warning("%s", w)

    pidfile = layout.pidfile("authdaemond")
    other = read_pidfile(pidfile)
    if other is not None and other != os.getpid() and pid_alive(other):
        print(f"{pidfile}: authdaemond is already running (pid {other})", file=sys.stderr)
        return 1
    # Block before the first fork so no signal is lost; workers unblock their own.
    signal.signal(signal.SIGCHLD, lambda s, f: None)  # not SIG_DFL: make it pend, not vanish
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        listener = bind_socket(layout.authsocket, layout.mailgroup)
    except OSError as e:
        print(f"{layout.authsocket}: cannot listen: {e.strerror}", file=sys.stderr)
        return 1
    sock_ino = os.stat(layout.authsocket).st_ino
    published = publish_mechanisms(layout.authsocket.parent, auth)
    layout.rundir.mkdir(parents=True, exist_ok=True)
    write_pidfile(pidfile)
    log.info("listening on %s with %d workers (modules: %s)", layout.authsocket, cfg.daemons,
             " ".join(cfg.modules))
    gc.collect()
    gc.freeze()   # keep the workers' copy-on-write pages shared
    sup = Supervisor(etc, cfg, auth, listener)
    sup.published = published
    try:
        return sup.run()
    finally:
        listener.close()
        try:
            if os.stat(layout.authsocket).st_ino == sock_ino:
                layout.authsocket.unlink()
        except FileNotFoundError:
            pass
        remove_pidfile(pidfile)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
