"""authshadow: system accounts, passwords from /etc/shadow (courier-authlib's
authshadow.c). The stdlib spwd module is gone in Python 3.13, so the file is read
here; an account past its shadow(5) expiry date cannot log in.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from courier_authd.authpwd import PwdModule, passwd_entry, system_account
from courier_authd.modules import Account, BackendTempFail

log = logging.getLogger("courier.authd")

SHADOW = Path("/etc/shadow")
MAX_SHADOW = 16 * 1024 * 1024


def read_shadow(user: str, path: Path = SHADOW, today: int | None = None) -> str | None:
    """The hash field of `user` in a shadow(5) file, None when absent, locked out by
    the expiry date, or empty. BackendTempFail when the file cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SHADOW + 1)
    except OSError as e:
        raise BackendTempFail(f"{path}: {e.strerror}") from None
    if len(data) > MAX_SHADOW:
        raise BackendTempFail(f"{path}: larger than {MAX_SHADOW} bytes")
    want = user.encode("utf-8", "surrogateescape") + b":"
    for line in data.split(b"\n"):
        if not line.startswith(want):
            continue
        fields = line.decode("utf-8", "surrogateescape").split(":")
        if len(fields) < 2 or not fields[1]:
            return None
        # shadow(5) field 8: the account expiry, in days since 1970-01-01.
        if len(fields) > 7 and fields[7].strip().isdigit():
            now_days = today if today is not None else int(time.time() // 86400)
            if int(fields[7]) <= now_days:
                log.info("authshadow: %s: account expired", user)
                return None
        return fields[1]
    return None


class ShadowModule(PwdModule):
    """authshadow: getpwnam(3) for the account, /etc/shadow for the password."""

    name = "authshadow"

    def __init__(self, shadow: Path = SHADOW) -> None:
        self.shadow = shadow
        if not os.access(shadow, os.R_OK):
            log.warning("authshadow: %s is not readable: logins will fail", shadow)

    def lookup(self, user: str) -> Account | None:
        p = passwd_entry(user)
        if p is None:
            return None
        return system_account(p, read_shadow(p.pw_name, self.shadow))


def load(etc: Path) -> ShadowModule:  # noqa: ARG001 - make_modules' signature
    return ShadowModule()
