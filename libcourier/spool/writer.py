"""Writing one message into the spool (the submit side).

The message goes to tmp/<qid> as it arrives (buffered), behind entry.py's header
placeholder, never past max_size: past it, the writer only counts (`too_big`),
so the server can read to the end of DATA and answer 552. commit() appends the
envelope, fills in the header, fsyncs, renames the file into msgs/ and fsyncs
that directory; only after it returns may the server say 250 (DESIGN.md §8.2).

tmp/<qid> is a free pool file when there is one (pool.py: a delivered entry's
file, renamed, overwritten in place, truncated to the new length and given a
later mtime before the fsync), else a new file: see pool.py for why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from libcourier.durable import fsync_dir, write_all
from libcourier.spool import pool
from libcourier.spool.entry import HEADER_LEN, PLACEHOLDER, format_header
from libcourier.spool.envelope import Envelope, SpoolError, format_envelope
from libcourier.spool.queue import MSGS, TMP, new_qid

BUFFER = 64 * 1024


class SpoolWriter:
    def __init__(self, spooldir: Path, max_size: int):
        self.spooldir = Path(spooldir)
        self.max_size = max_size            # 0 or less: no limit
        self.qid = new_qid()
        # Plain strings: pathlib's joins cost more than the rest of a 4 KB message's write.
        self._tmpdir = os.path.join(spooldir, TMP)
        self._tmp = os.path.join(self._tmpdir, self.qid)
        # A raw fd and our own buffer: a BufferedWriter costs an fstat and an lseek
        # a message and adds nothing here (whole chunks come in, one write goes out).
        claimed = pool.claim(self._tmpdir, self._tmp)
        if claimed is None:
            try:
                self._fd = self._create()
            except FileExistsError:
                # A claimed pool file that was no file could not be removed.
                self.qid = new_qid()
                self._tmp = os.path.join(self._tmpdir, self.qid)
                self._fd = self._create()
            self._old_size, self._old_mtime = 0, None
        else:
            # Cut to our length and given a later mtime at commit.
            self._fd, self._old_size, self._old_mtime = claimed
        # The header's place; a message that fits in the buffer gets its real
        # header there, and header, message and envelope go out in one write.
        self._pending = bytearray(PLACEHOLDER)
        self._drained = False
        self._size = 0
        self._too_big = False
        self._done = False

    def _create(self) -> int:
        return os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)

    @property
    def size(self) -> int:
        """Octets offered so far (also those not written because of the limit)."""
        return self._size

    @property
    def too_big(self) -> bool:
        return self._too_big

    def write(self, data: bytes) -> None:
        if self._done:
            raise SpoolError("write after commit/abort")
        self._size += len(data)
        if self._too_big:
            return
        if self.max_size > 0 and self._size > self.max_size:
            self._too_big = True
            return
        self._pending += data
        if len(self._pending) >= BUFFER:
            try:
                self._drain()
            except OSError as e:
                self.abort()
                raise SpoolError(f"cannot write {self._tmp}: {e.strerror}") from None

    def _drain(self) -> None:
        write_all(self._fd, self._pending)
        self._pending.clear()
        self._drained = True

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def commit(self, envelope: Envelope) -> str:
        if self._done:
            raise SpoolError("commit after commit/abort")
        if self._too_big:
            self.abort()
            raise SpoolError("message larger than the size limit")
        msgs = os.path.join(self.spooldir, MSGS)
        final = os.path.join(msgs, self.qid)
        try:
            env = format_envelope(envelope)
            head = format_header(self._size, len(env))
        except SpoolError:
            self.abort()
            raise
        try:
            # One file, one fsync, one rename: the rename is the commit point,
            # and the 250 comes only after the directory fsync.
            on_disk = self._drained         # the placeholder went out with a large message
            if not on_disk:
                self._pending[:HEADER_LEN] = head
            self._pending += env
            self._drain()
            if on_disk and os.pwrite(self._fd, head, 0) != HEADER_LEN:
                raise OSError("short write of the queue entry's header")
            length = HEADER_LEN + self._size + len(env)     # what went out
            if self._old_size > length:
                # A pool file: nothing of its former message may survive the fsync.
                os.ftruncate(self._fd, length)
            if self._old_mtime is not None:
                # After the last write: courierlocal's journal knows a delivered
                # file by dev:ino:size:mtime_ns, and a coarse clock (one tick) or
                # one stepped back could give this message its former one's.
                now = time.time_ns()
                os.utime(self._fd, ns=(now, max(now, self._old_mtime + 1)))
            os.fchmod(self._fd, 0o640)      # exact, whatever the umask
            os.fsync(self._fd)
            self._close()
            os.rename(self._tmp, final)
            fsync_dir(msgs)
        except OSError as e:
            self._done = True
            self._close()
            for p in (self._tmp, final):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise SpoolError(f"cannot commit {self.qid}: {e.strerror or e}") from None
        self._done = True
        return self.qid

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()    # a no-op after commit
