"""`courierpyindex`: our per-folder cache of what FETCH, SORT and SEARCH read.

A pure cache (issue 3): delete it and nothing is lost, the next FETCH that
misses parses the message and appends its record again. Courier never reads
or writes a file of this name (its own are courierimapuiddb,
courierimapkeywords/, courierimapacl, courierimapsubscribed,
courierpop3dsizelist), so the two can share a folder.

Format (all bytes)::

    courierpy-index 5\\n                                 the file header
    [T <count> <names length> <end> <crc32 hex>\\n<table>] where the records are (optional)
    R <payload length> <crc32 hex> <base>\\n<payload>     one record, repeated

The table is written only when the whole file is (a rebuild or compaction): the
bases joined by \\n, then their records' offsets (int64), payload lengths and
CRCs (uint32), native byte order; the header's numbers are fixed width (20
digits) and `end` is where the records it covers end. A session opening the
file loads the table with a few C-level calls instead of hopping over every
record, and reads only the records appended after `end` one by one. A scan that
had to hop over many records rewrites the file with a table (TABLE_AFTER).

`base` is the message's courierimapuiddb key (FORMATS.md §3.4); the CRC32
covers base and payload, so a torn append, an interleaved write or a flipped
bit is seen. The payload starts with a fixed binary table (`_TOC`, little
endian): disk size, RFC822.SIZE and header length as int64 (-1: not known),
then (start, length) int32 pairs locating ENVELOPE, BODY, BODYSTRUCTURE, the
header fields and the SORT/THREAD keys made from them (sortkeys.py, version 5) in the
payload (length -1: not known), then those bytes. The
header fields are a count byte, (start, length) int32 pairs (length -1: not in
the message), then the values. The table lets FETCH take one view out of a record with
one unpack and one slice, decoding nothing else. A later record for a base replaces an earlier
one, so the file is only ever appended to; a message file is never rewritten
in a Maildir, and the on-disk size kept in the record is checked on every
lookup, so a stale record is a miss, never a wrong answer.

Concurrency: every process appends whole records with one O_APPEND write
(the kernel keeps the position and the data of one write together for a
regular file) and reads with pread; nobody blocks. A damaged file is replaced
by write-new-and-rename with the records that verified; a process still
holding the old inode sees the rename (different st_ino) on its next miss and
reopens. Appends made to the old inode in between are lost: only a cache.
No fsync: a record lost in a crash is parsed again.
"""

from __future__ import annotations

import array
import mmap
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from libcourier.durable import write_all
from libcourier.maildir import sortkeys

INDEX_NAME = "courierpyindex"
MAGIC = b"courierpy-index 5\n"     # files of earlier versions are rebuilt empty
MAX_INDEX_BYTES = 1 << 30      # a larger file is not read (and is rebuilt empty)
MAX_RECORD = 8 << 20           # a record longer than this is not stored
MAX_HEAD = 4096                # a record header line (the base is part of it)
SCAN_CHUNK = 1 << 20
REFRESH_EVERY = 0.5            # seconds: a run of misses looks for other writers' records
# Compaction: when the file is more than twice what its live records need plus this,
# it is rewritten with only the latest record of each message still in cur/
# (superseded records and those of expunged messages go).
COMPACT_SLACK = 1 << 20
RELEASE_EVERY = 2048           # records read through a map before its pages are let go
# The file is rewritten with a table when one scan hops over more records than this (all
# later sessions would too), and by a process that appends when more records lie past
# the table than this and than the table holds (a folder filled from empty is rewritten
# at 2,000, 4,000, 8,000... records: twice its size written in all, by the filler).
TABLE_AFTER = 2000
TABLE_HEAD = 2 + 4 * 21 + 9    # "T " + four fixed-width numbers + " " + crc + "\n"
RETRY_AFTER = 30.0             # seconds before an index that failed (EACCES, ENOSPC...) is retried
# The header fields SORT, THREAD (RFC 5256) and header SEARCH (RFC 3501 §6.4.4) want.
# Only ever appended to: a record written with fewer fields is read as "the later
# ones not known" (searchdata.py parses the message again and re-records it).
HEADER_FIELDS = (b"date", b"subject", b"from", b"to", b"cc", b"message-id",
                 b"in-reply-to", b"references", b"bcc")


@dataclass(frozen=True, slots=True)
class Entry:
    """What is known of one message; None: not computed yet."""
    disk_size: int                     # on-disk bytes the record was made from
    crlf_size: int | None = None       # RFC822.SIZE
    header_len: int | None = None      # CRLF length of the header, blank line included
    envelope: bytes | None = None      # the ENVELOPE list
    body: bytes | None = None          # BODY (no extension data)
    bodystructure: bytes | None = None
    # raw values of HEADER_FIELDS, in order, as in the header (folding kept), for SORT/SEARCH
    headers: tuple[bytes | None, ...] | None = None

    def merge(self, new: Entry) -> Entry:
        """This entry with every field `new` knows taken from `new`."""
        if new.disk_size != self.disk_size:
            return new
        return replace(self, **{
            n: getattr(new, n) for n in _FIELDS[1:] if getattr(new, n) is not None})


_FIELDS = ("disk_size", "crlf_size", "header_len", "envelope", "body", "bodystructure",
           "headers")


class IndexError_(ValueError):
    """A record that does not decode."""


# disk size, crlf size, header length; then (start, length) of envelope, body,
# bodystructure, headers, sort keys (made from the headers when the record is written)
_TOC = struct.Struct("<3q10i")
if _TOC.size < 64:    # FolderIndex._checked marks a record per 64 bytes of the file
    raise ImportError("the record table must be at least 64 bytes")
_VIEWS = ("envelope", "body", "bodystructure", "headers", "keys")
KEYS_VIEW = 4
NO_NUMBER = -1


_PAIR = struct.Struct("<ii")


def _encode_headers(hs: tuple[bytes | None, ...]) -> bytes:
    """One count byte, (start, length) int32 pairs (length -1: not in the message),
    then the values: one field is one unpack and one slice away."""
    pairs = bytearray([len(hs)])
    pos = 1 + _PAIR.size * len(hs)
    for h in hs:
        if h is None:
            pairs += _PAIR.pack(0, -1)
        else:
            pairs += _PAIR.pack(pos, len(h))
            pos += len(h)
    return bytes(pairs) + b"".join(h for h in hs if h is not None)


def encode(entry: Entry) -> bytes:
    blobs: list[bytes] = []
    toc: list[int] = [NO_NUMBER if v is None else v
                      for v in (entry.disk_size, entry.crlf_size, entry.header_len)]
    pos = _TOC.size
    for name in _VIEWS:
        if name == "keys":
            k = None if entry.headers is None else sortkeys.compute(entry.headers)
            v = None if k is None else sortkeys.encode(k)
        else:
            v = getattr(entry, name)
        if name == "headers" and v is not None:
            v = _encode_headers(v)
        if v is None:
            toc += (0, -1)
        else:
            toc += (pos, len(v))
            blobs.append(v)
            pos += len(v)
    return _TOC.pack(*toc) + b"".join(blobs)


def _decode_headers(data: bytes) -> tuple[bytes | None, ...]:
    if not data or data[0] > len(HEADER_FIELDS):
        raise IndexError_("bad header count")
    out = []
    for i in range(data[0]):
        known, value = _header_at(data, 0, len(data), i)
        if not known:
            raise IndexError_("header field outside the record")
        out.append(value)
    return tuple(out)


def _header_at(data: bytes, hs: int, hn: int, i: int) -> tuple[bool, bytes | None]:
    p = hs + 1 + _PAIR.size * i
    if i >= data[hs] or p + _PAIR.size > hs + hn:
        return False, None
    start, n = _PAIR.unpack_from(data, p)
    if n < 0:
        return True, None
    if start < 1 or start + n > hn:
        return False, None
    return True, data[hs + start:hs + start + n]


def header(payload: bytes, t: tuple[int, ...], i: int) -> tuple[bool, bytes | None]:
    """(known, raw value) of HEADER_FIELDS[i] in a record whose table is `t`: known is
    False when the record does not hold that field (made before it was indexed)."""
    hs, hn = t[9], t[10]
    if hn < 1 or hs < _TOC.size or hs + hn > len(payload):
        return False, None
    return _header_at(payload, hs, hn, i)


def toc(payload: bytes) -> tuple[int, ...]:
    """The record's table (see _TOC), checked: every located view inside the payload."""
    try:
        t = _TOC.unpack_from(payload)
    except struct.error:
        raise IndexError_("record shorter than its table") from None
    if t[0] < 0 or t[1] < NO_NUMBER or t[2] < NO_NUMBER:
        raise IndexError_("bad number")
    end = len(payload)
    for k in range(3, 3 + 2 * len(_VIEWS), 2):
        if t[k + 1] < -1 or (t[k + 1] >= 0 and (t[k] < _TOC.size or t[k] + t[k + 1] > end)):
            raise IndexError_("view outside the record")
    return t


def view(payload: bytes, t: tuple[int, ...], k: int) -> bytes | None:
    """View k of _VIEWS (0 envelope, 1 body, 2 bodystructure) of a record whose table
    is `t`; None when not known, or when the table points outside the record."""
    n = t[4 + 2 * k]
    start = t[3 + 2 * k]
    if n < 0 or start < _TOC.size or start + n > len(payload):
        return None
    return payload[start:start + n]


def keys(payload: bytes, t: tuple[int, ...]) -> sortkeys.SortKeys | None:
    """The SORT/THREAD keys of a record whose table is `t`; None when it has none (no
    header fields recorded) or they do not decode."""
    v = view(payload, t, KEYS_VIEW)
    if v is None:
        return None
    try:
        return sortkeys.decode(v)
    except sortkeys.KeysError:
        return None


def keys_of_records(recs: Sequence[tuple[bytes, tuple[int, ...]] | None]
                    ) -> list[sortkeys.SortKeys | None]:
    """keys() of each of records()' answers, in one loop (a SORT or THREAD of the
    whole folder reads them all)."""
    out: list[sortkeys.SortKeys | None] = []
    add, decode_keys, least = out.append, sortkeys.decode, _TOC.size
    start_at, len_at = 3 + 2 * KEYS_VIEW, 4 + 2 * KEYS_VIEW
    for rec in recs:
        if rec is None:
            add(None)
            continue
        payload, t = rec
        start, n = t[start_at], t[len_at]
        if n < 0 or start < least or start + n > len(payload):
            add(None)
            continue
        try:
            add(decode_keys(payload[start:start + n]))
        except sortkeys.KeysError:
            add(None)
    return out


def decode(data: bytes) -> Entry:
    t = toc(data)
    hs = view(data, t, 3)
    return Entry(t[0], None if t[1] < 0 else t[1], None if t[2] < 0 else t[2],
                 view(data, t, 0), view(data, t, 1), view(data, t, 2),
                 None if hs is None else _decode_headers(hs))


def frame(base: str, payload: bytes) -> bytes:
    b = base.encode("utf-8", "surrogateescape")
    crc = zlib.crc32(payload, zlib.crc32(b))
    return b"R %d %08x %s\n" % (len(payload), crc, b) + payload


def _release(mm: mmap.mmap) -> None:
    """Drop the mapping's pages from this process (the page cache keeps them): reading a
    100,000-message index through a map would otherwise count it all in the session's
    RSS and peak RSS."""
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, ValueError):
        pass


def _reclen(base: str, n: int) -> int:
    """Bytes of a framed record: "R <n> <crc8> <base>\\n" and the payload."""
    return 13 + len(str(n)) + len(base.encode("utf-8", "surrogateescape")) + n


class FolderIndex:
    """The index of one Maildir folder, opened lazily; every method is best
    effort: an OSError means "no cache" and is never raised to the caller."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / INDEX_NAME
        self._fd = -1
        self._ino = -1
        self._scanned = 0                             # bytes of the file parsed
        self._where: dict[str, tuple[int, int, int]] = {}   # base -> (offset, len, crc)
        self.rebuilt = 0                              # times a damaged file was replaced
        self._refreshed = -1e9                        # monotonic time of the last refresh
        self._failed = -1e9                           # monotonic time of the last OSError
        self._live = 0                                # bytes of the records in _where
        self.compacted = 0                            # times the file was compacted
        self.tabled = 0                               # times rewritten with a table (TABLE_AFTER)
        self._in_table = 0                            # records the loaded table holds
        self._untabled = 0                            # records noted past the table
        self._no_table = False                        # a rewrite with a table failed here
        # Records whose CRC views()/records() checked through this fd, a byte per 64 of
        # the file (see _checked): the file is append-only until it is replaced (a new
        # inode: close() forgets them), so a later FETCH in the session does not
        # checksum them again.
        self._verified = bytearray()

    # -- opening, scanning, rebuilding ----------------------------------------------------

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino, self._scanned = -1, -1, 0
        self._where.clear()
        self._verified.clear()
        self._live = 0
        self._in_table = self._untabled = 0

    def _note(self, base: str, loc: tuple[int, int, int]) -> None:
        """Record where a base's latest record is, keeping the live byte count."""
        old = self._where.get(base)
        if old is not None:
            self._live -= _reclen(base, old[1])
        self._where[base] = loc
        self._live += _reclen(base, loc[1])

    def _forget(self, base: str) -> None:
        """Drop a damaged record, keeping the live byte count: its message goes the
        long way and is recorded again."""
        loc = self._where.pop(base, None)
        if loc is not None:
            self._live -= _reclen(base, loc[1])

    def _maybe_compact(self) -> None:
        if self._scanned <= 2 * self._live + COMPACT_SLACK:
            return
        try:
            names = os.listdir(self.folder / "cur")
        except OSError:
            return
        live = {n.split(":", 1)[0] for n in names}
        self._rebuild({b: v for b, v in self._where.items() if b in live})
        self.compacted += 1

    def _open(self) -> None:
        self.close()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self._replace({})
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        if os.pread(fd, len(MAGIC), 0) != MAGIC or os.fstat(fd).st_size > MAX_INDEX_BYTES:
            self._rebuild({})
            return
        self._scanned = len(MAGIC)
        self._load_table()
        self._scan()

    def _load_table(self) -> None:
        """Take the table at the head of the file, if there is one that verifies."""
        head = os.pread(self._fd, TABLE_HEAD, len(MAGIC))
        if not head.startswith(b"T "):
            return
        f = head[2:-1].split(b" ")
        if len(head) != TABLE_HEAD or head[-1:] != b"\n" or len(f) != 5 or \
                not all(x.isdigit() for x in f[:4]):
            return
        count, nlen, end = int(f[0]), int(f[1]), int(f[2])
        tlen = int(f[3])
        start = len(MAGIC) + TABLE_HEAD
        if tlen != nlen + 16 * count or start + tlen > end or end > os.fstat(self._fd).st_size:
            return
        table = os.pread(self._fd, tlen, start)
        try:
            ok = len(table) == tlen and int(f[4], 16) == zlib.crc32(table, zlib.crc32(head[:-10]))
        except ValueError:
            ok = False
        if not ok:
            self._scanned = start + tlen      # a damaged table: hop over its records instead
            return
        names = table[:nlen].decode("utf-8", "surrogateescape").split("\n") if count else []
        offs, lens, crcs = array.array("q"), array.array("I"), array.array("I")
        offs.frombytes(table[nlen:nlen + 8 * count])
        lens.frombytes(table[nlen + 8 * count:nlen + 12 * count])
        crcs.frombytes(table[nlen + 12 * count:])
        if len(names) != count:
            return
        self._where = dict(zip(names, zip(offs.tolist(), lens.tolist(), crcs.tolist(),
                                          strict=True), strict=True))
        self._live = end - start - tlen
        self._scanned = end
        self._in_table = count

    def _scan(self) -> None:
        """Parse the records appended since the last scan; damage -> rebuild."""
        end = os.fstat(self._fd).st_size
        buf = b""
        pos = self._scanned          # file offset of buf[0]
        at = 0                       # next record in buf
        where = self._where
        hopped = 0
        while True:
            if len(buf) - at < MAX_HEAD and pos + len(buf) < end:
                want = min(SCAN_CHUNK, end - pos - len(buf))
                buf = buf[at:] + os.pread(self._fd, want, pos + len(buf))
                pos += at
                at = 0
            if at >= len(buf):
                if hopped > TABLE_AFTER and not self._no_table:
                    # every later session would hop them too: load a table instead
                    self._add_table()
                break
            nl = buf.find(b"\n", at, at + MAX_HEAD)
            head = buf[at:nl].split(b" ", 3) if nl >= 0 else []
            if len(head) != 4 or head[0] != b"R" or not head[1].isdigit() or len(head[2]) != 8:
                if nl < 0 and pos + len(buf) >= end and len(buf) - at < MAX_HEAD:
                    break        # a record being appended right now: its header is not all there
                self._rebuild(self._where)
                return
            n = int(head[1])
            try:
                crc = int(head[2], 16)
            except ValueError:
                self._rebuild(self._where)
                return
            start = pos + nl + 1
            if start + n > end:
                break            # torn or still being written: look again later
            base = head[3].decode("utf-8", "surrogateescape")
            old = where.get(base)
            if old is not None:
                self._live -= _reclen(base, old[1])
            where[base] = (start, n, crc)
            self._live += nl + 1 - at + n
            self._scanned = start + n
            self._untabled += 1
            hopped += 1
            # skip the payload without reading it into buf when it is past the buffer
            if nl + 1 + n <= len(buf):
                at = nl + 1 + n
            else:
                pos, buf, at = start + n, b"", 0

    def _checked(self, size: int) -> bytearray:
        """The verified marks, one byte per 64 bytes of a file of `size` bytes; byte
        off >> 6 is set once the record whose payload starts at `off` verified. Only
        records of at least _TOC.size (64) bytes are marked, so no other record's payload
        starts in the same 64 bytes after a marked one (its header and payload lie
        between), and one that starts in them before it is too short to be served."""
        ok = self._verified
        if len(ok) <= size >> 6:
            ok.extend(bytes((size >> 6) + 1 - len(ok)))
        return ok

    def _map(self) -> mmap.mmap | None:
        """The whole file mapped read-only; None when empty or not mappable."""
        try:
            size = os.fstat(self._fd).st_size
            return mmap.mmap(self._fd, size, prot=mmap.PROT_READ) if size else None
        except (OSError, ValueError):
            return None

    def _write_records(self, fd: int, where: dict[str, tuple[int, int, int]]) -> None:
        """MAGIC, a table, then the records of `where` that still verify, framed again;
        written a piece at a time, so a large index is never held in memory whole."""
        mm = self._map() if self._fd >= 0 and where else None
        if mm is None:
            write_all(fd, MAGIC)
            return
        try:
            # what is kept is held in arrays and one list of names, and each record's
            # header made as it is written: a 100,000-record rewrite peaked ~20 MB
            # lower than with a tuple and a header per record held for the whole pass
            names: list[bytes] = []
            offs, lens, crcs = array.array("q"), array.array("I"), array.array("I")
            for k, (base, (off, n, crc)) in enumerate(where.items()):
                if k % RELEASE_EVERY == RELEASE_EVERY - 1:
                    _release(mm)
                b = base.encode("utf-8", "surrogateescape")
                payload = mm[off:off + n]
                if len(payload) == n and zlib.crc32(payload, zlib.crc32(b)) == crc \
                        and b"\n" not in b:
                    names.append(b)
                    offs.append(off)
                    lens.append(n)
                    crcs.append(crc)
            out = bytearray(MAGIC)
            if names:
                joined = b"\n".join(names)
                tlen = len(joined) + 16 * len(names)
                pos = len(MAGIC) + TABLE_HEAD + tlen
                at = array.array("q")            # where each payload will be
                for b, n in zip(names, lens, strict=True):
                    pos += 13 + len(str(n)) + len(b)     # "R <n> <crc8> <base>\n"
                    at.append(pos)
                    pos += n
                table = joined + at.tobytes() + lens.tobytes() + crcs.tobytes()
                del joined, at
                head = b"T %020d %020d %020d %020d" % (len(names), tlen - 16 * len(names),
                                                       pos, tlen)
                out += head + b" %08x\n" % zlib.crc32(table, zlib.crc32(head)) + table
                del table
            for b, off, n, crc in zip(names, offs, lens, crcs, strict=True):
                out += b"R %d %08x %s\n" % (n, crc, b)
                out += mm[off:off + n]
                if len(out) >= SCAN_CHUNK:
                    write_all(fd, out)
                    out.clear()
                    _release(mm)
            write_all(fd, out)
        finally:
            mm.close()

    def _replace(self, where: dict[str, tuple[int, int, int]]) -> None:
        """Write a new file holding the verified records of `where`; rename it in."""
        tmp = self.folder / "tmp" / f"{os.getpid()}.pyindex_{os.urandom(4).hex()}"
        if not tmp.parent.is_dir():
            tmp = self.folder / f".{INDEX_NAME}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._write_records(fd, where)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, self.path)
        except OSError:
            os.unlink(tmp)
            raise

    def _rebuild(self, where: dict[str, tuple[int, int, int]]) -> None:
        self._replace(dict(where))
        self.rebuilt += 1
        self.close()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._scanned = len(MAGIC)
        self._load_table()
        self._scan()

    def _add_table(self) -> None:
        """Rewrite the file with a table, if it can be: a folder whose tmp/ and
        directory this process cannot write keeps its index as it is."""
        try:
            self._replace(dict(self._where))
        except OSError:
            self._no_table = True            # not again in this process
            return
        self.tabled += 1
        self.close()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._scanned = len(MAGIC)
        self._load_table()
        self._scan()

    def _refresh(self) -> None:
        """Catch up with other processes: a replaced file is reopened, new records read.
        At most every REFRESH_EVERY seconds, so a cold FETCH 1:* (a miss per message)
        does not stat the file once per message."""
        now = time.monotonic()
        if self._fd < 0:
            if now - self._failed < RETRY_AFTER:
                return
            self._refreshed = now
            self._open()
            return
        if now - self._refreshed < REFRESH_EVERY:
            return
        self._refreshed = now
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            ino = -2
        if ino != self._ino:
            self._open()
        elif os.fstat(self._fd).st_size > self._scanned:
            self._scan()

    # -- the cache ----------------------------------------------------------------------

    def get(self, base: str, disk_size: int) -> Entry | None:
        """The entry for a message, or None (unknown, damaged, or made for other bytes)."""
        try:
            if self._fd < 0 or base not in self._where:
                self._refresh()
            loc = self._where.get(base)
            if loc is None:
                return None
            off, n, crc = loc
            payload = os.pread(self._fd, n, off)
            b = base.encode("utf-8", "surrogateescape")
            if len(payload) != n or zlib.crc32(payload, zlib.crc32(b)) != crc:
                self._forget(base)
                return None
            entry = decode(payload)
        except IndexError_:
            return None
        except OSError:
            self._failed = time.monotonic()
            return None
        return entry if entry.disk_size == disk_size else None

    def records(self, msgs: Sequence[tuple[str, int]]
                ) -> list[tuple[bytes, tuple[int, ...]] | None]:
        """For each (base, on-disk size): its record's payload and table (for view()),
        or None where get() would miss. For FETCH 1:*: the file is mapped once
        for all, so a warm folder costs no syscall and no decoding per message."""
        out: list[tuple[bytes, tuple[int, ...]] | None] = [None] * len(msgs)
        try:
            self._refresh()
        except OSError:
            self._failed = time.monotonic()
            return out
        mm = self._map() if self._fd >= 0 else None
        if mm is None:
            return out
        where, crc32, unpack, least = self._where, zlib.crc32, _TOC.unpack_from, _TOC.size
        ok = self._checked(len(mm))
        try:
            for k, (base, disk) in enumerate(msgs):
                if k % RELEASE_EVERY == RELEASE_EVERY - 1:
                    _release(mm)
                loc = where.get(base)
                if loc is None:
                    continue
                off, n, crc = loc
                payload = mm[off:off + n]
                if len(payload) != n or not ok[off >> 6] and \
                        crc32(payload, crc32(base.encode("utf-8", "surrogateescape"))) != crc:
                    self._forget(base)
                    continue
                if n < least:
                    continue
                ok[off >> 6] = 1
                t = unpack(payload)       # view() checks what it takes from it
                if t[0] == disk:
                    out[k] = (payload, t)
        finally:
            mm.close()
        return out

    def views(self, msgs: Sequence[tuple[str, int]], k: int) -> list[bytes | None]:
        """View k of _VIEWS (0 envelope, 1 body, 2 bodystructure) for each (base, on-disk
        size), None where the index does not have it: records() and view() in one
        loop with one unpack per message, for FETCH 1:* of one view."""
        out: list[bytes | None] = [None] * len(msgs)
        try:
            self._refresh()
        except OSError:
            self._failed = time.monotonic()
            return out
        mm = self._map() if self._fd >= 0 else None
        if mm is None:
            return out
        get, crc32, least, enc = self._where.get, zlib.crc32, _TOC.size, str.encode
        # the on-disk size, then the (start, length) pair of view k
        unpack = struct.Struct(f"<q{16 + 8 * k}xii").unpack_from
        app = out.append
        out.clear()
        bad: list[str] = []
        try:
            # The CRC is taken through a memoryview and the table read in place: no
            # copy of the whole record, only of the view served (a third of views()).
            with memoryview(mm) as mv:
                end = len(mm)
                ok = self._checked(end)
                for first in range(0, len(msgs), RELEASE_EVERY):
                    if first:
                        _release(mm)
                    for base, disk in msgs[first:first + RELEASE_EVERY]:
                        loc = get(base)
                        if loc is None:
                            app(None)
                            continue
                        off, n, crc = loc
                        if off + n > end:
                            bad.append(base)
                            app(None)
                            continue
                        if not ok[off >> 6]:
                            if crc32(mv[off:off + n],
                                     crc32(enc(base, "utf-8", "surrogateescape"))) != crc:
                                bad.append(base)
                                app(None)
                                continue
                            if n < least:
                                app(None)
                                continue
                            ok[off >> 6] = 1
                        elif n < least:
                            app(None)
                            continue
                        size, start, length = unpack(mm, off)
                        if size == disk and length >= 0 and start >= least and start + length <= n:
                            start += off
                            app(mm[start:start + length])
                        else:
                            app(None)
        finally:
            mm.close()
        for base in bad:
            self._forget(base)
        return out

    def put(self, base: str, entry: Entry) -> bool:
        """Append the record for a message; False when it was not stored."""
        return self.put_payloads([(base, encode(entry))]) == 1

    def put_payloads(self, recs: Sequence[tuple[str, bytes]], table: bool = True) -> int:
        """Append the records (base, encode()'s payload) with one write: a cold FETCH
        1:* stores a batch at a time (indexbuild.py). Returns how many were stored
        (a base that cannot be one, or a record over MAX_RECORD, is left out).
        table=False: no rewrite with a table now (the caller has more to append and
        calls settle() when done: one rewrite instead of one per doubling)."""
        frames: list[bytes] = []
        kept: list[tuple[str, bytes, int]] = []
        for base, payload in recs:
            if "\n" in base or not base or len(payload) > MAX_RECORD:
                continue
            b = base.encode("utf-8", "surrogateescape")
            crc = zlib.crc32(payload, zlib.crc32(b))        # (frame()'s, taken once)
            frames.append(b"R %d %08x %s\n" % (len(payload), crc, b) + payload)
            kept.append((base, payload, crc))
        if not kept:
            return 0
        data = b"".join(frames)
        try:
            if self._fd < 0:
                if time.monotonic() - self._failed < RETRY_AFTER:
                    return 0
                self._open()
            if self._scanned + len(data) > MAX_INDEX_BYTES:
                return 0
            written = os.write(self._fd, data)
            if written != len(data):
                return 0          # a short write leaves a torn record: the next scan rebuilds
            # after an O_APPEND write the offset is the end of our records (Linux)
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            pos = end - len(data)
            # what this process wrote through this fd needs no CRC check when read
            # back (records()/views()): marked verified, as a checked record is
            ok = self._checked(end)
            least = _TOC.size
            for (base, payload, crc), rec in zip(kept, frames, strict=True):
                pos += len(rec)
                off = pos - len(payload)
                self._note(base, (off, len(payload), crc))
                if len(payload) >= least:
                    ok[off >> 6] = 1
            if end - len(data) == self._scanned:
                self._scanned = end     # nobody appended in between: no need to read it back
            self._untabled += len(kept)
            if table:
                self._settle()
        except OSError:
            self._failed = time.monotonic()
            return 0
        return len(kept)

    def _settle(self) -> None:
        if self._untabled > max(TABLE_AFTER, self._in_table) and not self._no_table:
            # a process filling the index: rewritten at 2,000, 4,000, 8,000... records
            self._add_table()
        else:
            self._maybe_compact()

    def settle(self) -> None:
        """The rewrite (with a table, or compacted) that put_payloads(table=False) left."""
        try:
            if self._fd >= 0:
                self._settle()
        except OSError:
            self._failed = time.monotonic()

    def unknown(self, bases: Sequence[str]) -> list[int]:
        """Positions in `bases` of the messages the index has no record of, after
        catching up with other writers: what a FETCH of their views would parse. Empty
        when the index cannot be opened (nothing could be stored either)."""
        try:
            self._refresh()
        except OSError:
            self._failed = time.monotonic()
            return []
        if self._fd < 0:
            return []
        where = self._where
        return [k for k, b in enumerate(bases) if b not in where]

    def compact(self, live: set[str]) -> None:
        """Rewrite the file with the records of `live` bases only (after expunges)."""
        try:
            self._refresh()
            self._rebuild({b: v for b, v in self._where.items() if b in live})
        except OSError:
            pass

    def __len__(self) -> int:
        return len(self._where)


# -- the stamp of a directory (snapshot.py's validators) -------------------------------


@dataclass(frozen=True, slots=True)
class DirStamp:
    """What identifies one state of a directory's entries (or of a file replaced by
    rename: snapshot.py's validators)."""
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> DirStamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)

    @classmethod
    def at(cls, path: Path) -> DirStamp:
        """The stamp of a directory, or of a file replaced by rename; all zero when it
        does not exist (snapshot.ABSENT)."""
        try:
            return cls.of(os.stat(path))
        except FileNotFoundError:
            return cls(0, 0, 0)
