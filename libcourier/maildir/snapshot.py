"""`courierpystate`: a folder as a SELECT's scan left it, so the next SELECT needs no scan.

Dovecot answers SELECT from its index without building the message list; this
file lets us do the same. A scan made for SELECT (folder.py, `Maildir.scan(
snapshot=True)`) writes the reconciled folder: UIDVALIDITY, UIDNEXT, the count,
the first unseen message, the folder's keywords, and per message its UID, file
name, size, mtime and keywords. The next SELECT stats cur/, new/,
courierimapuiddb and courierimapkeywords/ (`Validators.current`), and if they are
all what the file recorded, answers from the summary at the head of the file: no
listing, no uiddb parse, nothing per message. The session keeps the file open and
reads the message list from it only when a command needs it (MailboxView): an
idle selected session holds no per-message objects at all.

Why unchanged stamps mean an unchanged folder: every change a scan could see
renames or removes a file in cur/ or new/ (the directory's mtime and size change),
replaces courierimapuiddb by rename (a new inode; Courier writes it so too) or
renames a file into or out of courierimapkeywords/. The "racy mtime" problem: a
change in the same timestamp tick as the recorded mtime leaves it equal. So a
snapshot is trusted only when its scan started at least `margin_ns` after the
newest directory mtime it records: a whole timestamp tick on Linux (at most 10 ms)
with room to spare where the filesystem keeps sub-second times, 2 s where it does
not (a whole-second mtime). Clocks that disagree (an NFS server's and ours) defeat
this, as they defeat Courier's and Dovecot's own mtime checks.

A pure cache, replaced whole by write-new-and-rename and never modified in place,
so an open descriptor keeps reading the state it was opened for. Delete it and the
next SELECT scans and writes it again; a damaged or foreign file is ignored.

    courierpy-state 1\\n
    <12 stamp numbers> <recorded_ns> <uidvalidity> <uidnext> <count> <first unseen>
        <names bytes> <keyword names bytes> <keyword lines bytes> <byteorder>
        <head crc32 hex> <body crc32 hex>\\n
    keyword names, joined by \\n (the folder's keywords: the FLAGS response)
    body: file names joined by \\n | count uids (int64) | count sizes (int64)
          | count mtimes (float64) | keyword lines "<index> <kw#> <kw#>..." joined by \\n
"""

from __future__ import annotations

import array
import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from libcourier.durable import replace_cache
from libcourier.maildir.flags import split_name
from libcourier.maildir.index import DirStamp

STATE_NAME = "courierpystate"
MAGIC = b"courierpy-state 1\n"
FINE_MARGIN_NS = 50_000_000        # sub-second timestamps: 5x the coarsest Linux tick
COARSE_MARGIN_NS = 2_000_000_000   # whole-second (or FAT's 2 s) timestamps
MAX_HEAD = 64 << 10                # the header line and the keyword names
MAX_STATE_BYTES = 512 << 20        # a larger snapshot is neither written nor read
FIRST_READ = 4096                  # bytes read at SELECT: the header of most folders
_FIELDS = 23                       # 20 numbers, the byte order, two CRCs


ABSENT = DirStamp(0, 0, 0)         # what DirStamp.at gives for a path that does not exist


@dataclass(frozen=True, slots=True)
class Validators:
    cur: DirStamp
    new: DirStamp
    uiddb: DirStamp
    keywords: DirStamp

    @classmethod
    def current(cls, folder: Path, uiddb_name: str, kwdir_name: str) -> Validators:
        return cls(DirStamp.at(folder / "cur"), DirStamp.at(folder / "new"),
                   DirStamp.at(folder / uiddb_name), DirStamp.at(folder / kwdir_name))

    def numbers(self) -> list[int]:
        return [n for s in (self.cur, self.new, self.uiddb, self.keywords)
                for n in (s.ino, s.size, s.mtime_ns)]

    def racy_until(self) -> int:
        """The wall clock (ns) from which a listing of the folder as stamped can be
        trusted (settled): the newest directory mtime plus its margin."""
        dirs = [s.mtime_ns for s in (self.cur, self.new, self.keywords) if s != ABSENT]
        return max(dirs, default=0) + margin_ns(dirs)

    @staticmethod
    def settled_dir(s: DirStamp, recorded_ns: int) -> bool:
        """settled() for one directory's stamp (an absent one is)."""
        return s == ABSENT or recorded_ns - s.mtime_ns >= margin_ns([s.mtime_ns])

    def settled(self, recorded_ns: int) -> bool:
        """True when a scan started at `recorded_ns` (wall clock) cannot have missed
        a change hidden in the same timestamp tick as a directory's mtime. The uiddb
        is left out: it is only ever replaced by rename, its inode tells."""
        if self.cur == self.new == self.keywords == ABSENT:
            return False
        return recorded_ns >= self.racy_until()


def margin_ns(mtimes: list[int]) -> int:
    """How long after a directory's mtime a listing of it can be trusted (module doc)."""
    return COARSE_MARGIN_NS if any(m % 1_000_000_000 == 0 for m in mtimes) else FINE_MARGIN_NS


class Held:
    """An open descriptor holding a flock (folder.py: cur/'s, shared, while a SELECT
    scan's snapshot waits to be stored); closed once, or when dropped. Registered by
    the directory: flock locks of two descriptors of one process conflict, so this
    process's own LOCK_EX on it first lets it go (release())."""

    __slots__ = ("fd", "key")

    def __init__(self, fd: int, key: str):
        self.fd, self.key = fd, key
        _HELD[key] = self

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            if _HELD.get(self.key) is self:
                del _HELD[self.key]
            os.close(fd)

    __del__ = close


_HELD: dict[str, Held] = {}


def release(key: str) -> None:
    """Before this process takes LOCK_EX on `key` (a cur/ path): let go of its own
    shared hold there, or it would wait for itself."""
    h = _HELD.get(key)
    if h is not None:
        h.close()


@dataclass(frozen=True, slots=True)
class Pending:
    """A SELECT scan's state not stored yet (folder.Maildir.store_snapshot): the
    stamps it was read under, when its listing started, and the lock it holds."""
    validators: Validators
    recorded_ns: int
    held: Held | None = None


class _Stored(Protocol):
    """What write() reads of a message (folder.MessageRef has it)."""
    @property
    def uid(self) -> int: ...
    @property
    def filename(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...
    @property
    def keywords(self) -> frozenset[str]: ...


@dataclass(slots=True)
class Summary:
    """What SELECT answers from, and the open snapshot the message list comes from."""
    validators: Validators
    uidvalidity: int
    uidnext: int
    count: int
    first_unseen: int                # sequence number, 0: every message is seen
    keywords: frozenset[str]
    file: object                     # the open snapshot (an io.FileIO), for load()
    body_at: int
    nlen: int
    klen: int
    body_crc: int
    recorded_ns: int = 0             # when the listing it holds was read


class SnapshotError(ValueError):
    """A snapshot body that does not decode (damage after the header verified)."""


def _head(v: Validators, recorded_ns: int, uidvalidity: int, uidnext: int, count: int,
          unseen: int, nlen: int, kwnames: int, klen: int) -> bytes:
    nums = [*v.numbers(), recorded_ns, uidvalidity, uidnext, count, unseen, nlen, kwnames, klen]
    return b" ".join(b"%d" % n for n in nums) + b" " + sys.byteorder.encode()


def write(folder: Path, v: Validators, recorded_ns: int, uidvalidity: int, uidnext: int,
          messages: Sequence[_Stored]) -> bool:
    """Store a scan's result; False when not stored (racy, a name that cannot be
    stored, too large, or an OSError: the next SELECT scans, nothing else is lost).
    `messages` may be a msglist.MessageList: its columns are stored as they are, an
    mtime not read yet (NaN) included."""
    if not v.settled(recorded_ns):
        return False
    columns = getattr(messages, "columns", None)
    if columns is not None:
        uids, names, sizes, mtimes, per = columns()
    else:
        names = [m.filename for m in messages]
        uids = array.array("q", [m.uid for m in messages])
        sizes = array.array("q", [m.size for m in messages])
        mtimes = array.array("d", [m.mtime for m in messages])
        per = {i: m.keywords for i, m in enumerate(messages) if m.keywords}
    kwall = sorted({k for ks in per.values() for k in ks})
    if any("\n" in k or " " in k or not k for k in kwall):
        return False
    kwpos = {k: i for i, k in enumerate(kwall)}
    unseen = next((i for i, n in enumerate(names, 1) if "S" not in split_name(n)[1]), 0)
    blob = "\n".join(names).encode("utf-8", "surrogateescape")
    if blob.count(b"\n") != max(len(names) - 1, 0):
        return False                  # a name with a newline cannot be stored
    kwnames = "\n".join(kwall).encode("utf-8", "surrogateescape")
    kwlines = "\n".join(" ".join([str(i), *(str(kwpos[k]) for k in sorted(ks))])
                        for i, ks in sorted(per.items())).encode()
    body = b"".join([blob, array.array("q", uids).tobytes(), array.array("q", sizes).tobytes(),
                     array.array("d", mtimes).tobytes(), kwlines])
    if len(body) > MAX_STATE_BYTES or len(kwnames) > MAX_HEAD // 2:
        return False
    head = _head(v, recorded_ns, uidvalidity, uidnext, len(messages), unseen, len(blob),
                 len(kwnames), len(kwlines))
    data = b"".join([MAGIC, head, b" %08x %08x\n" % (zlib.crc32(kwnames, zlib.crc32(head)),
                                                     zlib.crc32(body)), kwnames, body])
    tmp = folder / "tmp" / f"{os.getpid()}.pystate_{os.urandom(4).hex()}"
    return replace_cache(folder / STATE_NAME, data, tmp)


def open_summary(folder: Path, now: Validators) -> Summary | None:
    """The stored summary if it was made for the folder as it is now (`now`, the
    stamps just taken) and can be trusted; None: scan."""
    try:
        f = open(folder / STATE_NAME, "rb", buffering=0)   # noqa: SIM115 (kept by Summary)
    except OSError:
        return None
    try:
        s = _parse(f, now)
    except (OSError, ValueError):
        s = None
    if s is None:
        f.close()
    return s


def _parse(f, now: Validators) -> Summary | None:
    fd = f.fileno()
    data = os.pread(fd, FIRST_READ, 0)
    if not data.startswith(MAGIC):
        return None
    nl = data.find(b"\n", len(MAGIC))
    if nl < 0:
        data = os.pread(fd, MAX_HEAD, 0)
        nl = data.find(b"\n", len(MAGIC))
        if nl < 0:
            return None
    fields = data[len(MAGIC):nl].split(b" ")
    if len(fields) != _FIELDS or not all(x.isdigit() for x in fields[:20]) \
            or fields[20] != sys.byteorder.encode():
        return None
    nums = [int(x) for x in fields[:20]]
    stamps = [DirStamp(*nums[i:i + 3]) for i in range(0, 12, 3)]
    v = Validators(*stamps)
    recorded_ns, uidvalidity, uidnext, count, unseen, nlen, kwn, klen = nums[12:]
    if v != now or not v.settled(recorded_ns):
        return None
    if nl + 1 + kwn > len(data):
        if kwn > MAX_HEAD:
            return None
        data = os.pread(fd, nl + 1 + kwn, 0)
        if len(data) != nl + 1 + kwn:
            return None
    kwnames = data[nl + 1:nl + 1 + kwn]
    head = _head(v, recorded_ns, uidvalidity, uidnext, count, unseen, nlen, kwn, klen)
    if int(fields[21], 16) != zlib.crc32(kwnames, zlib.crc32(head)):
        return None
    body_at = nl + 1 + kwn
    if os.fstat(fd).st_size != body_at + nlen + 24 * count + klen:
        return None
    kws = frozenset(kwnames.decode("utf-8", "surrogateescape").split("\n")) if kwn else frozenset()
    return Summary(v, uidvalidity, uidnext, count, unseen, kws, f, body_at, nlen, klen,
                   int(fields[22], 16), recorded_ns)


@dataclass(frozen=True, slots=True)
class Columns:
    """A snapshot's message list as columns, in UID order (one object per message
    would be made only to be copied into folder.MessageRef)."""
    uids: array.array
    names: list[str]
    sizes: array.array
    mtimes: array.array
    keywords: dict[int, frozenset[str]]     # index -> keywords, messages that have any


def load(s: Summary) -> Columns:
    """The message list of an open snapshot; SnapshotError when its body does not
    verify (OSError passes)."""
    n = s.count
    size = s.nlen + 24 * n + s.klen
    body = os.pread(s.file.fileno(), size, s.body_at)   # type: ignore[attr-defined]
    if len(body) != size or zlib.crc32(body) != s.body_crc:
        raise SnapshotError("snapshot body damaged")
    names = body[:s.nlen].decode("utf-8", "surrogateescape").split("\n") if n else []
    uids, sizes, mtimes = array.array("q"), array.array("q"), array.array("d")
    at = s.nlen
    for arr in (uids, sizes, mtimes):
        arr.frombytes(body[at:at + 8 * n])
        at += 8 * n
    if len(names) != n:
        raise SnapshotError("snapshot names do not match the count")
    kwlist = sorted(s.keywords)
    per: dict[int, frozenset[str]] = {}
    if s.klen:
        try:
            for line in body[at:].decode().split("\n"):
                i, *ks = (int(x) for x in line.split(" "))
                per[i] = frozenset(kwlist[k] for k in ks)
        except (ValueError, IndexError):
            raise SnapshotError("snapshot keywords damaged") from None
    return Columns(uids, names, sizes, mtimes, per)
