"""The queue manager (courierd): picks messages from the spool and hands each
recipient to its delivery agent, keeping a message until none remains.

One asyncio loop, started only after courierlocal was forked (STYLE.md: no
event loop in a process that will fork). The blocking work for one message
(reading the envelope, talking to courierlocal, rewriting the envelope) runs
in a worker thread, at most MAXDELS messages at a time; one message is never
worked on twice at once, so its envelope has a single writer.

Durability (STYLE.md principle 6): a recipient leaves the envelope only after
courierlocal answered OK, i.e. after the Maildir file and its directory were
fsync'd; the envelope is rewritten (tmp, fsync, rename) after each completed
recipient, so a crash re-delivers at most the recipient in flight; the spool
entry is removed only when no recipient remains.

Retries: a temporary failure schedules the message again after
retry_delay(attempts) (kept in memory only: after a restart everything is
tried at once, as Courier does). After QUEUETIME the message is kept but no
longer tried (bounces are a later milestone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from courier_deliver.config import QueueConfig, local_user, retry_delay
from courier_deliver.local import request_delivery
from courier_deliver.localproto import Reply, Status

from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolError,
    list_queue,
    open_data,
    read_envelope,
    remove,
    rewrite_envelope,
)
from libcourier.spool.queue import check_qid
from libcourier.unixsock import bind_unix

logger = logging.getLogger("courier.courierd")

NOTICE_LINE_MAX = 128        # "NEW <qid>\n" is well under this
NOTICE_TIMEOUT = 10.0        # seconds a submitter may take to send its notices
NOTICES_PER_CONNECTION = 10000
STOP_WAIT = 6.0              # in-flight deliveries on SIGTERM (courier stop kills after 10 s)

DeliverFn = Callable[[Path, int, str, str, "str | None"], Reply]


class Outcome(enum.Enum):
    DONE = "done"            # no recipient left; the spool entry is removed
    DEFERRED = "deferred"    # some recipient failed temporarily
    GONE = "gone"            # the entry vanished (removed by someone else)


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    received: float | None = None


@dataclass(slots=True)
class _Pending:
    """Per-message retry state: in memory only."""
    attempts: int = 0
    next_attempt: float = 0.0
    given_up: bool = False


def _fmt(qid: str, sender: str, addr: str) -> str:
    return f"id={qid},from=<{sender}>,addr=<{addr}>"


def process_message(config: QueueConfig, qid: str, deliver: DeliverFn) -> Result:
    """Deliver every remaining recipient of one message (blocking; a worker thread)."""
    spool = config.layout.spooldir
    try:
        env = read_envelope(spool, qid)
    except SpoolError as e:
        if not (spool / "msgs" / f"{qid}.env").exists():
            return Result(Outcome.GONE)
        logger.error("id=%s: unreadable envelope: %s", qid, e)
        return Result(Outcome.DEFERRED)
    try:
        env = expand_aliases(config, qid, env)
    except (OSError, SpoolError) as e:
        logger.error("id=%s: cannot record the alias expansion: %s", qid, e)
        return Result(Outcome.DEFERRED, env.received)
    todo = list(env.recipients)
    kept: list[Recipient] = []
    while todo:
        rcpt = todo.pop(0)
        reply = _deliver_one(config, qid, env, rcpt, deliver)
        if reply.status is Status.TEMP:
            kept.append(rcpt)
            continue
        # OK or PERM: this recipient is finished; record it before the next one.
        left = tuple(kept + todo)
        try:
            if left:
                rewrite_envelope(spool, qid, dataclasses.replace(env, recipients=left))
            else:
                remove(spool, qid)
        except (OSError, SpoolError) as e:
            # The recipient may be delivered again later: a duplicate, never a loss.
            logger.error("id=%s: cannot update the queue entry: %s", qid, e)
            return Result(Outcome.DEFERRED, env.received)
    if kept:
        return Result(Outcome.DEFERRED, env.received)
    if env.recipients == ():
        remove(spool, qid)
    logger.info("id=%s,from=<%s>: completed", qid, env.sender)
    return Result(Outcome.DONE, env.received)


def expand_aliases(config: QueueConfig, qid: str, env: Envelope) -> Envelope:
    """Replace each alias recipient by its addresses (ETC/aliases.dat) and record
    that in the envelope before any delivery, so a crash cannot deliver an
    alias twice over. Expansions are complete (no alias remains), so the
    rewritten envelope is never expanded again; ORCPT keeps the alias (RFC 3461
    §4.2) for DSNs."""
    if config.aliases is None:
        return env
    out: list[Recipient] = []
    seen: set[str] = set()
    changed = False
    for rcpt in env.recipients:
        targets = config.aliases.expand(rcpt.address)
        if targets is None:
            if rcpt.address.lower() not in seen:
                seen.add(rcpt.address.lower())
                out.append(rcpt)
            continue
        changed = True
        logger.info("%s: alias expanded to %s", _fmt(qid, env.sender, rcpt.address),
                    ",".join(targets) or "(nothing: a loop)")
        orcpt = rcpt.orcpt or f"rfc822;{rcpt.address}"
        for t in targets:
            if t.lower() not in seen:
                seen.add(t.lower())
                out.append(Recipient(t, orcpt, rcpt.notify))
    if not changed:
        return env
    new = dataclasses.replace(env, recipients=tuple(out))
    rewrite_envelope(config.layout.spooldir, qid, new)
    return new


def _deliver_one(config: QueueConfig, qid: str, env: Envelope, rcpt: Recipient,
                 deliver: DeliverFn) -> Reply:
    where = _fmt(qid, env.sender, rcpt.address)
    user = local_user(rcpt.address, config.domains)
    if user is None:
        logger.info("%s: remote delivery not implemented", where)
        logger.info("%s,status: deferred", where)
        return Reply(Status.TEMP, "4.4.0 remote delivery not implemented")
    try:
        with open_data(config.layout.spooldir, qid) as fh:
            reply = deliver(config.layout.local_socket, fh.fileno(), env.sender,
                            rcpt.address, None if user == rcpt.address else user)
    except (OSError, SpoolError) as e:
        reply = Reply(Status.TEMP, f"4.3.0 cannot open the message: {e}")
    match reply.status:
        case Status.OK:
            logger.info("%s: delivered: %s", where, reply.text)
            logger.info("%s,status: success", where)
        case Status.TEMP:
            logger.info("%s: %s", where, reply.text)
            logger.info("%s,status: deferred", where)
        case Status.PERM:
            # DSNs are a later milestone: log and drop the recipient.
            logger.warning("%s: %s", where, reply.text)
            logger.warning("%s,status: failure", where)
    return reply


class QueueManager:
    def __init__(self, config: QueueConfig, *, deliver: DeliverFn = request_delivery,
                 clock: Callable[[], float] = time.time,
                 helper_alive: Callable[[], bool] | None = None):
        self.config = config
        self.deliver = deliver
        self.clock = clock
        self.helper_alive = helper_alive
        self.pending: dict[str, _Pending] = {}
        self.active: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.failed = False
        self._wake: asyncio.Event | None = None
        self._scan_now = True

    # -- control, called from signal handlers and the notice server (loop thread) --

    def wake(self, rescan: bool = False) -> None:
        self._scan_now = self._scan_now or rescan
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    def reload(self, config: QueueConfig) -> None:
        """SIGHUP: new settings for the next attempts; in-flight ones keep theirs."""
        self.config = config
        self.wake(rescan=True)

    def announce(self, qid: str) -> None:
        """A submitter's `NEW <qid>`: try it now."""
        if qid not in self.active:
            self.pending[qid] = _Pending()
        self.wake()

    # -- the scheduler --

    def _scan(self) -> None:
        try:
            qids = list_queue(self.config.layout.spooldir)
        except OSError as e:
            logger.error("cannot scan the spool: %s", e)
            return
        present = set(qids)
        for qid in qids:
            self.pending.setdefault(qid, _Pending())
        for qid in list(self.pending):
            if qid not in present and qid not in self.active:
                del self.pending[qid]

    def _due(self, now: float) -> list[str]:
        return [q for q, p in sorted(self.pending.items())
                if q not in self.active and not p.given_up and p.next_attempt <= now]

    async def _attempt(self, qid: str) -> None:
        config = self.config
        try:
            result = await asyncio.to_thread(process_message, config, qid, self.deliver)
        except Exception:  # noqa: BLE001 - our fault: keep the message, log, retry later
            logger.exception("id=%s: delivery attempt failed", qid)
            result = Result(Outcome.DEFERRED)
        finally:
            self.active.pop(qid, None)
        if result.outcome is not Outcome.DEFERRED:
            self.pending.pop(qid, None)
        else:
            st = self.pending.setdefault(qid, _Pending())
            st.attempts += 1
            now = self.clock()
            if result.received is not None and now - result.received > config.queuetime:
                st.given_up = True
                logger.warning("id=%s: in the queue longer than %d s; no more retries "
                               "(message kept)", qid, config.queuetime)
            else:
                delay = retry_delay(st.attempts, config.retry_first, config.retry_max)
                st.next_attempt = now + delay
                logger.info("id=%s: deferred, next attempt in %d s", qid, delay)
        self.wake()

    async def run_scheduler(self) -> None:
        self._wake = asyncio.Event()
        next_scan = 0.0
        while not self.stopping:
            now = self.clock()
            if self._scan_now or now >= next_scan:
                self._scan_now = False
                self._scan()
                next_scan = now + self.config.rescan
            if self.helper_alive is not None and not self.helper_alive():
                logger.error("courierlocal has exited; stopping")
                self.failed = True
                break
            for qid in self._due(now):
                if len(self.active) >= self.config.maxdels:
                    break
                self.active[qid] = asyncio.create_task(self._attempt(qid))
            waits = [next_scan - now]
            if len(self.active) < self.config.maxdels:
                waits += [p.next_attempt - now for q, p in self.pending.items()
                          if q not in self.active and not p.given_up]
            timeout = max(0.0, min(waits + [5.0]))  # 5 s: also notice the helper dying
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
        await self._drain()

    async def _drain(self) -> None:
        tasks = list(self.active.values())
        if not tasks:
            return
        logger.info("waiting for %d delivery attempt(s) to finish", len(tasks))
        _done, left = await asyncio.wait(tasks, timeout=STOP_WAIT)
        if left:
            # Worker threads cannot be cancelled; their recipients stay queued
            # and are retried after the restart.
            logger.warning("%d delivery attempt(s) still running at exit", len(left))

    # -- the notice socket --

    async def handle_notice(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(NOTICES_PER_CONNECTION):
                try:
                    line = await asyncio.wait_for(reader.readline(), NOTICE_TIMEOUT)
                except (ValueError, asyncio.LimitOverrunError):
                    logger.warning("queue notice: line too long")
                    return
                if not line:
                    return
                verb, _, arg = line.decode("ascii", "replace").strip().partition(" ")
                if verb != "NEW":
                    logger.warning("queue notice: unknown command %r", verb[:20])
                    return
                try:
                    self.announce(check_qid(arg))
                except (SpoolError, ValueError):
                    logger.warning("queue notice: bad queue id %r", arg[:40])
                    return
        except (TimeoutError, ConnectionError):
            return
        finally:
            writer.close()


def bind_queue_socket(path: Path, owner: tuple[int, int] | None) -> socket.socket:
    """courierd.sock. Mode 0666: a notice only makes courierd look at the spool
    sooner (it rescans anyway), so any local submitter may send one."""
    return bind_unix(path, 0o666, owner, backlog=128)


async def serve(manager: QueueManager, queue_sock: socket.socket) -> None:
    """Run until manager.stop(): the notice server and the scheduler."""
    queue_sock.setblocking(False)
    server = await asyncio.start_unix_server(manager.handle_notice, sock=queue_sock,
                                             limit=NOTICE_LINE_MAX)
    try:
        await manager.run_scheduler()
    finally:
        server.close()
