"""What authdaemond does with one parsed request, without I/O (authdaemond.c doauth).

The worker parses bytes with libcourier.authproto.RequestParser, calls
`Authenticator.handle`, writes `Outcome.reply` (None: a temporary failure, the
connection is closed without a reply as Courier does) and logs `Outcome.log`.
Modules are reached through the `Module` protocol; they may raise BackendTempFail.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

from courier_authd.modules import Account, BackendTempFail, Module
from courier_authd.passwords import check_password, hash_password

from libcourier.authproto import (
    FAIL,
    OK,
    AuthRequest,
    EnumEntry,
    EnumerateRequest,
    PasswdRequest,
    PreRequest,
    Request,
    format_auth_reply,
    format_enumerate,
)

CRAM_TYPES = ("cram-md5", "cram-sha1", "cram-sha256")


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None          # None: temporary failure, hang up without replying
    log: tuple[str, ...] = ()    # lines for the log (never a password unless DEBUG_LOGIN=2)
    user: str | None = None      # who it was about, for the caller's own bookkeeping


def merge_options(account: str, default: str) -> str:
    """Account OPTIONS plus DEFAULTOPTIONS for the names the account does not set."""
    items = [o for o in account.split(",") if o.strip()]
    have = {o.split("=", 1)[0].strip() for o in items}
    items += [o for o in default.split(",") if o.strip() and o.split("=", 1)[0].strip() not in have]
    return ",".join(o.strip() for o in items)


class Authenticator:
    def __init__(self, modules: Sequence[Module], *, default_options: str = "",
                 debug_login: int = 0):
        self.modules = list(modules)
        self.default_options = default_options
        self.debug = debug_login

    # -- helpers ------------------------------------------------------------------------

    def _modules_for(self, name: str) -> list[Module]:
        if name == ".":
            return self.modules
        return [m for m in self.modules if m.name == name]

    def _reply(self, a: Account, service: str) -> bytes:
        pw = a.passwords.get(f"{service}pw") or a.passwords.get("systempw")
        return format_auth_reply({
            "UID": a.uid, "GID": a.gid, "HOME": a.home, "ADDRESS": a.address,
            "NAME": a.fullname, "MAILDIR": a.maildir, "QUOTA": a.quota,
            # printauth sends the crypted password (the socket directory is 0750, root:mail).
            "PASSWD": pw,
            "OPTIONS": merge_options(a.options, self.default_options) or None,
        })

    def _find(self, module: str, user: str, log: list[str]) -> tuple[Module, Account] | None:
        for m in self._modules_for(module):
            if self.debug:
                log.append(f"{m.name}: trying this module")
            a = m.lookup(user)
            if a is not None:
                return m, a
            if self.debug:
                log.append(f"{m.name}: REJECT - try next module")
        return None

    # -- requests -----------------------------------------------------------------------

    def handle(self, req: Request) -> Outcome:
        log: list[str] = []
        try:
            match req:
                case PreRequest():
                    return self._pre(req, log)
                case AuthRequest():
                    return self._auth(req, log)
                case PasswdRequest():
                    return self._passwd(req, log)
                case EnumerateRequest():
                    return self._enumerate(log)
                case _:
                    assert_never(req)
        except BackendTempFail as e:
            log.append(f"temporary problem: {e}")
            return Outcome(None, tuple(log))

    def _pre(self, req: PreRequest, log: list[str]) -> Outcome:
        if self.debug:
            log.append(f"received userid lookup request: {req.user}")
        found = self._find(req.module, req.user, log)
        if found is None:
            if self.debug:
                log.append("FAIL, all modules rejected")
            return Outcome(FAIL, tuple(log), req.user)
        return Outcome(self._reply(found[1], req.service), tuple(log), req.user)

    def _auth(self, req: AuthRequest, log: list[str]) -> Outcome:
        remote = req.meta.get("TCPREMOTEIP")
        if self.debug:
            log.append(f"received auth request, service={req.service}, authtype={req.authtype}"
                       + (f", ip=[{remote}]" if remote else ""))
        authtype = req.authtype.lower()
        if authtype in CRAM_TYPES:
            return self._cram(req, authtype, log)
        if authtype != "login":
            log.append(f"unsupported authentication type: {req.authtype[:32]}")
            return Outcome(FAIL, tuple(log))
        parts = req.fields()
        if len(parts) != 2:
            log.append("login: malformed authentication data")
            return Outcome(FAIL, tuple(log))
        try:
            user, password = parts[0].decode("utf-8"), parts[1].decode("utf-8")
        except UnicodeDecodeError:
            log.append("login: authentication data is not UTF-8")
            return Outcome(FAIL, tuple(log))
        if self.debug:
            log.append(f"username={user}"
                       + (f", password={password}" if self.debug >= 2 else ""))
        for m in self.modules:
            if self.debug:
                log.append(f"{m.name}: trying this module")
            a = m.lookup(user)
            if a is None:
                if self.debug:
                    log.append(f"{m.name}: REJECT - try next module")
                continue
            stored = a.passwords.get(f"{req.service}pw") or a.passwords.get("systempw", "")
            if stored and check_password(password, stored):
                if self.debug:
                    log.append("password matches successfully")
                return Outcome(self._reply(a, req.service), tuple(log), user)
            if self.debug >= 2:
                log.append(f"supplied password '{password}' does not match encrypted "
                           f"password '{stored}'")
            elif self.debug:
                log.append("supplied password does not match encrypted password")
        if self.debug:
            log.append("FAIL, all modules rejected")
        return Outcome(FAIL, tuple(log), user)

    def _cram(self, req: AuthRequest, authtype: str, log: list[str]) -> Outcome:
        parts = req.fields()
        user = None
        if len(parts) == 2:
            try:
                resp = base64.b64decode(parts[1], validate=True).decode("utf-8")
                user = resp.rsplit(" ", 1)[0] if " " in resp else None
            except (ValueError, UnicodeDecodeError):
                user = None
        # Courier keeps hmac-*pw as the precomputed inner/outer hash states
        # (userdbpw -hmac-md5); hashlib cannot resume from those, so CRAM is
        # refused until we store a usable secret.
        log.append(f"{authtype}: not supported by this server (user={user or '?'})")
        return Outcome(FAIL, tuple(log), user)

    def _passwd(self, req: PasswdRequest, log: list[str]) -> Outcome:
        if self.debug:
            log.append(f"received password change request, service={req.service}, "
                       f"user={req.user}")
        found = self._find(".", req.user, log)
        if found is None:
            return Outcome(FAIL, tuple(log), req.user)
        m, a = found
        pwfield = f"{req.service}pw" if a.passwords.get(f"{req.service}pw") else "systempw"
        stored = a.passwords.get(pwfield, "")
        if not stored or not check_password(req.oldpw, stored) or not req.newpw:
            log.append(f"password change for {req.user} refused: old password does not match")
            return Outcome(FAIL, tuple(log), req.user)
        if not m.change_password(a.address, pwfield, hash_password(req.newpw)):
            return Outcome(FAIL, tuple(log), req.user)
        log.append(f"password changed for {a.address}")
        return Outcome(OK, tuple(log), req.user)

    def _enumerate(self, log: list[str]) -> Outcome:
        out = []
        for m in self.modules:
            entries = [EnumEntry(a.address, a.uid, a.gid, a.home, a.maildir or "",
                                 merge_options(a.options, self.default_options))
                       for a in m.enumerate()]
            out.append((m.name, entries))
        return Outcome(format_enumerate(out), tuple(log))
