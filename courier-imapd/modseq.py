"""Mod-sequences (RFC 7162 CONDSTORE/QRESYNC) for a Maildir folder.

Courier keeps none, so they live in our own file beside courierimapuiddb, one per
folder, `courierpymodseq`: a header line, then append-only records

    CPYMODSEQ 1 <uidvalidity> <first>\\n      <first>: the modseq the log starts at
    <uid> <modseq> <sig>\\n                    the message's flags+keywords digest
    <uid> <modseq> -\\n                        the message was expunged

The newest record for a UID wins. A change is given a modseq when a CONDSTORE
session first looks (any process's flag rename, keyword update, delivery or
expunge is found by comparing digests with the folder's scan), under an exclusive
flock of the file, so every process hands out increasing numbers and agrees on
them. Sessions that never use CONDSTORE never touch the file; a change they make
gets its modseq from the next session that looks, which is all RFC 7162 asks:
the number is higher than any a client has been told before the change.

Every process keeps the map in memory and reads only what others appended since.
The file is rewritten (live records plus the last MAX_EXPUNGED expunges) when it
has grown well past that; other processes notice the new inode and reread it.
"""

from __future__ import annotations

import fcntl
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from libcourier.durable import fsync_dir
from libcourier.maildir.folder import MessageRef

FILENAME = "courierpymodseq"
MAGIC = b"CPYMODSEQ 1"
MAX_EXPUNGED = 10000        # expunge records kept by a rewrite (QRESYNC VANISHED)
MAX_LINE = 64               # a record is far shorter; longer means damage


def digest(msg: MessageRef) -> str:
    """What a change of flags or keywords changes: 8 hex digits."""
    kws = getattr(msg, "keywords", frozenset())
    text = "".join(sorted(set(msg.flags))) + "\0" + "\0".join(sorted(kws))
    return f"{zlib.crc32(text.encode('utf-8', 'surrogateescape')):08x}"


@dataclass(slots=True)
class Tracker:
    """The mod-sequences of one folder, as this process knows them."""
    folder: Path
    uidvalidity: int
    highest: int = 1
    first: int = 1                                   # modseqs below this were never logged
    live: dict[int, tuple[int, str]] = field(default_factory=dict)   # uid -> (modseq, digest)
    expunged: dict[int, int] = field(default_factory=dict)           # uid -> modseq
    _offset: int = 0
    _ino: int | None = None
    # (flags, keywords) whose digest matches `live` (saves a digest per message and
    # scan); dropped for a UID whenever the log says something new about it.
    _known: dict[int, tuple[str, frozenset[str]]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / FILENAME

    def modseq(self, uid: int) -> int:
        got = self.live.get(uid)
        return got[0] if got is not None else self.highest

    # -- reading -----------------------------------------------------------------------

    def _reset(self) -> None:
        self.highest = self.first = 1
        self.live.clear()
        self.expunged.clear()
        self._known.clear()
        self._offset = 0

    def _read_tail(self, fd: int) -> None:
        st = os.fstat(fd)
        if st.st_ino != self._ino or st.st_size < self._offset:
            self._reset()
            self._ino = st.st_ino
        if st.st_size == self._offset:
            return
        os.lseek(fd, self._offset, os.SEEK_SET)
        data = b""
        while len(data) < st.st_size - self._offset:
            chunk = os.read(fd, st.st_size - self._offset - len(data))
            if not chunk:
                break
            data += chunk
        end = data.rfind(b"\n") + 1          # a torn last line (a crash) is not used
        lines = data[:end].split(b"\n")[:-1]
        if self._offset == 0:
            if not lines or not self._header(lines[0]):
                self._offset = -1            # unusable: the caller rewrites
                return
            lines = lines[1:]
        for ln in lines:
            parts = ln.split(b" ")
            if len(parts) != 3 or len(ln) > MAX_LINE:
                continue
            try:
                uid, ms = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            self._known.pop(uid, None)
            if parts[2] == b"-":
                self.live.pop(uid, None)
                self.expunged[uid] = ms
            else:
                self.live[uid] = (ms, parts[2].decode("ascii", "replace"))
                self.expunged.pop(uid, None)
            self.highest = max(self.highest, ms)
        self._offset += end

    def _header(self, line: bytes) -> bool:
        parts = line.split(b" ")
        if len(parts) != 4 or b" ".join(parts[:2]) != MAGIC:
            return False
        try:
            validity, first = int(parts[2]), int(parts[3])
        except ValueError:
            return False
        if validity != self.uidvalidity:
            return False                     # a new UIDVALIDITY starts over
        self.first = self.highest = max(1, first)
        return True

    # -- writing -----------------------------------------------------------------------

    def _rewrite(self, fd: int) -> int:
        """Replace the file with the current state (under our lock); the new fd."""
        keep = sorted(self.expunged.items(), key=lambda kv: kv[1])[-MAX_EXPUNGED:]
        first = self.first
        if len(keep) < len(self.expunged):
            first = keep[0][1] if keep else self.highest
        out = [MAGIC + b" %d %d\n" % (self.uidvalidity, first)]
        # In modseq order, as appends are: the last line holds the highest (peek_highest).
        recs = [(ms, b"%d %d %s\n" % (u, ms, d.encode())) for u, (ms, d) in self.live.items()]
        recs += [(ms, b"%d %d -\n" % (u, ms)) for u, ms in keep]
        out += [r for _, r in sorted(recs)]
        tmp = self.folder / "tmp" / f".{FILENAME}.{os.getpid()}.{os.urandom(4).hex()}"
        if not tmp.parent.is_dir():
            tmp = self.folder / f".{FILENAME}.{os.getpid()}.{os.urandom(4).hex()}"
        nfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(nfd, fcntl.LOCK_EX)
            data = b"".join(out)
            os.write(nfd, data)
            os.fsync(nfd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(nfd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(self.folder)
        os.close(fd)
        self.first = first
        self.expunged = dict(keep)
        self._offset = len(data)
        self._ino = os.fstat(nfd).st_ino
        return nfd

    def _open_locked(self) -> int:
        """The log, opened and exclusively locked; retried if it was replaced meanwhile."""
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise OSError(f"{self.path}: keeps being replaced")

    def _prepare(self, fd: int) -> int:
        """Catch up with the log (under the lock); a new or unusable log is started
        afresh. Its first modseq is the clock in microseconds, so a log that was lost
        never hands out a number a client has already seen (RFC 7162 §3.1.2: they
        only grow)."""
        self._read_tail(fd)
        if self._offset < 0 or os.fstat(fd).st_size == 0:
            self._reset()
            self.first = self.highest = max(1, time.time_ns() // 1000)
            fd = self._rewrite(fd)
        return fd

    def update(self, messages: Iterable[MessageRef], complete: bool) -> list[int]:
        """Give new modseqs to messages whose flags or keywords changed (and to new
        ones); with `complete` (a whole scan), UIDs that are gone are expunged. The
        UIDs that got a new modseq."""
        fd = self._open_locked()
        try:
            fd = self._prepare(fd)
            changed: list[int] = []
            recs: list[bytes] = []
            seen: set[int] = set()
            for m in messages:
                seen.add(m.uid)
                key = (m.flags, m.keywords)
                if self._known.get(m.uid) == key and m.uid in self.live:
                    continue
                d = digest(m)
                got = self.live.get(m.uid)
                self._known[m.uid] = key
                if got is not None and got[1] == d:
                    continue
                self.highest += 1
                self.live[m.uid] = (self.highest, d)
                recs.append(b"%d %d %s\n" % (m.uid, self.highest, d.encode()))
                changed.append(m.uid)
            if complete:
                for uid in [u for u in self.live if u not in seen]:
                    self.highest += 1
                    del self.live[uid]
                    self._known.pop(uid, None)
                    self.expunged[uid] = self.highest
                    recs.append(b"%d %d -\n" % (uid, self.highest))
            if recs:
                data = b"".join(recs)
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, data)           # one write, under the lock
                self._offset += len(data)
                if self._offset > 4 * 32 * (len(self.live) + MAX_EXPUNGED) + (1 << 20):
                    fd = self._rewrite(fd)
            return changed
        finally:
            os.close(fd)

    def forget(self, uids: Iterable[int]) -> None:
        """Record expunges this session made (no scan needed)."""
        fd = self._open_locked()
        try:
            fd = self._prepare(fd)
            recs = []
            for uid in uids:
                if uid in self.live:
                    self.highest += 1
                    del self.live[uid]
                    self._known.pop(uid, None)
                    self.expunged[uid] = self.highest
                    recs.append(b"%d %d -\n" % (uid, self.highest))
            if recs:
                data = b"".join(recs)
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, data)
                self._offset += len(data)
        finally:
            os.close(fd)

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after `modseq`, or None when the log does not reach that far
        back (the caller then reports every UID that is missing)."""
        if modseq < self.first - 1:
            return None
        return sorted(u for u, ms in self.expunged.items() if ms > modseq)


def peek_highest(folder: Path, uidvalidity: int) -> int | None:
    """The highest modseq handed out in `folder`, from the log's header and last line
    only (records are in modseq order), without taking the lock; None when the folder
    has no log for this UIDVALIDITY. Changes not logged yet get higher numbers later,
    so a client told this value misses nothing (RFC 7162 §3.1.2.1)."""
    try:
        with open(Path(folder) / FILENAME, "rb") as f:
            head = f.readline(MAX_LINE * 2)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 4 * MAX_LINE))
            tail = f.read(4 * MAX_LINE)
    except OSError:
        return None
    parts = head.split(b" ")
    if len(parts) != 4 or b" ".join(parts[:2]) != MAGIC or not head.endswith(b"\n"):
        return None
    try:
        if int(parts[2]) != uidvalidity:
            return None
        best = int(parts[3])
    except ValueError:
        return None
    lines = tail[:tail.rfind(b"\n") + 1].split(b"\n")
    for ln in reversed(lines):
        fields = ln.split(b" ")
        if len(fields) == 3 and fields[1].isdigit():
            return max(best, int(fields[1]))
    return best
