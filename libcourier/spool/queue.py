"""The spool on disk: SPOOLDIR/tmp (being written) and SPOOLDIR/msgs (committed).

A message is `msgs/<qid>.dat` (the message as it will be delivered, with LF
line ends and the Received: line on top) plus `msgs/<qid>.env` (the envelope).
The .env appearing by rename is the commit point; a .dat without a .env is a
crash leftover that purge_tmp removes (an .env without its .dat too). Nothing is
written in place: every file is written under tmp/, fsync'd, renamed, and the
directory fsync'd.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

from libcourier.durable import fsync_dir, write_atomic
from libcourier.spool.envelope import Envelope, SpoolError, format_envelope, parse_envelope

TMP = "tmp"
MSGS = "msgs"
_QID = re.compile(r"[0-9a-f]{16}\.[0-9a-f]{1,8}\.[0-9a-f]{1,16}")
_counter = itertools.count(1)
NOTIFY_IDLE_MAX = 5.0          # seconds a kept notice connection may idle (courierd: 10)
NOTIFY_PER_CONNECTION = 1000   # notices on one kept connection (courierd takes 10000)
# queue socket path -> (connection, last use, notices sent on it); see notify()
_kept: dict[str, tuple[socket.socket, float, int]] = {}
_kept_lock = threading.Lock()


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
    """Committed queue ids (those with an .env), oldest first."""
    try:
        names = os.listdir(Path(spooldir) / MSGS)
    except FileNotFoundError:
        return []
    qids = [n[:-4] for n in names if n.endswith(".env") and _QID.fullmatch(n[:-4])]
    qids.sort()
    return qids


def _entry_path(spooldir: Path, qid: str, suffix: str) -> str:
    # Plain strings: courierd builds these paths several times per message,
    # and pathlib's parsing cost more than the system calls using them.
    return f"{os.fspath(spooldir)}/{MSGS}/{check_qid(qid)}{suffix}"


def read_envelope(spooldir: Path, qid: str) -> Envelope:
    path = _entry_path(spooldir, qid, ".env")
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 * 1024 * 1024 + 1)
    except OSError as e:
        raise SpoolError(f"{path}: {e.strerror}") from None
    try:
        return parse_envelope(data)
    except SpoolError as e:
        raise SpoolError(f"{path}: {e}") from None


def open_data(spooldir: Path, qid: str) -> BinaryIO:
    return open(_entry_path(spooldir, qid, ".dat"), "rb")


def rewrite_envelope(spooldir: Path, qid: str, envelope: Envelope) -> None:
    spooldir = Path(spooldir)
    check_qid(qid)
    final = spooldir / MSGS / f"{qid}.env"
    if not final.exists():
        raise SpoolError(f"{final}: no such queue entry")
    tmp = spooldir / TMP / f"{qid}.env.{os.getpid()}.{next(_counter)}"
    write_file_durably(tmp, final, format_envelope(envelope))


def remove(spooldir: Path, qid: str, *, sync: bool = True) -> None:
    """Envelope first: once it is gone the entry is no longer queued. sync=False
    leaves the directory fsync to the caller (courierd: dirsync.DelayedDirSync)."""
    for suffix in (".env", ".dat"):
        try:
            os.unlink(_entry_path(spooldir, qid, suffix))
        except FileNotFoundError:
            pass
    if sync:
        fsync_dir(Path(spooldir) / MSGS)


QUARANTINE = "quarantine"      # 0700: queue entries and maildrop files set aside


def quarantine(spooldir: Path, qid: str) -> Path:
    """Move a queue entry that cannot be delivered (an envelope that does not parse
    or cannot be read, or data that is gone) out of msgs/ into quarantine/, never
    deleting it: an admin can look at it. The envelope goes first, so the entry is
    no longer queued even if the data move fails. Returns the folder it went to."""
    spooldir = Path(spooldir)
    check_qid(qid)
    dest = spooldir / QUARANTINE
    try:
        dest.mkdir(mode=0o700)
    except FileExistsError:
        pass
    msgs = spooldir / MSGS
    for suffix in (".env", ".dat"):
        try:
            os.rename(msgs / f"{qid}{suffix}", dest / f"{qid}{suffix}")
        except FileNotFoundError:
            pass
    fsync_dir(dest)
    fsync_dir(msgs)
    return dest


def purge_tmp(spooldir: Path, older_than: float = 36 * 3600) -> int:
    """Remove leftovers of crashed writers: files in tmp/, .dat files in msgs/
    without an .env, and an .env without its .dat (a crash after SpoolWriter's two
    renames, before its directory fsync, on a file system that kept only the second),
    older than `older_than` seconds. Returns the count."""
    spooldir = Path(spooldir)
    cutoff = time.time() - older_than
    removed = 0
    candidates: list[Path] = []
    try:
        candidates += [p for p in (spooldir / TMP).iterdir()]
    except FileNotFoundError:
        pass
    try:
        candidates += [p for p in (spooldir / MSGS).iterdir()
                       if (p.suffix == ".dat" and not p.with_suffix(".env").exists())
                       or (p.suffix == ".env" and not p.with_suffix(".dat").exists())]
    except FileNotFoundError:
        pass
    for p in candidates:
        try:
            if p.lstat().st_mtime < cutoff:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


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
