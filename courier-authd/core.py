"""What authdaemond does with one parsed request, without I/O (authdaemond.c doauth).

The worker parses bytes with libcourier.authproto.RequestParser, calls
`Authenticator.handle`, writes `Outcome.reply` (None: a temporary failure, the
connection is closed without a reply as Courier does) and logs `Outcome.log`.
Modules are reached through the `Module` protocol; they may raise BackendTempFail.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import assert_never

from courier_authd.modules import Account, BackendTempFail, Module
from courier_authd.passwords import (
    check_cram,
    check_password,
    hash_password,
    scram_keys,
)
from courier_authd.throttle import ThrottleTable

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
from libcourier.sasl.scram import MECHANISMS as SCRAM_MECHS
from libcourier.sasl.scram import ScramError, verify_proof

CRAM_TYPES = ("cram-md5", "cram-sha1", "cram-sha256")
SCRAM_TYPES = {m.lower(): m for m in SCRAM_MECHS}   # "scram-sha-256" -> "SCRAM-SHA-256"
CACHE_MAX = 10_000   # cached successful logins per worker
BASE_MECHANISMS = frozenset({"PLAIN", "LOGIN"})


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


def module_mechanisms(m: Module) -> frozenset[str]:
    """The SASL mechanisms a module can verify: its own `sasl_mechanisms()` when it has
    one, else PLAIN/LOGIN, plus CRAM-* and SCRAM-* when it keeps clear passwords (the
    SQL modules' CLEAR_PWFIELD)."""
    own = getattr(m, "sasl_mechanisms", None)
    if callable(own):
        return frozenset(own())
    if getattr(getattr(m, "cfg", None), "clear_field", ""):
        return BASE_MECHANISMS | {"CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", *SCRAM_MECHS}
    return BASE_MECHANISMS


class Authenticator:
    """`throttle` (shared by the workers) with `lock` around it; `cache_ttl` > 0 keeps
    successful login replies that long in this worker (Courier's cache is off by default
    too). `handle(req, now)`: the worker passes its monotonic clock."""

    def __init__(self, modules: Sequence[Module], *, default_options: str = "",
                 debug_login: int = 0, throttle: ThrottleTable | None = None,
                 lock: AbstractContextManager | None = None, cache_ttl: float = 0.0):
        self.modules = list(modules)
        self.default_options = default_options
        self.debug = debug_login
        self.throttle = throttle
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.cache_ttl = cache_ttl
        self._cache: dict[bytes, tuple[float, bytes, str]] = {}
        self._now = 0.0

    def mechanisms(self) -> frozenset[str]:
        out: set[str] = set()
        for m in self.modules:
            out |= module_mechanisms(m)
        return frozenset(out)

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

    @staticmethod
    def _lookup(m: Module, user: str, service: str) -> Account | None:
        # Modules whose queries use the service (the $(service) of Courier's SQL
        # clauses) say so with takes_service and get it as a second argument.
        if getattr(m, "takes_service", False):
            return m.lookup(user, service)  # type: ignore[call-arg]
        return m.lookup(user)

    def _find(self, module: str, user: str, log: list[str], service: str = ""
              ) -> tuple[Module, Account] | None:
        for m in self._modules_for(module):
            if self.debug:
                log.append(f"{m.name}: trying this module")
            a = self._lookup(m, user, service)
            if a is not None:
                return m, a
            if self.debug:
                log.append(f"{m.name}: REJECT - try next module")
        return None

    # -- requests -----------------------------------------------------------------------

    def handle(self, req: Request, now: float = 0.0) -> Outcome:
        self._now = now
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
        found = self._find(req.module, req.user, log, req.service)
        if found is None:
            if self.debug:
                log.append("FAIL, all modules rejected")
            return Outcome(FAIL, tuple(log), req.user)
        return Outcome(self._reply(found[1], req.service), tuple(log), req.user)

    # -- throttling and the cache ---------------------------------------------------------

    def _blocked(self, user: str | None, ip: str | None, log: list[str]) -> bool:
        if self.throttle is None:
            return False
        with self.lock:
            left = self.throttle.blocked_for(user, ip, self._now)
        if left > 0:
            log.append(f"throttled: {user or '?'} from [{ip or '?'}], "
                       f"{left:.0f}s left after repeated failures")
            return True
        return False

    def _failed(self, user: str | None, ip: str | None, log: list[str]) -> None:
        if self.throttle is not None:
            with self.lock:
                n = self.throttle.failed(user, ip, self._now)
            if self.throttle.policy.delay(n) > 0:
                log.append(f"{n} failures for {user or '?'} or [{ip or '?'}]: next try refused "
                           f"for {self.throttle.policy.delay(n):.0f}s")

    def _succeeded(self, user: str | None, ip: str | None) -> None:
        if self.throttle is not None:
            with self.lock:
                self.throttle.succeeded(user, ip, self._now)

    def _cache_key(self, req: AuthRequest) -> bytes:
        return hashlib.sha256(b"\0".join((req.service.encode(), req.authtype.lower().encode(),
                                          req.authdata))).digest()

    # -- AUTH ---------------------------------------------------------------------------

    def _auth(self, req: AuthRequest, log: list[str]) -> Outcome:
        remote = req.meta.get("TCPREMOTEIP")
        if self.debug:
            log.append(f"received auth request, service={req.service}, authtype={req.authtype}"
                       + (f", ip=[{remote}]" if remote else ""))
        authtype = req.authtype.lower()
        if authtype in CRAM_TYPES:
            return self._cram(req, authtype, log)
        if authtype in SCRAM_TYPES:
            return self._scram(req, SCRAM_TYPES[authtype], log)
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
            # Courier logs the password at DEBUG_LOGIN=2; we never do.
            log.append(f"username={user}")
        if self._blocked(user, remote, log):
            return Outcome(FAIL, tuple(log), user)
        key = b""
        if self.cache_ttl > 0:
            key = self._cache_key(req)
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._now:
                if self.debug:
                    log.append("result cache hit")
                return Outcome(hit[1], tuple(log), hit[2])
        for m in self.modules:
            if self.debug:
                log.append(f"{m.name}: trying this module")
            a = self._login_one(m, user, password, req.service)
            if a is None:
                if self.debug:
                    log.append(f"{m.name}: REJECT - try next module")
                continue
            if self.debug:
                log.append("password matches successfully")
            reply = self._reply(a, req.service)
            self._succeeded(user, remote)
            if key:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = (self._now + self.cache_ttl, reply, user)
            return Outcome(reply, tuple(log), user)
        if self.debug:
            log.append("FAIL, all modules rejected")
        self._failed(user, remote, log)
        return Outcome(FAIL, tuple(log), user)

    def _login_one(self, m: Module, user: str, password: str, service: str) -> Account | None:
        """One module's verdict: its own `authenticate` (PAM, LDAP bind, SQL) when it has
        one, else the stored `<service>pw`, `systempw` or clear password."""
        own = getattr(m, "authenticate", None)
        if callable(own):
            if getattr(m, "takes_service", False):
                return own(user, password, service)
            return own(user, password)
        a = self._lookup(m, user, service)
        if a is None:
            return None
        stored = a.passwords.get(f"{service}pw") or a.passwords.get("systempw", "")
        if stored:
            ok = check_password(password, stored)
        else:
            clear = a.passwords.get("clearpw", "")
            ok = bool(clear) and check_password(password, "{PLAIN}" + clear)
        return a if ok else None

    def _cram(self, req: AuthRequest, authtype: str, log: list[str]) -> Outcome:
        """authdaemond's cram: "<b64 challenge>\n<b64 response>\n"; the response is
        "user SP hexdigest" (cramlib.c auth_get_cram). Checked per module against
        `<service>-hmac-<h>pw`, then `hmac-<h>pw` (authuserdb), a clear password, or a
        {PLAIN}/{CRAM-*} `<service>pw`/`systempw`."""
        name = authtype[5:]
        remote = req.meta.get("TCPREMOTEIP")
        parts = req.fields()
        try:
            if len(parts) != 2:
                raise ValueError
            challenge = base64.b64decode(parts[0], validate=True)
            resp = base64.b64decode(parts[1], validate=True).decode("utf-8")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            log.append(f"{authtype}: invalid base64 encoding")
            return Outcome(FAIL, tuple(log))
        user, sp, digest = resp.rpartition(" ")
        if not sp or not user or any(c in user for c in "\0\r\n"):
            log.append(f"{authtype}: malformed response")
            return Outcome(FAIL, tuple(log))
        if self.debug:
            log.append(f"cram: decoded challenge/response, username '{user}'")
        if self._blocked(user, remote, log):
            return Outcome(FAIL, tuple(log), user)
        for m in self.modules:
            if self.debug:
                log.append(f"{m.name}: trying this module")
            own = getattr(m, "cram", None)
            if callable(own):
                # The module verifies CRAM itself (authpipe hands the request to its
                # program as Courier's does).
                a = own(req.service, authtype, req.authdata)
                ok = a is not None
            else:
                a = self._lookup(m, user, req.service)
                ok = a is not None and any(check_cram(name, challenge, digest, v)
                                           for v in self._cram_secrets(a, name, req.service))
            if ok:
                assert a is not None
                if self.debug:
                    log.append("cram validation succeeded")
                self._succeeded(user, remote)
                return Outcome(self._reply(a, req.service), tuple(log), user)
            if self.debug:
                log.append(f"{m.name}: REJECT - try next module")
        if self.debug:
            log.append("FAIL, all modules rejected")
        self._failed(user, remote, log)
        return Outcome(FAIL, tuple(log), user)

    @staticmethod
    def _cram_secrets(a: Account, name: str, service: str) -> list[str]:
        pw = a.passwords
        own = pw.get(f"{service}-hmac-{name}pw") or pw.get(f"hmac-{name}pw")
        if own:
            return [own]   # authuserdb looks no further (preauthuserdbcommon.c)
        out = []
        if pw.get("clearpw"):
            out.append("{PLAIN}" + pw["clearpw"])
        stored = pw.get(f"{service}pw") or pw.get("systempw")
        if stored:
            out.append(stored)
        return out

    def _scram_keys(self, a: Account, mech: str, service: str, user: str):
        pw = a.passwords
        field = mech.lower()
        for v in (pw.get(f"{service}-{field}pw"), pw.get(f"{field}pw"),
                  pw.get(f"{service}pw") or pw.get("systempw"),
                  "{PLAIN}" + pw["clearpw"] if pw.get("clearpw") else None):
            if v:
                keys = scram_keys(mech, v, user)
                if keys is not None:
                    return keys
        return None

    def _scram(self, req: AuthRequest, mech: str, log: list[str]) -> Outcome:
        """Our extension for SCRAM (Courier's authlib has none), two requests:

        AUTH ... scram-sha-256 "<b64 user>\n" -> "SALT=<b64>\nITERATIONS=<n>\n.\n" or FAIL;
        AUTH ... scram-sha-256 "<b64 client-first-bare>\n<b64 server-first>\n
        <b64 client-final-without-proof>\n<b64 proof>\n" -> the account's reply with
        SCRAM_SIGNATURE=<b64 ServerSignature>, or FAIL. Keys come from a
        `<service>-scram-sha-256pw` / `scram-sha-256pw` field ({SCRAM-SHA-256} form), a
        {SCRAM-*} `<service>pw`/`systempw`, or a clear password."""
        remote = req.meta.get("TCPREMOTEIP")
        try:
            parts = [base64.b64decode(p, validate=True) for p in req.fields()]
            if len(parts) == 1:
                user = parts[0].decode("utf-8")
            elif len(parts) == 4:
                bare = parts[0].decode("utf-8")
                attrs = bare.split(",")
                if not attrs[0].startswith("n="):
                    raise ValueError
                user = attrs[0][2:].replace("=2C", ",").replace("=3D", "=")
            else:
                raise ValueError
        except (ValueError, binascii.Error, UnicodeDecodeError):
            log.append(f"{mech}: malformed request")
            return Outcome(FAIL, tuple(log))
        if not user or any(c in user for c in "\0\r\n"):
            return Outcome(FAIL, tuple(log))
        if len(parts) == 4 and self._blocked(user, remote, log):
            return Outcome(FAIL, tuple(log), user)
        for m in self.modules:
            a = self._lookup(m, user, req.service)
            keys = self._scram_keys(a, mech, req.service, user) if a is not None else None
            if keys is None:
                continue
            if len(parts) == 1:
                return Outcome(b"SALT=%s\nITERATIONS=%d\n.\n"
                               % (base64.b64encode(keys.salt), keys.iterations), tuple(log), user)
            try:
                auth_message = b",".join(parts[:3])
                sig = verify_proof(SCRAM_MECHS[mech], keys, auth_message, parts[3])
            except ScramError:
                sig = None
            if sig is None:
                break   # the keys were found: a wrong proof is a failure, not "next module"
            self._succeeded(user, remote)
            body = self._reply(a, req.service)  # type: ignore[arg-type]
            return Outcome(body[:-2] + b"SCRAM_SIGNATURE=" + base64.b64encode(sig) + b"\n.\n",
                           tuple(log), user)
        if len(parts) == 4:
            self._failed(user, remote, log)
        if self.debug:
            log.append("FAIL, all modules rejected")
        return Outcome(FAIL, tuple(log), user)

    def _passwd(self, req: PasswdRequest, log: list[str]) -> Outcome:
        if self.debug:
            log.append(f"received password change request, service={req.service}, "
                       f"user={req.user}")
        self._cache.clear()   # no cached answer may outlive the old password
        # Courier's authdaemond walks authmodulelist in order: a module that does not
        # know the user passes to the next, the first one that does decides (changed
        # or refused), so the same name further down the list is never touched.
        for m in self.modules:
            if self.debug:
                log.append(f"{m.name}: trying this module")
            change = getattr(m, "passwd", None)
            if change is not None:
                # Modules with their own PASSWD (Courier's CHPASS clause needs the clear
                # new password, LDAP_AUTHBIND binds as the user): None = not our user.
                done = change(req.user, req.oldpw, req.newpw, req.service)
                if done is None:
                    continue
                log.append(f"password {'changed' if done else 'change refused'} for "
                           f"{req.user} ({m.name})")
                return Outcome(OK if done else FAIL, tuple(log), req.user)
            a = self._lookup(m, req.user, req.service)
            if a is not None:
                return self._change_stored(m, a, req, log)
        if self.debug:
            log.append("FAIL, no module knows the user")
        return Outcome(FAIL, tuple(log), req.user)

    def _change_stored(self, m: Module, a: Account, req: PasswdRequest,
                       log: list[str]) -> Outcome:
        """PASSWD for a module that only stores hashes: check the old one, write the new."""
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
