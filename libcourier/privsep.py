"""Privilege separation: drop to the daemon account, switch for good to a mail user.

Written as a checklist in the order OpenSMTPD and Dovecot's restrict_access use,
and each drop checks its own work: after it, becoming root again must fail.

1. setgroups: supplementary groups first, while we may still change them;
2. setresgid: real, effective and saved gid, so no saved root gid remains;
3. setresuid: real, effective and saved uid, last, since it gives up the right
   to do steps 1 and 2;
4. prove it: read back the ids, and os.setuid(0) must raise PermissionError.

When the process does not run as root, nothing can change: drop_to_daemon is a
no-op and switch_to_user only accepts the identity we already have.

Callers in forked children must import everything they need *before* calling
these: after the drop, the Python installation may be unreadable.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Sequence


class PrivsepError(Exception):
    """A privilege change was refused or did not take effect."""


def refuse_root(uid: int) -> None:
    """Mail is never delivered or served as root (Courier refuses uid 0 too)."""
    if uid == 0:
        raise PrivsepError("refusing to run as root (uid 0)")


def lookup_account(user: str, group: str) -> tuple[int, int]:
    """(uid, gid) for a user and group given by name or number."""
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise PrivsepError(f"unknown user: {user!r}") from None
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise PrivsepError(f"unknown group: {group!r}") from None
    return uid, gid


def _become(uid: int, gid: int, groups: list[int]) -> None:
    try:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivsepError(f"cannot switch to uid {uid} gid {gid}: {exc}") from exc
    _verify(uid, gid, groups)


def _verify(uid: int, gid: int, groups: list[int]) -> None:
    if os.getresuid() != (uid, uid, uid):
        raise PrivsepError(f"uid is {os.getresuid()} after switching to {uid}")
    if os.getresgid() != (gid, gid, gid):
        raise PrivsepError(f"gid is {os.getresgid()} after switching to {gid}")
    if sorted(set(os.getgroups())) != sorted(set(groups)):
        raise PrivsepError(f"groups are {os.getgroups()} after switching to {groups}")
    # The proof: a process that gave up root for good cannot take it back.
    for regain in (os.setuid, os.setgid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivsepError(f"{regain.__name__}(0) still succeeds after the drop")


def drop_to_daemon(user: str, group: str) -> None:
    """Become the daemon account (Courier's MAILUSER/MAILGROUP) for good."""
    if os.geteuid() != 0:
        return
    uid, gid = lookup_account(user, group)
    refuse_root(uid)
    _become(uid, gid, [gid])


def switch_to_user(uid: int, gid: int, extra_groups: Sequence[int] = ()) -> None:
    """Become a mail user for good (after login, before touching the mailbox)."""
    refuse_root(uid)
    if os.geteuid() != 0:
        if uid != os.getuid():
            raise PrivsepError(
                f"not running as root: cannot switch from uid {os.getuid()} to uid {uid}")
        return
    groups = [gid, *(g for g in extra_groups if g != gid)]
    _become(uid, gid, groups)
