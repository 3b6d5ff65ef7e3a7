"""A delivery child kept for the next message to the same account.

courierlocal's connection child (root) used to fork a delivery child for
every message; a burst of mail for one user (the common case: a list, a
backlog, a benchmark) paid a fork and a fresh process each time. Now the
delivery child, once switched for good to the user, stays and waits for the
next request *for the same account* (uid, gid, home, maildir, quota, address)
on a socketpair; a message for anyone else ends it and forks a new one. It
never holds more rights than the forked child did: it is the same process,
serving only that user's messages, each passed as an fd and closed after.

Connection child -> worker: one frame for a batch of 1 to BATCH_MAX messages,
their spool data files' fds passed with it in the same order,

    <count> <timeout seconds>\\n
    then for each message:
    DELIVER <sender> <recipient> [<user>]\\n       (localproto's request line)
    <xtext ext | ->\\n

Worker -> connection child, for each message in order: `<length>\\n` and then
the report of localuser (`FWD` lines and the reply line), all sent at once
when the batch is done (localuser.deliver_batch_as_user: the Maildir files
are published together). A worker that does not answer in time is
killed (SIGKILL) and every reply is TEMP, as for the forked child; one that
exits or dies answers nothing and the next request gets a new worker. The
worker exits when its socket closes (the connection child is done) or after
WORKER_IDLE seconds without a request.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass

from courier_deliver.localproto import (
    BATCH_MAX,
    MAX_REQUEST_LINE,
    DeliverRequest,
    Reply,
    Status,
    format_request,
    parse_request_line,
    xtext_decode,
    xtext_encode,
)
from courier_deliver.localuser import Outcome, deliver_batch_as_user, format_report, parse_report

from libcourier import log as courier_log
from libcourier.authclient import AuthInfo
from libcourier.proto import ClientError

WORKER_IDLE = 60.0           # seconds a worker waits for its next request
FRAME_MAX = BATCH_MAX * (MAX_REQUEST_LINE + 3 * 1024 + 4) + 64
REPORT_MAX = 256 * 1024      # bytes of one message's report


def account_key(info: AuthInfo) -> tuple:
    """What a delivery depends on besides the message: a worker serves one key."""
    return (info.uid, info.gid, info.home, info.maildir, info.quota, info.address,
            info.username)


def _frame_complete(buf: bytearray) -> int | None:
    """The number of messages of the frame in buf once it is all there, else None;
    raises ValueError on a bad count line."""
    head, nl, _ = buf.partition(b"\n")
    if not nl:
        return None
    count = int(head.split(b" ", 1)[0])
    if not 1 <= count <= BATCH_MAX:
        raise ValueError("bad batch size")
    return count if buf.count(b"\n") >= 1 + 2 * count else None


def _worker_main(sock: socket.socket, info: AuthInfo, default_maildir: str) -> None:
    buf = bytearray()
    fds: list[int] = []
    while True:
        try:
            while (count := _frame_complete(buf)) is None:
                sock.settimeout(WORKER_IDLE)
                data, got, _f, _a = socket.recv_fds(sock, 65536, BATCH_MAX)
                fds.extend(got)
                if not data or len(buf) + len(data) > FRAME_MAX:
                    return
                buf += data
        except (OSError, ValueError):
            return
        lines = bytes(buf).split(b"\n", 1 + 2 * count)
        buf = bytearray(lines.pop())
        if len(fds) != count:
            return                      # out of step: the connection child kills nothing, gets EOF
        batch, fds = fds, []
        try:
            timeout = float(lines[0].split(b" ", 1)[1])
            items = []
            for i in range(count):
                req = parse_request_line(lines[1 + 2 * i])
                ext_tok = lines[2 + 2 * i].decode("ascii")
                items.append((batch[i], req, None if ext_tok == "-" else xtext_decode(ext_tok)))
            outcomes = deliver_batch_as_user(info, items, default_maildir, timeout)
        except BaseException as e:  # noqa: BLE001 - the worker must always report
            outcomes = [Outcome(Reply(Status.TEMP,
                                      f"4.3.0 delivery failed: {type(e).__name__}: {e}"))] * count
        finally:
            for fd in batch:
                os.close(fd)
        reports = [format_report(o) for o in outcomes]
        try:
            sock.settimeout(WORKER_IDLE)
            sock.sendall(b"".join(b"%d\n" % len(r) + r for r in reports))
        except OSError:
            return


@dataclass
class _Worker:
    key: tuple
    pid: int
    sock: socket.socket
    sel: selectors.BaseSelector      # waits for its replies (one per worker, not per message)


class UserWorkers:
    """The connection child's kept delivery child (at most one)."""

    def __init__(self, close_in_child: tuple[socket.socket, ...] = ()) -> None:
        # The connection's socket: a worker must not keep it open (courierd would
        # not see the connection end while the worker lives).
        self.close_in_child = close_in_child
        self._w: _Worker | None = None

    def close(self) -> None:
        w, self._w = self._w, None
        if w is None:
            return
        w.sel.close()
        w.sock.close()                  # the worker sees EOF and exits
        try:
            os.waitpid(w.pid, 0)
        except ChildProcessError:
            pass

    def _kill(self) -> None:
        w = self._w
        if w is not None:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.close()

    def _start(self, info: AuthInfo, default_maildir: str, fds: list[int]) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                for s in self.close_in_child:
                    s.close()
                # The spool files of the requests at hand come again over the
                # socketpair; these inherited copies would hold their flocks (a
                # lock belongs to the open file) for as long as the worker lives.
                for fd in fds:
                    os.close(fd)
                _worker_main(child, info, default_maildir)
            finally:
                courier_log.flush()
                os._exit(0)
        child.close()
        sel = selectors.DefaultSelector()
        sel.register(parent, selectors.EVENT_READ)
        self._w = _Worker(account_key(info), pid, parent, sel)
        return self._w

    def deliver_batch(self, info: AuthInfo, items: list[tuple[int, DeliverRequest, str | None]],
                      default_maildir: str, timeout: float) -> list[Outcome]:
        """Up to BATCH_MAX messages (fd, request, extension) for one account to its
        worker in one frame; an Outcome for each, in order."""
        assert 1 <= len(items) <= BATCH_MAX
        frame = b"%d %.0f\n" % (len(items), timeout) + b"".join(
            format_request(req) + (xtext_encode(ext) if ext is not None else "-").encode("ascii")
            + b"\n" for _fd, req, ext in items)
        fds = [fd for fd, _req, _ext in items]
        for _ in range(2):
            w = self._w
            fresh = w is None or w.key != account_key(info)
            if fresh:
                self.close()
                w = self._start(info, default_maildir, fds)
            assert w is not None
            try:
                w.sock.settimeout(10.0)
                sent = socket.send_fds(w.sock, [frame], fds)
                if sent < len(frame):
                    w.sock.sendall(frame[sent:])     # the fds went with the first part
            except OSError:
                # A kept worker that went away while idle (WORKER_IDLE): it read
                # nothing, so a new one may take the request.
                self._kill()
                if fresh:
                    break
                continue
            return self._wait(w, timeout, len(items))
        return [Outcome(Reply(Status.TEMP, "4.3.0 cannot start the delivery process"))] * len(items)

    def _wait(self, w: _Worker, timeout: float, count: int) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        data = bytearray()
        outcomes: list[Outcome] = []
        why = "4.3.0 delivery process ended without a result"
        while len(outcomes) < count:
            head, nl, body = bytes(data).partition(b"\n")
            if nl and head.isdigit() and len(body) >= int(head):
                try:
                    outcome = parse_report(body[:int(head)])
                except ClientError:
                    outcome = None
                if outcome is None:
                    break
                outcomes.append(outcome)
                del data[:len(head) + 1 + int(head)]
                continue
            if len(data) > REPORT_MAX + 16:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not w.sel.select(left):
                why = "4.3.0 delivery timed out"
                break
            chunk = w.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        else:
            return outcomes
        self._kill()
        return outcomes + [Outcome(Reply(Status.TEMP, why))] * (count - len(outcomes))
