"""The POP3 TRANSACTION and UPDATE states: the driver between the core, the socket and the Maildrop.

Runs after the switch to the user. The core answers what it can from the
DropView; this driver streams RETR/TOP from the files and removes the DELE'd
messages at QUIT only (RFC 1939 §6): a dropped connection deletes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from courier_pop3d.core import Closed, Pop3Server, Retrieve, Update, unicode_wrapper
from courier_pop3d.login import Counters, Wire, flush, read_event, send
from courier_pop3d.maildrop import Maildrop

from libcourier import proctitle

log = logging.getLogger("courier.pop3d")

SEND_CHUNK = 256 * 1024


@dataclass(slots=True)
class Session:
    conn: Wire
    core: Pop3Server
    drop: Maildrop
    user: str
    timeout: float = 600.0
    log_deletions: bool = False
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.monotonic)

    def title(self, state: str) -> None:
        proctitle.set_title(f"pop3d: {self.user} [{self.conn.peer_ip}] {state}")

    def run(self) -> None:
        """Serve until QUIT, EOF, a timeout or too many errors; log Courier's LOGOUT line."""
        self.conn.sock.settimeout(self.timeout)
        self.title("TRANSACTION")
        how = "DISCONNECTED"
        try:
            how = self._loop()
        except TimeoutError:
            how = "TIMEOUT"
        except OSError as e:
            log.info("connection error, user=%s, ip=[%s]: %s", self.user, self.conn.peer_ip, e)
        finally:
            self.drop.unlock()
            c = self.counters
            # Courier imap/pop3dserver.C acctout(): the fields and their order.
            log.info("%s, user=%s, ip=[%s], port=[%d], top=%d, retr=%d, rcvd=%d, sent=%d, "
                     "time=%d%s", how, self.user, self.conn.peer_ip, self.conn.peer_port,
                     c.top, c.retr, c.rcvd, c.sent, int(time.monotonic() - self.started),
                     ", stls=1" if self.conn.tls else "")

    def _loop(self) -> str:
        while True:
            ev = read_event(self.conn, self.core, self.counters)
            if ev is None:
                return "DISCONNECTED"
            match ev:
                case Retrieve():
                    self.retrieve(ev)
                case Update(deleted=deleted):
                    self.title("UPDATE")
                    failed = self.drop.commit(deleted)
                    if self.log_deletions:
                        for i in deleted:
                            log.info("DELETED, user=%s, ip=[%s], port=[%d], filename=%s",
                                     self.user, self.conn.peer_ip, self.conn.peer_port,
                                     self.drop.messages[i].ref.filename)
                    self.core.update_done(failed)
                    flush(self.conn, self.core, self.counters)
                    return "LOGOUT"
                case Closed():
                    flush(self.conn, self.core, self.counters)
                    return "DISCONNECTED"
                case _:
                    raise AssertionError(f"unexpected event after login: {ev!r}")

    def retrieve(self, ev: Retrieve) -> None:
        f = self.drop.open_message(ev.index)
        wrapper = None
        if ev.wrap:
            # Courier's boundary: "=_<pid>-<time>".
            wrapper = unicode_wrapper(f"=_{os.getpid()}-{int(time.time())}")
        self.core.respond_retrieve(f is not None, sum(map(len, wrapper)) if wrapper else 0)
        if f is None:
            flush(self.conn, self.core, self.counters)
            return
        self.title("RETR" if ev.lines is None else "TOP")
        # The status line, the message and ".\r\n" go out in one write when the message
        # is small (most are): one syscall per RETR, and no small last piece left
        # for Nagle to hold back. Larger ones go out in pieces of about SEND_CHUNK.
        pending = [self.core.data_to_send()]
        queued = len(pending[0])
        n = 0
        with f:
            for chunk in self.drop.stream(f, ev.lines, wrapper):
                pending.append(chunk)
                queued += len(chunk)
                n += len(chunk)
                if queued >= SEND_CHUNK:
                    send(self.conn, b"".join(pending), self.counters)
                    pending, queued = [], 0
        if pending:
            send(self.conn, b"".join(pending), self.counters)
        if ev.lines is None:
            self.counters.retr += n
            self.drop.mark_seen(ev.index)
        else:
            self.counters.top += n
        self.title("TRANSACTION")
