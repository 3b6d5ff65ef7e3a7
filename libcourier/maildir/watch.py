"""inotify on a Maildir folder: wake an IDLE session when mail arrives or changes.

Courier's imapd tells idling clients at once when it has FAM/inotify
(maildir/maildirwatch.c) and polls otherwise; so do we. The watch covers
new/ (deliveries), cur/ (flag renames, expunges, other sessions' new/ -> cur/
moves) and courierimapkeywords/ (keyword updates). libc's inotify_init1 and
inotify_add_watch are called through ctypes: no new dependency, and the
library is loaded when this module is imported, before the privilege drop.

`open_watch` returns None where inotify cannot be had (not Linux, no libc
symbol, the per-user instance or watch limit reached): the caller keeps polling.
The watch only says "something changed"; the caller rescans to find out what.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("courier.maildir")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What changes a folder's contents as IMAP sees it. IN_MODIFY is left out: message
# files are never rewritten, and the keyword files arrive by rename (IN_MOVED_TO).
MASK = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
WATCHED = ("new", "cur", "courierimapkeywords")
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


class FolderWatch:
    """An inotify instance watching one folder's new/, cur/ and courierimapkeywords/."""

    def __init__(self, folder: Path):
        if _libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd = fd
        self.watches = 0
        try:
            for sub in WATCHED:
                path = os.fsencode(Path(folder) / sub)
                if _libc.inotify_add_watch(fd, path, MASK) >= 0:
                    self.watches += 1
                    continue
                e = ctypes.get_errno()
                if e == errno.ENOENT and sub != "new":
                    continue            # no courierimapkeywords/ yet: new/ and cur/ still count
                raise OSError(e, f"inotify_add_watch {sub}: {os.strerror(e)}")
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

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_watch(folder: Path) -> FolderWatch | None:
    """A watch on the folder, or None (logged) when inotify cannot be used: poll instead."""
    try:
        return FolderWatch(folder)
    except OSError as e:
        log.info("%s: no inotify (%s); polling", folder, e.strerror or e)
        return None
