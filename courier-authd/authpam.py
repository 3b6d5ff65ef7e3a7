"""authpam: passwords checked by PAM (courier-authlib's authpam.c), through python-pam.

The PAM service is the name the mail daemon sends (Courier's: `imap`, `pop3`,
`esmtp`; /etc/pam.d/imap and so on), and PAM's account management must pass
too. Home, uid and gid come from the passwd entry, as in Courier. PAM cannot say
whether it could verify CRAM, so this module offers PLAIN and LOGIN only. A PAM
module that errors out (rather than refusing) is a temporary failure. Changing
passwords through PAM (pam_chauthtok) is not done: PASSWD answers FAIL.
"""

from __future__ import annotations

import logging
import pwd
from pathlib import Path

import pam
from courier_authd.authpwd import passwd_entry, system_account
from courier_authd.modules import Account, BackendTempFail

log = logging.getLogger("courier.authd")

MAX_SERVICE = 64
# Answers that mean "PAM is broken" rather than "no" (wrong password, unknown user,
# expired account): the client is told to try later, not that its password is wrong.
_BROKEN = frozenset(getattr(pam, n) for n in (
    "PAM_OPEN_ERR", "PAM_SYMBOL_ERR", "PAM_SERVICE_ERR", "PAM_SYSTEM_ERR", "PAM_BUF_ERR",
    "PAM_ABORT", "PAM_TRY_AGAIN", "PAM_MODULE_UNKNOWN", "PAM_CONV_ERR"))


class PamModule:
    name = "authpam"
    takes_service = True

    def __init__(self) -> None:
        self._pam = pam.pam()   # loads libpam now, before any fork

    def lookup(self, user: str, service: str = "") -> Account | None:
        p = passwd_entry(user)
        return system_account(p, None) if p is not None else None

    def authenticate(self, user: str, password: str, service: str = "") -> Account | None:
        p = passwd_entry(user)
        if p is None or not password:
            return None
        svc = service or "login"
        if len(svc) > MAX_SERVICE or any(c in svc for c in "/\0\n") or svc.startswith("."):
            return None
        ok = self._pam.authenticate(p.pw_name, password, service=svc, resetcreds=False)
        if ok:
            return system_account(p, None)
        if getattr(self._pam, "code", None) in _BROKEN:
            raise BackendTempFail(f"PAM service {svc}: {getattr(self._pam, 'reason', '')}")
        return None

    def enumerate(self) -> list[Account]:
        return [system_account(p, None) for p in pwd.getpwall() if p.pw_uid != 0]

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool:
        log.error("authpam: changing passwords through PAM is not supported")
        return False

    def sasl_mechanisms(self) -> frozenset[str]:
        return frozenset({"PLAIN", "LOGIN"})



def load(etc: Path) -> PamModule:  # noqa: ARG001 - make_modules' signature
    return PamModule()
