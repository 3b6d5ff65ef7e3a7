"""Durable whole-file writes: a reader sees the old file or the new one, never half of one.

The dance (every file the suite replaces: control files, userdb, the spool
envelope, courierimapuiddb, courierpop3dsizelist, the TLS key):

1. create a temporary name in the same file system (usually the same
   directory) with O_EXCL, so two writers never share one tmp file, and
   O_CLOEXEC, so a forked child never inherits it;
2. write everything, set the exact mode (the umask must not loosen or tighten
   what the caller chose) and the owner, fsync: the content is on disk;
3. rename over the final name: atomic for readers;
4. fsync the final name's directory: the new entry survives a crash too.

A failure anywhere removes the temporary file and re-raises. Maildir
delivery is not this dance (it links a new name into new/ and never replaces
a file); it only shares `fsync_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quiet(path: str | os.PathLike[str] | None) -> None:
    """Remove `path` if it can be (a clean-up on a failure path: a name already
    gone, or one we may not remove, must not hide the error being handled)."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def tmp_name(path: Path) -> Path:
    """A hidden, unique name beside `path` (pid + random: O_EXCL never hits a leftover)."""
    return path.with_name(f".tmp.{path.name}.{os.getpid()}.{os.urandom(4).hex()}")


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644,
                 owner: tuple[int, int] | None = None,
                 tmp: str | os.PathLike[str] | None = None) -> None:
    """Replace `path` with `data` durably (module docstring).

    `mode` is set exactly; `owner` is (uid, gid), -1 keeps one; `tmp` is the
    temporary name to use (it must not exist and must be on the same file system,
    e.g. a Maildir's or the spool's tmp/), default a hidden unique name beside path.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    tmp = tmp_name(path) if tmp is None else Path(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
    fsync_dir(path.parent)


def replace_cache(path: str | os.PathLike[str], data: bytes,
                  tmp: str | os.PathLike[str]) -> bool:
    """Replace a pure cache file (one that is checked when read and rebuilt when
    missing or damaged): tmp (O_EXCL, 0600), write, rename. No fsync: after a
    crash the reader's check finds an old or torn file and rebuilds it, so the
    cost of durability buys nothing here. False when it could not be written
    (the tmp file is removed); the caller goes on without the cache."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        unlink_quiet(tmp)
        return False
    return True
