"""A delivery child kept for the next message to the same account.

courierlocal's connection child (root) used to fork a delivery child for
every message; a burst of mail for one user (the common case: a list, a
backlog, a benchmark) paid a fork and a fresh process each time. Now the
delivery child, once switched for good to the user, stays and waits for the
next request *for the same account* (uid, gid, home, maildir, quota, address)
on a socketpair; a message for anyone else ends it and forks a new one. It
never holds more rights than the forked child did: it is the same process,
serving only that user's messages, each passed as an fd and closed after.

Connection child -> worker: one frame, the spool data file's fd passed with it,

    DELIVER <sender> <recipient> [<user>]\\n       (localproto's request line)
    <xtext ext | -> <timeout seconds>\\n

Worker -> connection child: `<length>\\n` and then the report of localuser
(`FWD` lines and the reply line). A worker that does not answer in time is
killed (SIGKILL) and the reply is TEMP, as for the forked child; one that
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
    MAX_REQUEST_LINE,
    DeliverRequest,
    Reply,
    Status,
    format_request,
    parse_request_line,
    xtext_decode,
    xtext_encode,
)
from courier_deliver.localuser import Outcome, _deliver_as_user, format_report, parse_report

from libcourier import log as courier_log
from libcourier.authclient import AuthInfo
from libcourier.proto import ClientError

WORKER_IDLE = 60.0           # seconds a worker waits for its next request
FRAME_MAX = MAX_REQUEST_LINE + 2 * 1024 + 64
REPORT_MAX = 256 * 1024


def account_key(info: AuthInfo) -> tuple:
    """What a delivery depends on besides the message: a worker serves one key."""
    return (info.uid, info.gid, info.home, info.maildir, info.quota, info.address,
            info.username)


def _worker_main(sock: socket.socket, info: AuthInfo, default_maildir: str) -> None:
    buf = bytearray()
    fds: list[int] = []
    while True:
        while buf.count(b"\n") < 2:
            sock.settimeout(WORKER_IDLE)
            try:
                data, got, _f, _a = socket.recv_fds(sock, 4096, 4)
            except OSError:
                return
            fds.extend(got)
            if not data or len(buf) + len(data) > FRAME_MAX:
                return
            buf += data
        first, _, rest = bytes(buf).partition(b"\n")
        meta, _, tail = rest.partition(b"\n")
        buf = bytearray(tail)
        if len(fds) != 1:
            return                      # out of step: the connection child kills nothing, gets EOF
        fd = fds.pop()
        try:
            req = parse_request_line(first)
            ext_tok, _, timeout_tok = meta.decode("ascii").partition(" ")
            ext = None if ext_tok == "-" else xtext_decode(ext_tok)
            outcome = _deliver_as_user(info, fd, req, default_maildir, ext, float(timeout_tok))
        except BaseException as e:  # noqa: BLE001 - the worker must always report
            outcome = Outcome(Reply(Status.TEMP,
                                    f"4.3.0 delivery failed: {type(e).__name__}: {e}"))
        finally:
            os.close(fd)
        report = format_report(outcome)
        try:
            sock.settimeout(WORKER_IDLE)
            sock.sendall(b"%d\n" % len(report) + report)
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

    def _start(self, info: AuthInfo, default_maildir: str, fd: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                for s in self.close_in_child:
                    s.close()
                # The spool file of the request at hand comes again over the
                # socketpair; this inherited copy would hold its flock (the lock
                # belongs to the open file) for as long as the worker lives.
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

    def deliver(self, info: AuthInfo, fd: int, req: DeliverRequest, default_maildir: str,
                ext: str | None, timeout: float) -> Outcome:
        frame = format_request(req) + (
            f"{xtext_encode(ext) if ext is not None else '-'} {timeout:.0f}\n").encode("ascii")
        for _ in range(2):
            w = self._w
            fresh = w is None or w.key != account_key(info)
            if fresh:
                self.close()
                w = self._start(info, default_maildir, fd)
            assert w is not None
            try:
                w.sock.settimeout(10.0)
                socket.send_fds(w.sock, [frame], [fd])
            except OSError:
                # A kept worker that went away while idle (WORKER_IDLE): it read
                # nothing, so a new one may take the request.
                self._kill()
                if fresh:
                    break
                continue
            return self._wait(w, timeout)
        return Outcome(Reply(Status.TEMP, "4.3.0 cannot start the delivery process"))

    def _wait(self, w: _Worker, timeout: float) -> Outcome:
        deadline = time.monotonic() + timeout
        data = bytearray()
        while True:
            head, nl, body = bytes(data).partition(b"\n")
            if nl and head.isdigit() and len(body) >= int(head):
                try:
                    outcome = parse_report(body[:int(head)])
                except ClientError:
                    outcome = None
                if outcome is None:
                    break
                return outcome
            if len(data) > REPORT_MAX + 16:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not w.sel.select(left):
                self._kill()
                return Outcome(Reply(Status.TEMP, "4.3.0 delivery timed out"))
            chunk = w.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        self._kill()
        return Outcome(Reply(Status.TEMP, "4.3.0 delivery process ended without a result"))
