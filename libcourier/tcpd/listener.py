"""The listener loop (Courier's couriertcpd): bind, accept, limits, access rules, fork.

One warm parent per service: it has imported everything, built the TLS context
and loaded the access file, then forks one child per connection. The parent
never reads client data. A refused connection (access file deny, MAXDAEMONS,
MAXPERIP) is answered by the parent itself: it writes deny_reply/busy_reply
without blocking and half-closes, so a flood of refused clients costs no forks.
The socket then lingers in the loop (read and dropped until the client's EOF, at
most 2 s and 1 MiB, at most MAX_LINGERING at once): a close with unread input
would make the kernel answer RST, which can destroy the reply. On a
TLS-on-connect port the parent cannot speak before the handshake, so there it
closes without a reply (the client sees the connection drop, as with
couriertcpd when no -denymsg applies).

Signals are turned into flags by tiny handlers and the loop is woken through
signal.set_wakeup_fd; SIGCHLD reaps with waitpid(WNOHANG), SIGHUP reloads,
SIGTERM/SIGINT stop. No threads, no asyncio: this process forks.

Hibernation (spec.hibernate_socket, off unless a service asks): a child whose
session sleeps sends its connection (SCM_RIGHTS) and a state blob over a Unix
datagram socket and exits. The listener keeps (socket, blob, the sender's uid
from SCM_CREDENTIALS, the peer's IP), never reads the blob, only watches the
socket: readable forks a child with the blob (Connection.resumed) to carry on,
hangup closes it, spec.hibernate_linger seconds of silence say hibernate_bye and
close. A sleeping connection stays counted for MAXDAEMONS and MAXPERIP; only a
session child of this listener may hand one over (its pid, from the kernel).

Warm workers (spec.warm_linger, same socket; Dovecot's imap process reuse): a
session child whose client is gone, already switched to its user, offers itself
for that account's next login (_KIND_WARM: uid as the kernel gives it, an opaque
key naming the account, its end of a SEQPACKET pair). A root login child whose
login authd just accepted asks for one (_KIND_WANT: the key, its client socket, a
reply socket and an opaque payload); the listener forwards socket and payload to
the newest idle worker of that uid and key and answers "T" (the login child exits
without a word) or "N" (it goes on as before). The connection's MAXPERIP and
MAXDAEMONS count moves to the worker; an idle worker is a process, not a
connection: counted in neither, at most spec.warm_per_key per key and
spec.warm_max in all, dropped (its pair closed: it exits) after warm_linger
seconds, on SIGHUP and at stop.
"""

from __future__ import annotations

import errno
import gc
import heapq
import json
import logging
import os
import resource
import selectors
import signal
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from libcourier import log as courier_log
from libcourier.config.errors import ConfigError
from libcourier.pidfile import remove_pidfile, write_pidfile
from libcourier.privsep import drop_to_daemon
from libcourier.proctitle import set_title
from libcourier.tcpd.access import ALLOW_ALL, AccessDecision, AccessRules, load_access
from libcourier.tcpd.connection import (
    LINGER_LIMIT,
    LINGER_SECONDS,
    Connection,
    Handler,
    ListenerSpec,
    Resumed,
    handed_on,
    plain_ip,
)

log = logging.getLogger("courier.tcpd")

HANDSHAKE_TIMEOUT = 60.0   # TLS on connect: a client that stalls the handshake is dropped
ACCEPT_BATCH = 64          # accepts per wakeup, so signals are looked at in between
IDLE_WORKER = 60.0         # seconds a reusable child may wait for its next connection
MAX_HANDOVER = 65536       # octets of a connection's description sent to a reusable child
_DONE = b"done"            # a reusable child's word to the listener: my client is gone
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
MAX_BLOB = 128 * 1024      # octets of a hibernating session's state (one datagram)
MAX_FDS = 4                # descriptors looked for in one hibernation message (2 at most used)
_KIND_SLEEP = b"H"         # first octet of a message: a session hibernates (blob + client)
_KIND_WARM = b"W"          # a finished session's process offers itself (uid, key + its pair end)
_KIND_WANT = b"R"          # a login child asks for a warm worker (uid, key, payload + client, reply)
_WARM_HEAD = struct.Struct("<IH")   # uid, length of the key that follows
MAX_KEY = 4096             # octets of a warm worker's key
WARM_REPLY_TIMEOUT = 10.0  # seconds a login child waits for the listener's T/N
_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid
_HIBERNATION = "hibernation"   # the selector's tag of the hibernation socket
MAX_LINGERING = 256        # refused sockets drained at once; past that closed at once

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
        # Sleeping sessions are other clients' connections: no child keeps a copy.
        for sleeper in _current.sleepers.values():
            sleeper.sock.close()
        _current.sleepers.clear()
        for refused in _current.refused.values():
            refused.sock.close()
        _current.refused.clear()
        _current.wake_heap.clear()
        for warm in _current.warm.values():
            warm.ctl.close()
        _current.warm.clear()
        _current.born.clear()
        _current.warmed.clear()
        _current.handed.clear()
        if _current.hsock is not None:
            _current.hsock.close()
            _current.hsock = None
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


def _answer(sock: socket.socket, reply: bytes, tls_port: bool) -> bool:
    """Send a refused client its reply (one non-blocking send: a client that does not
    read gets what fits) and our FIN; False when the socket is already unusable."""
    try:
        sock.setblocking(False)
        if reply and not tls_port:
            sock.send(reply)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def _lingering_bound() -> int:
    """MAX_LINGERING, or a quarter of our descriptor limit when that is less: a
    lingering close is a courtesy, never worth a descriptor a session needs."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_LINGERING if soft == resource.RLIM_INFINITY else min(MAX_LINGERING, soft // 4)


@dataclass(slots=True, eq=False)
class _Refused:
    """A refused client's socket after our reply and FIN: what it still sends is read
    and dropped until its EOF (a lingering close, as Connection.linger does in a child),
    so closing it with unread input does not make the kernel answer RST, which can
    destroy the reply before the client read it (it sees ECONNRESET and no reason)."""
    sock: socket.socket
    left: int                # octets still read and dropped before closing anyway
    deadline: float          # monotonic time it is closed anyway


@dataclass(slots=True, eq=False)
class _Sleeper:
    """A hibernated connection: what the listener holds for it, nothing more."""
    sock: socket.socket
    ip: str                  # counted in per_ip while it sleeps
    blob: bytes              # the session's state, opaque here
    uid: int                 # the sending child's uid: the resuming one must match it
    deadline: float          # monotonic time it is dropped (hibernate_linger)


@dataclass(slots=True, eq=False)
class _Warm:
    """An idle warm worker: a session process of `uid` waiting for its account's next login."""
    uid: int
    key: bytes               # the account as the daemon names it (opaque here)
    ctl: socket.socket       # the listener's end of the worker's SEQPACKET pair
    deadline: float          # monotonic time it is dropped (spec.warm_linger)


def _bind_hibernation(path: Path) -> socket.socket:
    """The datagram socket sleeping sessions are handed over on (root only: a
    child connects to it before it drops privileges; SO_PASSCRED gives each
    message the sender's pid and uid as the kernel knows them)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        try:
            if path.is_socket():
                path.unlink()            # left by a listener that did not stop cleanly
        except OSError:
            pass
        old = os.umask(0o077)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def hibernation_channel(path: Path) -> socket.socket | None:
    """A child's socket to the listener's hibernation socket, connected while the
    child can still reach it (before any privilege drop); None when it cannot."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        log.debug("no hibernation socket %s: %s", path, exc)
        sock.close()
        return None
    return sock


def hibernate(channel: socket.socket, conn_sock: socket.socket, blob: bytes,
              timeout: float = 5.0) -> bool:
    """Hand the connection and the blob to the listener (the child exits after a
    True); False when they could not be sent (the session carries on awake)."""
    if len(blob) > MAX_BLOB:
        return False
    try:
        channel.settimeout(timeout)
        channel.sendmsg([_KIND_SLEEP + blob], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  struct.pack("i", conn_sock.fileno()))])
    except OSError as exc:
        log.warning("cannot hibernate: %s", exc)
        return False
    return True


def warm_offer(channel: socket.socket, uid: int, key: bytes,
               timeout: float = 5.0) -> socket.socket | None:
    """Offer this process (its session over, running as `uid`) for the next login of
    the account `key`; the end to wait on with warm_next, or None (not sent)."""
    if len(key) > MAX_KEY:
        return None
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        channel.settimeout(timeout)
        channel.sendmsg([_KIND_WARM + _WARM_HEAD.pack(uid, len(key)) + key],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", theirs.fileno()))])
    except OSError as exc:
        log.debug("cannot offer a warm worker: %s", exc)
        mine.close()
        return None
    finally:
        theirs.close()
    return mine


def warm_next(mine: socket.socket, timeout: float) -> tuple[socket.socket, bytes] | None:
    """The connection and payload a login child handed over; None when the listener
    dropped the offer (EOF), on timeout, or for anything but one socket and a payload."""
    mine.settimeout(timeout)
    try:
        msg, fds, flags, _addr = socket.recv_fds(mine, MAX_HANDOVER, MAX_FDS)
    except OSError:
        return None
    for fd in fds[1:]:
        os.close(fd)
    if not fds:
        return None
    sock = socket.socket(fileno=fds[0])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or not msg or \
            sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock, msg


def warm_ask(channel: socket.socket, conn_sock: socket.socket, uid: int, key: bytes,
             payload: bytes, timeout: float = WARM_REPLY_TIMEOUT) -> bool:
    """Ask the listener to hand this connection and payload to an idle warm worker of
    `uid` and `key`. True: the connection is no longer ours (taken, or no answer in
    time, when it may have been: leave it without a word); False: go on serving it."""
    if len(key) > MAX_KEY or not payload or len(payload) > MAX_HANDOVER:
        return False
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            channel.settimeout(timeout)
            channel.sendmsg([_KIND_WANT + _WARM_HEAD.pack(uid, len(key)) + key + payload],
                            [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              struct.pack("2i", conn_sock.fileno(), theirs.fileno()))])
        except OSError as exc:
            log.debug("cannot ask for a warm worker: %s", exc)
            return False
        finally:
            theirs.close()     # the listener's copy is the only one: its close is our EOF
        mine.settimeout(timeout)
        try:
            answer = mine.recv(16)
        except TimeoutError:
            log.warning("no answer from the listener about a warm worker in %.0f s", timeout)
            return True
        except OSError:
            return False
        return answer == b"T"
    finally:
        mine.close()


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
        self.born: dict[int, int] = {}          # pid -> the generation it was forked in
        self.pending: set[int] = set()
        # Hibernated connections and lingering refused sockets by descriptor, and
        # their deadlines (one heap for both).
        self.hsock: socket.socket | None = None
        self.sleepers: dict[int, _Sleeper] = {}
        self.refused: dict[int, _Refused] = {}
        self.max_lingering = _lingering_bound()
        self.wake_heap: list[tuple[float, int, _Sleeper | _Refused]] = []
        # Idle warm workers by pid (oldest first; one runs the handler of the
        # generation it was born in), and the pids that ever offered themselves
        # (user processes: never asked for a worker).
        self.warm: dict[int, _Warm] = {}
        self.warmed: set[int] = set()
        self.handed: set[int] = set()          # login children whose client a worker took
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
        asleep = f", {len(self.sleepers)} hibernated" if self.sleepers else ""
        warm = f", {len(self.warm)} warm" if self.warm else ""
        set_title(f"{self.spec.name}: couriertcpd "
                  f"({self._connections() - len(self.sleepers)} connections{asleep}{warm})")

    def _connections(self) -> int:
        """What MAXDAEMONS counts: children serving a client and sleeping connections
        (idle warm workers are processes without a connection, bounded by warm_max)."""
        return (len(self.children) - len(self.idle) - len(self.warm) - len(self.handed)
                + len(self.sleepers))

    def reap(self) -> None:
        changed = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.hsock is not None and pid in self.children:
                # A child that hibernated sent its connection before it exited: take
                # that message first, or its exit would free its count and drop
                # its client (the message was queued before the exit we just saw).
                self.take_sleepers()
            ip = self.children.pop(pid, None)
            self.retire(pid)
            self._drop_warm(pid)
            self.born.pop(pid, None)
            self.warmed.discard(pid)
            self.handed.discard(pid)
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
        ctl = self.workers.pop(pid, None)
        if ctl is not None:
            self._unregister_and_close(ctl)

    def _unregister(self, sock: socket.socket) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass

    def _unregister_and_close(self, sock: socket.socket) -> None:
        self._unregister(sock)
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
                and self.born.get(pid) == self.generation):
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

    # -- hibernated sessions -------------------------------------------------

    def take_sleepers(self) -> None:
        """Adopt the connections sessions handed over (bounded per call: a local
        process flooding the socket cannot keep the loop here)."""
        if self.hsock is None:
            return
        anc = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * 4)
        for _ in range(max(ACCEPT_BATCH, 2 * self.spec.maxdaemons)):
            try:
                msg, ancdata, flags, _addr = self.hsock.recvmsg(
                    max(MAX_BLOB, MAX_HANDOVER + MAX_KEY) + 16, anc, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("hibernation socket: %s", exc.strerror or exc)
                return
            fds: list[int] = []
            cred: tuple[int, int, int] | None = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    n = len(data) // 4
                    fds.extend(struct.unpack(f"{n}i", data[:4 * n]))
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    cred = _UCRED.unpack(data[:_UCRED.size])
            kind, body = msg[:1], msg[1:]
            if kind == _KIND_WARM or kind == _KIND_WANT:
                socks = [socket.socket(fileno=fd) for fd in fds]
                try:
                    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                        log.warning("warm worker message from pid %s refused: truncated",
                                    cred[0] if cred else "?")
                    elif kind == _KIND_WARM:
                        self._offered(body, socks, cred)
                    else:
                        self._wanted(body, socks, cred)
                finally:
                    for s in socks:
                        s.close()   # what a warm worker keeps is dup'ed
                continue
            if kind != _KIND_SLEEP:
                pid = cred[0] if cred else 0
                log.warning("hibernation message from pid %d refused: %s", pid,
                            "unknown kind" if self.children.get(pid) else
                            "not a session of this listener")
                for fd in fds:
                    os.close(fd)
                continue
            for fd in fds[1:]:
                os.close(fd)
            if not fds:
                log.warning("hibernation message without a connection from pid %s",
                            cred[0] if cred else "?")
                continue
            sock = socket.socket(fileno=fds[0])
            if not self._adopt(sock, body, flags, cred):
                sock.close()

    def _adopt(self, sock: socket.socket, blob: bytes, flags: int,
               cred: tuple[int, int, int] | None) -> bool:
        if cred is None:
            log.warning("hibernation message without credentials refused")
            return False
        pid, uid, _gid = cred
        ip = self.children.get(pid)
        if not ip or pid in self.workers:
            log.warning("hibernation from pid %d (uid %d) refused: not a session of this "
                        "listener", pid, uid)
            return False
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(blob) > MAX_BLOB:
            log.warning("hibernation from pid %d refused: over %d octets", pid, MAX_BLOB)
            return False
        try:
            if sock.type != socket.SOCK_STREAM or \
                    sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                    plain_ip(sock.getpeername()[0]) != ip:
                log.warning("hibernation from pid %d refused: not its client's socket", pid)
                return False
            sock.setblocking(False)
        except OSError:
            return False        # the client hung up meanwhile: its child's exit frees it
        # The child's count passes to the sleeper: its exit (reap) no longer frees it.
        del self.children[pid]
        sleeper = _Sleeper(sock, ip, blob, uid, time.monotonic() + self.spec.hibernate_linger)
        self.sleepers[sock.fileno()] = sleeper
        self._schedule(sock.fileno(), sleeper)
        if self.selector is not None:
            self.selector.register(sock, selectors.EVENT_READ, sleeper)
        log.debug("child %d [%s] hibernated (%d octets)", pid, ip, len(blob))
        self._title()
        return True

    # -- warm workers --------------------------------------------------------

    @staticmethod
    def _warm_head(body: bytes) -> tuple[int, bytes, bytes] | None:
        """(uid, key, rest) of a warm worker message, None when malformed."""
        if len(body) < _WARM_HEAD.size:
            return None
        uid, n = _WARM_HEAD.unpack_from(body)
        if n == 0 or n > MAX_KEY or len(body) < _WARM_HEAD.size + n:
            return None
        end = _WARM_HEAD.size + n
        return uid, body[_WARM_HEAD.size:end], body[end:]

    def _offered(self, body: bytes, socks: list[socket.socket],
                 cred: tuple[int, int, int] | None) -> None:
        """A session child offers itself as a warm worker: keep its pair end, or close
        ours (it reads EOF and exits)."""
        head = self._warm_head(body)
        pid, uid = (cred[0], cred[1]) if cred else (0, -1)
        ip = self.children.get(pid)
        why = ""
        if self.spec.warm_linger <= 0:
            why = "off"
        elif head is None or head[2] or len(socks) != 1 or head[0] != uid:
            why = "malformed, or not its uid"
        elif ip is None or pid in self.workers or pid in self.warm or pid in self.handed:
            why = "not a session of this listener"
        elif self.born.get(pid) != self.generation:
            why = "configuration reloaded since it started"
        elif len(self.warm) >= self.spec.warm_max or \
                sum(w.key == head[1] for w in self.warm.values()) >= self.spec.warm_per_key:
            why = "enough warm workers"
        elif socks[0].family != socket.AF_UNIX or socks[0].type != socket.SOCK_SEQPACKET:
            why = "not a SEQPACKET socket"
        if why:
            log.debug("warm worker %d (uid %d) not kept: %s", pid, uid, why)
            return
        assert head is not None
        ctl = socket.socket(fileno=os.dup(socks[0].fileno()))
        ctl.setblocking(False)
        self.warmed.add(pid)
        if ip:
            self._release_ip(ip)            # its client is gone: a process, not a connection
            self.children[pid] = ""
        self.warm[pid] = _Warm(uid, head[1], ctl, time.monotonic() + self.spec.warm_linger)
        self._title()

    def _wanted(self, body: bytes, socks: list[socket.socket],
                cred: tuple[int, int, int] | None) -> None:
        """A login child asks for a warm worker: forward its client and payload to one
        and answer T, else N. Only a child still running as the listener's own user
        (root before its switch) may ask, for the client the listener gave it."""
        if len(socks) != 2:
            return                          # no reply socket: the asker reads EOF
        client, reply = socks
        answer = b"N"
        try:
            head = self._warm_head(body)
            pid, uid = (cred[0], cred[1]) if cred else (0, -1)
            ip = self.children.get(pid)
            if head is None or not head[2] or not ip or uid != os.geteuid() or \
                    pid in self.warmed or pid in self.workers:
                log.warning("warm worker request from pid %d (uid %d) refused", pid, uid)
                return
            try:
                if client.type != socket.SOCK_STREAM or \
                        plain_ip(client.getpeername()[0]) != ip:
                    log.warning("warm worker request from pid %d: not its client's socket", pid)
                    return
            except OSError:
                return
            want_uid, key, payload = head
            for wpid, w in reversed(list(self.warm.items())):   # the newest: warmest pages
                if w.uid != want_uid or w.key != key:
                    continue
                del self.warm[wpid]
                try:
                    socket.send_fds(w.ctl, [payload], [client.fileno()])
                except OSError as exc:
                    log.debug("warm worker %d gone: %s", wpid, exc)
                    w.ctl.close()
                    continue
                w.ctl.close()               # one connection per offer: it offers again after
                # The connection's count moves to the worker; the asker exits.
                self.children[wpid] = ip
                self.children[pid] = ""
                self.handed.add(pid)
                answer = b"T"
                log.debug("child %d handed [%s] to warm worker %d", pid, ip, wpid)
                self._title()
                return
        finally:
            try:
                reply.send(answer, socket.MSG_DONTWAIT)
            except OSError:
                pass

    def _drop_warm(self, pid: int) -> None:
        warm = self.warm.pop(pid, None)
        if warm is not None:
            warm.ctl.close()                # it reads EOF and exits

    def expire_warm(self, now: float) -> None:
        for pid, warm in list(self.warm.items()):
            if warm.deadline > now:
                break                       # oldest first: the rest are later
            self._drop_warm(pid)
            self._title()

    def _forget(self, sleeper: _Sleeper) -> None:
        fd = sleeper.sock.fileno()
        if self.sleepers.get(fd) is sleeper:
            del self.sleepers[fd]
            self._unregister(sleeper.sock)

    def _drop_sleeper(self, sleeper: _Sleeper, reply: bytes = b"") -> None:
        self._forget(sleeper)
        self.refuse(sleeper.sock, reply, False)
        self._release_ip(sleeper.ip)
        self._title()

    def wake(self, sleeper: _Sleeper) -> None:
        """A sleeping connection is readable: the client spoke (resume) or left (close)."""
        try:
            first = sleeper.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        if not first:
            log.debug("hibernated client [%s] hung up", sleeper.ip)
            self._drop_sleeper(sleeper)
            return
        self._forget(sleeper)
        sock = sleeper.sock
        decision = ALLOW_ALL if self.rules is None else self.rules.check(sleeper.ip)
        try:
            sock.setblocking(True)
            conn = handed_on(sock, decision.env, resumed=Resumed(sleeper.blob, sleeper.uid))
        except OSError:
            self._drop_sleeper(sleeper)
            return
        pid = self._fork(sock, conn)
        if pid is None:
            self._drop_sleeper(sleeper, self.spec.busy_reply)
            return
        self.children[pid] = sleeper.ip        # per_ip counted it all along
        log.debug("child %d resumes [%s]:%d", pid, sleeper.ip, conn.peer_port)
        self._title()

    def expire_sleepers(self, now: float) -> None:
        """Autologout of sleeping connections (hibernate_linger), and the end of
        refused sockets' lingering close (LINGER_SECONDS)."""
        while self.wake_heap and self.wake_heap[0][0] <= now:
            _deadline, fd, item = heapq.heappop(self.wake_heap)
            if not self._holds(fd, item):
                continue                         # woken, dropped or closed since
            if isinstance(item, _Refused):
                self._close_refused(item)
            else:
                log.info("hibernated client [%s] idle for too long", item.ip)
                self._drop_sleeper(item, self.spec.hibernate_bye)

    def _next_deadline(self) -> float | None:
        while self.wake_heap:
            _deadline, fd, item = self.wake_heap[0]
            if self._holds(fd, item):
                return self.wake_heap[0][0]
            heapq.heappop(self.wake_heap)        # woken, dropped or closed since
        return None

    def _holds(self, fd: int, item: _Sleeper | _Refused) -> bool:
        """Whether item (a heap entry's, a selector key's) is still held on fd: one
        woken, dropped or closed since leaves its entry and key behind, and its
        descriptor may be another's by now."""
        table = self.sleepers if isinstance(item, _Sleeper) else self.refused
        return table.get(fd) is item

    def _schedule(self, fd: int, item: _Sleeper | _Refused) -> None:
        """Put item's deadline on the heap. An entry outlives a sleeper woken before
        its deadline (hibernate_linger, up to half an hour) and keeps its blob: when
        such entries are most of the heap, they go (so it holds at most about twice
        what is held, however often clients wake)."""
        heap = self.wake_heap
        if len(heap) >= 2 * (len(self.sleepers) + len(self.refused)) + 64:
            heap[:] = [entry for entry in heap if self._holds(entry[1], entry[2])]
            heapq.heapify(heap)
        heapq.heappush(heap, (item.deadline, fd, item))

    # -- refused clients -----------------------------------------------------

    def refuse(self, sock: socket.socket, reply: bytes, tls_port: bool) -> None:
        """Answer a refused client (access deny, MAXDAEMONS, MAXPERIP, fork failure, a
        dropped sleeper) without ever blocking the listener, then close lingering:
        the socket stays in the loop, its input read and dropped, until the client's
        EOF, an error, LINGER_SECONDS or LINGER_LIMIT octets. At most MAX_LINGERING
        (or a quarter of RLIMIT_NOFILE) at a time; past that it is closed at once (a flood must not make the listener
        hold sockets without limit: those clients may see a reset, as before).

        On a TLS-on-connect port nothing is said (no handshake yet), but the client's
        ClientHello is usually unread: lingering turns the reset it would get into an
        orderly EOF, so it sees "closed by the server", not a network error.

        A lingering socket counts for neither MAXDAEMONS nor MAXPERIP. couriertcpd
        refuses in a forked child that writes -denymsg and exits at once, holding its
        slot only for that write, never waiting on the client; counting ours would
        let a refused client (it costs no process) hold a slot 2 s longer, so one that
        keeps reconnecting would stay refused and a flood of refusals would shut out
        clients that would be served. MAX_LINGERING bounds them instead.
        """
        if not _answer(sock, reply, tls_port) or self.selector is None \
                or len(self.refused) >= self.max_lingering:
            sock.close()
            return
        refused = _Refused(sock, LINGER_LIMIT, time.monotonic() + LINGER_SECONDS)
        fd = sock.fileno()
        try:
            self.selector.register(sock, selectors.EVENT_READ, refused)
        except (KeyError, ValueError, OSError):
            sock.close()
            return
        self.refused[fd] = refused
        self._schedule(fd, refused)

    def drain_refused(self, refused: _Refused) -> None:
        """A lingering refused socket is readable: drop what came (one non-blocking
        read per wakeup, so a fast sender cannot keep the loop here); close at EOF,
        an error or past the octet limit."""
        try:
            data = refused.sock.recv(min(refused.left, 65536))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        refused.left -= len(data)
        if not data or refused.left <= 0:
            self._close_refused(refused)

    def _close_refused(self, refused: _Refused) -> None:
        fd = refused.sock.fileno()
        if self.refused.get(fd) is refused:
            del self.refused[fd]
        self._unregister_and_close(refused.sock)

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
            self.refuse(sock, spec.deny_reply, tls_port)
            return
        maxperip = spec.maxperip
        if decision.env.get("MAXCPERIP", "").isdigit():
            maxperip = int(decision.env["MAXCPERIP"])  # per-entry override (couriertcpd)
        if (0 < spec.maxdaemons <= self._connections() + len(self.idle)
                or 0 < maxperip <= self.per_ip[peer_ip]):
            # Children that have finished but whose SIGCHLD the loop has not
            # handled yet (it is busy accepting a burst) must not count.
            self.reap()
        if 0 < spec.maxdaemons <= self._connections() + len(self.idle) and not self.idle:
            log.warning("Maximum connection limit reached for %s", peer_ip)
            self.refuse(sock, spec.busy_reply, tls_port)
            return
        if 0 < maxperip <= self.per_ip[peer_ip]:
            log.warning("Maximum connection limit per IP reached for %s", peer_ip)
            self.refuse(sock, spec.busy_reply, tls_port)
            return
        conn = handed_on(sock, decision.env, peer=addr)
        if self.idle:
            handed = self._hand_over(sock, conn.env)
            if handed is not None:
                sock.close()
                self._serving(handed, peer_ip, peer_port, " (reused)")
                return
        ctl: socket.socket | None = None
        ctl_child: socket.socket | None = None
        if spec.reuse > 1 and spec.child_user is not None:
            ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = self._fork(sock, conn, ctl, ctl_child)
        if pid is None:
            self.refuse(sock, spec.busy_reply, tls_port)
            return
        if ctl is not None and ctl_child is not None:
            ctl_child.close()
            ctl.setblocking(False)
            self.workers[pid] = ctl
            if self.selector is not None:
                self.selector.register(ctl, selectors.EVENT_READ, pid)
        self._serving(pid, peer_ip, peer_port)

    def _fork(self, sock: socket.socket, conn: Connection, ctl: socket.socket | None = None,
              ctl_child: socket.socket | None = None) -> int | None:
        """Fork the child that runs conn; in the parent its pid (our copy of the
        socket closed), None when fork failed (the socket left to the caller)."""
        courier_log.flush()
        # Block our signals across fork: a SIGTERM meant for the new child must
        # not hit the parent's flag-setting handler and be lost; the child
        # unblocks only after restoring the default actions.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            log.error("fork: %s; refusing %s", exc.strerror, conn.peer_ip)
            for end in (ctl, ctl_child):
                if end is not None:
                    end.close()
            return None
        if pid == 0:
            if ctl is not None:
                ctl.close()
            self._run_child(sock, conn, ctl_child)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        sock.close()
        self.born[pid] = self.generation
        return pid

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
            if spec.tls_context is not None and conn.resumed is None:
                sock.settimeout(min(spec.timeout, HANDSHAKE_TIMEOUT))
                try:
                    conn.sock = spec.tls_context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.info("TLS handshake failed with [%s]: %s", conn.peer_ip, exc)
                    return 0
                conn.tls = True
            conn.sock.settimeout(spec.timeout)
            if spec.hibernate_socket is not None and not conn.tls:
                conn.hibernate = hibernation_channel(spec.hibernate_socket)
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
        for pid in list(self.warm):
            self._drop_warm(pid)
        gc.freeze()
        log.info("configuration reloaded")

    def stop(self) -> None:
        for lsock in self.sockets:
            self._unregister_and_close(lsock)
        self.sockets = []
        for pid in list(self.workers):
            self.retire(pid)
        for pid in list(self.warm):
            self._drop_warm(pid)
        for sleeper in list(self.sleepers.values()):
            self._drop_sleeper(sleeper)
        for refused in list(self.refused.values()):   # dropped sleepers' too
            self._close_refused(refused)
        self.wake_heap.clear()
        if self.hsock is not None:
            self._unregister_and_close(self.hsock)
            self.hsock = None
            if self.spec.hibernate_socket is not None:
                try:
                    self.spec.hibernate_socket.unlink()
                except OSError:
                    pass
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
        if self.spec.hibernate_socket is not None:
            try:
                self.hsock = _bind_hibernation(self.spec.hibernate_socket)
            except OSError as exc:
                log.error("%s: cannot bind the hibernation socket %s: %s", self.spec.name,
                          self.spec.hibernate_socket, exc.strerror or exc)
                for lsock in self.sockets:
                    lsock.close()
                return 1
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wakeup = (r, w)
        self.selector = selectors.DefaultSelector()
        self.selector.register(r, selectors.EVENT_READ, None)
        for lsock in self.sockets:
            self.selector.register(lsock, selectors.EVENT_READ, lsock)
        if self.hsock is not None:
            self.selector.register(self.hsock, selectors.EVENT_READ, _HIBERNATION)
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
                due = self._next_deadline()
                if self.warm:
                    first = next(iter(self.warm.values())).deadline
                    due = first if due is None else min(due, first)
                if due is not None:
                    left = max(0.0, due - time.monotonic())
                    timeout = left if timeout is None else min(timeout, left)
                for key, _mask in self.selector.select(timeout=timeout):
                    if key.data is None:
                        self._drain_wakeup()
                    elif isinstance(key.data, int):
                        self.worker_said(key.data)
                    elif key.data is _HIBERNATION:
                        self.take_sleepers()
                    elif isinstance(key.data, _Sleeper):
                        if self._holds(key.fd, key.data):   # still asleep
                            self.wake(key.data)
                    elif isinstance(key.data, _Refused):
                        if self._holds(key.fd, key.data):   # still lingering
                            self.drain_refused(key.data)
                    elif not (self.pending & {signal.SIGTERM, signal.SIGINT}):
                        self.reap()
                        self.accept_from(key.data)
                if self.idle:
                    self.retire_idle(time.monotonic())
                if self.wake_heap:
                    self.expire_sleepers(time.monotonic())
                if self.warm:
                    self.expire_warm(time.monotonic())
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


__all__ = ["bind_addresses", "hibernate", "hibernation_channel", "serve", "warm_ask",
           "warm_next", "warm_offer"]
