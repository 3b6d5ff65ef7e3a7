"""Modified-UTF-7 folder names to UTF-8: `maildirmake --checkutf8 / --convutf8`.

Courier-IMAP before 5 kept folder directories in IMAP's modified UTF-7
(`.Caf&AOk-`); Courier 5 (and we) keep them in UTF-8 (`.Café`). Courier's
maildirmake.c convertutf8() moves a Maildir over; this module does the same:

- every entry of the Maildir root whose name starts with "." and that has a
  cur/ directory (Courier's maildir_list) is a folder `INBOX.<name>`; each part
  between dots is decoded from modified UTF-7 (Courier's
  imap_foldername_to_filename(0, ...)); a folder whose name changes is renamed;
- `courierimapsubscribed` gets every line converted the same way (this
  includes `shared.<nick>.<Folder>` lines), keeping its mode and, as root, its
  owner;
- nothing else: `shared-maildirs`, `shared-folders/`, `courierimaphieracl/`
  are left as they are, as Courier leaves them; files inside a folder
  (uiddb, keywords, ACL, our caches) move with its directory.

Where we differ from Courier, on purpose (it could lose or misplace a folder):

- decoding is strict (RFC 3501 §5.1.3): Courier turns `x&AC8-y` into `x/y` and
  `x&AC4-y` into `x.y` (a path and a hierarchy change) and `x&A-` into `x`; we
  refuse such names as not valid modified UTF-7, like other malformed ones;
- a part that is not ASCII, is valid UTF-8 and holds no "&" is already UTF-8
  and is kept (Courier decodes its bytes as if they were UTF-7 and makes
  garbage), so a Maildir our imapd has added UTF-8 folders to, or one whose
  conversion was interrupted, can be converted (again);
- every target is checked before anything is renamed: an existing target (a
  name clash) is an error and nothing changes (Courier renames what it can,
  prints `FATAL ERROR RENAMING ...: Directory not empty` for the rest and still
  rewrites the subscriptions); a rename that fails midway undoes the renames
  made so far and leaves the subscriptions as they were;
- --checkutf8 writes nothing (Courier leaves `courierimapsubscribed.new`).

Courier's optional second argument, a maildirfilter (sqwebmail mail filter)
file whose folder references it rewrites, is not supported: refused before
anything is read (maildirmake.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from libcourier.durable import fsync_dir, write_all
from libcourier.maildir.folders import MAX_SUBSCRIPTIONS_BYTES, SUBSCRIBED
from libcourier.maildir.mutf7 import decode_mutf7

MAX_LINE = 2047          # Courier reads courierimapsubscribed with a 2048-byte fgets buffer
MAX_FOLDERS = 100_000    # entries of the Maildir root looked at


class BadName(ValueError):
    """A name that is not valid modified UTF-7 (nor plain UTF-8 already)."""


def convert_part(part: str) -> str:
    """One dot-free part of a folder name: modified UTF-7 -> UTF-8 (module docstring)."""
    try:
        return decode_mutf7(part)
    except ValueError:
        pass
    if "&" not in part and not part.isascii() \
            and not any(0xDC80 <= ord(c) <= 0xDCFF for c in part):     # no undecodable byte
        return part          # UTF-8 already
    raise BadName(part)


def convert_name(name: str) -> str:
    """"INBOX.Caf&AOk-.Sub" -> "INBOX.Café.Sub": each part between dots converted, the
    dots kept (Courier's foldername_filename_convert); BadName when a part is bad."""
    return ".".join(convert_part(p) if p else p for p in name.split("."))


@dataclass
class Plan:
    renames: list[tuple[str, str]] = field(default_factory=list)   # IMAP names, Courier's order
    subscriptions: list[tuple[str, str]] = field(default_factory=list)  # changed lines
    new_subscribed: bytes | None = None       # None: there is no courierimapsubscribed
    errors: list[str] = field(default_factory=list)
    folder_errors: bool = False               # Courier stops before the subscriptions then


def _list_folders(root: Path) -> list[str]:
    """Courier's maildir_list: "INBOX" and "INBOX.<name>" for each ".<name>" with cur/,
    in readdir order."""
    out: list[str] = []
    with os.scandir(root) as it:
        for n, de in enumerate(it):
            if n >= MAX_FOLDERS:
                raise OSError(errno.EFBIG, f"more than {MAX_FOLDERS} entries")
            if de.name.startswith(".") and os.access(root / de.name / "cur", os.X_OK):
                out.append("INBOX" + de.name)
    if os.access(root / "cur", os.X_OK):
        out.insert(0, "INBOX")       # readdir's "." (scandir leaves it out)
    return out


def plan(root: Path) -> Plan:
    """What --convutf8 would do to the Maildir `root`, reading only. OSError when the
    Maildir or its subscriptions cannot be read."""
    p = Plan()
    for name in _list_folders(root):
        try:
            conv = convert_name(name)
        except BadName:
            p.errors.append(f"Error: {name}: does not appear to be valid modified-UTF7")
            continue
        if conv != name:
            p.renames.insert(0, (name, conv))    # Courier builds its list by prepending
    if p.errors:
        p.folder_errors = True
        return p
    targets: dict[str, str] = {}
    for old, new in p.renames:
        if new in targets or os.path.lexists(_dir(root, new)):
            p.errors.append(f"Error: cannot rename {old} to {new}: {new} exists")
        targets[new] = old
    try:
        with open(root / SUBSCRIBED, "rb") as fh:
            data = fh.read(MAX_SUBSCRIPTIONS_BYTES + 1)
    except FileNotFoundError:
        return p
    if len(data) > MAX_SUBSCRIPTIONS_BYTES:
        p.errors.append(f"Error: {SUBSCRIBED}: larger than {MAX_SUBSCRIPTIONS_BYTES} bytes")
        return p
    out: list[str] = []
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE - 1:
            p.errors.append(f"Error: {SUBSCRIBED}: folder name too long")
            continue
        try:
            conv = convert_name(line)
        except BadName:
            p.errors.append(f"Error: {SUBSCRIBED}: {line}: does not appear to be valid"
                            " modified-UTF7")
            continue
        out.append(conv + "\n")
        if conv != line:
            p.subscriptions.append((line, conv))
    p.new_subscribed = "".join(out).encode("utf-8", "surrogateescape")
    return p


def _dir(root: Path, name: str) -> Path:
    """The directory of folder "INBOX.<x>": root/.<x> (every name here has the prefix)."""
    return root / name[len("INBOX"):]


_libc = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that never replaces an existing dst: renameat2(RENAME_NOREPLACE) where the
    kernel has it (a plain rename would silently replace an empty directory), else a
    check then rename (the check was made in plan() too)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p, ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        at_fdcwd, noreplace = -100, 1
        if _libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst),
                           noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):     # file systems without the flag
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(src), None, str(dst))
    os.rename(src, dst)


def _write_tmp(root: Path, data: bytes) -> tuple[Path, Path]:
    """The new courierimapsubscribed written and fsynced under a temporary name (in tmp/,
    same file system) with the old one's mode and, as root, owner: (tmp, final path)."""
    path = root / SUBSCRIBED
    st = os.stat(path)
    tmpdir = root / "tmp" if (root / "tmp").is_dir() else root
    tmp = tmpdir / f".subscribed.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        os.unlink(tmp)
        raise
    return tmp, path


def _undo(root: Path, done: list[tuple[Path, Path]], sub: tuple[Path, Path] | None,
          first: str) -> list[str]:
    """Rename back what was renamed, drop the new subscriptions: the error lines."""
    errs = [first]
    for a, b in reversed(done):
        try:
            os.rename(b, a)
        except OSError as e:
            errs.append(f"FATAL ERROR RENAMING {b} back to {a}: {e.strerror}")
    if sub is not None:
        try:
            os.unlink(sub[0])
        except OSError:
            pass
    fsync_dir(root)
    if len(errs) == 1:
        errs.append("Nothing changed: the renames made were undone")
    return errs


def apply(root: Path, p: Plan) -> list[str]:
    """Write the new subscriptions aside, do the renames, then put the subscriptions in
    place: all or nothing, a failed rename undoes the earlier ones and drops the new
    subscriptions. Returns the error lines (empty: done)."""
    sub: tuple[Path, Path] | None = None
    if p.new_subscribed is not None:
        try:
            sub = _write_tmp(root, p.new_subscribed)
        except OSError as e:
            return [f"Error: {root / SUBSCRIBED}: {e.strerror}; nothing changed"]
    done: list[tuple[Path, Path]] = []
    for old, new in p.renames:
        src, dst = _dir(root, old), _dir(root, new)
        try:
            _rename_noreplace(src, dst)
        except OSError as e:
            return _undo(root, done, sub, f"FATAL ERROR RENAMING {src} to {dst}: {e.strerror}")
        done.append((src, dst))
    if sub is not None:
        try:
            os.rename(*sub)
        except OSError as e:
            return _undo(root, done, sub,
                         f"FATAL ERROR RENAMING {sub[0]} to {sub[1]}: {e.strerror}")
    if done or sub is not None:
        fsync_dir(root)
    return []
