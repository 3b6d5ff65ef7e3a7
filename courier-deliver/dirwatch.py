"""inotify on one directory: courierd's pickup wakes when a maildrop file appears
or is marked complete (its mode changes), instead of waiting for the next scan.

The same ctypes binding as libcourier.maildir.watch (which watches a Maildir's
subfolders), loaded at import, before the privilege drop. `open_dirwatch`
returns None where inotify cannot be had: the caller polls.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

logger = logging.getLogger("courier.courierd")

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
READ_SIZE = 64 * 1024
MAX_READS = 64              # a flood only needs to say "something changed"


def _load_libc() -> ctypes.CDLL | None:
    for name in ("libc.so.6", None):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_init1.restype = ctypes.c_int
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_add_watch.restype = ctypes.c_int
            return lib
        except (OSError, AttributeError):
            continue
    return None


_libc = _load_libc()


class DirWatch:
    def __init__(self, directory: Path):
        if _libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if _libc.inotify_add_watch(fd, os.fsencode(directory), MASK) < 0:
            e = ctypes.get_errno()
            os.close(fd)
            raise OSError(e, os.strerror(e))
        self.fd = fd

    def drain(self) -> bool:
        """Read the pending events; True if there were any."""
        got = False
        for _ in range(MAX_READS):
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            got = True
        return got

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_dirwatch(directory: Path) -> DirWatch | None:
    try:
        return DirWatch(directory)
    except OSError as e:
        logger.info("%s: no inotify (%s); scanning every minute", directory, e.strerror or e)
        return None
