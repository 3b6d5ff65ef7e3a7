"""courierlocal's AccountCache: authd is asked once per user per few seconds,
unknown users are always asked again, and the answer expires."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_deliver import local
from courier_deliver.local import AccountCache

from libcourier.authclient import AuthInfo

INFO = AuthInfo("alice", 1000, 1000, "/home/alice", "alice@example.com", None, None, None, {})


@pytest.fixture
def asked(monkeypatch):
    calls: list[str] = []

    def lookup(_sock: Path, user: str):
        calls.append(user)
        return (INFO, None) if user.startswith("alice") else None

    monkeypatch.setattr(local, "find_account", lookup)
    return calls


def test_found_account_is_kept(asked):
    cache = AccountCache(ttl=60)
    for _ in range(5):
        assert cache.find(Path("s"), "alice@example.com") == (INFO, None)
    assert asked == ["alice@example.com"]


def test_unknown_user_is_asked_every_time(asked):
    cache = AccountCache(ttl=60)
    assert cache.find(Path("s"), "nobody@example.com") is None
    assert cache.find(Path("s"), "nobody@example.com") is None
    assert asked == ["nobody@example.com"] * 2


def test_answer_expires(asked):
    cache = AccountCache(ttl=0.0)
    cache.find(Path("s"), "alice@example.com")
    cache.find(Path("s"), "alice@example.com")
    assert asked == ["alice@example.com"] * 2


def test_size_is_bounded(asked):
    cache = AccountCache(ttl=60, size=3)
    for i in range(10):
        cache.find(Path("s"), f"alice{i}@example.com")
    assert len(cache._found) <= 3
