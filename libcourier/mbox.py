"""Append one message to an mbox file, as a `.courier` line naming a file asks.

What Courier's courierdeliver does (module.local/deliver.c `savemessage`),
plus the dot-lock other mbox readers (mutt, procmail, mailx) expect:

1. open the file for append (created 0600 if missing; it must be a regular file);
2. lock it: first `<file>.lock` made with O_EXCL (a lock older than
   STALE_LOCK seconds is a leftover of a crashed writer and is removed; a
   directory where we may not create files, such as a 1777-less /var/mail,
   means no dot-lock, as procmail does), then an fcntl write lock on the file;
   both are waited for at most LOCK_WAIT seconds, then the delivery is deferred;
3. remember the file's size, write the `From <sender> <asctime>` line, the
   Return-Path/Delivered-To lines, the message with CRLF turned into LF and
   every line matching `>*From ` quoted with one more `>` (mboxrd), a final
   newline if the message lacks one, and the blank line that separates
   messages; fsync;
4. on any failure, or SIGTERM/SIGHUP/SIGINT while writing, truncate the file
   back to the remembered size: a reader never sees half a message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from libcourier.durable import write_all
from libcourier.maildir.delivery import CRLFToLF, DeliveryError

LOCK_WAIT = 60.0            # seconds to wait for either lock before deferring
STALE_LOCK = 300.0          # a dot-lock older than this is removed
POLL = 0.1
MAX_PENDING = 1024 * 1024   # bytes of ">>>..." at a line start kept while undecided


class FromQuoter:
    """Streaming mboxrd quoting: a line that starts with any number of ">" and
    then "From " gets one more ">" in front. Lines may be split across chunks."""

    __slots__ = ("_at_start", "_pending")

    def __init__(self) -> None:
        self._at_start = True
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            if not self._at_start:
                out.append(data[pos:end])
            else:
                piece = self._pending + data[pos:end]
                self._pending = b""
                rest = piece.lstrip(b">")
                if rest.startswith(b"From "):
                    out.append(b">" + piece)
                elif nl < 0 and b"From "[:len(rest)] == rest and len(piece) < MAX_PENDING:
                    self._pending = piece       # "Fr" or ">>" so far: wait for more
                    return b"".join(out)
                else:
                    out.append(piece)
            self._at_start = nl >= 0
            pos = end
        return b"".join(out)

    def finish(self) -> bytes:
        tail, self._pending = self._pending, b""
        return tail


class _Interrupted(Exception):
    pass


def _raise_interrupted(_signum: int, _frame: object) -> None:
    raise _Interrupted()


def from_line(sender: str, now: float | None = None) -> bytes:
    """`From <sender> <asctime>`; the null sender is MAILER-DAEMON, as mbox readers expect."""
    when = time.asctime(time.localtime(now))
    return f"From {sender or 'MAILER-DAEMON'} {when}\n".encode("utf-8", "surrogateescape")


def _dot_lock(path: Path, deadline: float) -> Path | None:
    """Take `<path>.lock`; None when the directory does not let us (no dot-lock then)."""
    lock = path.with_name(path.name + ".lock")
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            try:
                age = time.time() - os.stat(lock).st_mtime
            except FileNotFoundError:
                continue
            if age > STALE_LOCK:
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
                continue
            if time.monotonic() >= deadline:
                raise DeliveryError(True, f"{path}: locked by {lock}") from None
            time.sleep(POLL)
            continue
        except PermissionError:
            return None
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES):
                return None
            raise
        try:
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        finally:
            os.close(fd)
        return lock


def _fcntl_lock(fd: int, path: Path, deadline: float) -> None:
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise DeliveryError(True, f"{path}: locked by another process")
        time.sleep(POLL)


def deliver_to_mbox(path: Path, chunks: Iterable[bytes], *, sender: str,
                    prefix: bytes = b"", now: float | None = None,
                    lock_wait: float = LOCK_WAIT) -> int:
    """Append one message to the mbox at `path` (module docstring); returns the
    bytes written. Raises DeliveryError (temporary unless the path can never work)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600)
    except OSError as e:
        # ENXIO: a FIFO nobody reads (O_NONBLOCK) -- not a mailbox file either.
        permanent = e.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP,
                                errno.ENXIO)
        raise DeliveryError(not permanent, f"cannot open {path}: {e.strerror}") from None
    lock: Path | None = None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DeliveryError(False, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        deadline = time.monotonic() + lock_wait
        lock = _dot_lock(path, deadline)
        _fcntl_lock(fd, path, deadline)
        return _append(fd, path, chunks, sender, prefix, now)
    except OSError as e:
        raise DeliveryError(True, f"cannot deliver to {path}: {e.strerror}") from None
    finally:
        os.close(fd)                # drops the fcntl lock
        if lock is not None:
            try:
                os.unlink(lock)
            except OSError:
                pass


def _append(fd: int, path: Path, chunks: Iterable[bytes], sender: str, prefix: bytes,
            now: float | None) -> int:
    start = os.lseek(fd, 0, os.SEEK_END)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    done = False
    try:
        if threading.current_thread() is threading.main_thread():
            for s in old:
                signal.signal(s, _raise_interrupted)
        else:
            old = {}                # only the main thread may set handlers
        written = 0
        conv, quote = CRLFToLF(), FromQuoter()
        head = from_line(sender, now) + prefix
        write_all(fd, head)
        written += len(head)
        last = head[-1:]
        for chunk in chunks:
            out = quote.feed(conv.feed(bytes(chunk)))
            if out:
                write_all(fd, out)
                written += len(out)
                last = out[-1:]
        tail = quote.feed(conv.finish()) + quote.finish()
        if tail:
            last = tail[-1:]
        # The message ends with a newline, then one blank line before the next From_.
        tail += (b"\n" if last != b"\n" else b"") + b"\n"
        write_all(fd, tail)
        written += len(tail)
        os.fsync(fd)
        done = True
        return written
    except _Interrupted:
        raise DeliveryError(True, f"{path}: delivery interrupted") from None
    finally:
        if not done:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                pass
        for s, h in old.items():
            signal.signal(s, h)
