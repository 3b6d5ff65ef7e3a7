"""A bounded dictionary whose entries expire: remote delivery's memory of
per-host and per-domain state (a domain's last exchangers, servers whose
STARTTLS broke) and esmtpd's of recipients authd knew, which must neither
outlive its time nor grow with every name seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringDict(Generic[K, V]):
    """key -> value, each for `ttl` seconds after it was put; at most `limit`
    entries. Every entry lives equally long, so insertion order is expiry
    order: `put` moves a key to the end, and the oldest entries (first) go
    first, whether they expired or the dict is full."""

    __slots__ = ("ttl", "limit", "_clock", "_items")

    def __init__(self, ttl: float, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}      # key -> (until, value)

    def __len__(self) -> int:
        return len(self._items)        # expired entries not yet pruned count too

    def get(self, key: K) -> V | None:
        """The value while it lives, else None (an expired entry is dropped)."""
        entry = self._items.get(key)
        if entry is None:
            return None
        if self._clock() < entry[0]:
            return entry[1]
        del self._items[key]
        return None

    def put(self, key: K, value: V) -> None:
        """Store `value` for `ttl` from now; when full, expired entries go,
        then the oldest live ones."""
        self._items.pop(key, None)              # to the end: the dict stays oldest first
        if len(self._items) >= self.limit:
            self.prune()
            while len(self._items) >= self.limit:
                self._items.pop(next(iter(self._items)))
        self._items[key] = (self._clock() + self.ttl, value)

    def prune(self) -> None:
        """Drop the expired entries: those at the front, as they are oldest."""
        now = self._clock()
        while self._items:
            key = next(iter(self._items))
            if now < self._items[key][0]:
                break
            del self._items[key]
