"""inotify through ctypes on libc: "something changed in these directories".

No new dependency; libc is loaded when this module is imported, which every
daemon does before its privilege drop. A watch only says that something
changed; the caller rescans to find out what (IDLE in imapd, the maildrop
pickup in courierd). `Watch` raises OSError where inotify cannot be had (not
Linux, no libc symbol, the per-user instance or watch limit reached): callers
fall back to polling.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800

READ_SIZE = 64 * 1024      # one read drains up to this much of the event queue
MAX_READS = 64             # reads per drain: a flood is "changed", no need to read it all


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


_libc = _load_libc()   # at import: before any privilege drop or chroot


class Watch:
    """One inotify instance over some directories. `optional` ones that do not
    exist (yet) are skipped; any other failure raises OSError."""

    def __init__(self, directories: Iterable[Path], mask: int,
                 optional: Iterable[Path] = ()):
        if _libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd = fd
        self.watches = 0
        skip_missing = {Path(p) for p in optional}
        try:
            for d in directories:
                if _libc.inotify_add_watch(fd, os.fsencode(d), mask) >= 0:
                    self.watches += 1
                    continue
                e = ctypes.get_errno()
                if e == errno.ENOENT and Path(d) in skip_missing:
                    continue
                raise OSError(e, f"inotify_add_watch {d}: {os.strerror(e)}")
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Read the pending events; True if there were any."""
        got = False
        for _ in range(MAX_READS):
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            got = True
        return got

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
