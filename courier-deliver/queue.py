"""The queue manager (courierd): picks messages from the spool and hands each
recipient to its delivery agent, keeping a message until none remains.

One asyncio loop, started only after courierlocal was forked (STYLE.md: no
event loop in a process that will fork). The blocking work for one message
(reading the envelope, talking to courierlocal, rewriting the envelope) runs
in a worker thread; one message is never worked on twice at once, so its
envelope has a single writer. The common message, one local recipient that
is no alias and wants no success DSN, is delivered from the loop instead
(QueueManager._attempt_in_loop: the request to courierlocal is awaited there;
only a reply other than OK is settled in a thread). At most MAXDELS local
deliveries run at once, from the loop and the threads together,
and at most MAXDELS + ESMTPMAXDELS messages are in hand, so messages waiting
on slow remote hosts do not hold up local mail.

Durability (STYLE.md principle 6): a recipient leaves the envelope only after
courierlocal answered OK, i.e. after the Maildir file and its directory were
fsync'd; the envelope is rewritten (tmp, fsync, rename) after each completed
recipient, so a crash re-delivers at most the recipient in flight; the spool
entry is removed only when no recipient remains (its msgs/ fsync shared by
many messages: spool/dirsync.py).

Remote recipients go to remote.py's RemoteDelivery, which runs in the event
loop: the worker thread hands it the recipients and waits for the answers
(run_coroutine_threadsafe), so the envelope still has one writer.

Retries: a temporary failure schedules the message again after Courier's
retry schedule (config.RetrySchedule; kept in memory only: after a restart
everything is tried at once, as Courier does). Past WARNTIME the sender gets
one delay DSN (recorded in the envelope, so once even across restarts); past
QUEUETIME the recipients still waiting fail and bounce.

DSNs (dsn.py) are queued through the same spool writer as smtpd, from the
null sender, *before* the envelope forgets the recipients they report on: a
crash in between repeats a report or a delivery, never loses a bounce.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import enum
import heapq
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from courier_deliver import dsn, mailq
from courier_deliver.config import QueueConfig, local_user
from courier_deliver.local import LocalBatches, LocalClient
from courier_deliver.localproto import Reply, Status
from courier_deliver.remote import RemoteDelivery, RemoteResult

from libcourier.smtp.verp import verp_sender
from libcourier.spool import (
    DataFile,
    Envelope,
    Recipient,
    SpoolError,
    SpoolWriter,
    data_present,
    entry_exists,
    list_queue,
    open_data,
    quarantine,
    read_envelope,
    remove,
    retire,
    rewrite_envelope,
)
from libcourier.spool.dirsync import DelayedDirSync
from libcourier.spool.queue import MSGS, check_qid
from libcourier.unixsock import bind_unix

logger = logging.getLogger("courier.courierd")

NOTICE_LINE_MAX = 128        # "NEW <qid>\n" is well under this
NOTICE_TIMEOUT = 10.0        # seconds a submitter may take to send its notices
NOTICES_PER_CONNECTION = 10000
_MAILQ_SCAN = asyncio.Lock()    # one spool scan for `mailq` users at a time
STOP_WAIT = 6.0              # in-flight deliveries on SIGTERM (courier stop kills after 10 s)

DeliverFn = Callable[[Path, int, str, str, "str | None"], Reply]
# (qid, envelope, remote recipients, message) -> answers; blocking (a worker thread)
RemoteFn = Callable[[str, Envelope, "list[Recipient]", bytes], "dict[str, RemoteResult]"]

DSN_READ_MAX = 256 * 1024   # bytes of the original read for a DSN beyond dsnlimit (headers)
_ENHANCED = re.compile(r"([245]\.\d{1,3}\.\d{1,3})\b")


class Outcome(enum.Enum):
    DONE = "done"            # no recipient left; the spool entry is removed
    DEFERRED = "deferred"    # some recipient failed temporarily
    GONE = "gone"            # the entry vanished (removed by someone else)


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    received: float | None = None
    injected: tuple[str, ...] = ()     # DSNs queued by this attempt (announce them)


@dataclass(slots=True)
class _Pending:
    """Per-message retry state: in memory only."""
    attempts: int = 0
    next_attempt: float = 0.0


def _fmt(qid: str, sender: str, addr: str) -> str:
    return f"id={qid},from=<{sender}>,addr=<{addr}>"


def process_message(config: QueueConfig, qid: str, deliver: DeliverFn,
                    remote: RemoteFn | None = None,
                    clock: Callable[[], float] = time.time, *,
                    removals: DelayedDirSync | None = None,
                    env: Envelope | None = None) -> Result:
    """Deliver every remaining recipient of one message (blocking; a worker thread).
    With `removals`, a finished entry's removal is fsync'd by it, later and for
    many messages at once (dirsync.py), instead of before this returns. `env`:
    the envelope as the caller has just read it (QueueManager, once per attempt).
    QueueManager._attempt_in_loop does the same for a message of one plain
    local recipient from the event loop (it shares _local_args, _log_local
    and _conclude with this: a change to local delivery goes in those)."""
    spool = config.layout.spooldir
    if env is None:
        try:
            env = read_envelope(spool, qid)
        except SpoolError as e:
            if not entry_exists(spool, qid):
                return Result(Outcome.GONE)
            # Retrying cannot help a file that does not parse or cannot be read:
            # set it aside for the admin, never delete it (issue 8, bad input).
            return _set_aside(spool, qid, f"unreadable envelope: {e}")
    if not data_present(spool, qid):
        # Only a crash inside a former SpoolWriter's commit (a .env without its
        # .dat) leaves this (no 250 was given).
        return _set_aside(spool, qid, "the message data is missing")
    try:
        env = expand_aliases(config, qid, env)
    except (OSError, SpoolError) as e:
        logger.error("id=%s: cannot record the alias expansion: %s", qid, e)
        return Result(Outcome.DEFERRED, env.received)
    run = _Run(config, qid, env, removals)
    try:
        for rcpt in [r for r in env.recipients if local_user(r.address, config.domains)]:
            reply = _deliver_one(config, qid, env, rcpt, deliver)
            if run.settle(rcpt, _local_report(rcpt, reply)):
                run.commit_progress()
        far = [r for r in env.recipients if not local_user(r.address, config.domains)]
        if far:
            for rcpt, report in _remote_reports(config, qid, env, far, remote).items():
                run.settle(rcpt, report)
            run.commit_progress()
        return run.finish(clock())
    except (OSError, SpoolError) as e:
        # A recipient may be delivered again later: a duplicate, never a loss.
        logger.error("id=%s: cannot update the queue entry: %s", qid, e)
        return Result(Outcome.DEFERRED, env.received, tuple(run.injected))


def _set_aside(spool: Path, qid: str, reason: str) -> Result:
    try:
        where = quarantine(spool, qid)
    except OSError as e:
        logger.error("id=%s: %s; cannot move it to quarantine: %s", qid, reason,
                     e.strerror or e)
        return Result(Outcome.DEFERRED)
    logger.error("id=%s: %s; moved to %s", qid, reason, where)
    return Result(Outcome.GONE)


def _status_of(text: str, default: str) -> str:
    m = _ENHANCED.match(text)
    return m.group(1) if m and m.group(1)[0] == default[0] else default


def _local_report(rcpt: Recipient, reply: Reply) -> dsn.Report:
    match reply.status:
        case Status.OK:
            return dsn.Report(rcpt, dsn.DELIVERED, _status_of(reply.text, "2.0.0"))
        case Status.TEMP:
            return dsn.Report(rcpt, dsn.DELAYED, _status_of(reply.text, "4.0.0"),
                              f"x-local; {reply.text}")
        case Status.PERM:
            return dsn.Report(rcpt, dsn.FAILED, _status_of(reply.text, "5.0.0"),
                              f"x-local; {reply.text}")


def _remote_reports(config: QueueConfig, qid: str, env: Envelope, far: list[Recipient],
                    remote: RemoteFn | None) -> dict[Recipient, dsn.Report]:
    if remote is None or config.esmtp is None:
        return {r: dsn.Report(r, dsn.DELAYED, "4.4.0", "x-local; remote delivery is off")
                for r in far}
    try:
        with open_data(config.layout.spooldir, qid) as fh:
            message = fh.read()
    except (OSError, SpoolError) as e:
        return {r: dsn.Report(r, dsn.DELAYED, "4.3.0", f"x-local; cannot read the message: {e}")
                for r in far}
    answers = remote(qid, env, far, message)
    out: dict[Recipient, dsn.Report] = {}
    for r in far:
        res = answers.get(r.address)
        if res is None:
            out[r] = dsn.Report(r, dsn.DELAYED, "4.3.0", "x-local; no answer for this recipient")
            continue
        rep = res.reply
        where = _fmt(qid, env.sender, r.address)
        diag = f"smtp; {rep.code} {rep.enhanced + ' ' if rep.enhanced else ''}{rep.text}"
        if 200 <= rep.code < 300:
            # RFC 3464 §2.3.3: "relayed" when the next server takes no DSN duty.
            action = dsn.DELIVERED if res.dsn_relayed else dsn.RELAYED
            out[r] = dsn.Report(r, action, rep.enhanced or "2.0.0", diag, res.host)
            logger.info("%s,status: success", where)
        elif rep.code >= 500:
            out[r] = dsn.Report(r, dsn.FAILED, rep.enhanced if rep.enhanced and
                                rep.enhanced[0] == "5" else "5.0.0", diag, res.host)
            logger.warning("%s,status: failure", where)
        else:
            out[r] = dsn.Report(r, dsn.DELAYED, rep.enhanced if rep.enhanced and
                                rep.enhanced[0] == "4" else "4.0.0", diag, res.host)
            logger.info("%s,status: deferred", where)
    return out


class _Run:
    """One attempt at one message: which recipients are settled, which DSNs
    they need, and the envelope writes in the order that loses nothing."""

    def __init__(self, config: QueueConfig, qid: str, env: Envelope,
                 removals: DelayedDirSync | None = None):
        self.config = config
        self.removals = removals
        self.qid = qid
        self.env = env
        self.left: list[Recipient] = list(env.recipients)   # still in the envelope
        self.reports: list[dsn.Report] = []                  # final, for a DSN
        self.waiting: list[dsn.Report] = []                  # temporary failures
        self.injected: list[str] = []
        self._dirty = False
        self._removed = False        # the entry is gone already (commit_progress)

    def settle(self, rcpt: Recipient, report: dsn.Report) -> bool:
        """Record one outcome; True when the recipient may leave the envelope now."""
        if report.action == dsn.DELAYED:
            self.waiting.append(report)
            return False
        if report.action == dsn.FAILED or dsn.notify_wants(rcpt.notify, "SUCCESS"):
            self.reports.append(report)   # leaves only once its DSN is queued
            return False
        self.left.remove(rcpt)
        self._dirty = True
        return True

    def commit_progress(self) -> None:
        if not self._dirty:
            return
        spool = self.config.layout.spooldir
        if self.left:
            rewrite_envelope(spool, self.qid, dataclasses.replace(self.env,
                                                                 recipients=tuple(self.left)))
        else:
            self._remove()
        self._dirty = False

    def _remove(self) -> None:
        if self.removals is None:
            remove(self.config.layout.spooldir, self.qid)
        else:
            # Delivered: its file may serve a later message (spool/pool.py).
            retire(self.config.layout.spooldir, self.qid, self.removals)
        self._removed = True

    def finish(self, now: float) -> Result:
        cfg, env = self.config, self.env
        age = now - env.received
        if self.waiting and age > cfg.queuetime:
            for w in self.waiting:
                logger.warning("%s: in the queue longer than %d s: giving up",
                               _fmt(self.qid, env.sender, w.recipient.address),
                               cfg.queuetime)
                self.reports.append(dataclasses.replace(
                    w, action=dsn.FAILED,
                    diagnostic=(w.diagnostic or "x-local;") + " (delivery time expired)"))
            self.waiting = []
        self._send_final_dsn(now)
        warned = env.warned
        # Courier: with a backuprelay, warntime reroutes instead of warning, and
        # no delay notice goes out for any message.
        backup = cfg.esmtp is not None and cfg.esmtp.backuprelay is not None
        if (self.waiting and not warned and age >= cfg.warntime and env.sender != ""
                and not backup):
            delayed = [w for w in self.waiting if dsn.notify_wants(w.recipient.notify, "DELAY")]
            if delayed:
                self._inject(dsn.DELAYED, delayed, env.sender, dsn.ORIGIN_DSN, now,
                             until=env.received + cfg.queuetime)
            warned = True
        spool = cfg.layout.spooldir
        keep = tuple(w.recipient for w in self.waiting)
        if keep:
            rewrite_envelope(spool, self.qid, dataclasses.replace(env, recipients=keep,
                                                                 warned=warned))
            return Result(Outcome.DEFERRED, env.received, tuple(self.injected))
        if not self._removed:
            # (Not twice: a second remove would only fsync msgs/ again.)
            self._remove()
        logger.info("id=%s,from=<%s>: completed", self.qid, env.sender)
        return Result(Outcome.DONE, env.received, tuple(self.injected))

    def _send_final_dsn(self, now: float) -> None:
        env = self.env
        failed = [r for r in self.reports if r.action == dsn.FAILED]
        if env.sender == "":
            # RFC 5321 §6.1 / RFC 3461 §6.2: never a DSN to the null sender. A DSN
            # of ours that failed goes to postmaster (a double bounce) instead;
            # a double bounce that failed is dropped.
            if not failed:
                return
            where = f"id={self.qid}"
            if env.client == dsn.ORIGIN_DSN:
                logger.warning("%s: the delivery status notification could not be "
                               "delivered; sending it to postmaster", where)
                self._inject(dsn.FAILED, failed, "postmaster", dsn.ORIGIN_DOUBLE, now,
                             to_postmaster=True)
            elif env.client == dsn.ORIGIN_DOUBLE:
                logger.error("%s: double bounce to postmaster failed; dropped", where)
            else:
                logger.info("%s: no bounce for a message from the null sender", where)
            return
        wanted = [r for r in self.reports
                  if dsn.notify_wants(r.recipient.notify,
                                      "FAILURE" if r.action == dsn.FAILED else "SUCCESS")]
        if wanted:
            self._inject(dsn.FAILED if failed else dsn.DELIVERED, wanted, env.sender,
                         dsn.ORIGIN_DSN, now)

    def _inject(self, kind: str, reports: list[dsn.Report], to: str, origin: str, now: float,
                *, until: float | None = None, to_postmaster: bool = False) -> None:
        """Queue one DSN; raises SpoolError/OSError (the attempt is then deferred)."""
        cfg, env = self.config, self.env
        spool = cfg.layout.spooldir
        with open_data(spool, self.qid) as fh:
            size = fh.length
            original = fh.read(max(cfg.dsnlimit + 1, DSN_READ_MAX))
        me = cfg.domains.me
        mid = f"<{time.time_ns():x}.{os.getpid():x}.{self.qid}@{me}>"
        report_env = dataclasses.replace(env, sender=to if to_postmaster else env.sender)
        body = dsn.build_dsn(me=me, dsnfrom=cfg.dsnfrom or f"Mail Delivery System "
                             f"<MAILER-DAEMON@{me}>", env=report_env, reports=reports,
                             kind=kind, original=original, original_size=size,
                             dsnlimit=cfg.dsnlimit, now=now, message_id=mid,
                             will_retry_until=until, texts=cfg.dsn_texts)
        with SpoolWriter(spool, 0) as w:
            w.write(body)
            new = w.commit(dsn.dsn_envelope(env, body, now, to=to, origin=origin))
        self.injected.append(new)
        logger.info("id=%s: %s DSN queued as %s for <%s> (%d recipient(s))",
                    self.qid, kind, new, to, len(reports))


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


def _local_args(config: QueueConfig, env: Envelope, rcpt: Recipient
                ) -> tuple[str, str, str | None]:
    """(sender, recipient, user) of the request to courierlocal for one recipient."""
    user = local_user(rcpt.address, config.domains)
    assert user is not None, "only local recipients come here"
    # Courier's courierlocal: a VERP message's Return-Path names the
    # recipient (the VERP draft §5).
    sender = verp_sender(env.sender, rcpt.address) if env.verp else env.sender
    return sender, rcpt.address, None if user == rcpt.address else user


def _deliver_one(config: QueueConfig, qid: str, env: Envelope, rcpt: Recipient,
                 deliver: DeliverFn) -> Reply:
    try:
        with open_data(config.layout.spooldir, qid) as fh:
            reply = deliver(config.layout.local_socket, fh.fileno(),
                            *_local_args(config, env, rcpt))
    except (OSError, SpoolError) as e:
        reply = Reply(Status.TEMP, f"4.3.0 cannot open the message: {e}")
    _log_local(qid, env, rcpt, reply)
    return reply


def _log_local(qid: str, env: Envelope, rcpt: Recipient, reply: Reply) -> None:
    where = _fmt(qid, env.sender, rcpt.address)
    match reply.status:
        case Status.OK:
            logger.info("%s: delivered: %s", where, reply.text)
            logger.info("%s,status: success", where)
        case Status.TEMP:
            logger.info("%s: %s", where, reply.text)
            logger.info("%s,status: deferred", where)
        case Status.PERM:
            logger.warning("%s: %s", where, reply.text)
            logger.warning("%s,status: failure", where)


def _conclude(run: _Run, rcpt: Recipient, reply: Reply, clock: Callable[[], float]) -> Result:
    """process_message's end for a message whose one local recipient was tried:
    settle it, then rewrite, remove or report as finish() decides."""
    try:
        if run.settle(rcpt, _local_report(rcpt, reply)):
            run.commit_progress()
        return run.finish(clock())
    except (OSError, SpoolError) as e:
        logger.error("id=%s: cannot update the queue entry: %s", run.qid, e)
        return Result(Outcome.DEFERRED, run.env.received, tuple(run.injected))


def _conclude_all(work: list[tuple[_Run, Recipient, Reply, asyncio.Future[Result]]],
                  clock: Callable[[], float]) -> list[Result]:
    """_conclude for each (in a worker thread); one's failure is only its own."""
    out = []
    for run, rcpt, reply, _done in work:
        try:
            out.append(_conclude(run, rcpt, reply, clock))
        except Exception:  # noqa: BLE001 - keep the message, log, retry later
            logger.exception("id=%s: cannot settle the delivery", run.qid)
            out.append(Result(Outcome.DEFERRED, run.env.received))
    return out


class QueueManager:
    def __init__(self, config: QueueConfig, *, deliver: DeliverFn | None = None,
                 clock: Callable[[], float] = time.time,
                 helper_alive: Callable[[], bool] | None = None):
        self.config = config
        # courierlocal connections stay open between deliveries (LocalClient).
        self._local_client = LocalClient() if deliver is None else None
        # The loop's requests, sent per account in batches (local.LocalBatches).
        self._batches = None if self._local_client is None else \
            LocalBatches(self._local_client, self._batch_slot)
        # Delivered messages waiting to be settled off the loop (_settle_ok).
        self._oks: list[tuple[_Run, Recipient, Reply, asyncio.Future[Result]]] = []
        self._settling = False
        self._settle_tasks: set[asyncio.Task[None]] = set()
        self.deliver = deliver if deliver is not None else self._local_client.request
        self.clock = clock
        self.helper_alive = helper_alive
        self.remote: RemoteDelivery | None = None     # made in the loop (run_scheduler)
        self._local_slots = threading.BoundedSemaphore(config.maxdels)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, str]] = []     # (next attempt, qid), see _schedule
        self.active: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.failed = False
        self._wake: asyncio.Event | None = None
        # Loop tasks waiting for a local slot, oldest first: a release wakes one
        # (an Event woke them all: every release cost every waiter a wakeup).
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Open notice connections and their handler tasks (close_notices).
        self._notices: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._scan_now = True
        # Finished entries' removals: one msgs/ fsync for many (dirsync.py).
        self._removals = DelayedDirSync(config.layout.spooldir / MSGS)

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
        if config.maxdels != self.config.maxdels:
            self._local_slots = threading.BoundedSemaphore(config.maxdels)
        self.config = config
        if self._loop is not None and config.esmtp is not None:
            self.remote = RemoteDelivery(config.esmtp)   # in-flight sessions keep the old one
        self.wake(rescan=True)

    def announce(self, qid: str) -> None:
        """A submitter's `NEW <qid>`: try it now."""
        if qid not in self.active:
            self._schedule(qid, _Pending())
        self.wake()

    # -- the schedule: `pending` holds each message's state, `_heap` the order --

    def _schedule(self, qid: str, st: _Pending) -> None:
        """(Re)schedule qid at st.next_attempt. The heap keeps older entries for
        it too; they no longer match the state and are skipped when they surface,
        so both announce and retry stay O(log n) with 100,000 queued messages."""
        self.pending[qid] = st
        heapq.heappush(self._heap, (st.next_attempt, qid))
        if len(self._heap) > 2 * len(self.pending) + 1024:
            self._heap = [(p.next_attempt, q) for q, p in self.pending.items()]
            heapq.heapify(self._heap)

    def _current(self, entry: tuple[float, str]) -> bool:
        st = self.pending.get(entry[1])
        return st is not None and st.next_attempt == entry[0] and entry[1] not in self.active

    def _take_due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` messages whose time has come, oldest first (a new
        message's time is 0, then the queue id's creation-time order)."""
        out: list[str] = []
        heap = self._heap
        while heap and len(out) < limit and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._current(entry) and entry[1] not in out:
                out.append(entry[1])
        return out

    def _next_due(self) -> float | None:
        heap = self._heap
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- the scheduler --

    def _scan(self) -> None:
        try:
            qids = list_queue(self.config.layout.spooldir)
        except OSError as e:
            logger.error("cannot scan the spool: %s", e)
            return
        present = set(qids)
        for qid in qids:
            if qid not in self.pending:
                self._schedule(qid, _Pending())
        for qid in list(self.pending):
            if qid not in present and qid not in self.active:
                del self.pending[qid]

    def _remote_blocking(self, qid: str, env: Envelope, rcpts: list[Recipient],
                         message: bytes) -> dict[str, RemoteResult]:
        """Called in a worker thread: run the sessions in the loop, wait for them."""
        remote, loop = self.remote, self._loop
        assert remote is not None and loop is not None
        fut = asyncio.run_coroutine_threadsafe(remote.deliver(env, rcpts, message, qid), loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            return {}        # shutting down: every recipient stays queued

    def capacity(self) -> int:
        """Messages in hand at once: the local slots plus the remote sessions."""
        c = self.config
        return c.maxdels + (c.esmtp.maxdels if c.esmtp is not None and
                            self.remote is not None else 0)

    def _deliver_local(self, sock: Path, fd: int, sender: str, rcpt: str,
                       user: str | None) -> Reply:
        try:
            with self._local_slots:      # MAXDELS local deliveries at once
                return self.deliver(sock, fd, sender, rcpt, user)
        finally:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake_slot_waiter)

    def _wake_slot_waiter(self) -> None:
        """A local slot was released (in the loop): the oldest waiter tries again."""
        while self._slot_waiters:
            fut = self._slot_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _local_slot(self) -> threading.BoundedSemaphore:
        """One of the MAXDELS local slots (shared with the threads), for the loop."""
        while True:
            slots = self._local_slots
            if slots.acquire(blocking=False):
                return slots
            fut = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._slot_waiters:
                    self._slot_waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake_slot_waiter()     # pass on a wakeup this task will not use
                raise

    async def _batch_slot(self) -> Callable[[], None]:
        """A local slot for one of LocalBatches' batches, and its release."""
        slots = await self._local_slot()

        def release() -> None:
            slots.release()
            self._wake_slot_waiter()
        return release

    # -- the common message, delivered from the loop --

    def _loop_envelope(self, qid: str) -> Envelope | None:
        """The envelope, read in the loop to see whether _attempt_in_loop can take
        the message (and handed on to process_message if not: read once)."""
        if self._local_client is None:
            return None                  # a test's own deliver function: blocking
        try:
            return read_envelope(self.config.layout.spooldir, qid)
        except SpoolError:
            return None                  # process_message reads it again and decides

    def _in_loop_candidate(self, qid: str, env: Envelope
                           ) -> tuple[Recipient, DataFile] | None:
        """One local recipient that is no alias and wants no success DSN: all
        its attempt needs besides courierlocal's answer is to read the envelope
        and, once delivered, unlink the entry (dirsync.py), so it needs no
        thread. Anything else (and any error here) goes to process_message."""
        config = self.config
        if len(env.recipients) != 1:
            return None
        rcpt = env.recipients[0]
        if (local_user(rcpt.address, config.domains) is None
                or dsn.notify_wants(rcpt.notify, "SUCCESS")
                or (config.aliases is not None
                    and config.aliases.expand(rcpt.address) is not None)):
            return None
        try:
            return rcpt, open_data(config.layout.spooldir, qid)
        except (OSError, SpoolError):
            return None

    async def _attempt_in_loop(self, qid: str, env: Envelope) -> Result | None:
        """process_message for the common message (_in_loop_candidate) without a
        worker thread: the request to courierlocal is awaited in the loop (a
        thread hop per message cost more CPU than all the rest of courierd's
        work on it). None: not such a message. The reply is settled in a
        thread: an OK with the other OKs at hand, many per hop (_settle_ok);
        anything else alone (it rewrites the envelope or queues a DSN: fsyncs)."""
        found = self._in_loop_candidate(qid, env)
        if found is None:
            return None
        rcpt, fh = found
        config, batches = self.config, self._batches
        assert batches is not None
        with fh:
            # With the account's other messages at hand (local.LocalBatches),
            # under one local slot per batch.
            reply = await batches.request(config.layout.local_socket, fh.fileno(),
                                          *_local_args(config, env, rcpt))
        _log_local(qid, env, rcpt, reply)
        run = _Run(config, qid, env, self._removals)
        if reply.status is Status.OK:
            return await self._settle_ok(run, rcpt, reply)
        return await asyncio.to_thread(_conclude, run, rcpt, reply, self.clock)

    async def _settle_ok(self, run: _Run, rcpt: Recipient, reply: Reply) -> Result:
        """_conclude for a delivered message, off the loop: its removal (an unlink
        that waits for the file system's journal, measured at half of courierd's
        wall time when done in the loop) must not hold up the loop's next
        requests. One thread at a time takes every OK queued meanwhile (a batch's
        replies come together), so the hop is paid per batch, not per message."""
        done = asyncio.get_running_loop().create_future()
        self._oks.append((run, rcpt, reply, done))
        if not self._settling:
            self._settling = True
            task = asyncio.create_task(self._settle_oks())
            self._settle_tasks.add(task)
            task.add_done_callback(self._settle_tasks.discard)
        return await asyncio.shield(done)

    async def _settle_oks(self) -> None:
        work: list[tuple[_Run, Recipient, Reply, asyncio.Future[Result]]] = []
        try:
            while self._oks:
                work, self._oks = self._oks, []
                results = await asyncio.to_thread(_conclude_all, work, self.clock)
                for (_run, _rcpt, _reply, done), result in zip(work, results, strict=True):
                    if not done.done():
                        done.set_result(result)
        finally:
            self._settling = False
            # Cancelled (stopping): the attempts are not left waiting; a message
            # whose entry is still there is tried again (courierlocal's journal
            # answers it without a second copy).
            for run, _rcpt, _reply, done in work:
                if not done.done():
                    done.set_result(Result(Outcome.DEFERRED, run.env.received))

    async def _attempt(self, qid: str) -> None:
        config = self.config
        remote = self._remote_blocking if self.remote is not None else None
        try:
            env = self._loop_envelope(qid)
            result = await self._attempt_in_loop(qid, env) if env is not None else None
            if result is None:
                result = await asyncio.to_thread(process_message, config, qid,
                                                 self._deliver_local, remote, self.clock,
                                                 removals=self._removals, env=env)
        except Exception:  # noqa: BLE001 - our fault: keep the message, log, retry later
            logger.exception("id=%s: delivery attempt failed", qid)
            result = Result(Outcome.DEFERRED)
        finally:
            self.active.pop(qid, None)
        for new in result.injected:
            if new not in self.pending:
                self._schedule(new, _Pending())
        if result.outcome is not Outcome.DEFERRED:
            self.pending.pop(qid, None)
        else:
            old = self.pending.get(qid, _Pending())
            attempts = old.attempts + 1
            delay = config.retry.delay(attempts)
            self._schedule(qid, _Pending(attempts, self.clock() + delay))
            logger.info("id=%s: deferred, next attempt in %d s", qid, delay)
        self.wake()

    async def run_scheduler(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self.config.esmtp is not None and self.remote is None:
            self.remote = RemoteDelivery(self.config.esmtp)
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
            for qid in self._take_due(now, max(0, self.capacity() - len(self.active))):
                self.active[qid] = asyncio.create_task(self._attempt(qid))
            waits = [next_scan - now]
            if len(self.active) < self.capacity():
                due = self._next_due()
                if due is not None:
                    waits.append(due - now)
            timeout = max(0.0, min(waits + [5.0]))  # 5 s: also notice the helper dying
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._drain_tasks()
        finally:
            # Idle courierlocal connections: their children exit now, so the
            # helper stops without waiting for them.
            if self._local_client is not None:
                self._local_client.close()
            self._removals.flush()

    async def _drain_tasks(self) -> None:
        tasks = list(self.active.values())
        if not tasks:
            if self.remote is not None:
                await self.remote.close_idle()
            return
        logger.info("waiting for %d delivery attempt(s) to finish", len(tasks))
        _done, left = await asyncio.wait(tasks, timeout=STOP_WAIT)
        if left:
            # Worker threads cannot be cancelled; their recipients stay queued
            # and are retried after the restart.
            logger.warning("%d delivery attempt(s) still running at exit", len(left))
        if self.remote is not None:
            await self.remote.close_idle()

    # -- the notice socket --

    async def handle_notice(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        if self.stopping:               # accepted after close_notices: nothing to do
            writer.close()
            return
        self._notices[writer] = asyncio.current_task()
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
                if verb == "MAILQ":
                    await self._answer_mailq(writer)
                    return
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
        except asyncio.CancelledError:
            # courierd stopping with a submitter's kept connection open
            # (spool.notify): end quietly; Python 3.11's stream callback would
            # log a cancelled handler as an error.
            return
        finally:
            self._notices.pop(writer, None)
            writer.close()

    async def close_notices(self) -> None:
        """Stopping: end the kept notice connections (spool.notify keeps one per
        submitter) at once, rather than after their idle timeout."""
        tasks = [t for t in self._notices.values() if t is not None]
        for writer in list(self._notices):
            writer.close()              # the handler reads EOF and returns
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)

    async def _answer_mailq(self, writer: asyncio.StreamWriter) -> None:
        """`mailq` run by an ordinary user (mailq.py): that uid's own messages, the
        uid from SO_PEERCRED; root and the mail account get the whole queue."""
        sock = writer.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except (OSError, AttributeError):
            return
        _pid, uid, _gid = struct.unpack("3i", creds)
        who = None if uid in (0, os.geteuid()) else uid
        # The spool scan reads every envelope: off the event loop, and one at a
        # time, so users asking in a loop cannot pile scans up.
        async with _MAILQ_SCAN:
            entries = await asyncio.to_thread(mailq.scan_for, self.config.layout, who)
        writer.write(mailq.format_answer(entries))
        await asyncio.wait_for(writer.drain(), NOTICE_TIMEOUT)


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
        await manager.close_notices()
