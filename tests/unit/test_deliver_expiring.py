"""libcourier.expiring.ExpiringDict: remote delivery's bounded, expiring memory
(a domain's last exchangers, servers whose STARTTLS broke)."""

from __future__ import annotations

import pytest

from libcourier.expiring import ExpiringDict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_ttl_then_is_gone() -> None:
    clock = Clock()
    d: ExpiringDict[str, int] = ExpiringDict(10.0, 5, clock)
    d.put("a", 1)
    clock.now += 9.999
    assert d.get("a") == 1
    clock.now += 0.001                   # exactly ttl later: expired
    assert d.get("a") is None
    assert len(d) == 0                   # get dropped it
    assert d.get("never") is None


def test_put_again_renews_the_entry() -> None:
    clock = Clock()
    d: ExpiringDict[str, str] = ExpiringDict(10.0, 5, clock)
    d.put("a", "old")
    clock.now += 8
    d.put("a", "new")
    clock.now += 8
    assert d.get("a") == "new"


def test_full_drops_expired_entries_before_live_ones() -> None:
    clock = Clock()
    d: ExpiringDict[int, int] = ExpiringDict(10.0, 3, clock)
    d.put(1, 1)
    d.put(2, 2)
    clock.now += 5
    d.put(3, 3)
    clock.now += 6                       # 1 and 2 expired, 3 lives
    d.put(4, 4)
    assert len(d) == 2
    assert (d.get(3), d.get(4)) == (3, 4)


def test_full_of_live_entries_drops_the_oldest() -> None:
    clock = Clock()
    d: ExpiringDict[int, int] = ExpiringDict(100.0, 3, clock)
    for k in (1, 2, 3):
        d.put(k, k)
        clock.now += 1
    d.put(1, 10)                         # renewed: now the youngest
    d.put(4, 4)                          # full: 2 is the oldest
    assert len(d) == 3
    assert [d.get(k) for k in (1, 2, 3, 4)] == [10, None, 3, 4]


def test_the_bound_holds_for_many_keys() -> None:
    clock = Clock()
    d: ExpiringDict[int, int] = ExpiringDict(1e9, 50, clock)
    for k in range(10_000):
        d.put(k, k)
        assert len(d) <= 50
    assert d.get(9_999) == 9_999 and d.get(9_949) is None


def test_prune_drops_only_expired_entries() -> None:
    clock = Clock()
    d: ExpiringDict[str, int] = ExpiringDict(10.0, 10, clock)
    d.put("a", 1)
    clock.now += 5
    d.put("b", 2)
    clock.now += 5
    d.prune()
    assert len(d) == 1 and d.get("b") == 2


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        ExpiringDict(1.0, 0)
