"""courierlocal: the root helper that writes into users' Maildirs.

courierd itself runs as the daemon account and cannot become a mail user, so
it forks this helper first (as Courier's courierd starts courierlocal) and
asks it over a Unix socket:

    courierd --DELIVER <sender> <recipient> [<user>]\\n + SCM_RIGHTS(data fd)--> helper
    helper   --OK <file> | TEMP <text> | PERM <text>\\n-->                   courierd

Process chain, one level per privilege boundary:

- the helper's main loop (root): accepts, checks SO_PEERCRED, forks;
- a connection child (root), one per courierd connection, which courierd
  keeps open: reads each request (bounded, with a timeout), asks authd for
  the account (kept a few seconds), forks again for the delivery child,
  which stays for the next message to the same account (localworker.py);
- a delivery child: switches for good to the user's uid/gid, chdir HOME, and
  writes the Maildir file; it reports each delivery over a socketpair and
  waits for the account's next one (localworker.py). The connection child,
  still root and never touched by the user's files, sends the reply.

What the delivery child does as the user is in localuser.py; it is imported
at the top of this module, so nothing is imported after the switch (the
Python installation may be unreadable to the user).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from courier_deliver import dotcourier
from courier_deliver.localjournal import NAME as JOURNAL_NAME
from courier_deliver.localjournal import Journal, file_key
from courier_deliver.localproto import (
    BATCH_MAX,
    DeliverRequest,
    Reply,
    ReplyReader,
    RequestReader,
    Status,
    format_reply,
    format_request,
)
from courier_deliver.localuser import (  # noqa: F401 - Outcome & co. are this module's API too
    DEFAULT_MAILDIR,
    DELIVERY_GRACE,
    DELIVERY_TIMEOUT,
    Outcome,
    _pread_chunks,
    format_report,
    parse_report,
)
from courier_deliver.localworker import UserWorkers, account_key

from libcourier import log as courier_log
from libcourier import privsep
from libcourier.authclient import AuthInfo, AuthTempFail, auth_pre
from libcourier.config.control import read_control_value
from libcourier.layout import load_layout
from libcourier.pidfile import read_pidfile
from libcourier.proctitle import set_title
from libcourier.proto import ClientError
from libcourier.spool import Envelope, Recipient, SpoolWriter, data_span, notify
from libcourier.unixsock import bind_unix

logger = logging.getLogger("courier.courierlocal")

REQUEST_TIMEOUT = 30.0       # to read one request line
IDLE_TIMEOUT = 60.0          # a kept-open connection without a next request is closed
MAX_REQUESTS = 10000         # requests on one connection; courierd then opens another
ACCOUNT_CACHE_SECONDS = 5.0  # how long a connection child reuses authd's answer for a user
ACCOUNT_CACHE_SIZE = 1000    # users remembered by one connection child
MAX_DELIVERY_TIMEOUT = 3600.0  # the most ETC/localtimeout may ask for
LOCALTIMEOUT_RECHECK = 1.0   # seconds a connection child reuses ETC/localtimeout's value
MAX_CHILDREN = 32            # connection children at once; more wait in the backlog
BATCH_STREAMS = 2            # courierd's batches in flight for one account (LocalBatches)
STOP_WAIT = 5.0             # on SIGTERM, how long in-flight deliveries may finish


@dataclass(frozen=True, slots=True)
class ForwardSpool:
    """Where forwarded copies go: the spool, written as the daemon account."""
    spooldir: Path
    queue_socket: Path
    uid: int
    gid: int


# --- the connection child (root) --------------------------------------------------------

def _recv_requests(conn: socket.socket, reader: RequestReader, fds: list[int],
                   timeout: float = REQUEST_TIMEOUT
                   ) -> tuple[list[tuple[DeliverRequest, int]], ClientError | None] | None:
    """The requests courierd has sent so far (it may send up to BATCH_MAX before
    reading the replies), each with its passed fd: waits for the first, then
    takes what is already there. None when the peer closed the connection
    before a new request began (the end of a kept-open connection). A bad
    line after good ones comes back beside them (their replies go first);
    raises ClientError for a bad first one, or OSError (TimeoutError when no
    request came in time). `fds`: passed fds not yet matched with a line
    (they come with the first byte of courierd's send)."""
    deadline = time.monotonic() + timeout
    out: list[tuple[DeliverRequest, int]] = []
    got_bytes = False
    while len(out) < BATCH_MAX:
        try:
            req = reader.next_request()
            if req is not None and not fds:
                raise ClientError("a request without its file descriptor")
        except ClientError as e:
            if not out:
                raise
            return out, e
        if req is not None:
            out.append((req, fds.pop(0)))
            continue
        if out:
            conn.settimeout(0.0)        # more of the batch only if it is already here
            try:
                data, got, _flags, _addr = socket.recv_fds(conn, 65536, BATCH_MAX)
            except BlockingIOError:
                break
        else:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            data, got, _flags, _addr = socket.recv_fds(conn, 65536, BATCH_MAX)
        fds.extend(got)
        if not data:
            if out:
                break
            if not got_bytes and not fds:
                return None
            raise ClientError("connection closed before the request")
        got_bytes = True
        reader.feed(data)
    return out, None


def read_localtimeout(etc: Path | None) -> float:
    """Courier's `localtimeout` control file (a duration: 900, 15m, 1h): how long
    one local delivery may take; a program still running then is killed and the
    delivery deferred. Missing or bad: 15 minutes, Courier's default."""
    if etc is None:
        return DELIVERY_TIMEOUT
    try:
        text = read_control_value(Path(etc) / "localtimeout")
    except OSError:
        return DELIVERY_TIMEOUT
    if not text:
        return DELIVERY_TIMEOUT
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    mult = units.get(text[-1:], 0)
    number = text[:-1] if mult else text
    if not number.isdigit() or int(number) == 0:
        logger.warning("%s/localtimeout: bad value %r, using %d s", etc, text[:40],
                       DELIVERY_TIMEOUT)
        return DELIVERY_TIMEOUT
    return float(min(int(number) * (mult or 1), MAX_DELIVERY_TIMEOUT))


def handle_connection(conn: socket.socket, authsocket: Path,
                      default_maildir: str = DEFAULT_MAILDIR,
                      forward: ForwardSpool | None = None,
                      timeout: float | None = None,
                      journal: Journal | None = None, etc: Path | None = None) -> Reply | None:
    """Serve the requests of one connection, one after another, in the root
    connection child; return the last reply sent (None: no request came).

    courierd keeps its connections open for its next deliveries (local.LocalClient),
    so this child, and not the helper's main loop, pays for each message's
    fork, and once per connection rather than once per message for its own.
    The connection ends when courierd closes it, after IDLE_TIMEOUT without a
    request, after MAX_REQUESTS, or after a request that could not be parsed
    (the stream may be out of step then)."""
    workers = UserWorkers((conn,))
    try:
        return _serve_connection(conn, authsocket, default_maildir, forward, timeout,
                                 journal, etc, workers)
    finally:
        workers.close()


def _serve_connection(conn: socket.socket, authsocket: Path, default_maildir: str,
                      forward: ForwardSpool | None, timeout: float | None,
                      journal: Journal | None, etc: Path | None,
                      workers: UserWorkers) -> Reply | None:
    reader = RequestReader()
    accounts = AccountCache()
    fds: list[int] = []              # passed with requests not yet read whole
    last: Reply | None = None
    limit, limit_read = DELIVERY_TIMEOUT, float("-inf")     # localtimeout, when read
    served = 0
    try:
        while served < MAX_REQUESTS:
            try:
                got = _recv_requests(conn, reader, fds,
                                     REQUEST_TIMEOUT if served == 0 else IDLE_TIMEOUT)
            except ClientError as e:
                last = Reply(Status.PERM, f"5.5.2 bad request: {e.text}")
                _send_replies(conn, [last])
                return last
            except OSError:
                return last          # idle too long, or the peer went away
            if got is None:
                return last
            batch, bad = got
            served += len(batch)
            # localtimeout is read again at most every LOCALTIMEOUT_RECHECK seconds
            # (not for every message of a burst): a change applies within a second.
            if timeout is None and time.monotonic() - limit_read >= LOCALTIMEOUT_RECHECK:
                limit, limit_read = read_localtimeout(etc), time.monotonic()
            replies = _serve_batch(batch, authsocket, default_maildir, forward,
                                   limit if timeout is None else timeout,
                                   journal, accounts, workers)
            if bad is not None:
                replies.append(Reply(Status.PERM, f"5.5.2 bad request: {bad.text}"))
            last = replies[-1]
            if not _send_replies(conn, replies) or bad is not None:
                return last
        return last
    finally:
        for fd in fds:
            os.close(fd)


def _serve_batch(batch: list[tuple[DeliverRequest, int]], authsocket: Path,
                 default_maildir: str, forward: ForwardSpool | None, timeout: float,
                 journal: Journal | None, accounts: AccountCache,
                 workers: UserWorkers) -> list[Reply]:
    """One reply per request, in order. The requests for one account go to its
    worker together (localworker.deliver_batch: their Maildir files published
    with one fsync of new/); each is locked, checked against the journal,
    forwarded and recorded on its own, so one's failure is only its own."""
    replies: list[Reply | None] = [None] * len(batch)
    accounts_of: dict[tuple, tuple[AuthInfo, list[tuple[int, str | None]]]] = {}
    keys: list[str | None] = [None] * len(batch)        # each request's journal file_key
    done: list[tuple[str, str, str | None]] = []        # OK deliveries for the journal
    try:
        if journal is not None:
            journal.refresh()
        for i, (req, fd) in enumerate(batch):
            found = _prepare(req, fd, authsocket, timeout, journal, accounts)
            if isinstance(found, Reply):
                replies[i] = found
            else:
                info, ext, keys[i] = found
                accounts_of.setdefault(account_key(info), (info, []))[1].append((i, ext))
        for info, members in accounts_of.values():
            for start in range(0, len(members), BATCH_MAX):
                part = members[start:start + BATCH_MAX]
                outcomes = workers.deliver_batch(
                    info, [(batch[i][1], batch[i][0], ext) for i, ext in part],
                    default_maildir, timeout)
                for (i, _ext), outcome in zip(part, outcomes, strict=True):
                    req, fd = batch[i]
                    reply = replies[i] = _conclude(req, fd, info, outcome, forward)
                    key = keys[i]
                    if reply.status is Status.OK and key is not None:
                        done.append((key, req.recipient, req.user))
    finally:
        # Before any reply goes out (and even if none will: a repeat is then
        # answered from the journal).
        if journal is not None:
            journal.record_many(done)
        # The flock belongs to the open file, which courierd shares and closes
        # once it has the reply: it holds until then, as when this child exited.
        for _req, fd in batch:
            os.close(fd)
    assert all(r is not None for r in replies)
    return replies              # type: ignore[return-value]


def _prepare(req: DeliverRequest, fd: int, authsocket: Path, timeout: float,
             journal: Journal | None, accounts: AccountCache
             ) -> Reply | tuple[AuthInfo, str | None, str | None]:
    """Lock the message, answer a repeated request from the journal, find the
    account: the reply, or (account, extension, the file's journal key: None
    without a journal or a key) to deliver to."""
    waited = _lock_message(fd, timeout)
    if waited is None:
        return Reply(Status.TEMP, "4.3.0 another delivery of this message is still running")
    key = None
    if journal is not None:
        try:
            key = file_key(fd)
        except OSError as e:
            logger.warning("delivery to %s: cannot identify the spool file for the journal: "
                           "%s", req.recipient, e)
    # The batch's journal view is from before the lock: a delivery of this
    # file that held the lock meanwhile recorded after it, so read again then.
    if journal is not None and key is not None and \
            journal.seen(key, req.recipient, req.user, refresh=waited):
        # courierd asks again for a delivery it did not hear the OK of
        # (it was killed meanwhile): the copy is in already.
        logger.info("delivery to %s: already done, not repeated", req.recipient)
        return Reply(Status.OK, "already delivered")
    try:
        found = accounts.find(authsocket, req.user or req.recipient)
    except AuthTempFail as e:
        return Reply(Status.TEMP, f"4.4.3 authentication service unavailable: {e}")
    if found is None:
        return Reply(Status.PERM, "5.1.1 no such user")
    return (*found, key)


def _conclude(req: DeliverRequest, fd: int, info: AuthInfo, outcome: Outcome,
              forward: ForwardSpool | None) -> Reply:
    """The worker's outcome for one message: queue its forwards, log."""
    reply = outcome.reply
    if reply.status is Status.OK and outcome.forwards:
        reply = _forward(forward, fd, req, outcome)
    if reply.status is Status.OK:
        # courierd logs every delivery (id, sender, recipient, file) as Courier
        # does; this line, once per message, is for DEBUG_LOGIN-style tracing.
        logger.debug("delivered to %s (uid %s): %s", req.recipient, info.uid, reply.text)
    else:
        logger.info("delivery to %s: %s %s", req.recipient, reply.status.value, reply.text)
    return reply


def _lock_message(fd: int, timeout: float) -> bool | None:
    """flock the spool data file for this delivery. courierd opens the file anew
    for each request, so a request repeated by a restarted courierd waits here
    until a delivery of the same file that outlived the old courierd has
    finished (and is in the journal). Whether it had to wait; None when that
    takes longer than a whole delivery may."""
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return waited
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return None
            waited = True
            time.sleep(0.05)
        except OSError:
            return waited           # a file that cannot be locked: nothing to wait for


def find_account(authsocket: Path, user: str) -> tuple[AuthInfo, str | None] | None:
    """The account and address extension for `user` (Courier's user-ext rule):
    the whole name first, then shorter prefixes at each "-" of the local part.
    Raises AuthTempFail."""
    local, at, domain = user.rpartition("@")
    if not at:
        local, domain = user, ""
    for head, ext in dotcourier.split_extension(local):
        info = auth_pre(authsocket, "courier", f"{head}@{domain}" if at else head)
        if info is not None:
            return info, ext
    return None


class AccountCache:
    """find_account's answers for ACCOUNT_CACHE_SECONDS, in one connection child:
    a burst of mail for one user asks authd once, not once a message. Only
    accounts found are kept (an unknown user is asked again, so a new account
    gets mail at once), and never longer than a few seconds, so a changed home
    or quota applies to the next burst, as Courier's authdaemon cache allows."""

    def __init__(self, ttl: float = ACCOUNT_CACHE_SECONDS, size: int = ACCOUNT_CACHE_SIZE):
        self.ttl = ttl
        self.size = size
        self._found: dict[str, tuple[float, tuple[AuthInfo, str | None]]] = {}

    def find(self, authsocket: Path, user: str) -> tuple[AuthInfo, str | None] | None:
        now = time.monotonic()
        hit = self._found.get(user)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        found = find_account(authsocket, user)
        if found is not None:
            if len(self._found) >= self.size:
                self._found.clear()
            self._found[user] = (now, found)
        return found


def _forward(forward: ForwardSpool | None, fd: int, req: DeliverRequest,
             outcome: Outcome) -> Reply:
    """Queue one copy for the forwarding addresses, with the original sender,
    as the daemon account (a fork that drops root). Delivered-To on top lets
    the next hop see the loop if the forward comes back."""
    if forward is None:
        return Reply(Status.TEMP, "4.3.0 forwarding is not configured")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            privsep.switch_to_user(forward.uid, forward.gid)
            w = SpoolWriter(forward.spooldir, 0)
            w.write(f"Delivered-To: {req.recipient}\n".encode("utf-8", "surrogateescape"))
            for block in _pread_chunks(fd, data_span(fd)):
                w.write(block)
            qid = w.commit(Envelope(req.sender, tuple(Recipient(a) for a in outcome.forwards),
                                    time.time(), client=f"forward from {req.recipient}"))
            logger.info("id=%s: forwarded from %s to %s", qid, req.recipient,
                        ",".join(outcome.forwards))
            notify(forward.queue_socket, qid)
            code = 0
        except BaseException as e:  # noqa: BLE001 - report through the exit code
            logger.error("cannot queue the forward from %s: %s", req.recipient, e)
        finally:
            courier_log.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return Reply(Status.TEMP, "4.3.0 cannot queue the forwarded copy")
    return outcome.reply


def _send_replies(conn: socket.socket, replies: list[Reply]) -> bool:
    try:
        conn.settimeout(REQUEST_TIMEOUT)
        conn.sendall(b"".join(format_reply(r) for r in replies))
        return True
    except OSError as e:
        logger.warning("cannot send reply: %s", e)
        return False


# --- the helper's main loop (root) ------------------------------------------------------

def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def bind_local_socket(path: Path, group_gid: int | None) -> socket.socket:
    """Listen on courierlocal.sock: 0660, group MAILGROUP when root (INTERNALS.md)."""
    return bind_unix(path, 0o660, None if group_gid is None else (0, group_gid))


class Helper:
    """The courierlocal main loop; `serve()` returns when stopped or the parent died."""

    def __init__(self, listen: socket.socket, authsocket: Path, allowed_uids: set[int],
                 parent_pid: int | None, cleanup: tuple[Path, ...] = (),
                 parent_pidfile: Path | None = None, lifeline: int | None = None,
                 default_maildir: str = DEFAULT_MAILDIR, forward: ForwardSpool | None = None,
                 etc: Path | None = None, journal: Journal | None = None):
        self.etc = etc              # for control files read per delivery (localtimeout)
        self.journal = journal
        self.default_maildir = default_maildir
        self.forward = forward
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
                    handle_connection(conn, self.authsocket, self.default_maildir,
                                      self.forward, None, self.journal, self.etc)
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
               default_maildir: str = DEFAULT_MAILDIR,
               forward: ForwardSpool | None = None, etc: Path | None = None) -> int:
    """Entry point in the forked helper process."""
    set_title("courierlocal")
    courier_log.setup("courierlocal", foreground=True)
    try:
        journal = None
        if etc is not None:
            journal = Journal(load_layout(etc).rundir / JOURNAL_NAME)
            journal.prune()
        Helper(listen, authsocket, allowed_uids, parent_pid, cleanup, parent_pidfile,
               lifeline, default_maildir, forward, etc, journal).serve()
    except Exception:  # noqa: BLE001 - the helper's own fault: log it and exit non-zero
        logger.exception("courierlocal failed")
        return 1
    return 0


# --- the client side (courierd, as the daemon account) ----------------------------------

class _Closed(Exception):
    """courierlocal closed the connection before any byte of the reply."""


class _BadReply(Exception):
    """A reply line that cannot be parsed: the connection is out of step."""


def _exchange(s: socket.socket, line: bytes, data_fd: int) -> Reply:
    """One request on a connected socket; raises _Closed, TimeoutError, OSError."""
    socket.send_fds(s, [line], [data_fd])
    reader = ReplyReader()
    while (reply := _feed_reply(reader, s.recv(1024))) is None:
        pass
    return reply


def _feed_reply(reader: ReplyReader, chunk: bytes) -> Reply | None:
    """One chunk of courierlocal's answer into reader: the reply once complete;
    raises _Closed (end of stream) or _BadReply. Shared by both exchanges."""
    if not chunk:
        raise _Closed
    reader.feed(chunk)
    try:
        return reader.next_reply()
    except ClientError as e:
        raise _BadReply(e.text) from None


async def _exchange_batch_async(s: socket.socket, lines: list[bytes], fds: list[int],
                                 replies: list[Reply]) -> None:
    """Several requests in one sendmsg (their fds with it), then their replies,
    appended to `replies` as they come (what came before a failure stays)."""
    loop = asyncio.get_running_loop()
    data = b"".join(lines)
    while True:
        try:
            sent = socket.send_fds(s, [data], fds)
            break
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(s.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(s.fileno())
    if sent < len(data):
        await loop.sock_sendall(s, data[sent:])     # the fds went with the first part
    reader = ReplyReader()
    while len(replies) < len(lines):
        reply = _feed_reply(reader, await loop.sock_recv(s, 4096))
        while reply is not None:
            replies.append(reply)
            if len(replies) == len(lines):
                break
            try:
                reply = reader.next_reply()
            except ClientError as e:
                raise _BadReply(e.text) from None


def _connect(socket_path: Path, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(str(socket_path))
    except BaseException:
        s.close()
        raise
    return s


def _os_reply(e: OSError) -> Reply:
    if isinstance(e, TimeoutError):
        return Reply(Status.TEMP, "4.3.0 courierlocal timed out")
    if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return Reply(Status.TEMP, "4.3.0 courierlocal is not running")
    return Reply(Status.TEMP, f"4.3.0 courierlocal: {e.strerror or e}")


def request_delivery(socket_path: Path, data_fd: int, sender: str, recipient: str,
                     user: str | None = None, *,
                     timeout: float = MAX_DELIVERY_TIMEOUT + 60
                     ) -> Reply:
    """Ask courierlocal to deliver, on a connection of its own (closed after the
    reply); connection problems become TEMP replies. courierd uses LocalClient."""
    line = _request_line(sender, recipient, user)
    if isinstance(line, Reply):
        return line
    try:
        s = _connect(socket_path, timeout)
    except OSError as e:
        return _os_reply(e)
    try:
        return _exchange(s, line, data_fd)
    except (_Closed, _BadReply, OSError) as e:
        failed = _failed(s, e, reused=False)
        assert failed is not None, "only a reused connection is retried"
        return failed
    finally:
        s.close()


def _request_line(sender: str, recipient: str, user: str | None) -> bytes | Reply:
    """The request line for courierlocal, or the PERM reply for an address it
    cannot carry."""
    try:
        return format_request(DeliverRequest(sender, recipient, user))
    except ValueError as e:
        return Reply(Status.PERM, f"5.1.3 {e}")


def _failed(s: socket.socket, e: Exception, reused: bool) -> Reply | None:
    """Close a kept or new connection whose exchange failed; the reply for the
    failure, or None when the request is to be sent again on a fresh connection
    (a kept one that courierlocal had closed while it sat idle)."""
    s.close()
    if isinstance(e, _Closed):
        return None if reused else Reply(Status.TEMP, "4.3.0 courierlocal closed the connection")
    if isinstance(e, _BadReply):
        return Reply(Status.TEMP, f"4.3.0 bad reply from courierlocal: {e}")
    assert isinstance(e, OSError)
    if reused and e.errno in (errno.EPIPE, errno.ECONNRESET):
        return None
    return _os_reply(e)


class LocalClient:
    """courierd's connections to courierlocal, kept open between deliveries (each
    served by one root connection child, which then forks only the delivery
    child per message). Thread-safe: a worker thread takes an idle connection
    or opens one, and puts it back after a complete reply.

    A kept connection that turns out closed before any reply byte (courierlocal's
    idle timeout, or a helper restarted) is replaced and the request sent once
    more. Should the old connection child have died in the middle of that very
    delivery, the repeat is answered from courierlocal's journal or waits on
    the spool file's lock: at most the duplicate SMTP's at-least-once allows."""

    def __init__(self, max_idle: int = 64, timeout: float = MAX_DELIVERY_TIMEOUT + 60):
        self.max_idle = max_idle
        self.timeout = timeout
        self._idle: list[tuple[str, socket.socket]] = []
        self._lock = threading.Lock()

    def _take(self, path: str) -> socket.socket | None:
        with self._lock:
            for i, (p, s) in enumerate(self._idle):
                if p == path:
                    del self._idle[i]
                    return s
        return None

    def _give(self, path: str, s: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append((path, s))
                return
        s.close()

    def close(self) -> None:
        """Close the idle connections: their connection children exit at once."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _p, s in idle:
            s.close()

    def request(self, socket_path: Path, data_fd: int, sender: str, recipient: str,
                user: str | None = None) -> Reply:
        line = _request_line(sender, recipient, user)
        if isinstance(line, Reply):
            return line
        path = str(socket_path)
        for _ in range(2):
            s = self._take(path)
            reused = s is not None
            if s is None:
                try:
                    s = _connect(socket_path, self.timeout)
                except OSError as e:
                    return _os_reply(e)
            try:
                s.settimeout(self.timeout)
                reply = _exchange(s, line, data_fd)
            except (_Closed, _BadReply, OSError) as e:
                failed = _failed(s, e, reused)
                if failed is None:
                    continue
                return failed
            except BaseException:
                s.close()
                raise
            self._give(path, s)
            return reply
        return Reply(Status.TEMP, "4.3.0 courierlocal closed the connection")

    async def request_batch_async(self, socket_path: Path, lines: list[bytes],
                                  fds: list[int]) -> list[Reply]:
        """Up to BATCH_MAX request lines (_request_line), each with its spool data fd,
        on one kept connection: courierlocal delivers them together and answers
        each. A reply per request, in order; a broken exchange is TEMP for the
        requests not yet answered (sent again once on a fresh connection when a
        kept one was found closed before any reply)."""
        loop = asyncio.get_running_loop()
        path = str(socket_path)
        replies: list[Reply] = []
        for _ in range(2):
            s = self._take(path)
            reused = s is not None
            if s is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                s.setblocking(False)
                try:
                    await asyncio.wait_for(loop.sock_connect(s, path), self.timeout)
                except OSError as e:          # TimeoutError included
                    s.close()
                    return [_os_reply(e)] * len(lines)
            s.setblocking(False)
            try:
                await asyncio.wait_for(_exchange_batch_async(s, lines, fds, replies),
                                       self.timeout)
            except (_Closed, _BadReply, OSError) as e:      # TimeoutError is an OSError
                failed = _failed(s, e, reused and not replies)
                if failed is None:
                    continue
                return replies + [failed] * (len(lines) - len(replies))
            except BaseException:
                s.close()
                raise
            self._give(path, s)
            return replies
        return [Reply(Status.TEMP, "4.3.0 courierlocal closed the connection")] * len(lines)


@dataclass(slots=True)
class _Ask:
    line: bytes
    fd: int                          # courierd's own dup of the spool data fd
    reply: asyncio.Future[Reply]


class LocalBatches:
    """courierd's requests from its event loop, gathered per recipient account
    and sent to courierlocal as batches (request_batch_async): while a batch
    for an account is being delivered, the account's next messages wait, and
    go together (up to BATCH_MAX) once one is answered. courierlocal publishes
    a batch's Maildir files with one fsync of new/, and the batch costs one
    exchange on each of the three hops instead of one per message.

    At most `streams` batches per account at a time (each on its own
    connection and delivery worker: one writes while the other waits for its
    fsyncs), each holding one of courierd's local slots (`slot()`: an
    awaitable giving the release function), so MAXDELS still bounds the
    delivery processes; other accounts' batches run beside. The spool fd is
    dup'd when queued: the caller may stop waiting (and close its file) while
    the batch is on its way, and the number must not name another file by then."""

    def __init__(self, client: LocalClient,
                 slot: Callable[[], Awaitable[Callable[[], None]]],
                 batch_max: int = BATCH_MAX, streams: int = BATCH_STREAMS):
        self.client = client
        self.slot = slot
        self.batch_max = batch_max
        self.streams = streams
        self._queues: dict[tuple[str, str], list[_Ask]] = {}
        self._senders: dict[tuple[str, str], int] = {}      # running _send tasks per key
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, socket_path: Path, data_fd: int, sender: str, recipient: str,
                      user: str | None = None) -> Reply:
        line = _request_line(sender, recipient, user)
        if isinstance(line, Reply):
            return line
        key = (str(socket_path), (user or recipient).lower())
        ask = _Ask(line, os.dup(data_fd), asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(key, [])
        queue.append(ask)
        if self._senders.get(key, 0) < self.streams:
            self._senders[key] = self._senders.get(key, 0) + 1
            task = asyncio.create_task(self._send(key, socket_path, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(ask.reply)

    async def _send(self, key: tuple[str, str], socket_path: Path, queue: list[_Ask]) -> None:
        batch: list[_Ask] = []
        try:
            while queue:
                release = await self.slot()
                try:
                    # Taken once the slot is ours: whatever came meanwhile joins
                    # (or another stream took it all: nothing to send).
                    batch, queue[:self.batch_max] = queue[:self.batch_max], []
                    if not batch:
                        break
                    replies = await self.client.request_batch_async(
                        socket_path, [a.line for a in batch], [a.fd for a in batch])
                finally:
                    release()
                for ask, reply in zip(batch, replies, strict=True):
                    if not ask.reply.done():
                        ask.reply.set_result(reply)
                _close_asks(batch)
                batch = []
        finally:
            left = batch
            if self._senders[key] > 1:
                self._senders[key] -= 1             # the others take what is queued
            else:
                del self._senders[key]
                del self._queues[key]
                left = batch + queue
            for ask in left:
                if not ask.reply.done():
                    ask.reply.set_result(Reply(Status.TEMP, "4.3.0 the request to courierlocal "
                                                            "was not completed"))
            _close_asks(left)


def _close_asks(asks: list[_Ask]) -> None:
    for a in asks:
        try:
            os.close(a.fd)
        except OSError:
            pass
