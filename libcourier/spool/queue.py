"""The spool on disk: SPOOLDIR/tmp (being written) and SPOOLDIR/msgs (committed).

A message is one file, `msgs/<qid>` (entry.py: a header, the message with LF
line ends and the Received: line on top, the envelope), written under tmp/,
fsync'd and renamed: the rename is the commit point. courierd's later
envelopes (recipients done, the delay warning sent) go into `msgs/<qid>.st`
(the envelope alone, written the same durable way), which overrides the one in
the entry and leaves the message untouched. Removal unlinks the entry first
(then it is no longer queued), then its .st; a crash between the two leaves a
lone .st, which purge_tmp removes once old. Nothing in msgs/ is written in place.

A delivered entry (courierd's retire()) is not unlinked but moved to the pool
of free files in tmp/ (pool.py: `tmp/held.<qid>` until the msgs/ fsync that
covers its removal, then `tmp/free.<boot>.<qid>`), and a later SpoolWriter renames one
to tmp/<its qid> and overwrites it: no inode is allocated or freed per message.
A pool file still holds its delivered message's octets until it is reused or
purge_tmp removes it (bounded: pool.POOL_MAX files); it is never in msgs/.

Entries of the former layout, `msgs/<qid>.dat` (the message) plus
`msgs/<qid>.env` (the envelope, the commit point, rewritten in place of a
.st), are still listed, read, delivered, rewritten, quarantined and purged:
a queue written before an upgrade drains as before.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import stat
import threading
import time
from collections import Counter
from pathlib import Path

from libcourier.durable import fsync_dir, write_atomic
from libcourier.spool import pool
from libcourier.spool.dirsync import DelayedDirSync
from libcourier.spool.entry import MAGIC, DataFile, read_entry_envelope
from libcourier.spool.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    SpoolError,
    format_envelope,
    parse_envelope,
)

TMP = "tmp"
MSGS = "msgs"
STATE = ".st"           # courierd's envelope, overriding the entry's own
OLD_DATA = ".dat"       # the former layout's message ...
OLD_ENV = ".env"        # ... and envelope (its commit point)
STALE = "stale."        # tmp/: a name a crash left for a queued file (purge_tmp)
_QID = re.compile(r"[0-9a-f]{16}\.[0-9a-f]{1,8}\.[0-9a-f]{1,16}")
_counter = itertools.count(1)
NOTIFY_IDLE_MAX = 5.0          # seconds a kept notice connection may idle (courierd: 10)
NOTIFY_PER_CONNECTION = 1000   # notices on one kept connection (courierd takes 10000)
# queue socket path -> (connection, last use, notices sent on it); see notify()
_kept: dict[str, tuple[socket.socket, float, int]] = {}
_kept_lock = threading.Lock()
logger = logging.getLogger("courier.spool")


def _after_fork() -> None:
    global _counter
    _counter = itertools.count(1)
    # The parent's kept notice connections are the parent's: a child that
    # wrote into them too could interleave with it.
    for s, _last, _n in _kept.values():
        s.close()
    _kept.clear()


os.register_at_fork(after_in_child=_after_fork)


def new_qid() -> str:
    """Unique on this host and sortable by creation time: ns clock, pid, counter.

    The clock is 16 hex digits (fixed width until the year 2554), so plain
    string order is time order.
    """
    return f"{time.time_ns():016x}.{os.getpid():x}.{next(_counter):x}"


def check_qid(qid: str) -> str:
    if not _QID.fullmatch(qid):
        raise SpoolError(f"invalid queue id {qid[:40]!r}")
    return qid


def write_file_durably(tmp: Path, final: Path, data: bytes, mode: int = 0o640) -> None:
    """The spool's commit step: written under tmp/, renamed into msgs/ (libcourier.durable)."""
    write_atomic(final, data, mode=mode, tmp=tmp)


def ensure_spool(spooldir: Path, uid: int | None = None, gid: int | None = None) -> None:
    spooldir = Path(spooldir)
    for d in (spooldir, spooldir / TMP, spooldir / MSGS):
        d.mkdir(mode=0o750, parents=(d == spooldir), exist_ok=True)
        if uid is not None or gid is not None:
            os.chown(d, -1 if uid is None else uid, -1 if gid is None else gid)


def list_queue(spooldir: Path) -> list[str]:
    """Committed queue ids (an entry, or a former-layout .env), oldest first."""
    try:
        names = os.listdir(Path(spooldir) / MSGS)
    except FileNotFoundError:
        return []
    qids = set()
    for n in names:
        if _QID.fullmatch(n):
            qids.add(n)
        elif n.endswith(OLD_ENV) and _QID.fullmatch(n[:-4]):
            qids.add(n[:-4])
    return sorted(qids)


def _entry_path(spooldir: Path, qid: str, suffix: str = "") -> str:
    # Plain strings: courierd builds these paths several times per message,
    # and pathlib's parsing cost more than the system calls using them.
    return f"{os.fspath(spooldir)}/{MSGS}/{check_qid(qid)}{suffix}"


def _read_small(path: str) -> bytes | None:
    """An envelope file's octets; None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SpoolError(f"{path}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_ENVELOPE_BYTES:
            raise SpoolError(f"{path}: envelope file too large")
        return os.pread(fd, size + 1, 0)
    except OSError as e:
        raise SpoolError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _parse(path: str, data: bytes) -> Envelope:
    try:
        return parse_envelope(data)
    except SpoolError as e:
        raise SpoolError(f"{path}: {e}") from None


def read_envelope(spooldir: Path, qid: str, data: DataFile | None = None) -> Envelope:
    """The entry's current envelope: its .st if courierd wrote one, else the one
    inside it (or a former-layout .env). SpoolError if gone or damaged.
    data: the entry's open_data, read rather than the entry opened again."""
    path = _entry_path(spooldir, qid)
    if data is not None and data.offset:        # an entry file (a .dat's is 0)
        return _entry_envelope(path, data.fileno())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        old = path + OLD_ENV
        env = _read_small(old)
        if env is None:
            raise SpoolError(f"{path}: no such queue entry") from None
        return _parse(old, env)
    except OSError as e:
        raise SpoolError(f"{path}: {e.strerror}") from None
    try:
        return _entry_envelope(path, fd)
    finally:
        os.close(fd)


def _entry_envelope(path: str, fd: int) -> Envelope:
    """The current envelope of the entry file open as fd: its .st, else its own."""
    state = _read_small(path + STATE)
    if state is not None:
        return _parse(path + STATE, state)
    try:
        return _parse(path, read_entry_envelope(fd))
    except OSError as e:
        raise SpoolError(f"{path}: {e.strerror}") from None


def entry_exists(spooldir: Path, qid: str) -> bool:
    """Still queued (an entry, or a former-layout .env): tells an entry removed
    meanwhile from a damaged one."""
    path = _entry_path(spooldir, qid)
    return os.path.exists(path) or os.path.exists(path + OLD_ENV)


def data_present(spooldir: Path, qid: str) -> bool:
    """The message is there: always for an entry; a former-layout .env could
    lose its .dat in a crash inside the old writer's commit (no 250 was given)."""
    path = _entry_path(spooldir, qid)
    return os.path.exists(path) or os.path.exists(path + OLD_DATA)


def open_data(spooldir: Path, qid: str) -> DataFile:
    """The message alone (entry.DataFile: read(), fileno(), offset, length).
    OSError if it is gone, SpoolError if the file is no queue entry."""
    path = _entry_path(spooldir, qid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = os.open(path + OLD_DATA, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return DataFile.of(fd)
    except SpoolError as e:
        raise SpoolError(f"{path}: {e}") from None


def rewrite_envelope(spooldir: Path, qid: str, envelope: Envelope) -> None:
    """Record courierd's new envelope durably (tmp/, fsync, rename, directory
    fsync): the entry's .st, or a former-layout entry's .env."""
    spooldir = Path(spooldir)
    path = _entry_path(spooldir, qid)
    if os.path.exists(path):
        final = path + STATE
    elif os.path.exists(path + OLD_ENV):
        final = path + OLD_ENV
    else:
        raise SpoolError(f"{path}: no such queue entry")
    tmp = spooldir / TMP / f"{qid}{final[len(path):]}.{os.getpid()}.{next(_counter)}"
    write_file_durably(tmp, Path(final), format_envelope(envelope))


def remove(spooldir: Path, qid: str, *, sync: bool = True) -> None:
    """The entry first: once it is gone the message is no longer queued (then
    its .st; a former layout's .env, then .dat). sync=False leaves the
    directory fsync to the caller (courierd: dirsync.DelayedDirSync)."""
    path = _entry_path(spooldir, qid)
    try:
        os.unlink(path)
        rest: tuple[str, ...] = (STATE,)
    except FileNotFoundError:
        rest = (OLD_ENV, OLD_DATA, STATE)
    for suffix in rest:
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    if sync:
        fsync_dir(Path(spooldir) / MSGS)


def retire(spooldir: Path, qid: str, removals: DelayedDirSync) -> None:
    """courierd's removal of a delivered entry: remove(sync=False), except that
    the entry's file goes into the pool of free files (pool.py) when it may,
    released to writers by `removals` after the msgs/ fsync that covers it.
    Only here: every other removal (quarantine, purge) deletes or moves as before."""
    path = _entry_path(spooldir, qid)
    held = pool.hold(f"{os.fspath(spooldir)}/{TMP}", path, qid)
    try:
        if held is None:
            remove(spooldir, qid, sync=False)
        else:
            try:
                os.unlink(path + STATE)
            except FileNotFoundError:
                pass
    finally:
        # Even if the .st could not go (left for purge_tmp): the entry is out
        # of msgs/, and its held file would otherwise wait for a restart.
        removals.changed(held)


QUARANTINE = "quarantine"      # 0700: queue entries and maildrop files set aside
# Commit points first: once they moved, the message is no longer queued, even
# if a later move fails (a lone .st or .dat left behind is purge_tmp's).
_PIECES = ("", OLD_ENV, STATE, OLD_DATA)


def quarantine(spooldir: Path, qid: str) -> Path:
    """Move a queue entry that cannot be delivered (an envelope that does not parse
    or cannot be read, or data that is gone) out of msgs/ into quarantine/, never
    deleting it: an admin can look at it. Returns the folder it went to."""
    spooldir = Path(spooldir)
    check_qid(qid)
    dest = spooldir / QUARANTINE
    try:
        dest.mkdir(mode=0o700)
    except FileExistsError:
        pass
    msgs = spooldir / MSGS
    for suffix in _PIECES:
        try:
            os.rename(msgs / f"{qid}{suffix}", dest / f"{qid}{suffix}")
        except FileNotFoundError:
            pass
    fsync_dir(dest)
    fsync_dir(msgs)
    return dest


def _orphans(names: set[str]) -> list[str]:
    """Pieces of msgs/ without their commit point: a .st whose entry was removed
    (a crash inside remove()), and a former-layout .dat without its .env or
    .env without its .dat (a crash inside the old writer's commit)."""
    out = []
    for n in names:
        base, dot, suffix = n.rpartition(".")
        if not dot or not _QID.fullmatch(base):
            continue
        if ((f".{suffix}" == STATE and base not in names)
                or (f".{suffix}" == OLD_DATA and base + OLD_ENV not in names)
                or (f".{suffix}" == OLD_ENV and base + OLD_DATA not in names)):
            out.append(n)
    return out


def purge_tmp(spooldir: Path, older_than: float = 36 * 3600) -> int:
    """Remove leftovers of crashes older than `older_than` seconds: files in
    tmp/ (writers that died) and _orphans in msgs/. Returns the count. Age is
    the mtime (a writer claiming a pool file older than pool.OLD_FILE sets it
    to the time of the claim, so an old one being written is not taken).
    The pool's files (pool.py) go whatever their age: courierd calls this at
    its start. A held file is the last run's (it would only have become free
    after that run's fsync). A free name may be stale: tmp/ is never fsync'd,
    so after a machine crash it can name an inode that is a queued entry now,
    which would become claimable as soon as that entry is unlinked, before the
    msgs/ fsync covering the unlink. (Removed under a live courierd, a held
    file's release finds nothing, and its entry was out of msgs/ already.)
    Except a name whose file has fewer links than the names seen for it in
    tmp/ and msgs/: a crash on a file system without a journal, not fsck'd
    after (renames never change the count, so a stale name and the entry's
    share a count of 1); unlinked, it would free a queued message's inode.
    It is kept, renamed in tmp/ to stale.<name> (a held.<qid> kept as it is
    would make that entry's own retirement a rename onto the same file, which
    does nothing), and logged: fsck mends the count. So is a pool name whose
    regular file is no entry file (a pool file always starts with the entry
    header): after such a crash its inode can have been freed and be another
    file's now (a Maildir message's, one link). A stale.<name> is never
    removed here: once its file is freed, its inode number may be another
    file's (a Maildir message's), which an unlink by age would free; it is
    the admin's, after fsck. A name that cannot even be looked at (EUCLEAN:
    it names a freed inode) is logged and left."""
    spooldir = Path(spooldir)
    cutoff = time.time() - older_than
    listed: dict[str, dict[str, int]] = {TMP: {}, MSGS: {}}     # name -> inode number
    for sub, found in listed.items():
        try:
            with os.scandir(spooldir / sub) as it:
                for e in it:            # d_ino from the listing: no stat per name
                    found[e.name] = e.inode()
        except FileNotFoundError:
            pass
    names_of = Counter(itertools.chain(listed[TMP].values(), listed[MSGS].values()))
    candidates = [(spooldir / TMP / n, ino, n.startswith((pool.HELD, pool.FREE_ANY)))
                  for n, ino in listed[TMP].items() if not n.startswith(STALE)]
    candidates += [(spooldir / MSGS / n, listed[MSGS][n], False)
                   for n in _orphans(set(listed[MSGS]))]
    removed = 0
    for p, ino, pooled in candidates:
        try:
            st = p.lstat()
            if not pooled and st.st_mtime >= cutoff:
                continue
            if st.st_nlink < names_of[ino] or (pooled and stat.S_ISREG(st.st_mode)
                                               and not _starts_with_magic(p)):
                logger.warning("%s: a name a crash left for a file with more names than "
                               "links (%d) or not a spool file: kept; this file system "
                               "needs fsck", p, st.st_nlink)
                aside = p.with_name(STALE + p.name)
                if p.parent.name == TMP and not os.path.lexists(aside):
                    os.rename(p, aside)         # a rename keeps the link count
                continue
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("cannot purge %s: %s", p, e.strerror or e)
    return removed


def _starts_with_magic(path: Path) -> bool:
    """Whether the regular file at path is an entry file (entry.MAGIC first)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.pread(fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def notify(queue_socket: Path, qid: str, timeout: float = 2.0) -> bool:
    """Tell courierd about a new message. False if nobody listens: courierd's
    periodic rescan will find the message anyway, so this never raises for that.

    The connection is kept for the process's next notices (an SMTP session
    queues many messages; each new connection costs courierd an accept and a
    reader task): reused while it idled less than NOTIFY_IDLE_MAX, below
    courierd's own idle timeout, so courierd never closes it under a notice,
    and for at most NOTIFY_PER_CONNECTION notices. A kept connection that
    courierd closed meanwhile (a restart) fails the write at once (a Unix
    socket's EPIPE) and the notice goes over a new one."""
    line = f"NEW {check_qid(qid)}\n".encode()
    key = os.fspath(queue_socket)
    with _kept_lock:
        now = time.monotonic()
        kept = _kept.pop(key, None)
        if kept is not None:
            s, last, n = kept
            if now - last < NOTIFY_IDLE_MAX and n < NOTIFY_PER_CONNECTION:
                try:
                    s.settimeout(timeout)
                    s.sendall(line)
                    _kept[key] = (s, now, n + 1)
                    return True
                except OSError:
                    pass
            s.close()
        for other, (old, last, _n) in list(_kept.items()):
            if now - last >= NOTIFY_IDLE_MAX:       # no fd kept for a queue gone quiet
                old.close()
                del _kept[other]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(key)
            s.sendall(line)
        except OSError:
            s.close()
            return False
        _kept[key] = (s, now, 1)
        return True
