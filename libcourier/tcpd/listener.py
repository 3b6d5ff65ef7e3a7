"""The listener loop (Courier's couriertcpd): bind, accept, limits, access rules, fork.

One warm parent per service: it has imported everything, built the TLS context
and loaded the access file, then forks one child per connection. The parent
never reads client data. A refused connection (access file deny, MAXDAEMONS,
MAXPERIP) is answered by the parent itself: it writes deny_reply/busy_reply
without blocking and closes, so a flood of refused clients costs no forks. On a
TLS-on-connect port the parent cannot speak before the handshake, so there it
closes without a reply (the client sees the connection drop, as with
couriertcpd when no -denymsg applies).

Signals are turned into flags by tiny handlers and the loop is woken through
signal.set_wakeup_fd; SIGCHLD reaps with waitpid(WNOHANG), SIGHUP reloads,
SIGTERM/SIGINT stop. No threads, no asyncio: this process forks.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import selectors
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable

from libcourier import log as courier_log
from libcourier.config.errors import ConfigError
from libcourier.pidfile import remove_pidfile, write_pidfile
from libcourier.privsep import drop_to_daemon
from libcourier.proctitle import set_title
from libcourier.tcpd.access import ALLOW_ALL, AccessDecision, AccessRules, load_access
from libcourier.tcpd.connection import Connection, Handler, ListenerSpec, plain_ip

log = logging.getLogger("courier.tcpd")

HANDSHAKE_TIMEOUT = 60.0   # TLS on connect: a client that stalls the handshake is dropped
ACCEPT_BATCH = 64          # accepts per wakeup, so signals are looked at in between
IDLE_WORKER = 60.0         # seconds a reusable child may wait for its next connection
MAX_HANDOVER = 65536       # octets of a connection's description sent to a reusable child
_DONE = b"done"            # a reusable child's word to the listener: my client is gone
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

Loader = Callable[[], tuple[ListenerSpec, Handler]]

# The listener running in this process, so the at-fork hook can clear its
# tables in children (a handler must not see, or signal, its siblings).
_current: _Listener | None = None


def _after_fork_in_child() -> None:
    global _current
    if _current is not None:
        _current.children.clear()
        _current.per_ip.clear()
        # Other reusable children's control sockets: a copy kept here would stop
        # them from seeing the listener close theirs (their signal to exit).
        for ctl in _current.workers.values():
            ctl.close()
        _current.workers.clear()
        _current.idle.clear()
        _current = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _load_rules(spec: ListenerSpec) -> AccessRules | None:
    return None if spec.access_file is None else load_access(spec.access_file)


def _listen_one(family: int, sockaddr: tuple, v6only: bool | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        # IP_FREEBIND (Linux, couriertcpd since 2024): bind an address not configured yet.
        try:
            sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        except OSError:
            pass
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_addresses(addresses: tuple[tuple[str, int], ...]) -> list[socket.socket]:
    """Listening sockets for every (host, port); ("", port) = IPv6 and IPv4 wildcard."""
    bound: list[socket.socket] = []
    try:
        for host, port in addresses:
            if host in ("", "*", "0"):
                if socket.has_ipv6:
                    try:
                        bound.append(_listen_one(socket.AF_INET6, ("::", port), False))
                        continue
                    except OSError as exc:
                        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                            raise
                bound.append(_listen_one(socket.AF_INET, ("0.0.0.0", port), None))
                continue
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
            seen = set()
            for family, _type, _proto, _canon, sockaddr in infos:
                if sockaddr in seen:
                    continue
                seen.add(sockaddr)
                bound.append(_listen_one(family, sockaddr, True))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _refuse(sock: socket.socket, reply: bytes, tls_port: bool) -> None:
    """Answer a refused client without ever blocking the listener, then close."""
    try:
        sock.setblocking(False)
        if reply and not tls_port:
            sock.send(reply)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


class _Listener:
    def __init__(self, load: Loader, spec: ListenerSpec, handler: Handler,
                 rules: AccessRules | None):
        self.load = load
        self.spec = spec
        self.handler = handler
        self.rules = rules
        self.bound_addresses = spec.addresses
        self.pidfile = spec.pidfile
        self.sockets: list[socket.socket] = []
        self.children: dict[int, str] = {}     # pid -> client ip ("" = idle, reusable)
        self.per_ip: Counter[str] = Counter()
        # Reusable children (spec.reuse): pid -> the listener's end of its control
        # socket; the idle ones with the time they became idle (newest last).
        self.workers: dict[int, socket.socket] = {}
        self.idle: dict[int, float] = {}
        self.generation = 0                     # bumped by reload: older children retire
        self.worker_generation: dict[int, int] = {}
        self.pending: set[int] = set()
        self.selector: selectors.BaseSelector | None = None
        self.wakeup: tuple[int, int] | None = None

    # -- signals -------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.pending.add(signum)

    def _take_signals(self) -> set[int]:
        got, self.pending = self.pending, set()
        return got

    def _drain_wakeup(self) -> None:
        assert self.wakeup is not None
        try:
            while os.read(self.wakeup[0], 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- children ------------------------------------------------------------

    def _title(self) -> None:
        set_title(f"{self.spec.name}: couriertcpd "
                  f"({len(self.children) - len(self.idle)} connections)")

    def reap(self) -> None:
        changed = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ip = self.children.pop(pid, None)
            self.retire(pid)
            if ip is None:
                continue
            changed = True
            if ip:
                self._release_ip(ip)
            if os.WIFSIGNALED(status):
                log.warning("child %d [%s] killed by signal %d", pid, ip, os.WTERMSIG(status))
            elif os.waitstatus_to_exitcode(status) != 0:
                log.debug("child %d [%s] exited with status %d", pid, ip,
                          os.waitstatus_to_exitcode(status))
        if changed:
            self._title()

    def _release_ip(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    # -- reusable children ---------------------------------------------------

    def retire(self, pid: int) -> None:
        """Close a reusable child's control socket: idle, it reads EOF and exits."""
        self.idle.pop(pid, None)
        self.worker_generation.pop(pid, None)
        ctl = self.workers.pop(pid, None)
        if ctl is not None:
            self._unregister_and_close(ctl)

    def _unregister_and_close(self, sock: socket.socket) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def worker_said(self, pid: int) -> None:
        """A reusable child's control socket is readable: its client is gone (or it is)."""
        ctl = self.workers.get(pid)
        if ctl is None:
            return
        try:
            msg = ctl.recv(16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        ip = self.children.get(pid)
        if ip:
            self._release_ip(ip)
            self.children[pid] = ""
        if (msg == _DONE and ip is not None and pid not in self.idle
                and self.worker_generation.get(pid) == self.generation):
            self.idle[pid] = time.monotonic()
        else:
            self.retire(pid)        # EOF (it exits), a config reload, or nonsense
        self._title()

    def retire_idle(self, now: float) -> None:
        for pid, since in list(self.idle.items()):
            if now - since > IDLE_WORKER:
                self.retire(pid)

    def _hand_over(self, sock: socket.socket, env: dict[str, str]) -> int | None:
        """Give the connection to an idle reusable child; its pid, or None (fork one)."""
        payload = json.dumps(env).encode()
        if len(payload) > MAX_HANDOVER:
            return None
        while self.idle:
            pid = next(reversed(self.idle))     # the most recent: its pages are warm
            del self.idle[pid]
            try:
                socket.send_fds(self.workers[pid], [payload], [sock.fileno()])
            except OSError:
                self.retire(pid)                # gone or going: try the next one
                continue
            return pid
        return None

    # -- accepting -----------------------------------------------------------

    def accept_from(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the socket stays readable, so pause
                    # instead of spinning; children exiting will free some.
                    log.error("accept: %s", exc.strerror)
                    time.sleep(0.1)
                else:
                    log.debug("accept: %s", exc.strerror)
                return
            try:
                self.dispatch(sock, addr)
            except Exception:
                log.exception("cannot start a session for %s", addr)
                sock.close()

    def dispatch(self, sock: socket.socket, addr: tuple) -> None:
        spec = self.spec
        tls_port = spec.tls_context is not None
        peer_ip, peer_port = plain_ip(addr[0]), addr[1]
        decision: AccessDecision = ALLOW_ALL if self.rules is None else self.rules.check(peer_ip)
        if not decision.allow:
            log.info("Access denied for %s", peer_ip)
            _refuse(sock, spec.deny_reply, tls_port)
            return
        maxperip = spec.maxperip
        if decision.env.get("MAXCPERIP", "").isdigit():
            maxperip = int(decision.env["MAXCPERIP"])  # per-entry override (couriertcpd)
        if (0 < spec.maxdaemons <= len(self.children)
                or 0 < maxperip <= self.per_ip[peer_ip]):
            # Children that have finished but whose SIGCHLD the loop has not
            # handled yet (it is busy accepting a burst) must not count.
            self.reap()
        if 0 < spec.maxdaemons <= len(self.children) and not self.idle:
            log.warning("Maximum connection limit reached for %s", peer_ip)
            _refuse(sock, spec.busy_reply, tls_port)
            return
        if 0 < maxperip <= self.per_ip[peer_ip]:
            log.warning("Maximum connection limit per IP reached for %s", peer_ip)
            _refuse(sock, spec.busy_reply, tls_port)
            return
        local = sock.getsockname()
        local_ip, local_port = plain_ip(local[0]), local[1]
        env = {
            "TCPREMOTEIP": peer_ip,
            "TCPREMOTEPORT": str(peer_port),
            "TCPLOCALIP": local_ip,
            "TCPLOCALPORT": str(local_port),
        }
        env.update(decision.env)
        if self.idle:
            handed = self._hand_over(sock, env)
            if handed is not None:
                sock.close()
                self._serving(handed, peer_ip, peer_port, " (reused)")
                return
        ctl: socket.socket | None = None
        ctl_child: socket.socket | None = None
        if spec.reuse > 1 and spec.child_user is not None:
            ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        courier_log.flush()
        # Block our signals across fork: a SIGTERM meant for the new child must
        # not hit the parent's flag-setting handler and be lost; the child
        # unblocks only after restoring the default actions.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            log.error("fork: %s; refusing %s", exc.strerror, peer_ip)
            _refuse(sock, spec.busy_reply, tls_port)
            for end in (ctl, ctl_child):
                if end is not None:
                    end.close()
            return
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        else:
            if ctl is not None:
                ctl.close()
            self._run_child(sock, Connection(sock, peer_ip, peer_port, local_ip, local_port,
                                             False, env), ctl_child)
        sock.close()
        if ctl is not None and ctl_child is not None:
            ctl_child.close()
            ctl.setblocking(False)
            self.workers[pid] = ctl
            self.worker_generation[pid] = self.generation
            if self.selector is not None:
                self.selector.register(ctl, selectors.EVENT_READ, pid)
        self._serving(pid, peer_ip, peer_port)

    def _serving(self, pid: int, peer_ip: str, peer_port: int, how: str = "") -> None:
        """Count a child's new client (forked for it, or an idle one it was handed to)."""
        self.children[pid] = peer_ip
        self.per_ip[peer_ip] += 1
        log.debug("child %d%s for [%s]:%d", pid, how, peer_ip, peer_port)
        self._title()

    def _run_child(self, sock: socket.socket, conn: Connection,
                   ctl: socket.socket | None = None) -> None:
        """The forked child: never returns, always ends in os._exit.

        With a control socket (spec.reuse) it serves up to spec.reuse connections:
        after each it tells the listener `done` and waits for the next one (its
        socket passed over ctl); EOF on ctl (the listener retired it) ends it.
        """
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            if self.selector is not None:
                self.selector.close()
            for lsock in self.sockets:
                lsock.close()
            if self.wakeup is not None:
                for fd in self.wakeup:
                    os.close(fd)
            served = 0
            while True:
                served += 1
                status = self._serve(sock, conn)
                courier_log.flush()
                if ctl is None or status != 0 or served >= self.spec.reuse:
                    break
                set_title(f"{self.spec.name}: idle")
                taken = self._next_connection(ctl)
                if taken is None:
                    break
                sock, conn = taken
        except BaseException:
            log.exception("%s: child failed", self.spec.name)
            status = 1
        finally:
            courier_log.flush()
            os._exit(status)

    def _next_connection(self, ctl: socket.socket) -> tuple[socket.socket, Connection] | None:
        """Say done, then wait for the listener's next connection; None: retired."""
        try:
            ctl.send(_DONE)
            msg, fds, _flags, _addr = socket.recv_fds(ctl, MAX_HANDOVER, 1)
        except OSError:
            return None
        if not fds:
            return None
        sock = socket.socket(fileno=fds[0])
        try:
            env = json.loads(msg)
            peer_ip, local_ip = env["TCPREMOTEIP"], env["TCPLOCALIP"]
            peer_port, local_port = int(env["TCPREMOTEPORT"]), int(env["TCPLOCALPORT"])
        except (ValueError, KeyError, TypeError):
            sock.close()
            return None
        return sock, Connection(sock, peer_ip, peer_port, local_ip, local_port, False, env)

    def _serve(self, sock: socket.socket, conn: Connection) -> int:
        """One connection in the child: TLS on connect, privilege drop, the handler.
        Returns the child's exit status (0: may serve another)."""
        spec, handler = self.spec, self.handler
        try:
            set_title(f"{spec.name}: [{conn.peer_ip}] connected")
            sock.setblocking(True)
            # Every protocol here ends a response with a small write (the tagged
            # OK, POP3's ".", SMTP's 250) the client waits for before it sends
            # again; with Nagle on, that write waits for the delayed ACK (~40 ms
            # a command, the stall RESULTS.md measures on Courier). Drivers batch
            # their own writes, so no small-packet flood follows.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if spec.tls_context is not None:
                sock.settimeout(min(spec.timeout, HANDSHAKE_TIMEOUT))
                try:
                    conn.sock = spec.tls_context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.info("TLS handshake failed with [%s]: %s", conn.peer_ip, exc)
                    return 0
                conn.tls = True
            conn.sock.settimeout(spec.timeout)
            if spec.child_user is not None:
                drop_to_daemon(*spec.child_user)    # a no-op once dropped
            handler(conn)
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            # The client hung up, stalled past the timeout or broke TLS: the
            # session is over, nothing is wrong with us (no traceback).
            log.info("%s: connection with [%s] ended: %s", self.spec.name, conn.peer_ip,
                     "timeout" if isinstance(exc, TimeoutError) else exc)
            return 0
        except BaseException:
            log.exception("%s: uncaught exception in session with [%s]",
                          self.spec.name, conn.peer_ip)
            return 1
        finally:
            conn.close()

    # -- reload and stop -----------------------------------------------------

    def reload(self) -> None:
        try:
            spec, handler = self.load()
            rules = _load_rules(spec)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        except Exception:
            log.exception("reload failed, keeping the running configuration")
            return
        if spec.addresses != self.bound_addresses:
            log.warning("the listening addresses changed; restart %s to apply", spec.name)
        if spec.pidfile != self.pidfile:
            log.warning("the pid file changed; restart %s to apply", spec.name)
        self.spec, self.handler, self.rules = spec, handler, rules
        # Reusable children run the old handler: idle ones go now, busy ones when done.
        self.generation += 1
        for pid in list(self.idle):
            self.retire(pid)
        gc.freeze()
        log.info("configuration reloaded")

    def stop(self) -> None:
        for lsock in self.sockets:
            self._unregister_and_close(lsock)
        self.sockets = []
        for pid in list(self.workers):
            self.retire(pid)
        if self.pidfile is not None:
            remove_pidfile(self.pidfile)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + max(0.0, self.spec.grace_seconds)
        while self.children and time.monotonic() < deadline:
            self.reap()
            if self.children:
                time.sleep(0.02)
        for pid in list(self.children):
            log.warning("child %d [%s] did not stop in %.1fs; killing it",
                        pid, self.children[pid], self.spec.grace_seconds)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)
        self.per_ip.clear()

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        global _current
        try:
            self.sockets = bind_addresses(self.spec.addresses)
        except OSError as exc:
            log.error("%s: cannot listen on %s: %s", self.spec.name,
                      ", ".join(f"[{h or '*'}]:{p}" for h, p in self.spec.addresses),
                      exc.strerror or exc)
            return 1
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup = (r, w)
        self.selector = selectors.DefaultSelector()
        self.selector.register(r, selectors.EVENT_READ, None)
        for lsock in self.sockets:
            self.selector.register(lsock, selectors.EVENT_READ, lsock)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _current = self
        try:
            if self.pidfile is not None:
                try:
                    write_pidfile(self.pidfile)
                except OSError as exc:
                    log.error("cannot write the pid file %s: %s", self.pidfile, exc.strerror)
                    self.pidfile = None   # not ours: stop() must not remove it
                    return 1
            log.info("%s: listening on %s", self.spec.name, ", ".join(
                _describe(s.getsockname()) for s in self.sockets))
            self._title()
            gc.freeze()  # share the warm heap copy-on-write with every child
            while True:
                got = self._take_signals()
                if signal.SIGCHLD in got:
                    self.reap()
                if got & {signal.SIGTERM, signal.SIGINT}:
                    log.info("%s: stopping", self.spec.name)
                    break
                if signal.SIGHUP in got:
                    self.reload()
                timeout = 0 if self.pending else IDLE_WORKER / 4 if self.idle else None
                for key, _mask in self.selector.select(timeout=timeout):
                    if key.data is None:
                        self._drain_wakeup()
                    elif isinstance(key.data, int):
                        self.worker_said(key.data)
                    elif not (self.pending & {signal.SIGTERM, signal.SIGINT}):
                        self.reap()
                        self.accept_from(key.data)
                if self.idle:
                    self.retire_idle(time.monotonic())
            return 0
        finally:
            self.stop()
            signal.set_wakeup_fd(old_wakeup)
            for sig, old in old_handlers.items():
                signal.signal(sig, old)
            self.selector.close()
            os.close(r)
            os.close(w)
            self.wakeup = None
            _current = None


def _describe(sockaddr: tuple) -> str:
    return f"[{sockaddr[0]}]:{sockaddr[1]}"


def serve(load: Loader) -> int:
    """Run a listener until SIGTERM/SIGINT; returns the exit status.

    load() is called once now (a ConfigError propagates to the caller) and again
    on every SIGHUP (a ConfigError then is logged and the old config kept).
    """
    spec, handler = load()
    rules = _load_rules(spec)
    return _Listener(load, spec, handler, rules).run()


__all__ = ["bind_addresses", "serve"]
