"""Courier's filesystem-permission shared folders (maildir/README.sharedfolders.html,
maildirmake(1), courier-libs maildir/maildirshared.c and maildirshared2.c).

The files, as Courier names and writes them:

- A *sharable maildir* is an ordinary Maildir made by ``maildirmake -S`` (0755), whose
  folders made by ``maildirmake -s read|write[,group] -f Name`` carry group/world
  permissions (`make_permissions`).
- ``shared-maildirs`` in a user's Maildir, and ``maildirshared`` in the config
  directory for everyone (Courier's ``@sysconfdir@/maildirshared``, read first): one
  ``nick<whitespace>/path/to/sharable/maildir`` a line; ``#`` starts a comment
  (`parse_line`, Courier's maildir_shared_fparse).
- A folder ``.Name`` of the sharable maildir ``nick`` is the IMAP folder
  ``shared.nick.Name``. Opening (or subscribing to) it makes the user's private copy
  ``shared-folders/nick/Name/`` (tmp/ new/ cur/, 0700) with a symlink ``shared`` to
  ``/path/to/sharable/maildir/.Name``.
- The private copy holds one symlink per message of the sharable folder's cur/, named
  with the user's own flags; `sync` (Courier's maildir_shared_sync) removes links whose
  message is gone, re-points links whose message was renamed, and adds links for new
  messages to the private new/ as ``base:2,``. ``shared-timestamp`` in the private copy
  lets a sync be skipped while neither new/ nor cur/ of the sharable folder changed.
- Expunging a message removes the sharable folder's file (`unlink_message`); when the
  user may not (a read-only folder, or someone else's message under the sticky bit of
  a ``write`` folder), the message stays and only loses its \\Deleted flag, as Courier.

- APPEND/COPY into a shared folder write the message into the sharable folder (0644)
  and synchronise (`store`), as Courier's imapd does.

Where we differ from Courier, on purpose: a private copy is made only for a folder the
sharable maildir has (Courier makes one for any name, leaving an empty folder behind);
a synchronisation pass holds flock(LOCK_EX) on the private cur/ (Courier takes no lock).
Messages here never count toward the user's Maildir++ quota (Courier's documentation).
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import fsync_dir, write_all
from libcourier.maildir.folder import Maildir, MessageRef
from libcourier.maildir.names import unique_name
from libcourier.maildir.tmpcreate import write_tmp

SHARED_MAILDIRS = "shared-maildirs"    # the user's list, in the Maildir root
GLOBAL_FILE = "maildirshared"          # everyone's list, in the config directory
SHARED_FOLDERS = "shared-folders"      # private copies: shared-folders/<nick>/<Name>/
LINK = "shared"                        # private copy -> the sharable folder
TIMESTAMP = "shared-timestamp"
IMAP_PREFIX = "shared."                # IMAP names: shared.<nick>.<Name>
MAX_FILE = 256 * 1024                  # bytes of a shared-maildirs file read
MAX_LINE = 8192                        # Courier reads lines with fgets(BUFSIZ)
MAX_ENTRIES = 1000                     # sharable maildirs listed from one file
MAX_FOLDERS = 10_000                   # folders listed from one sharable maildir
MAX_MESSAGES = 1_000_000               # messages of one sharable folder synchronised
DIR_MODE = 0o700


class SharedError(Exception):
    """A shared-folder request that cannot be done; `text` says why."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Sharable:
    """One line of shared-maildirs / maildirshared."""
    nick: str
    path: str


# -- the lists of sharable maildirs -----------------------------------------------------

def parse_line(line: str) -> Sharable | None:
    """Courier's maildir_shared_fparse: the text before "#"; the name up to the first
    white space, the path is the rest after the white space (kept as written)."""
    line = line.split("\n", 1)[0].split("#", 1)[0]
    for i, c in enumerate(line):
        if c.isspace():
            rest = line[i:].lstrip()
            # An empty name (the line starts with white space) names nothing usable.
            return Sharable(line[:i], rest) if rest and i else None
    return None


def read_list(path: Path | None) -> list[Sharable]:
    """The entries of one list file; a missing or unreadable file is an empty list."""
    if path is None:
        return []
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE)
    except OSError:
        return []
    out: list[Sharable] = []
    for raw in data.decode("utf-8", "replace").split("\n"):
        entry = parse_line(raw[:MAX_LINE])
        if entry is not None and entry.nick:
            out.append(entry)
            if len(out) >= MAX_ENTRIES:
                break
    return out


def sharables(root: Path, global_file: Path | None) -> list[Sharable]:
    """The global list first, then the user's: Courier reads them in that order and the
    first entry with a nick wins."""
    return read_list(global_file) + read_list(Path(root) / SHARED_MAILDIRS)


def find(root: Path, global_file: Path | None, nick: str) -> Sharable | None:
    for s in sharables(root, global_file):
        if s.nick == nick:
            return s
    return None


# -- names -------------------------------------------------------------------------------

def private_dir(root: Path, sharedname: str) -> Path | None:
    """Courier's maildir_shareddir: "nick.Name" -> ROOT/shared-folders/nick/Name; None
    for a name without a nick and a folder, with "/", or an empty component."""
    if "." not in sharedname or sharedname.startswith(".") or "/" in sharedname \
            or ".." in sharedname or sharedname.endswith(".") or "\0" in sharedname:
        return None
    nick, name = sharedname.split(".", 1)
    return Path(root) / SHARED_FOLDERS / nick / name


def sharedname_of(imap_name: str) -> str | None:
    """"shared.nick.Name" -> "nick.Name"; None for other names ("shared" is lower case,
    any case accepted on input as Courier's match_mailbox_prep does)."""
    if imap_name[:len(IMAP_PREFIX)].lower() != IMAP_PREFIX:
        return None
    return imap_name[len(IMAP_PREFIX):]


def is_private_copy(root: Path, path: Path) -> bool:
    """Whether `path` is a private copy under ROOT/shared-folders/<nick>/<Name>.
    (Compared as the paths' strings: every SELECT asks, and pathlib's relative_to
    cost more than the rest of the question.)"""
    base = os.path.join(os.fspath(root), SHARED_FOLDERS, "")
    p = os.fspath(path)
    if not p.startswith(base):
        return False
    parts = [x for x in p[len(base):].split("/") if x and x != "."]
    return len(parts) == 2


# -- listing -----------------------------------------------------------------------------

def list_sharable(root: Path, global_file: Path | None) -> list[str]:
    """Every folder the user may see: "nick.Name" for each ``.Name`` of each sharable
    maildir whose cur/ can be stat'ed (Courier's maildir_list_sharable; LIST)."""
    out: list[str] = []
    seen: set[str] = set()
    for s in sharables(root, global_file):
        if s.nick in seen:
            continue        # Courier lists a nick twice; only the first can be opened
        seen.add(s.nick)
        try:
            with os.scandir(s.path) as it:
                n = 0
                for ent in it:
                    if not ent.name.startswith(".") or ent.name in (".", ".."):
                        continue
                    n += 1
                    if n > MAX_FOLDERS:
                        break
                    try:
                        os.stat(os.path.join(ent.path, "cur"))
                    except OSError:
                        continue
                    out.append(s.nick + ent.name)
        except OSError:
            continue
    return sorted(out)


def list_subscribed(root: Path) -> list[str]:
    """"nick.Name" for each private copy (Courier's maildir_list_shared; LSUB)."""
    out: list[str] = []
    base = Path(root) / SHARED_FOLDERS
    try:
        nicks = [e for e in os.scandir(base) if not e.name.startswith(".")]
    except OSError:
        return out
    for nick in nicks[:MAX_ENTRIES]:
        try:
            with os.scandir(nick.path) as it:
                out.extend(nick.name + "." + e.name for e in it if not e.name.startswith("."))
        except OSError:
            continue
    return sorted(out)[:MAX_ENTRIES * 10]


# -- subscribing -------------------------------------------------------------------------

def subscribe(root: Path, global_file: Path | None, sharedname: str) -> Path:
    """Make the private copy of "nick.Name" (Courier's maildir_shared_subscribe): its
    directories, 0700, then the ``shared`` link. Courier makes the copy for any name
    whose nick is listed; we also require the sharable folder's cur/ to exist, so
    opening a name that is not there leaves nothing behind."""
    path = private_dir(root, sharedname)
    if path is None:
        raise SharedError("Invalid shared folder name")
    nick, name = sharedname.split(".", 1)
    entry = find(root, global_file, nick)
    if entry is None:
        raise SharedError("No such sharable maildir")
    target = entry.path + "/." + name
    if not os.path.isdir(target + "/cur"):
        raise SharedError("No such shared folder")
    for d in (path.parent.parent, path.parent):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        raise SharedError("Already subscribed") from None
    try:
        for sub in ("tmp", "cur", "new"):
            os.mkdir(path / sub, DIR_MODE)
        os.symlink(target, path / LINK)
    except OSError:
        _remove_tree(path)
        raise
    fsync_dir(path.parent)
    return path


def unsubscribe(root: Path, sharedname: str) -> None:
    """Remove the private copy (Courier's maildir_shared_unsubscribe), then its nick's
    directory if that is now empty."""
    path = private_dir(root, sharedname)
    if path is None or not path.is_dir():
        raise SharedError("Mailbox is not subscribed")
    _remove_tree(path)
    try:
        os.rmdir(path.parent)
    except OSError:
        pass


def _remove_tree(path: Path) -> None:
    """Remove a private copy: its files and links (never what a link points to)."""
    for top, dirs, files in os.walk(path, topdown=False):
        for f in files:
            try:
                os.unlink(os.path.join(top, f))
            except FileNotFoundError:
                pass
        for d in dirs:
            p = os.path.join(top, d)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(path)


def open_private(root: Path, global_file: Path | None, sharedname: str) -> Path | None:
    """The private copy of "nick.Name", made when missing (Courier's
    decode_valid_mailbox subscribes on first use), synchronised; None if there is no
    such shared folder."""
    path = private_dir(root, sharedname)
    if path is None:
        return None
    if not (path / "cur").is_dir():
        try:
            subscribe(root, global_file, sharedname)
        except (SharedError, OSError):
            return None
    sync(path)
    return path


# -- synchronising -----------------------------------------------------------------------

def link_target(private: Path) -> str | None:
    try:
        return os.readlink(Path(private) / LINK)
    except OSError:
        return None


def _base(name: str) -> str:
    # Courier strips from the last ":" (strrchr(MDIRSEP[0])).
    i = name.rfind(":")
    return name if i < 0 else name[:i]


def _move_new(shared: str) -> None:
    """The first to open the folder moves the sharable folder's new/ to cur/ (errors,
    such as no permission in a read-only folder, are ignored as Courier does)."""
    try:
        names = os.listdir(shared + "/new")
    except OSError:
        return
    for n in names[:MAX_MESSAGES]:
        if n.startswith("."):
            continue
        try:
            os.rename(f"{shared}/new/{n}", f"{shared}/cur/{_base(n)}:2,")
        except OSError:
            pass


def _unchanged_since_last(private: Path, shared: str) -> bool:
    """Courier's shortcut: both new/ and cur/ of the sharable folder last changed in
    an earlier second than the previous sync."""
    try:
        ts = int(os.stat(private / TIMESTAMP).st_mtime)
        return int(os.stat(shared + "/new").st_mtime) < ts and \
            int(os.stat(shared + "/cur").st_mtime) < ts
    except OSError:
        return False


def _touch(path: Path) -> None:
    # Courier writes one byte at offset 0 each time: the file's mtime is the sync time.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)


def _relink(private: Path, link_path: str, value: str) -> None:
    """Replace (or make) a symlink atomically: a new link in tmp/, renamed into place."""
    tmp = str(private / "tmp" / unique_name(hostname="shared"))
    os.symlink(value, tmp)
    try:
        os.rename(tmp, link_path)
    except OSError:
        os.unlink(tmp)
        raise


def sync(private: Path) -> bool:
    """Bring the private copy in line with the sharable folder (module docstring);
    False when there was nothing to do or it is not a private copy."""
    private = Path(private)
    shared = link_target(private)
    if shared is None:
        return False
    _move_new(shared)
    if _unchanged_since_last(private, shared):
        return False
    # Two sessions of the user synchronising at once would each link a new message
    # (two names for one base in cur/ after the scans) or drop the other's flag
    # rename: the whole pass holds flock(LOCK_EX) on the private cur/, the lock
    # Maildir's scan and flag renames take (libcourier.maildir.folder).
    try:
        lockfd = os.open(private / "cur", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX)
        return _sync_locked(private, shared)
    finally:
        os.close(lockfd)


def _sync_locked(private: Path, shared: str) -> bool:
    if _unchanged_since_last(private, shared):
        return False            # another session synchronised while we waited
    try:
        _touch(private / TIMESTAMP)
    except OSError:
        pass
    wanted: dict[str, str] = {}            # base -> file name in the sharable cur/
    try:
        with os.scandir(shared + "/cur") as it:
            for ent in it:
                if not ent.name.startswith("."):
                    wanted[_base(ent.name)] = ent.name
                    if len(wanted) >= MAX_MESSAGES:
                        break
    except OSError:
        pass        # the sharable folder is gone or unreadable: every link goes
    for sub in ("cur", "new"):
        d = private / sub
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if n.startswith("."):
                continue
            p = str(d / n)
            fn = wanted.pop(_base(n), None)
            if fn is None:
                try:
                    os.unlink(p)            # removed from the sharable folder
                except FileNotFoundError:
                    pass
                continue
            value = f"{shared}/cur/{fn}"
            try:
                current = os.readlink(p)
            except OSError:
                current = None
            if current != value:
                try:
                    _relink(private, p, value)
                except OSError:
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
    for base, fn in wanted.items():
        try:
            _relink(private, str(private / "new" / (base + ":2,")), f"{shared}/cur/{fn}")
        except OSError:
            break               # our own copy cannot be written: try again next time
    return True


def unlink_message(path: Path) -> bool:
    """Expunge one message of a private copy (Courier's maildir_unlinksharedmsg): the
    sharable folder's file is removed, then our link. When the file cannot be removed
    but is still there, the link stays and loses its T (\\Deleted) flag. True when the
    message is gone from the private copy."""
    p = str(path)
    try:
        target = os.readlink(p)
    except OSError:
        target = None
    if target is not None:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError:
            if os.path.exists(target):
                d, name = os.path.split(p)
                i = name.rfind(":")
                if i >= 0 and name[i:].startswith(":2,") and "T" in name[i:]:
                    kept = name[:i] + name[i:].replace("T", "", 1)
                    try:
                        os.rename(p, os.path.join(d, kept))
                    except OSError:
                        pass
                return False
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    return True


def store(private: Path, messages: list[tuple[bytes | Path, int, str, float | None, frozenset[str]]]
          ) -> tuple[int, tuple[int, ...]]:
    """APPEND / COPY into a shared folder: each message (bytes, or a path to copy from;
    its size; flag letters; INTERNALDATE or None; keywords) goes into the sharable
    folder, as Courier's imapd stores it there; then the private copy is synchronised
    and the flags and keywords are set on the user's own links. Returns the private
    copy's UIDVALIDITY and the UIDs, so APPENDUID/COPYUID name what the client will
    see (Courier's name the sharable folder's own UIDs)."""
    private = Path(private)
    target = link_target(private)
    if target is None:
        raise FileNotFoundError(f"{private}: not a shared folder")
    sharable = Path(target)
    bases: list[str] = []
    for source, size, _letters, mtime, _kw in messages:
        base = unique_name(size)
        if mtime is None and not isinstance(source, bytes | bytearray):
            mtime = os.stat(source).st_mtime      # COPY keeps the INTERNALDATE
        # 0644 so the folder's other readers can read it (Courier's imapd creates
        # it 0666 less the umask); a path is read through a private copy's symlink.
        with write_tmp(sharable, base, source, mode=0o644) as msg:
            msg.rename(sharable / "cur" / (base + ":2,"), mtime=mtime)
        bases.append(base)
    fsync_dir(sharable / "cur")
    box = Maildir(private)
    sync(private)
    state = box.scan()
    by_base = {m.base: m for m in state.messages}
    uids = []
    for base, (_src, _size, letters, _mtime, kw) in zip(bases, messages, strict=True):
        m = by_base.get(base)
        if m is None:
            raise FileNotFoundError(f"{base}: gone from the shared folder at once")
        if letters:
            m = box.change_flags(m, add=letters)
        if kw:
            box.change_keywords([m], "+", kw)
        uids.append(m.uid)
    return state.uidvalidity, tuple(uids)


class PrivateCopy(Maildir):
    """A private copy of a shared folder: every scan synchronises it first, and removing
    a message removes it from the sharable folder (Courier's imapscan and expunge)."""

    STAT_ALL = True     # a link whose message has gone is left out (folder.Maildir)

    def scan(self, *args, **kwargs):  # type: ignore[override]
        # Whatever arguments Maildir.scan takes: only the synchronisation is added.
        sync(self.path)
        return super().scan(*args, **kwargs)

    def remove(self, msg: MessageRef) -> None:
        path = self.path_of(msg)
        if not os.path.lexists(path):
            current = self._find(msg.base)
            if current is None:
                return
            path = self.path / "cur" / current
        unlink_message(path)


# -- maildirmake -S / -s / --add / --del ------------------------------------------------

def make_permissions(spec: Iterable[str] | str) -> int:
    """The folder mode of ``maildirmake -s spec`` (Courier's maildirmake.c): "read"
    0755, "write" 01777 (sticky, like /tmp: only a message's owner removes it), and
    "group" takes the world bits off; words are separated by commas or spaces."""
    words = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    perm = 0o755
    for w in words:
        if w.startswith("r"):
            perm = 0o755
        elif w.startswith("w"):
            perm = 0o777 | stat.S_ISVTX
        elif w.startswith("g"):
            perm &= ~0o007
    return perm


def add_entry(root: Path, global_file: Path | None, nick: str, path: str) -> None:
    """``maildirmake --add nick=/path maildir`` (Courier's add()): refused with
    SharedError for a bad nick, a path that is not absolute or not readable, and a nick
    already in the global list or the user's; else appended to shared-maildirs."""
    if not path.startswith("/"):
        raise SharedError("the path of a sharable maildir must be absolute")
    if not os.access(path, os.R_OK):
        raise SharedError(f"{path}: cannot be read")
    if not nick or "." in nick or "/" in nick or any(c.isspace() or c == "#" for c in nick) \
            or "\n" in path:
        raise SharedError(f"{nick}: invalid name")
    if any(s.nick == nick for s in read_list(global_file)):
        raise SharedError(f"{nick}: already defined as a sharable maildir in {global_file}.")
    listfile = Path(root) / SHARED_MAILDIRS
    if any(s.nick == nick for s in read_list(listfile)):
        raise SharedError(f"{nick}: already defined as a sharable maildir.")
    fd = os.open(listfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, f"{nick}\t{path}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def del_entry(root: Path, nick: str) -> None:
    """``maildirmake --del nick maildir`` (Courier's del()): shared-maildirs rewritten
    without the nick's lines (other lines, comments included, kept as they were);
    SharedError when it was not there."""
    listfile = Path(root) / SHARED_MAILDIRS
    try:
        with open(listfile, "rb") as fh:
            data = fh.read(MAX_FILE)
    except FileNotFoundError:
        data = b""
    kept: list[bytes] = []
    found = False
    for line in data.splitlines(keepends=True):
        entry = parse_line(line.decode("utf-8", "replace"))
        if entry is not None and entry.nick == nick:
            found = True
            continue
        kept.append(line)
    if not found:
        raise SharedError(f"{nick}: not found.")
    tmp = Path(root) / "tmp" / unique_name(hostname="shared")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, b"".join(kept))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, listfile)
    fsync_dir(root)
