"""courierlocal: the root helper that writes into users' Maildirs.

courierd itself runs as the daemon account and cannot become a mail user, so
it forks this helper first (as Courier's courierd starts courierlocal) and
asks it over a Unix socket:

    courierd --DELIVER <sender> <recipient> [<user>]\\n + SCM_RIGHTS(data fd)--> helper
    helper   --OK <file> | TEMP <text> | PERM <text>\\n-->                   courierd

Process chain, one level per privilege boundary:

- the helper's main loop (root): accepts, checks SO_PEERCRED, forks;
- a connection child (root): reads the request (bounded, with a timeout),
  asks authd for the account, forks again;
- a delivery child: switches for good to the user's uid/gid, chdir HOME, and
  writes the Maildir file; it reports one line over a pipe and exits. The
  connection child, still root and never touched by the user's files, sends
  the reply.

Everything the delivery child runs is imported at the top of this module, so
nothing is imported after the switch (the Python installation may be
unreadable to the user).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from courier_deliver.localproto import (
    DeliverRequest,
    Reply,
    ReplyReader,
    RequestReader,
    Status,
    format_reply,
    format_request,
)

from libcourier import log as courier_log
from libcourier import privsep
from libcourier.authclient import AuthInfo, AuthTempFail, auth_pre
from libcourier.maildir.delivery import CHUNK, DeliveryError, deliver_to_maildir
from libcourier.pidfile import read_pidfile
from libcourier.proctitle import set_title
from libcourier.proto import ClientError

logger = logging.getLogger("courier.courierlocal")

REQUEST_TIMEOUT = 30.0       # to read one request line
DELIVERY_TIMEOUT = 600.0     # one delivery child, start to finish
MAX_CHILDREN = 32            # connection children at once; more wait in the backlog
STOP_WAIT = 5.0             # on SIGTERM, how long in-flight deliveries may finish
RESULT_MAX = 1024            # bytes a delivery child may report
DEFAULT_MAILDIR = "./Maildir"


# --- the delivery child (runs as the user) --------------------------------------------

def _pread_chunks(fd: int) -> Iterator[bytes]:
    """The spool file from its start, by offset: the descriptor's shared file
    position belongs to courierd's open file and is left alone."""
    offset = 0
    while True:
        block = os.pread(fd, CHUNK, offset)
        if not block:
            return
        offset += len(block)
        yield block


def maildir_path(info: AuthInfo, default: str = DEFAULT_MAILDIR) -> Path:
    """AuthInfo.maildir, absolute or relative to HOME; else DEFAULTDELIVERY."""
    md = info.maildir or default
    p = Path(md)
    return p if p.is_absolute() else Path(info.home) / p


def delivery_prefix(sender: str, recipient: str) -> bytes:
    # RFC 5321 §4.4: the final delivery adds Return-Path with the reverse-path.
    # Delivered-To marks the mailbox this copy went to (loop detection, as
    # Courier and qmail do). Header bytes: addresses are UTF-8 (RFC 6532).
    ret = f"Return-Path: <{sender}>\n".encode("utf-8", "surrogateescape")
    return ret + f"Delivered-To: {recipient}\n".encode("utf-8", "surrogateescape")


def _deliver_as_user(info: AuthInfo, fd: int, req: DeliverRequest,
                     default_maildir: str) -> Reply:
    if info.uid is None:
        return Reply(Status.TEMP, "authd returned no uid")
    try:
        privsep.refuse_root(info.uid)
    except privsep.PrivsepError:
        return Reply(Status.PERM, "5.7.1 refusing to deliver to an account with uid 0")
    try:
        privsep.switch_to_user(info.uid, info.gid)
    except privsep.PrivsepError as e:
        return Reply(Status.TEMP, f"4.3.0 {e}")
    try:
        os.chdir(info.home)
    except OSError as e:
        return Reply(Status.TEMP, f"4.2.1 cannot chdir to home {info.home}: {e.strerror}")
    try:
        name = deliver_to_maildir(maildir_path(info, default_maildir), _pread_chunks(fd),
                                  prefix=delivery_prefix(req.sender, req.recipient))
    except DeliveryError as e:
        return Reply(Status.TEMP if e.temporary else Status.PERM,
                     ("4.2.0 " if e.temporary else "5.2.0 ") + e.text)
    return Reply(Status.OK, name)


def _run_delivery_child(info: AuthInfo, fd: int, req: DeliverRequest, wpipe: int,
                        default_maildir: str) -> None:
    try:
        reply = _deliver_as_user(info, fd, req, default_maildir)
    except BaseException as e:  # noqa: BLE001 - the child must always report and exit
        reply = Reply(Status.TEMP, f"4.3.0 delivery failed: {type(e).__name__}: {e}")
    try:
        os.write(wpipe, format_reply(reply)[:RESULT_MAX])
    finally:
        courier_log.flush()
        os._exit(0)


# --- the connection child (root) --------------------------------------------------------

def _recv_request(conn: socket.socket) -> tuple[DeliverRequest, int]:
    """One request line and exactly one passed fd; raises ClientError or OSError."""
    reader = RequestReader()
    fds: list[int] = []
    deadline = time.monotonic() + REQUEST_TIMEOUT
    try:
        while True:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            data, got, _flags, _addr = socket.recv_fds(conn, 4096, 4)
            fds.extend(got)
            if data:
                reader.feed(data)
            req = reader.next_request()
            if req is not None:
                break
            if not data:
                raise ClientError("connection closed before the request")
        if len(fds) != 1:
            raise ClientError(f"expected one file descriptor, got {len(fds)}")
        fd = fds.pop()
        return req, fd
    finally:
        for extra in fds:
            os.close(extra)


def _wait_result(pid: int, rpipe: int) -> Reply:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    reader = ReplyReader()
    reply: Reply | None = None
    sel = selectors.DefaultSelector()
    sel.register(rpipe, selectors.EVENT_READ)
    try:
        while reply is None:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                os.kill(pid, signal.SIGKILL)
                reply = Reply(Status.TEMP, "4.3.0 delivery timed out")
                break
            chunk = os.read(rpipe, RESULT_MAX)
            if not chunk:
                break
            reader.feed(chunk)
            try:
                reply = reader.next_reply()
            except ClientError:
                break
    finally:
        sel.close()
    _, status = os.waitpid(pid, 0)
    if reply is None:
        return Reply(Status.TEMP, f"4.3.0 delivery process ended without a result "
                                  f"(wait status {status})")
    return reply


def handle_connection(conn: socket.socket, authsocket: Path,
                      default_maildir: str = DEFAULT_MAILDIR) -> Reply:
    """Serve one request (in the root connection child) and return the reply sent."""
    try:
        req, fd = _recv_request(conn)
    except ClientError as e:
        reply = Reply(Status.PERM, f"5.5.2 bad request: {e.text}")
        _send_reply(conn, reply)
        return reply
    try:
        reply = _lookup_and_deliver(req, fd, authsocket, default_maildir)
    finally:
        os.close(fd)
    _send_reply(conn, reply)
    return reply


def _lookup_and_deliver(req: DeliverRequest, fd: int, authsocket: Path,
                        default_maildir: str) -> Reply:
    user = req.user or req.recipient
    try:
        info = auth_pre(authsocket, "courier", user)
    except AuthTempFail as e:
        return Reply(Status.TEMP, f"4.4.3 authentication service unavailable: {e}")
    if info is None:
        return Reply(Status.PERM, "5.1.1 no such user")
    rpipe, wpipe = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(rpipe)
        _run_delivery_child(info, fd, req, wpipe, default_maildir)
    os.close(wpipe)
    try:
        reply = _wait_result(pid, rpipe)
    finally:
        os.close(rpipe)
    if reply.status is Status.OK:
        logger.info("delivered to %s (uid %s): %s", req.recipient, info.uid, reply.text)
    else:
        logger.info("delivery to %s: %s %s", req.recipient, reply.status.value, reply.text)
    return reply


def _send_reply(conn: socket.socket, reply: Reply) -> None:
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        conn.sendall(format_reply(reply))
    except OSError as e:
        logger.warning("cannot send reply: %s", e)


# --- the helper's main loop (root) ------------------------------------------------------

def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def bind_local_socket(path: Path, group_gid: int | None) -> socket.socket:
    """Listen on courierlocal.sock: 0660, group MAILGROUP when root (INTERNALS.md)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind with a tight umask so the socket never exists with wider rights.
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group_gid is not None and os.geteuid() == 0:
        os.chown(path, 0, group_gid)
    os.chmod(path, 0o660)
    sock.listen(64)
    return sock


class Helper:
    """The courierlocal main loop; `serve()` returns when stopped or the parent died."""

    def __init__(self, listen: socket.socket, authsocket: Path, allowed_uids: set[int],
                 parent_pid: int | None, cleanup: tuple[Path, ...] = (),
                 parent_pidfile: Path | None = None, lifeline: int | None = None,
                 default_maildir: str = DEFAULT_MAILDIR):
        self.default_maildir = default_maildir
        self.parent_pidfile = parent_pidfile
        # The read end of a pipe whose write end only courierd holds: EOF means
        # "stop" (courierd, no longer root, cannot signal us) or "courierd died".
        self.lifeline = lifeline
        self.listen = listen
        self.authsocket = authsocket
        self.allowed = allowed_uids
        self.parent_pid = parent_pid
        self.cleanup = cleanup
        self.children: set[int] = set()
        self.stopping = False

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def _accept(self) -> None:
        try:
            conn, _ = self.listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            uid = peer_uid(conn)
            if uid not in self.allowed:
                logger.warning("refused connection from uid %d", uid)
                return
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    self.listen.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.set_wakeup_fd(-1)
                    set_title("courierlocal: delivering")
                    handle_connection(conn, self.authsocket, self.default_maildir)
                except BaseException:  # noqa: BLE001 - log, never return into the loop
                    logger.exception("courierlocal connection failed")
                    code = 1
                finally:
                    courier_log.flush()
                    os._exit(code)
            self.children.add(pid)

    def serve(self) -> None:
        rsig, wsig = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wsig)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload; courierd reloads
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the fd
        self.listen.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(rsig, selectors.EVENT_READ, "signal")
        if self.lifeline is not None:
            sel.register(self.lifeline, selectors.EVENT_READ, "lifeline")
        listening = False
        try:
            while not self.stopping:
                want = len(self.children) < MAX_CHILDREN
                if want and not listening:
                    sel.register(self.listen, selectors.EVENT_READ, "listen")
                    listening = True
                elif not want and listening:
                    sel.unregister(self.listen)
                    listening = False
                for key, _ in sel.select(1.0):
                    if key.data == "signal":
                        try:
                            while os.read(rsig, 512):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.data == "listen":
                        self._accept()
                    elif key.data == "lifeline":
                        if not os.read(self.lifeline, 64):
                            self.stopping = True
                self._reap()
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    logger.error("courierd (pid %d) is gone; stopping", self.parent_pid)
                    break
            self._finish()
        finally:
            sel.close()
            self.listen.close()
            self._cleanup_files()

    def _cleanup_files(self) -> None:
        # courierd has dropped root and may not be allowed to remove its own
        # files in RUNDIR; the helper, still root, does it on the way out.
        paths = list(self.cleanup)
        if self.parent_pidfile is not None and self.parent_pid is not None \
                and read_pidfile(self.parent_pidfile) == self.parent_pid:
            paths.append(self.parent_pidfile)
        for p in paths:
            try:
                p.unlink()
            except OSError:
                pass

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _finish(self) -> None:
        deadline = time.monotonic() + STOP_WAIT
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def run_helper(listen: socket.socket, authsocket: Path, allowed_uids: set[int],
               parent_pid: int | None, cleanup: tuple[Path, ...] = (),
               parent_pidfile: Path | None = None, lifeline: int | None = None,
               default_maildir: str = DEFAULT_MAILDIR) -> int:
    """Entry point in the forked helper process."""
    set_title("courierlocal")
    courier_log.setup("courierlocal", foreground=True)
    try:
        Helper(listen, authsocket, allowed_uids, parent_pid, cleanup, parent_pidfile,
               lifeline, default_maildir).serve()
    except Exception:  # noqa: BLE001 - the helper's own fault: log it and exit non-zero
        logger.exception("courierlocal failed")
        return 1
    return 0


# --- the client side (courierd, as the daemon account) ----------------------------------

def request_delivery(socket_path: Path, data_fd: int, sender: str, recipient: str,
                     user: str | None = None, *, timeout: float = DELIVERY_TIMEOUT + 30
                     ) -> Reply:
    """Ask courierlocal to deliver; connection problems become TEMP replies."""
    req = DeliverRequest(sender, recipient, user)
    try:
        line = format_request(req)
    except ValueError as e:
        return Reply(Status.PERM, f"5.1.3 {e}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        socket.send_fds(s, [line], [data_fd])
        reader = ReplyReader()
        while True:
            chunk = s.recv(1024)
            if not chunk:
                return Reply(Status.TEMP, "4.3.0 courierlocal closed the connection")
            reader.feed(chunk)
            try:
                reply = reader.next_reply()
            except ClientError as e:
                return Reply(Status.TEMP, f"4.3.0 bad reply from courierlocal: {e.text}")
            if reply is not None:
                return reply
    except TimeoutError:
        return Reply(Status.TEMP, "4.3.0 courierlocal timed out")
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return Reply(Status.TEMP, "4.3.0 courierlocal is not running")
        return Reply(Status.TEMP, f"4.3.0 courierlocal: {e.strerror or e}")
    finally:
        s.close()
