"""`courierpop3dsizelist`: Courier pop3d's per-Maildir UIDL and size cache (FORMATS.md §3.7).

Format (Courier imap/pop3dserver.C, LISTVERSION 3; version 2 lines lack ":<isutf8>"):

    /3 <nextuid> <uidvalidity>\\n
    <filename> <size> <uid>:<uidv>:<isutf8>\\n      one per message

`size` is the message's size as POP3 sends it (LF counted as CRLF, RFC 1939
§11 "exact size"); the UIDL of a message is ``UID<uid>-<uidv>`` (``UID<uid>``
when uidv is 0). Courier matches a line to a message by the file name up to
the ":" (the maildir base), so flag changes do not break the cache; so do we.

The file is a cache: a missing or unreadable one is rebuilt, a malformed line
is skipped (as Courier does), and it is replaced atomically (tmp, fsync,
rename, fsync dir), never written in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import write_atomic

FILENAME = "courierpop3dsizelist"
LISTVERSION = 3
MAX_LINE = 2048            # Courier reads lines into a 2048-byte buffer
MAX_FILE = 64 * 1024 * 1024   # a cache this large is not ours; ignore it rather than eat memory


@dataclass(frozen=True, slots=True)
class SizeEntry:
    filename: str      # as stored: the file name in cur/ (Courier strips the "cur/")
    size: int          # octets as sent by POP3, with CRLF line ends, before dot-stuffing
    uid: int
    uidv: int
    utf8: bool = False  # 8-bit header bytes (Courier's RFC2045_ERR8BITHEADER)

    @property
    def base(self) -> str:
        return self.filename.split(":", 1)[0]

    @property
    def uidl(self) -> str:
        return f"UID{self.uid}-{self.uidv}" if self.uidv else f"UID{self.uid}"


@dataclass(frozen=True, slots=True)
class SizeList:
    nextuid: int
    uidvalidity: int
    entries: tuple[SizeEntry, ...]

    def by_base(self) -> dict[str, SizeEntry]:
        return {e.base: e for e in self.entries}


def parse(data: bytes) -> SizeList | None:
    """The list in `data`, or None if the header is missing or of an unknown version."""
    lines = data.split(b"\n")
    head = lines[0]
    if not head.startswith(b"/") or len(head) > MAX_LINE:
        return None
    fields = head[1:].split()
    try:
        version = int(fields[0])
        nextuid = int(fields[1])
        uidv = int(fields[2]) if len(fields) > 2 else 0
    except (IndexError, ValueError):
        return None
    if version not in (LISTVERSION, LISTVERSION - 1) or nextuid < 0 or uidv < 0:
        return None
    entries = []
    # The last element is what follows the final "\n": an unterminated line is a torn write.
    for raw in lines[1:-1]:
        e = _parse_entry(raw)
        if e is not None:
            entries.append(e)
    return SizeList(nextuid, uidv, tuple(entries))


def _parse_entry(raw: bytes) -> SizeEntry | None:
    if len(raw) > MAX_LINE:
        return None
    # Courier splits at the last two spaces, so a file name may itself hold spaces.
    parts = raw.rsplit(b" ", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    name_b, size_b, uid_b = parts
    ids = uid_b.split(b":")
    if len(ids) == 2:
        ids.append(b"0")          # version 2: no UTF-8 flag
    if len(ids) != 3 or not all(x.isdigit() for x in (size_b, *ids)):
        return None
    try:
        name = name_b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "/" in name or "\x00" in name:
        return None
    return SizeEntry(name, int(size_b), int(ids[0]), int(ids[1]), ids[2] != b"0")


def format_list(sl: SizeList) -> bytes:
    out = [f"/{LISTVERSION} {sl.nextuid} {sl.uidvalidity}\n"]
    for e in sl.entries:
        if "\n" in e.filename or "/" in e.filename:
            continue      # cannot be written back as one line; the next scan recomputes it
        out.append(f"{e.filename} {e.size} {e.uid}:{e.uidv}:{int(e.utf8)}\n")
    return "".join(out).encode("utf-8")


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
