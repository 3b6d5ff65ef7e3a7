"""courierlocal's journal of finished deliveries: no second copy when courierd
asks again for a delivery it never heard the answer to.

courierd records a recipient as done only after courierlocal's OK reply. If
courierd dies (kill -9, a crash, a reboot of the daemon) between the Maildir
link and that record, it asks again after its restart, and without this the
user gets the message twice -- allowed by SMTP's at-least-once, but avoidable.

The root connection child appends one line per OK delivery, before it sends
the reply:

    <unix time> <dev>:<ino>:<size>:<mtime_ns>[:<received>] <xtext recipient> <xtext user>\\n

The key names the spool data file by identity (device, inode, size and
modification time in nanoseconds: a later message that reuses the inode has a
different mtime) and, for an entry file, its envelope's acceptance stamp
(file_key: where mtimes are whole seconds, a reused inode can repeat the
rest within one), so a request for the same file and recipient is answered OK
without delivering again. Only OK deliveries are recorded, so nothing the
journal says can keep a message from being delivered once. Appends are one
short O_APPEND write each (atomic between concurrent children), not fsync'd:
what the journal guards against is courierd killed or restarted, and the page
cache outlives any process; after a crash of the whole machine an entry may be
missing, which brings back the duplicate and never loses a message (the
Maildir file itself was fsync'd before the entry was written).
The file is pruned of entries older than KEEP at helper start and when it
grows past MAX_BYTES; losing it only brings back the duplicate.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from courier_deliver.localproto import xtext_encode

from libcourier.durable import write_all, write_atomic
from libcourier.spool.entry import read_entry_envelope
from libcourier.spool.envelope import SpoolError

logger = logging.getLogger("courier.courierlocal")

NAME = "courierlocal.journal"
KEEP = 7 * 86400             # seconds an entry is kept
MAX_BYTES = 4 * 1024 * 1024  # a larger journal is pruned (and then cut to its newest half)


def file_key(fd: int) -> str:
    """The journal's name for an open spool file (an fstat and, for an entry
    file, one pread of its envelope): computed once per request, for seen()
    and record_many(). Raises OSError."""
    st = os.fstat(fd)
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    received = _received(fd)
    return f"{key}:{received}" if received else key


def _received(fd: int) -> str:
    """The `received` stamp (acceptance time to the microsecond) of an entry's
    own envelope, which never changes; "" for a former-layout .dat. Why: the
    spool reuses delivered entries' files (spool/pool.py), and where the file
    system keeps whole seconds only (ext4 with 128-byte inodes, made for file
    systems under 512 MB) a reused inode with a same-size message within one
    second has its former message's dev:ino:size:mtime."""
    try:
        env = read_entry_envelope(fd)
    except (OSError, SpoolError):
        return ""
    start = env.find(b"\nreceived ")
    if start < 0:
        return ""
    end = env.find(b"\n", start + 1)
    stamp = env[start + 10:end if end > 0 else len(env)]
    return stamp.decode("ascii") if stamp and stamp.replace(b".", b"").isdigit() else ""


def _entry(key: str, recipient: str, user: str | None) -> str:
    return f"{key} {xtext_encode(recipient)} {xtext_encode(user or '-')}"


class Journal:
    """One helper's view of the journal. Each connection child keeps the spool
    file keys that have an entry (read incrementally: the file only grows by
    appends between prunes, which replace it), so the common request, a file
    never delivered before, costs a stat-sized read rather than reading the
    whole journal (up to MAX_BYTES) for every message; only a key that is
    there is checked against the full entries."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._ident: tuple[int, int] | None = None   # (dev, ino) of the file read so far
        self._offset = 0                              # bytes of it read (whole lines)
        self._keys: set[bytes] = set()                # file keys with an entry in it

    def _refresh(self) -> None:
        """Read what was appended since the last call (all of it after a prune)."""
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != self._ident or st.st_size < self._offset:
                self._ident, self._offset, self._keys = (st.st_dev, st.st_ino), 0, set()
            if st.st_size <= self._offset:
                return
            f.seek(self._offset)
            data = f.read(min(st.st_size - self._offset, MAX_BYTES * 2))
        end = data.rfind(b"\n") + 1          # a line being appended right now: next time
        for line in data[:end].split(b"\n"):
            parts = line.split(b" ", 2)
            if len(parts) == 3:
                self._keys.add(parts[1])
        self._offset += end

    def refresh(self) -> None:
        """Read what other children appended: once for a batch of seen(refresh=False)."""
        try:
            self._refresh()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("cannot read %s: %s", self.path, e)

    def seen(self, key: str, recipient: str, user: str | None, *, refresh: bool = True
             ) -> bool:
        """Whether the spool file of this file_key was already delivered to this
        recipient (with refresh=False: as of the last refresh())."""
        try:
            if refresh:
                self._refresh()
            if key.encode("ascii") not in self._keys:
                return False
            want = _entry(key, recipient, user)
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES * 2)
        except FileNotFoundError:
            return False
        except OSError as e:
            logger.warning("cannot read %s: %s", self.path, e)
            return False
        needle = (" " + want + "\n").encode("ascii")
        return needle in data

    def record_many(self, done: list[tuple[str, str, str | None]], now: float | None = None
                    ) -> None:
        """Entries for several deliveries (spool file_key, recipient, user), in one
        write: one O_APPEND write is not interleaved with another child's."""
        if not done:
            return
        now = time.time() if now is None else now
        try:
            data = "".join(f"{int(now)} {_entry(key, recipient, user)}\n"
                           for key, recipient, user in done).encode("ascii")
            jfd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                          0o600)
            try:
                write_all(jfd, data)
                size = os.fstat(jfd).st_size
            finally:
                os.close(jfd)
        except OSError as e:
            logger.warning("cannot record the delivery in %s: %s", self.path, e)
            return
        if size > MAX_BYTES:
            self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Drop entries older than KEEP (and, if still too large, the older half)."""
        now = time.time() if now is None else now
        try:
            with open(self.path, "rb") as f:
                lines = f.read(MAX_BYTES * 2).split(b"\n")
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("cannot prune %s: %s", self.path, e)
            return
        keep = []
        for line in lines:
            stamp, _, _rest = line.partition(b" ")
            if stamp.isdigit() and now - int(stamp) < KEEP:
                keep.append(line + b"\n")
        data = b"".join(keep)
        if len(data) > MAX_BYTES:
            data = b"".join(keep[len(keep) // 2:])
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError as e:
            logger.warning("cannot prune %s: %s", self.path, e)
