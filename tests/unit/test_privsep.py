"""Privilege drops check their own work: afterwards, becoming root must fail.

As root the drops run in forked children (a drop is for good); the child
reports through its exit status and a pipe. The not-root rules are tested in a
child that first becomes `nobody` by other means.
"""

from __future__ import annotations

import os
import pwd

import pytest

from libcourier import privsep
from libcourier.privsep import (
    PrivsepError,
    drop_to_daemon,
    lookup_account,
    refuse_root,
    switch_to_user,
)

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def in_child(fn) -> str:
    """Run fn() in a forked child; return what it printed to the pipe (or the exception)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = str(fn())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            out = f"{type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.decode()


def test_refuse_root():
    with pytest.raises(PrivsepError):
        refuse_root(0)
    refuse_root(1000)


def test_lookup_account():
    assert lookup_account("nobody", "nogroup") == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert lookup_account("1234", "5678") == (1234, 5678)
    with pytest.raises(PrivsepError, match="unknown user"):
        lookup_account("no-such-user-xyz", "nogroup")
    with pytest.raises(PrivsepError, match="unknown group"):
        lookup_account("nobody", "no-such-group-xyz")


def _state() -> str:
    try:
        os.setuid(0)
        regained = "regained"
    except PermissionError:
        regained = "locked"
    return f"{os.getresuid()} {os.getresgid()} {sorted(os.getgroups())} {regained}"


@as_root
def test_drop_to_daemon_for_good():
    def child():
        drop_to_daemon("nobody", "nogroup")
        return _state()
    u, g = NOBODY.pw_uid, NOBODY.pw_gid
    assert in_child(child) == f"{(u, u, u)} {(g, g, g)} [{g}] locked"


@as_root
def test_switch_to_user_with_extra_groups():
    def child():
        switch_to_user(4321, 8765, [8766, 8765])
        return _state()
    assert in_child(child) == "(4321, 4321, 4321) (8765, 8765, 8765) [8765, 8766] locked"


@as_root
def test_drop_to_root_account_refused():
    assert in_child(lambda: drop_to_daemon("root", "root")).startswith("PrivsepError")
    assert in_child(lambda: switch_to_user(0, 0)).startswith("PrivsepError")


@as_root
def test_verify_catches_a_drop_that_did_not_happen(monkeypatch):
    # If setresuid silently did nothing, the check must notice we are still root.
    def child():
        monkeypatch.setattr(privsep.os, "setresuid", lambda *a: None)
        monkeypatch.setattr(privsep.os, "setresgid", lambda *a: None)
        monkeypatch.setattr(privsep.os, "setgroups", lambda *a: None)
        switch_to_user(4321, 8765)
        return "not caught"
    assert in_child(child).startswith("PrivsepError")


@as_root
def test_rules_when_not_root():
    def child():
        os.setgroups([NOBODY.pw_gid])
        os.setresgid(NOBODY.pw_gid, NOBODY.pw_gid, NOBODY.pw_gid)
        os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
        drop_to_daemon("daemon", "daemon")          # no-op: nothing can change
        switch_to_user(NOBODY.pw_uid, NOBODY.pw_gid)  # already that user: fine
        try:
            switch_to_user(4321, 4321)
        except PrivsepError:
            return f"{os.getuid()} refused"
        return "switched?"
    assert in_child(child) == f"{NOBODY.pw_uid} refused"
