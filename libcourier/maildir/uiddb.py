"""`courierimapuiddb`: Courier's per-folder IMAP UID map (FORMATS.md §3.4).

Format (Courier imap/imapscanclient.C, IMAPDBVERSION 1)::

    1 <uidvalidity> <nextuid>\\n
    <uid> <base file name>\\n        one line per message, sorted by UID

The base name is the file name with the ``:2,...`` info removed. Courier's
reader skips lines it cannot parse and treats a missing, unreadable or
wrong-version header as "no database": the folder then gets a new
UIDVALIDITY, which makes every client resynchronise (FORMATS.md §5), so we
read exactly as leniently as Courier does and no more.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import write_atomic

IMAPDB = "courierimapuiddb"
# The last UIDVALIDITY handed out in this Maildir (our file; Courier ignores it).
UIDVALIDITY_MARK = "courierpyuidvalidity"
IMAPDBVERSION = 1
IMAP_EPOCH = 1_000_000_000   # UIDVALIDITY = time - IMAP_EPOCH (imapscanclient.C)
MAX_DB_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UidDb:
    uidvalidity: int
    nextuid: int
    entries: tuple[tuple[int, str], ...]   # (uid, base), sorted by uid


def parse(data: bytes) -> UidDb | None:
    """The database in ``data``, or None when Courier would not accept its header."""
    lines = data.split(b"\n")
    head = lines[0].split()
    if len(head) < 3:
        return None
    try:
        version, uidv, nextuid = int(head[0]), int(head[1]), int(head[2])
    except ValueError:
        return None
    if version != IMAPDBVERSION or uidv < 0 or nextuid < 1:
        return None
    entries: list[tuple[int, str]] = []
    for raw in lines[1:]:
        # Courier: "uid" then whitespace then the rest of the line is the name.
        parts = raw.split(None, 1)
        if len(parts) != 2:
            continue
        try:
            uid = int(parts[0])
        except ValueError:
            continue
        name = parts[1].rstrip(b"\r").decode("utf-8", "surrogateescape")
        if uid <= 0 or not name:
            continue
        entries.append((uid, name))
    entries.sort()
    return UidDb(uidv, nextuid, tuple(entries))


def format_db(db: UidDb) -> bytes:
    out = [f"{IMAPDBVERSION} {db.uidvalidity} {db.nextuid}\n"]
    out.extend(map("%d %s\n".__mod__, db.entries))
    return "".join(out).encode("utf-8", "surrogateescape")


def read(folder: Path) -> UidDb | None:
    try:
        with open(folder / IMAPDB, "rb") as fh:
            data = fh.read(MAX_DB_BYTES + 1)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None
    if len(data) > MAX_DB_BYTES:
        return None
    return parse(data)


def write(folder: Path, db: UidDb, hostname: str = "") -> None:
    """Replace the database atomically: write in tmp/, fsync, rename, fsync the folder."""
    host = hostname or os.uname().nodename
    tmpname = folder / "tmp" / f"{os.getpid()}.imapuid_{os.urandom(4).hex()}.{host}"
    write_atomic(folder / IMAPDB, format_db(db), mode=0o600, tmp=tmpname)


def new_uidvalidity(now: float, folder: Path | None = None) -> int:
    """A UIDVALIDITY for a folder whose database is new: Courier's clock value
    (time - IMAP_EPOCH), but above every value handed out before in the same
    Maildir. RFC 3501 2.3.1.1 wants the value of a re-created folder greater
    than the old one's; the clock alone repeats itself when a folder is deleted
    and created again within one second, or the clock steps back.

    `folder` is the folder's directory (the Maildir itself for INBOX); the mark
    lives at the Maildir's root, under a flock of that directory. When the root
    cannot be written (a read-only shared folder) the clock value is used.
    """
    clock = max(1, int(now) - IMAP_EPOCH)
    if folder is None:
        return clock
    root = folder.parent if folder.name.startswith(".") else folder
    try:
        dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return clock
    try:
        fcntl.flock(dirfd, fcntl.LOCK_EX)
        mark = root / UIDVALIDITY_MARK
        try:
            last = int(mark.read_bytes()[:32].strip() or b"0")
        except (OSError, ValueError):
            last = 0    # missing or damaged: the clock is all we know
        value = max(clock, last + 1)
        if value >= 2**32:          # a 32-bit field (RFC 3501 nz-number)
            value = clock
        try:
            # The tmp name in tmp/: a dot-named entry at the root would be a folder.
            tmp = root / "tmp" / f"{os.getpid()}.uidvalidity_{os.urandom(4).hex()}"
            write_atomic(mark, f"{value}\n", mode=0o600, tmp=tmp)
        except OSError:
            return clock
        return value
    finally:
        os.close(dirfd)
