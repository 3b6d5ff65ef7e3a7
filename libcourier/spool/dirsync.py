"""One directory fsync for many removals (courierd's finished queue entries).

A removal from msgs/ only has to become durable eventually: until it is, a
crash of the machine brings the entry back and the message is delivered
again -- a duplicate, never a loss (the Maildir copy was fsync'd before the
entry was removed, and every DSN was committed before it). So courierd does
not fsync msgs/ after each message: the first removal since the last fsync
starts a timer, and one fsync DELAY seconds later covers every removal made
until it starts. At 500 messages a second that is two fsyncs instead of 500.
Files the spool *gains* (SpoolWriter's commit, rewritten envelopes, DSNs) are
still fsync'd at once: those are what a 250 or a delivery depends on.

A retired entry's file (pool.py) waits as tmp/held.<qid> for the fsync that
covers its removal; only after it does it become claimable by a writer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from libcourier.durable import fsync_dir
from libcourier.spool import pool

logger = logging.getLogger("courier.spool")

DELAY = 0.5         # seconds from the first unsynced removal to the fsync that covers it


class DelayedDirSync:
    """changed() after each removal; flush() at shutdown. Thread-safe: every
    change is followed by an fsync that starts after it."""

    def __init__(self, path: Path, delay: float = DELAY):
        self.path = Path(path)
        self.delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._held: list[str] = []      # pool files waiting for the next fsync

    def changed(self, held: str | None = None) -> None:
        """A removal was made; `held`: its file, to release into the pool after
        the fsync (pool.hold)."""
        with self._lock:
            if held is not None:
                self._held.append(held)
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None      # a change from now on starts the next timer
            held, self._held = self._held, []
        pool.release(held, self._sync())

    def flush(self) -> None:
        """fsync now if a removal is still unsynced (courierd stopping)."""
        with self._lock:
            timer, self._timer = self._timer, None
            held, self._held = self._held, []
        if timer is not None:
            timer.cancel()
            pool.release(held, self._sync())

    def _sync(self) -> bool:
        try:
            fsync_dir(self.path)
        except OSError as e:
            # The removals are in the page cache; only a crash could undo them now.
            logger.warning("cannot fsync %s: %s", self.path, e.strerror or e)
            return False
        return True
