"""inotify on one directory: courierd's pickup wakes when a maildrop file appears
or is marked complete (its mode changes), instead of waiting for the next scan.

The inotify binding is libcourier.inotify's. `open_dirwatch` returns None where
inotify cannot be had: the caller polls.
"""

from __future__ import annotations

import logging
from pathlib import Path

from libcourier.inotify import IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO, Watch

logger = logging.getLogger("courier.courierd")

# A file appears, is finished, or is marked complete (its mode changes).
MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE


def open_dirwatch(directory: Path) -> Watch | None:
    try:
        return Watch([directory], MASK)
    except OSError as e:
        logger.info("%s: no inotify (%s); scanning every minute", directory, e.strerror or e)
        return None
