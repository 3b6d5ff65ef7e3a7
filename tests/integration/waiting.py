"""Polling with a deadline, for tests that wait on daemons (courierd, courierlocal,
esmtpd) to finish something: no sleep stands in for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# seconds: spool -> courierd -> courierlocal -> Maildir, generous for a loaded CI machine
DELIVERY_WAIT = 15.0
INTERVAL = 0.05


def wait_for(cond: Callable[[], T], timeout: float = DELIVERY_WAIT) -> T:
    """cond's first true value within timeout seconds, else its value at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(INTERVAL)
    return cond()
