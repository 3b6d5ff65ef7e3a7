"""One prefork worker: accept on the shared socket, answer one request per connection.

Courier's authdaemond forks `daemons` copies that each loop on accept(); so do we.
A connection gets READ_TIMEOUT seconds in all to send its request (bounded by
authproto's size limits); a bad request gets FAIL, a temporary failure gets the
connection closed without a reply, which Courier's client reads as "try later".
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import signal
import socket
import time

from courier_authd.core import Authenticator

from libcourier.authproto import FAIL, AuthProtocolError, RequestParser
from libcourier.proto import NEED_DATA

log = logging.getLogger("courier.authd")

READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0


def serve_connection(conn: socket.socket, auth: Authenticator, *,
                     read_timeout: float = READ_TIMEOUT) -> None:
    parser = RequestParser()
    deadline = time.monotonic() + read_timeout
    try:
        while True:
            try:
                req = parser.next_request()
            except AuthProtocolError as e:
                log.info("bad request: %s", e)
                conn.settimeout(WRITE_TIMEOUT)
                conn.sendall(FAIL)
                return
            if req is not NEED_DATA:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                log.info("request timed out")
                return
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                return  # the client gave up before finishing its request
            parser.feed(chunk)
        try:
            outcome = auth.handle(req, time.monotonic())
        except Exception:
            # Our fault: log it and hang up, which the client treats as a temporary failure.
            log.exception("internal error handling a request")
            return
        for line in outcome.log:
            log.info("%s", line)
        if outcome.reply is not None:
            conn.settimeout(WRITE_TIMEOUT)
            conn.sendall(outcome.reply)
    except OSError as e:
        log.debug("connection error: %s", e)
    finally:
        conn.close()


def worker_main(listener: socket.socket, auth: Authenticator) -> int:
    """Run in the forked child until SIGTERM; the caller os._exit()s with the result.

    SIGTERM only sets a flag (through the wakeup pipe), and the worker waits in
    epoll/select rather than accept(): a connection once accepted is always
    answered, so a reload or stop never drops a client mid-request. The listening
    socket is non-blocking because more than one worker may wake for a connection
    and only one wins.
    """
    stop = False
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides; ^C goes to the group
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # the parent reloads by replacing workers
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        import setproctitle
        setproctitle.setproctitle("authdaemond: worker")
    except ImportError:
        pass
    listener.setblocking(False)
    wait = _waiter(listener.fileno(), rfd)
    while not stop:
        for fd in wait():
            if fd == rfd:
                try:
                    os.read(rfd, 512)
                except BlockingIOError:
                    pass
                continue
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another worker took it
            except OSError as e:
                log.error("accept failed: %s", e)
                time.sleep(0.1)
                continue
            serve_connection(conn, auth)
    return 0


def _waiter(listen_fd: int, wake_fd: int):
    """A function that blocks until the listener or the wakeup pipe is readable and
    returns the ready fds. On Linux, EPOLLEXCLUSIVE wakes one worker per connection
    instead of all of them (Courier's workers block in accept(), which does the same);
    elsewhere a plain selector, where every idle worker wakes and one wins."""
    if hasattr(select, "epoll") and hasattr(select, "EPOLLEXCLUSIVE"):
        ep = select.epoll()
        ep.register(listen_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        ep.register(wake_fd, select.EPOLLIN)
        return lambda: [fd for fd, _ in ep.poll()]
    sel = selectors.DefaultSelector()
    sel.register(listen_fd, selectors.EVENT_READ)
    sel.register(wake_fd, selectors.EVENT_READ)
    return lambda: [key.fd for key, _ in sel.select()]


def fork_worker(listener: socket.socket, auth: Authenticator) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = worker_main(listener, auth)
    except BaseException:
        log.exception("worker crashed")
    finally:
        logging.shutdown()
        os._exit(code)
