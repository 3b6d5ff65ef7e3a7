"""Maildir++ folder management as Courier does it (FORMATS.md §3.3).

A folder `INBOX.Sent.2024` is the directory `.Sent.2024` directly under the
Maildir root, with tmp/ new/ cur/ and an empty `maildirfolder` file (what
`maildirmake -f Sent.2024 ./Maildir` makes). Names are UTF-8 on disk; IMAP
clients send and see them in modified UTF-7 (RFC 3501 §5.1.3), converted by
libcourier.maildir.mutf7. Subscriptions live in `courierimapsubscribed`,
one IMAP folder name a line (e.g. `INBOX.Sent`).

Messages put into a folder by APPEND / COPY / MOVE get their UIDs here under
the same `flock` on the folder's cur/ that `Maildir.scan()` takes, so the UID
we report in APPENDUID / COPYUID (RFC 4315) is the one every later scan sees.

Every change is all-or-nothing on disk: a new folder is built in tmp/ and
renamed into place, a deleted one is renamed away before it is removed, a
message is written in tmp/, fsynced, and renamed (or hard-linked) into cur/.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import fsync_dir, write_atomic
from libcourier.maildir import keywords as kwmod
from libcourier.maildir import snapshot, uiddb
from libcourier.maildir.flags import join_name
from libcourier.maildir.folder import Maildir, folder_path, list_folders
from libcourier.maildir.names import unique_name
from libcourier.maildir.tmpcreate import write_tmp

SUBSCRIBED = "courierimapsubscribed"
MAILDIRFOLDER = "maildirfolder"
SEP = "."
MAX_NAME = 1024          # bytes of one folder name on disk (a path component is 255 at most)
MAX_SUBSCRIPTIONS_BYTES = 1024 * 1024
DIR_MODE = 0o700


class FolderError(Exception):
    """A folder operation that cannot be done; `text` is for the client, and
    `trycreate` says the target is missing (RFC 3501 §6.3.11 / §6.4.7 [TRYCREATE])."""

    def __init__(self, text: str, trycreate: bool = False):
        super().__init__(text)
        self.text = text
        self.trycreate = trycreate


# -- names -------------------------------------------------------------------------

def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def _subname(name: str) -> str:
    """"INBOX.a.b" -> "a.b" (the directory is ".a.b"); FolderError for a name outside
    INBOX or one that cannot be a directory name."""
    path = folder_path(Path("/"), name)
    if path is None or is_inbox(name):
        raise FolderError("Invalid mailbox name")
    sub = name[6:]
    if SEP * 2 in sub or len(sub.encode("utf-8")) > MAX_NAME \
            or any(ord(c) < 0x20 or c == "\x7f" for c in sub):
        raise FolderError("Invalid mailbox name")
    return sub


def all_folders(root: Path) -> list[str]:
    """Every mailbox that exists: INBOX and INBOX.<folder> (UTF-8 names)."""
    return ["INBOX"] + ["INBOX." + f for f in list_folders(root)]


def exists(root: Path, name: str) -> bool:
    p = folder_path(root, name)
    return p is not None and (p / "cur").is_dir()


# -- CREATE / DELETE / RENAME (RFC 3501 §6.3.3-§6.3.5) ------------------------------

def _make_maildir(d: Path, folder: bool) -> None:
    os.mkdir(d, DIR_MODE)
    for sub in ("tmp", "new", "cur"):
        os.mkdir(d / sub, DIR_MODE)
    if folder:
        fd = os.open(d / MAILDIRFOLDER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.fsync(fd)
        os.close(fd)
    for sub in ("tmp", "new", "cur"):
        fsync_dir(d / sub)
    fsync_dir(d)


def create_folder(root: Path, name: str) -> Path:
    """Make INBOX.<name> as `maildirmake -f` does; a trailing "." is the client saying it
    wants to make sub-folders later (§6.3.3), which Maildir++ needs nothing for."""
    if name.endswith(SEP) and len(name) > 6:
        name = name.rstrip(SEP)
    if is_inbox(name):
        raise FolderError("INBOX already exists")
    sub = _subname(name)
    target = Path(root) / ("." + sub)
    if target.exists():
        raise FolderError("Mailbox already exists")
    # Built under tmp/ and renamed in, so no scan ever sees half a folder.
    work = Path(root) / "tmp" / f".mkdir.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        _make_maildir(work, folder=True)
        os.rename(work, target)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        if target.exists():
            raise FolderError("Mailbox already exists") from None
        raise FolderError(f"Cannot create mailbox: {e.strerror}") from None
    fsync_dir(root)
    return target


def _remove_dir(root: Path, d: Path) -> None:
    # Renamed out of sight first: a concurrent LIST or delivery sees it whole or not at all.
    grave = Path(root) / "tmp" / f".rmdir.{os.getpid()}.{os.urandom(4).hex()}"
    os.rename(d, grave)
    fsync_dir(root)
    shutil.rmtree(grave, ignore_errors=True)


def delete_folder(root: Path, name: str) -> None:
    """RFC 3501 §6.3.4. INBOX cannot go. A folder with sub-folders may be deleted in
    Maildir++: its name stays as a \\Noselect parent of the children, as the RFC allows."""
    if is_inbox(name):
        raise FolderError("INBOX cannot be deleted")
    sub = _subname(name)
    target = Path(root) / ("." + sub)
    if not (target / "cur").is_dir():
        raise FolderError("Mailbox does not exist")
    try:
        _remove_dir(root, target)
    except OSError as e:
        raise FolderError(f"Cannot delete mailbox: {e.strerror}") from None


def rename_folder(root: Path, old: str, new: str) -> None:
    """RFC 3501 §6.3.5: renames the folder and every folder below it. RENAME INBOX
    moves INBOX's messages into the new folder and leaves INBOX empty."""
    if is_inbox(new):
        raise FolderError("Cannot rename to INBOX")
    new_sub = _subname(new.rstrip(SEP) if len(new) > 6 else new)
    root = Path(root)
    if (root / ("." + new_sub)).exists():
        raise FolderError("Mailbox already exists")
    if is_inbox(old):
        dst = create_folder(root, "INBOX." + new_sub)
        src = Maildir(root)
        st = src.scan()
        for m in st.messages:
            try:
                os.rename(src.path_of(m), dst / "cur" / m.filename)
            except FileNotFoundError:
                continue   # expunged meanwhile
        fsync_dir(dst / "cur")
        fsync_dir(root / "cur")
        return
    old_sub = _subname(old)
    if not (root / ("." + old_sub) / "cur").is_dir():
        raise FolderError("Mailbox does not exist", trycreate=False)
    if (new_sub + SEP).startswith(old_sub + SEP):
        raise FolderError("Cannot rename a mailbox into itself")
    moves = [(old_sub, new_sub)]
    for f in list_folders(root):
        if f.startswith(old_sub + SEP):
            moves.append((f, new_sub + f[len(old_sub):]))
    for _a, b in moves:
        if (root / ("." + b)).exists():
            raise FolderError("Mailbox already exists")
    try:
        for a, b in moves:
            os.rename(root / ("." + a), root / ("." + b))
    except OSError as e:
        raise FolderError(f"Cannot rename mailbox: {e.strerror}") from None
    finally:
        fsync_dir(root)
    subs = read_subscriptions(root)
    old_full, new_full = "INBOX." + old_sub, "INBOX." + new_sub
    renamed = [new_full + s[len(old_full):] if s == old_full or s.startswith(old_full + SEP)
               else s for s in subs]
    if renamed != subs:
        _write_subscriptions(root, renamed)


# -- subscriptions (courierimapsubscribed) -------------------------------------------

def read_subscriptions(root: Path) -> list[str]:
    """One subscribed folder name a line (Courier imap/imapd.C)."""
    try:
        with open(Path(root) / SUBSCRIBED, "rb") as fh:
            data = fh.read(MAX_SUBSCRIPTIONS_BYTES)
    except OSError:
        return []
    out: list[str] = []
    for ln in data.decode("utf-8", "replace").splitlines():
        ln = ln.strip()
        if ln and ln not in out:
            out.append(ln)
    return out


def _write_subscriptions(root: Path, names: list[str]) -> None:
    data = "".join(n + "\n" for n in names).encode("utf-8")
    if len(data) > MAX_SUBSCRIPTIONS_BYTES:
        raise FolderError("Too many subscriptions")
    write_atomic(Path(root) / SUBSCRIBED, data, mode=0o600,
                 tmp=Path(root) / "tmp" / f".subscribed.{os.getpid()}.{os.urandom(4).hex()}")


def subscribe(root: Path, name: str) -> None:
    """RFC 3501 §6.3.6; INBOX is spelled INBOX. A folder that does not exist is refused,
    as Courier does (the RFC allows either)."""
    if not exists(root, name):
        raise FolderError("Mailbox does not exist")
    subs = read_subscriptions(root)
    if name not in subs:
        _write_subscriptions(root, subs + [name])


def unsubscribe(root: Path, name: str) -> None:
    """RFC 3501 §6.3.7: unsubscribing works whether or not the folder still exists."""
    subs = read_subscriptions(root)
    if name not in subs:
        raise FolderError("Mailbox is not subscribed")
    _write_subscriptions(root, [s for s in subs if s != name])


# -- APPEND / COPY (RFC 3501 §6.3.11, §6.4.7; RFC 4315) -----------------------------

@dataclass(frozen=True, slots=True)
class Added:
    uidvalidity: int
    uids: tuple[int, ...]      # in the order the messages were given


def _place(folder: Path, placers: Iterable[tuple[str, object]]) -> Added:
    """Under the folder's flock: put each message into cur/ (each placer is (base,
    callable(target path))) and record its UID in courierimapuiddb."""
    cur = folder / "cur"
    if uiddb.read(folder) is None:
        Maildir(folder).scan()   # creates the database (takes the lock itself)
    lockfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    placed: list[str] = []
    try:
        snapshot.release(os.path.join(folder, "cur"))   # this process's own hold (folder.py)
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        db = uiddb.read(folder)
        for base, put in placers:
            put()  # type: ignore[operator]
            placed.append(base)
        fsync_dir(cur)
        if db is None:
            db = uiddb.UidDb(uiddb.new_uidvalidity(time.time(), folder), 1, ())
        nextuid = db.nextuid
        entries = list(db.entries)
        uids = []
        for base in placed:
            entries.append((nextuid, base))
            uids.append(nextuid)
            nextuid += 1
        uiddb.write(folder, uiddb.UidDb(db.uidvalidity, nextuid, tuple(entries)))
    finally:
        os.close(lockfd)
    return Added(db.uidvalidity, tuple(uids))


def append_message(folder: Path, data: bytes, flags: str = "",
                   internaldate: float | None = None,
                   keywords: Iterable[str] = ()) -> Added:
    """Write one message into the folder's cur/ with its flag letters and IMAP keywords;
    the file's mtime is the INTERNALDATE (as Courier's imapd sets it)."""
    folder = Path(folder)
    keywords = frozenset(kwmod.check_name(k) for k in keywords)
    with write_tmp(folder, unique_name(len(data)), data) as msg:
        base = unique_name(len(data), dev=msg.stat.st_dev, ino=msg.stat.st_ino)
        target = folder / "cur" / join_name(base, flags)
        added = _place(folder, [(base, lambda: msg.rename(target, mtime=internaldate))])
    # After the message has its UID, as Courier's imapd renames its keyword file in
    # after the message: a scan in between sees the message without keywords, never
    # keywords without a message (which would be dropped as an orphan).
    kwmod.write(folder, {base: keywords})
    return added


def _copy_one(src: Path, folder: Path, target: Path) -> None:
    """Hard link (same file system: instant, shares the bytes, keeps mtime), else a copy
    written in tmp/, fsynced and renamed."""
    try:
        os.link(src, target)
        return
    except OSError as e:
        if e.errno not in (18, 1, 31, 38, 95):   # EXDEV EPERM EMLINK ENOSYS EOPNOTSUPP
            raise
    with write_tmp(folder, target.name.split(":")[0] + ".copy", src) as msg:
        msg.rename(target, stat_from=src)


def copy_messages(sources: list[tuple[Path, str, int]], folder: Path,
                  keywords: list[frozenset[str]] | None = None) -> Added:
    """Copy message files into folder's cur/: each source is (path, flag letters, size),
    `keywords` (if given) the IMAP keywords of each, in the same order.
    FileNotFoundError when a source vanished (nothing is copied then, RFC 3501 §6.4.7:
    COPY is all or nothing)."""
    folder = Path(folder)
    placers = []
    bases: list[str] = []
    made: list[Path] = []
    for path, flags, size in sources:
        base = unique_name(size)
        target = folder / "cur" / join_name(base, flags)

        def put(path: Path = path, target: Path = target) -> None:
            _copy_one(path, folder, target)
            made.append(target)
        placers.append((base, put))
        bases.append(base)
    try:
        added = _place(folder, placers)
    except BaseException:
        for t in made:
            try:
                os.unlink(t)
            except OSError:
                pass
        raise
    if keywords:
        kwmod.write(folder, dict(zip(bases, keywords, strict=True)))
    return added
