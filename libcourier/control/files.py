"""Durable small-file writes for the admin command: tmp, fsync, rename, fsync dir.

`courier init` and `courier adduser` write config and control files that live
daemons re-read on SIGHUP; a reader must see the old file or the new one,
never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    tmp = path.with_name(f".tmp.{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fchmod(fd, mode)  # the umask must not loosen or tighten what we chose
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """mkdir with an exact mode (umask ignored) and, as root, an owner."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
