"""The POP3 AUTHORIZATION state, which runs as root (Courier's pop3login, DESIGN.md §2).

Greeting, CAPA, STLS, UTF8, USER/PASS, AUTH (RFC 5034), QUIT. Hard limits come from the core (255-octet
command lines, 10 bad commands, 3 failed logins); no mailbox is touched here.
On success the caller switches to the user for good and only then opens mail.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from courier_pop3d.config import Pop3dConfig
from courier_pop3d.core import (
    NEED_DATA,
    AuthRequest,
    Closed,
    Pop3Server,
    SaslAuth,
    ScramKeys,
    ScramProofCheck,
    StartTLS,
)

from libcourier.sasl import (
    CramCredentials,
    ExternalCredentials,
    LoginCredentials,
    VerifiedCredentials,
)
from libcourier.sasl.scram import ScramProof

log = logging.getLogger("courier.pop3d")

PRELOGIN_TIMEOUT = 60.0      # seconds of silence before an unauthenticated session is dropped
FAILED_LOGIN_DELAY = 2.0     # slows password guessing (Courier sleeps too)


class Wire(Protocol):
    """What the session needs from a libcourier.tcpd Connection."""
    sock: Any
    peer_ip: str
    peer_port: int
    tls: bool

    def sendall(self, data: bytes) -> None: ...
    def recv(self, n: int = 65536) -> bytes: ...
    def starttls(self, ctx: ssl.SSLContext) -> None: ...


class AuthUnavailable(Exception):
    """authd is down or timed out (authclient.AuthTempFail, translated by main)."""


Authenticator = Callable[[str, str, str], Any]   # (user, password, ip) -> AuthInfo | None


class SaslVerifier(Protocol):
    """Checks what a SASL exchange produced through authd (main binds the socket)."""
    def cram(self, cred: CramCredentials, ip: str) -> Any: ...      # AuthInfo | None
    def external(self, cred: ExternalCredentials, ip: str) -> Any: ...
    # SCRAM's two authd requests (raise AuthUnavailable like the others):
    def scram_keys(self, mech: str, user: str) -> tuple[bytes, int] | None: ...
    def scram_check(self, proof: ScramProof, ip: str) -> tuple[Any, bytes] | None: ...


@dataclass(slots=True)
class Counters:
    """Courier's LOGOUT accounting: octets in and out, message octets by TOP and RETR."""
    rcvd: int = 0
    sent: int = 0
    top: int = 0
    retr: int = 0


@dataclass(frozen=True, slots=True)
class LoginOK:
    user: str
    info: Any          # libcourier.authclient.AuthInfo


def flush(conn: Wire, core: Pop3Server, counters: Counters) -> None:
    out = core.data_to_send()
    if out:
        send(conn, out, counters)


def send(conn: Wire, data: bytes, counters: Counters) -> None:
    conn.sendall(data)
    counters.sent += len(data)


def read_event(conn: Wire, core: Pop3Server, counters: Counters) -> object | None:
    """The next event from the core, or None at EOF; TimeoutError propagates.

    Replies the core queued are sent before we wait for more input, so pipelined
    commands (RFC 2449 §6.6) get their answers in one write.
    """
    while True:
        ev = core.next_event()
        if ev is not NEED_DATA:
            return ev
        flush(conn, core, counters)
        data = conn.recv(65536)
        if not data:
            return None
        counters.rcvd += len(data)
        core.receive_data(data)


def prelogin(conn: Wire, core: Pop3Server, cfg: Pop3dConfig, authenticate: Authenticator,
             tls_context: ssl.SSLContext | None, counters: Counters,
             sleep: Callable[[float], None] = time.sleep,
             sasl: SaslVerifier | None = None) -> LoginOK | None:
    """Run AUTHORIZATION until a password is accepted (LoginOK) or the session ends (None).

    On LoginOK the core still waits for login_ok/login_refused: the caller
    answers once the switch to the user and the maildrop lock worked.
    """
    conn.sock.settimeout(PRELOGIN_TIMEOUT)
    while True:
        try:
            ev = read_event(conn, core, counters)
        except TimeoutError:
            return None
        if ev is None:
            return None
        flush(conn, core, counters)
        match ev:
            case Closed():
                return None
            case StartTLS():
                if tls_context is None:      # the core only accepts STLS when configured
                    return None
                try:
                    conn.starttls(tls_context)
                except (ssl.SSLError, OSError) as e:
                    log.info("STLS failed, ip=[%s]: %s", conn.peer_ip, e)
                    return None
                core.tls_started(cert_login(conn, cfg))
            case AuthRequest(user=user, password=password) | SaslAuth(
                    credentials=LoginCredentials(user=user, password=password)):
                user = _with_domain(user, cfg.defdomain)
                result = _verify(user, partial(authenticate, user, password, conn.peer_ip),
                                 conn, core, counters, sleep)
                if result is not _AGAIN:
                    return result
            case SaslAuth(credentials=CramCredentials() as cred):
                user = cred.response.rpartition(b" ")[0].decode("utf-8", "replace")
                result = _verify(user, partial(_sasl_check, sasl, cred, conn.peer_ip),
                                 conn, core, counters, sleep)
                if result is not _AGAIN:
                    return result
            case SaslAuth(credentials=ExternalCredentials(identity=user) as cred):
                result = _verify(user, partial(_sasl_check, sasl, cred, conn.peer_ip),
                                 conn, core, counters, sleep)
                if result is not _AGAIN:
                    return result
            case ScramKeys(mech=mech, user=user):
                # The core offers SCRAM only when main passed a verifier.
                assert sasl is not None
                try:
                    core.scram_keys(sasl.scram_keys(mech, user))
                except AuthUnavailable as e:
                    core.scram_keys(None, str(e) or "authdaemon unavailable")
            case ScramProofCheck(proof=proof):
                assert sasl is not None
                try:
                    core.scram_verdict(sasl.scram_check(proof, conn.peer_ip))
                except AuthUnavailable as e:
                    core.scram_verdict(None, str(e) or "authdaemon unavailable")
            case SaslAuth(credentials=VerifiedCredentials(user=user) as cred):
                # SCRAM: authd has already checked the proof; this is its verdict.
                result = _verify(user, partial(_scram_verdict, cred), conn, core, counters,
                                 sleep)
                if result is not _AGAIN:
                    return result
            case _:
                raise AssertionError(f"unexpected event before login: {ev!r}")


_AGAIN = object()     # the login failed, AUTHORIZATION goes on


def cert_login(conn: Wire, cfg: Pop3dConfig) -> str | None:
    """TLS_EXTERNAL's login from the client certificate (tcpd's Connection.peer_identity);
    None without TLS_EXTERNAL, a verified certificate, or on a Wire that has no such call."""
    identity = getattr(conn, "peer_identity", None)
    return identity(cfg.tls_external) if identity is not None and cfg.tls_external else None


def _sasl_check(sasl: SaslVerifier | None, cred: Any, ip: str) -> Any:
    if sasl is None:
        return None
    if isinstance(cred, CramCredentials):
        return sasl.cram(cred, ip)
    return sasl.external(cred, ip)


def _scram_verdict(cred: VerifiedCredentials) -> Any:
    if cred.unavailable:
        raise AuthUnavailable(cred.unavailable)
    return cred.info


def _with_domain(user: str, defdomain: str) -> str:
    if defdomain and "@" not in user:
        user += defdomain if defdomain.startswith("@") else "@" + defdomain
    return user


def _verify(user: str, check: Callable[[], Any], conn: Wire, core: Pop3Server,
            counters: Counters, sleep: Callable[[float], None]) -> LoginOK | None | object:
    """Ask authd (through `check`) and answer the core: LoginOK, None (session over) or
    _AGAIN (failed or unavailable, the client may try again)."""
    try:
        info = check()
    except AuthUnavailable:
        log.warning("authdaemon unavailable, user=%s, ip=[%s]", user, conn.peer_ip)
        core.login_unavailable()
        return _AGAIN
    if info is None:
        log.info("LOGIN FAILED, user=%s, ip=[%s]", user, conn.peer_ip)
        sleep(FAILED_LOGIN_DELAY)
        core.login_failed()
        return _AGAIN
    if _option(info, "disablepop3"):
        log.info("LOGIN FAILED, user=%s, ip=[%s] (POP3 disabled)", user, conn.peer_ip)
        core.login_refused("POP3 access disabled for this account.", "SYS/PERM")
        flush(conn, core, counters)
        return None
    if _option(info, "disableinsecurepop3") and not conn.tls:
        core.login_refused("POP3 access disabled via insecure connection.",
                           "SYS/PERM")
        flush(conn, core, counters)
        return None
    return LoginOK(user, info)


def _option(info: Any, name: str) -> bool:
    """An authd OPTIONS flag (e.g. disablepop3=1), read as authlib's auth_getoptionenvint:
    the leading integer, or true when the value starts with t/T/y/Y."""
    v = (getattr(info, "options", None) or {}).get(name)
    if not v:
        return False
    digits = ""
    for c in v.lstrip("+-"):
        if not c.isdigit():
            break
        digits += c
    if digits and int(digits) != 0:
        return True
    return v[0] in "tTyY"
