"""Failed-login throttling shared by every authd worker, without I/O.

Each failure counts against the login name and against the client address
(TCPREMOTEIP; not for loopback addresses, where a local webmail or proxy speaks
for everyone). From the `after`-th failure on, that key is refused outright
(FAIL without looking at the password, so a worker is never tied up sleeping)
until a delay has passed: `base` seconds, doubling with each further failure, at
most `cap`. A success clears the login's and the address's counts; a key idle
for `forget` seconds starts again from zero.

The table lives in a buffer the parent maps shared (mmap(-1)) before forking, so
all workers see one count: SLOTS fixed records of (key digest, failures, last
failure time), open addressing over PROBE slots, the oldest evicted when full.
The caller holds a lock around `check`/`failed`/`succeeded` and passes the clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

_REC = struct.Struct("<16sId")   # key digest, failures, time of the last failure
SLOTS = 4096
PROBE = 16
EMPTY = b"\0" * 16


def table_size(slots: int = SLOTS) -> int:
    return _REC.size * slots


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    after: int = 3          # failures before delays start; 0 turns throttling off
    base: float = 2.0       # first delay (seconds)
    cap: float = 300.0      # longest delay
    forget: float = 3600.0  # idle time after which a key's count is dropped

    def delay(self, failures: int) -> float:
        if self.after <= 0 or failures < self.after:
            return 0.0
        return min(self.cap, self.base * 2 ** min(failures - self.after, 30))


def _loopback(address: str) -> bool:
    """A local webmail or proxy speaks for many users from 127.0.0.1/::1: its address
    is not throttled (the login names still are)."""
    try:
        ip = ipaddress.ip_address(address.removeprefix("::ffff:"))
    except ValueError:
        return False
    return ip.is_loopback


def _digest(kind: str, value: str) -> bytes:
    return hashlib.blake2b(f"{kind}\0{value}".encode("utf-8", "surrogateescape"),
                           digest_size=16).digest() or EMPTY


class ThrottleTable:
    def __init__(self, buf, policy: ThrottlePolicy, slots: int = SLOTS) -> None:
        if len(buf) < table_size(slots):
            raise ValueError("throttle buffer too small")
        self.buf, self.policy, self.slots = buf, policy, slots

    def _find(self, key: bytes, now: float, create: bool) -> int | None:
        start = int.from_bytes(key[:8], "little") % self.slots
        chain = [(start + i) % self.slots for i in range(PROBE)]
        for slot in chain:
            k, _n, t = _REC.unpack_from(self.buf, slot * _REC.size)
            if k == key:
                if now - t > self.policy.forget:
                    _REC.pack_into(self.buf, slot * _REC.size, key, 0, now)
                return slot
        if not create:
            return None
        # A free or stale slot, else the one whose last failure is oldest.
        best, best_t = chain[0], float("inf")
        for slot in chain:
            k, _n, t = _REC.unpack_from(self.buf, slot * _REC.size)
            if k == EMPTY or now - t > self.policy.forget:
                best = slot
                break
            if t < best_t:
                best, best_t = slot, t
        _REC.pack_into(self.buf, best * _REC.size, key, 0, now)
        return best

    def _keys(self, user: str | None, address: str | None) -> list[bytes]:
        keys = []
        if user:
            keys.append(_digest("user", user.lower()))
        if address and not _loopback(address):
            keys.append(_digest("addr", address))
        return keys

    def blocked_for(self, user: str | None, address: str | None, now: float) -> float:
        """Seconds left before this login or address may try again (0: go ahead)."""
        if self.policy.after <= 0:
            return 0.0
        left = 0.0
        for key in self._keys(user, address):
            slot = self._find(key, now, create=False)
            if slot is None:
                continue
            _, n, t = _REC.unpack_from(self.buf, slot * _REC.size)
            left = max(left, t + self.policy.delay(n) - now)
        return max(0.0, left)

    def failed(self, user: str | None, address: str | None, now: float) -> int:
        """Count a failure; returns the highest count of the two keys."""
        if self.policy.after <= 0:
            return 0
        worst = 0
        for key in self._keys(user, address):
            slot = self._find(key, now, create=True)
            assert slot is not None
            _, n, _t = _REC.unpack_from(self.buf, slot * _REC.size)
            n = min(n + 1, 1 << 30)
            _REC.pack_into(self.buf, slot * _REC.size, key, n, now)
            worst = max(worst, n)
        return worst

    def succeeded(self, user: str | None, address: str | None, now: float) -> None:
        for key in self._keys(user, address):
            slot = self._find(key, now, create=False)
            if slot is not None:
                _REC.pack_into(self.buf, slot * _REC.size, EMPTY, 0, 0.0)
