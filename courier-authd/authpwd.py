"""authpwd: system accounts from getpwnam (courier-authlib's authpwd.c, authsyscommon.c);
the passwd-entry helpers authshadow and authpam share.

authpwd takes the password from getpwnam's pw_passwd (useful only where the passwd
file still holds hashes); authshadow from /etc/shadow, which we read ourselves: the
stdlib spwd module is gone in Python 3.13. Home, uid and gid come from the passwd
entry; NAME is the GECOS up to the first comma; MAILDIR is left to the daemon's
default (./Maildir), as Courier does. Accounts with uid 0 are refused: no mail
login may become root. Changing a system password (Courier runs passwd(1)
through a pty) is not done: PASSWD answers FAIL for these modules.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path

from courier_authd.modules import Account

log = logging.getLogger("courier.authd")

MAX_NAME = 256


def passwd_entry(user: str) -> pwd.struct_passwd | None:
    if not user or len(user) > MAX_NAME or any(c in user for c in ":\0\n/"):
        return None
    try:
        p = pwd.getpwnam(user)
    except KeyError:
        return None
    if p.pw_uid == 0:
        log.warning("%s has uid 0: not a mail account", user)
        return None
    return p


def system_account(p: pwd.struct_passwd, password: str | None) -> Account:
    return Account(address=p.pw_name, uid=p.pw_uid, gid=p.pw_gid, home=p.pw_dir,
                   fullname=p.pw_gecos.split(",", 1)[0] or None,
                   passwords={"systempw": password} if password else {})


class PwdModule:
    """authpwd: getpwnam(3) and its pw_passwd."""

    name = "authpwd"

    def lookup(self, user: str) -> Account | None:
        p = passwd_entry(user)
        if p is None:
            return None
        hashed = p.pw_passwd if p.pw_passwd not in ("x", "*", "!", "") else None
        return system_account(p, hashed)

    def enumerate(self) -> list[Account]:
        return [system_account(p, None) for p in pwd.getpwall() if p.pw_uid != 0]

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool:
        log.error("%s: changing a system password is not supported", self.name)
        return False


def load(etc: Path) -> PwdModule:  # noqa: ARG001 - make_modules' signature
    return PwdModule()
