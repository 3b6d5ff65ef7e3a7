"""A file written with no name and named only once it is complete: open(2)'s
O_TMPFILE on a directory, then linkat(2) of /proc/self/fd/N to its name.

Why: creating a named file takes the directory's lock for the whole inode
allocation, and on ext4 without a journal that allocation scans its inode
group past every recently freed inode (~0.7 ms of CPU when the group is
full of them): concurrent writers into one Maildir tmp/ spin on that lock.
O_TMPFILE allocates the inode without locking the directory, and no tmp/
entry is made or removed. The file lives on the directory's file system,
so linking it into a sibling directory (new/, cur/) is a plain link.

A crash before the link leaves no name anywhere: the kernel frees the inode
at the last close; after a crash, ext4's orphan list frees it (with a
journal), else fsck does.

Not every system allows it (old kernels, NFS and other file systems without
O_TMPFILE, /proc not mounted, a file system without hard links): the first
refusal is remembered for the life of the process (a refused link only once
a named file worked in its place), and callers then use a named file in the
directory as before (`usable()` says which).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

# open(2): EISDIR/ENOENT from kernels older than 3.11 (O_TMPFILE includes
# O_DIRECTORY), EOPNOTSUPP from a file system without it, EINVAL from one
# that refuses the flags.
_OPEN_REFUSED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
# linkat(2): /proc not mounted (ENOENT), hard links not allowed (EPERM,
# EACCES under a security module, EMLINK, EOPNOTSUPP), tmp/ on another file
# system than the target (EXDEV).
_LINK_REFUSED = frozenset({errno.ENOENT, errno.EPERM, errno.EACCES, errno.EXDEV,
                           errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS})
_TMPFILE = getattr(os, "O_TMPFILE", 0)     # 0: not Linux, never usable


class _State:
    """Per process: False once the kernel or /proc refused (a fork inherits it,
    which is right: same kernel, same mounts)."""
    usable = bool(_TMPFILE)


state = _State()


class LinkRefused(Exception):
    """linkat refused to name the unnamed file, maybe because this system does
    not allow it: the caller writes a named copy and links that; if it works,
    the caller calls `refused()`. `error` is why."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def usable() -> bool:
    """Whether open_in may be tried in this process."""
    return state.usable


def refused() -> None:
    """A named file worked where link() was refused: the refusal was this
    system's (not the target's, e.g. a read-only directory, which refuses
    both with the same errno); open_in says None from now on."""
    state.usable = False


def open_in(directory: str, mode: int = 0o600) -> int | None:
    """An unnamed regular file (O_RDWR, close-on-exec, `mode` less the umask)
    on `directory`'s file system; None when this process cannot have one (now
    or before: remembered) and the caller should create a named file. Raises
    OSError for every other failure (FileNotFoundError: no such directory)."""
    if not state.usable:
        return None
    try:
        return os.open(directory, _TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno not in _OPEN_REFUSED:
            raise
        # ENOENT is also a directory that is not there: that is the caller's
        # error, not a missing feature.
        if e.errno == errno.ENOENT and not os.path.isdir(directory):
            raise
        state.usable = False
        return None


def link(fd: int, target: str) -> None:
    """Give the unnamed file open at `fd` the name `target` (never replacing:
    FileExistsError). Raises LinkRefused when this system may not allow it,
    OSError for the target's own failures (a missing directory, a full
    disk...). The fd stays open."""
    # os.link only calls linkat(AT_SYMLINK_FOLLOW) when it is given a dir_fd
    # (CPython 3.11 calls link(2) otherwise, which links /proc's symlink itself
    # and fails with EXDEV); the path is absolute, so the dir_fd is unused.
    proc = f"/proc/self/fd/{fd}"
    try:
        os.link(proc, target, src_dir_fd=fd, follow_symlinks=True)
    except OSError as e:
        if e.errno not in _LINK_REFUSED:
            raise
        if e.errno == errno.ENOENT and os.path.exists(proc):
            raise           # /proc is there: it is the target's directory that is not
        raise LinkRefused(e) from None


def read_back(fd: int, size: int, chunk: int) -> Iterator[bytes]:
    """The first `size` bytes of the file open at `fd`, `chunk` at a time: what
    the named copy of a file whose link was refused is written from."""
    offset = 0
    while offset < size:
        block = os.pread(fd, min(chunk, size - offset), offset)
        if not block:
            raise OSError(errno.EIO, f"{size - offset} bytes short reading back")
        yield block
        offset += len(block)
