"""inotify on a Maildir folder: wake an IDLE session when mail arrives or changes.

Courier's imapd tells idling clients at once when it has FAM/inotify
(maildir/maildirwatch.c) and polls otherwise; so do we. The watch covers
new/ (deliveries), cur/ (flag renames, expunges, other sessions' new/ -> cur/
moves) and courierimapkeywords/ (keyword updates).

The inotify binding is libcourier.inotify's. `open_watch` returns None where
inotify cannot be had: the caller keeps polling.
"""

from __future__ import annotations

import logging
from pathlib import Path

from libcourier.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Watch,
)

log = logging.getLogger("courier.maildir")

# What changes a folder's contents as IMAP sees it. IN_MODIFY is left out: message
# files are never rewritten, and the keyword files arrive by rename (IN_MOVED_TO).
MASK = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
WATCHED = ("new", "cur", "courierimapkeywords")


class FolderWatch(Watch):
    """An inotify instance watching one folder's new/, cur/ and courierimapkeywords/
    (only new/ must exist: no courierimapkeywords/ yet still leaves new/ and cur/)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        super().__init__([folder / sub for sub in WATCHED], MASK,
                         optional=[folder / sub for sub in WATCHED if sub != "new"])


def open_watch(folder: Path) -> FolderWatch | None:
    """A watch on the folder, or None (logged) when inotify cannot be used: poll instead."""
    try:
        return FolderWatch(folder)
    except OSError as e:
        log.info("%s: no inotify (%s); polling", folder, e.strerror or e)
        return None
