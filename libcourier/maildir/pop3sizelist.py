"""`courierpop3dsizelist`: Courier pop3d's per-Maildir UIDL and size cache (FORMATS.md §3.7).

Format (Courier imap/pop3dserver.C, LISTVERSION 3; version 2 lines lack ":<isutf8>"):

    /3 <nextuid> <uidvalidity>\\n
    <filename> <size> <uid>:<uidv>:<isutf8>\\n      one per message

Courier's pop3d keeps its own UID counter here, independent of IMAP's
courierimapuiddb (it never reads that file): a Maildir without this file gets
uidvalidity = the current time and nextuid = 1, and every message not in the
list gets ``nextuid++`` in the order of `sort_key` (`reconcile` below is its
`sortmsgs()`). The UIDL of a message is ``UID<uid>-<uidv>`` (``UID<uid>`` when
uidv is 0). `size` is what RETR sends before dot-stuffing, counted as Courier
does: every octet plus one per LF (a message without a final LF gets a CRLF on
the wire that the size does not count: Courier's fseek(-1, SEEK_SET) never
succeeds, checked against Debian's 5.0.13). A line is matched to a
message as Courier's cmpmsgs() matches: equal up to a ":" both names have,
so a flag change keeps the entry (a name without ":" matches only such a name).

The file is a cache: a missing or unreadable one is rebuilt, a malformed line
is skipped (as Courier does), and it is replaced atomically (tmp, fsync,
rename, fsync dir), never written in place, and only when Courier would
rewrite it (new, gone or version-2 entries; not for a flag change alone).
Recorded against Courier itself: tests/data/pop3-golden/courier-scratch.json.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import write_atomic

FILENAME = "courierpop3dsizelist"
LISTVERSION = 3
MAX_LINE = 2048            # Courier reads lines into a 2048-byte buffer
MAX_FILE = 64 * 1024 * 1024   # a cache this large is not ours; ignore it rather than eat memory
_ULONG = (1 << 64) - 1
_LONG_MAX = (1 << 63) - 1
_HEAD_FIELD = re.compile(rb"\s*(\d+)")
_ENTRY = re.compile(rb"\s*(\d+)\s*(\d+):(\d+)(?::([+-]?\d+))?")
_LEADING_NUMBER = re.compile(rb"\s*([+-]?)(\d+)")
# C's `char` is signed on x86: bytes 0x80-0xFF compare below every ASCII byte.
_SIGNED = bytes((b + 128) & 0xFF for b in range(256))


@dataclass(frozen=True, slots=True)
class SizeEntry:
    filename: str      # as stored: the file name in cur/ (Courier strips the "cur/")
    size: int          # octets as sent by POP3 (one more per LF), before dot-stuffing
    uid: int
    uidv: int
    utf8: bool = False  # 8-bit bytes in some MIME header (Courier's RFC2045_ERR8BITHEADER)

    @property
    def base(self) -> str:
        return self.filename.split(":", 1)[0]

    @property
    def uidl(self) -> str:
        return f"UID{self.uid}-{self.uidv}" if self.uidv else f"UID{self.uid}"


@dataclass(frozen=True, slots=True)
class SizeList:
    nextuid: int
    uidvalidity: int | None       # None: the head had none (Courier then uses the time)
    entries: tuple[SizeEntry, ...]
    version: int = LISTVERSION


def sort_key(name: str) -> tuple[int, bytes]:
    """Courier's cmpmsgs(): atol() of the name, then the bytes as signed char up to ":".

    Two names are equal when they agree up to a ":" both have at the same place
    (the same base). The key is the name up to and including its first ":",
    or the whole name and a NUL, mapped so that signed order is byte order.
    """
    raw = name.encode("utf-8", "surrogateescape")      # os.fsencode() on Linux
    m = _LEADING_NUMBER.match(raw)
    n = 0
    if m:
        n = int(m.group(2))
        if n > _LONG_MAX or m.group(1) == b"-":   # atol() saturates
            n = min(n, _LONG_MAX + 1)
            n = -n if m.group(1) == b"-" else n
            n = max(min(n, _LONG_MAX), -_LONG_MAX - 1)
    colon = raw.find(b":")
    tail = raw[:colon + 1] if colon >= 0 else raw + b"\0"
    return n, tail.translate(_SIGNED)


def parse(data: bytes) -> SizeList | None:
    """The list in `data`, or None when the head is not Courier's ("/<version> <nextuid>").

    As Courier's sscanf: a head whose version is not 2 or 3 still gives nextuid
    and uidvalidity, but its entries are not used.
    """
    nl = data.find(b"\n")
    head = data if nl < 0 else data[:nl]
    if not head.startswith(b"/") or len(head) > MAX_LINE:
        return None
    fields: list[int] = []
    pos = 1
    while len(fields) < 3:
        m = _HEAD_FIELD.match(head, pos)
        if not m:
            break
        fields.append(int(m.group(1)))
        pos = m.end()
    if len(fields) < 2:
        return None
    version, nextuid = fields[0], min(fields[1], _ULONG)
    uidv = min(fields[2], _ULONG) if len(fields) > 2 else None
    if version not in (LISTVERSION, LISTVERSION - 1) or nl < 0:
        return SizeList(nextuid, uidv, (), version)
    entries = []
    lines = data[nl + 1:].split(b"\n")
    # The last element is what follows the final "\n": an unterminated line is a torn write.
    for raw in lines[:-1]:
        e = _parse_entry(raw)
        if e is not None:
            entries.append(e)
    return SizeList(nextuid, uidv, tuple(entries), version)


def _parse_entry(raw: bytes) -> SizeEntry | None:
    raw = raw[:MAX_LINE - 20]       # Courier keeps the first 2028 bytes of a line
    # Courier splits at the last two spaces, so a file name may itself hold spaces.
    parts = raw.rsplit(b" ", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    m = _ENTRY.match(parts[1] + b" " + parts[2])
    if not m:
        return None
    name = os.fsdecode(parts[0])
    if "/" in name or "\x00" in name:
        return None
    return SizeEntry(name, min(int(m.group(1)), _ULONG), min(int(m.group(2)), _ULONG),
                     min(int(m.group(3)), _ULONG), bool(int(m.group(4) or b"0")))


def format_list(sl: SizeList, now: int = 0) -> bytes:
    out = [f"/{LISTVERSION} {sl.nextuid} {now if sl.uidvalidity is None else sl.uidvalidity}\n"
           .encode()]
    for e in sl.entries:
        if "\n" in e.filename or "/" in e.filename:
            continue      # cannot be written back as one line; the next scan recomputes it
        out.append(os.fsencode(e.filename) + f" {e.size} {e.uid}:{e.uidv}:{int(e.utf8)}\n"
                   .encode())
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Reconciled:
    entries: tuple[SizeEntry, ...]     # the messages of cur/ in Courier's order
    new: frozenset[str]                # file names that got a new UID in this pass
    save: SizeList | None              # what to write back, None when Courier would not


def reconcile(names: Iterable[str], cache: SizeList | None, now: int,
              measure: Callable[[str], tuple[int, bool] | None]) -> Reconciled:
    """Courier's sortmsgs(): order cur/, keep what the list knows, number the rest.

    `names` are the file names in cur/; `measure(name)` gives (size, utf8) of a
    message not in the list, or None when the file is gone (it is then left out).
    """
    ordered = sorted((sort_key(name), name) for name in names)
    nextuid = 1 if cache is None else cache.nextuid
    uidv = now if cache is None or cache.uidvalidity is None else cache.uidvalidity
    known = cache.entries if cache is not None and cache.version in (2, 3) else ()
    # Courier rewrites a version-2 list; no list and nothing in cur/ writes nothing.
    save = cache is not None and cache.version == LISTVERSION - 1
    prev_keyed = sorted(((sort_key(e.filename), i) for i, e in enumerate(known)))
    prev = [known[i] for _, i in prev_keyed]
    prev_keys = [k for k, _ in prev_keyed]
    out: list[SizeEntry] = []
    new: set[str] = set()
    n = 0
    for key, name in ordered:
        while n < len(prev) and prev_keys[n] < key:
            n += 1
            save = True            # a listed message is gone
        if n < len(prev) and prev_keys[n] == key:
            e = prev[n]
            out.append(SizeEntry(name, e.size, e.uid, e.uidv, e.utf8))
            n += 1
            continue
        got = measure(name)
        if got is None:
            continue               # removed since the directory was read
        out.append(SizeEntry(name, got[0], nextuid, uidv, got[1]))
        new.add(name)
        nextuid += 1
        save = True
    if n < len(prev):
        save = True
    return Reconciled(tuple(out), frozenset(new),
                      SizeList(nextuid, uidv, tuple(out)) if save else None)


def read(maildir: Path) -> SizeList | None:
    """The cache of this Maildir, or None when it is absent or unusable."""
    try:
        with open(Path(maildir) / FILENAME, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE:
        return None
    return parse(data)


def write(maildir: Path, sl: SizeList) -> None:
    """Replace the cache durably: tmp file, fsync, rename, fsync the directory."""
    maildir = Path(maildir)
    tag = f"{os.getpid()}.{os.urandom(4).hex()}"
    tmp = maildir / "tmp" / f"{FILENAME}.{tag}.tmp"
    if not tmp.parent.is_dir():
        tmp = maildir / f".{FILENAME}.{tag}.tmp"
    write_atomic(maildir / FILENAME, format_list(sl), mode=0o600, tmp=tmp)
