"""The pre-login dialogue, which runs as root (Courier's model, DESIGN.md §2).

Greeting, CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE (RFC 3501
§6.2.2, with SASL-IR, RFC 4959, through libcourier.sasl). Hard limits come from core.PRELOGIN_LIMITS (8 KB lines, 1 KB
literals); no mailbox, no MIME, nothing from the user's files is touched here.
On success the caller switches to the user for good and only then opens mail.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from courier_imapd.config import ImapdConfig, capability_line, sasl_mechanisms
from courier_imapd.core import (
    NEED_DATA,
    Authenticate,
    BadCommand,
    Capability,
    Id,
    IdleDone,
    ImapConnection,
    Login,
    Logout,
    Noop,
    StartTLS,
    State,
    bad,
    tagged,
    untagged,
)
from courier_imapd.ident import id_log_text, id_response

from libcourier.authclient import ScramAuthd
from libcourier.proto import LineTooLong
from libcourier.sasl import (
    Challenge,
    CramCredentials,
    ExternalCredentials,
    Failed,
    LoginCredentials,
    ServerExchange,
    UnknownMechanism,
    VerifiedCredentials,
    cram_nonce,
    decode_initial_response,
)

log = logging.getLogger("courier.imapd")

PRELOGIN_TIMEOUT = 60.0       # seconds of silence before a pre-login session is dropped
FAILED_LOGIN_DELAY = 2.0      # Courier sleeps after a failed login to slow guessing
MAX_FAILED_LOGINS = 3


class Wire(Protocol):
    """What the session needs from a tcpd Connection."""
    sock: Any
    peer_ip: str
    peer_port: int
    tls: bool

    def sendall(self, data: bytes) -> None: ...
    def recv(self, n: int = 65536) -> bytes: ...
    def starttls(self, ctx: ssl.SSLContext) -> None: ...


class AuthUnavailable(Exception):
    """authd is down or timed out (authclient.AuthTempFail, translated by main)."""


@dataclass(frozen=True, slots=True)
class LoginOK:
    tag: str           # the caller answers it once the switch to the user worked
    user: str
    info: Any          # libcourier.authclient.AuthInfo


Authenticator = Callable[[str, str, str], Any]   # (user, password, ip) -> AuthInfo | None
Credentials = LoginCredentials | CramCredentials | ExternalCredentials | VerifiedCredentials
# (credentials, ip) -> AuthInfo | None; raises AuthUnavailable like Authenticator.
SaslAuthenticator = Callable[[Credentials, str], Any]


def password_only(authenticate: Authenticator) -> SaslAuthenticator:
    """A SaslAuthenticator that verifies PLAIN/LOGIN through ``authenticate`` only."""
    def verify(creds: Credentials, ip: str) -> Any:
        if isinstance(creds, LoginCredentials):
            return authenticate(creds.user, creds.password, ip)
        return None
    return verify


@dataclass(slots=True)
class Counters:
    rcvd: int = 0
    sent: int = 0
    body: int = 0


def read_event(conn: Wire, core: ImapConnection, counters: Counters) -> object | None:
    """The next command from the client, or None on EOF. socket.timeout propagates."""
    while True:
        ev = core.next_event()
        if ev is not NEED_DATA:
            return ev
        out = core.data_to_send()
        if out:
            send(conn, out, counters)
        data = conn.recv(65536)
        if not data:
            return None
        counters.rcvd += len(data)
        core.receive_data(data)


def send(conn: Wire, data: bytes, counters: Counters) -> None:
    conn.sendall(data)
    counters.sent += len(data)


def greeting(cfg: ImapdConfig, tls: bool, external: bool = False) -> bytes:
    return untagged(f"OK [CAPABILITY {capability_line(cfg, tls, external)}] courier-py IMAP ready")


def _cert_login(conn: Wire, cfg: ImapdConfig) -> str | None:
    """TLS_EXTERNAL's login from the client certificate (tcpd's Connection.peer_identity);
    None without TLS_EXTERNAL, a verified certificate, or on a Wire that has no such call."""
    identity = getattr(conn, "peer_identity", None)
    return identity(cfg.tls_external) if identity is not None and cfg.tls_external else None


def prelogin(conn: Wire, core: ImapConnection, cfg: ImapdConfig, authenticate: Authenticator,
             tls_context: ssl.SSLContext | None, counters: Counters,
             sleep: Callable[[float], None] = time.sleep,
             sasl_authenticate: SaslAuthenticator | None = None) -> LoginOK | None:
    """Run the not-authenticated state; LoginOK on success, None when the session ends."""
    failures = 0
    verify = sasl_authenticate or password_only(authenticate)
    conn.sock.settimeout(PRELOGIN_TIMEOUT)
    # TLS_EXTERNAL: the login a verified client certificate gives (after STARTTLS too).
    ext = _cert_login(conn, cfg)
    send(conn, greeting(cfg, conn.tls, ext is not None), counters)
    while True:
        try:
            ev = read_event(conn, core, counters)
        except TimeoutError:
            send(conn, untagged("BYE Autologout; idle for too long"), counters)
            return None
        if ev is None:
            return None
        match ev:
            case BadCommand():
                send(conn, bad(ev), counters)
            case IdleDone():
                send(conn, untagged("BAD Unexpected DONE"), counters)
            case Capability(tag=tag):
                send(conn, untagged("CAPABILITY " + capability_line(cfg, conn.tls, ext is not None))
                     + tagged(tag, "OK", "CAPABILITY completed"), counters)
            case Noop(tag=tag):
                send(conn, tagged(tag, "OK", "NOOP completed"), counters)
            case Id(tag=tag, params=params):
                # RFC 2971 §3.1: ID is valid in every state; clients send it before login.
                if cfg.id_fields is None:
                    send(conn, tagged(tag, "BAD", "ID is not enabled"), counters)
                    continue
                # Courier's line: "ID, user=..., ip=[...], port=[...], name=..., ..."
                log.info("ID, user=, ip=[%s], port=[%d]%s", conn.peer_ip, conn.peer_port,
                         id_log_text(params))
                send(conn, untagged(id_response(cfg.id_fields)) + tagged(tag, "OK", "ID completed"),
                     counters)
            case Logout(tag=tag):
                send(conn, untagged("BYE Courier-IMAP server shutting down")
                     + tagged(tag, "OK", "LOGOUT completed"), counters)
                return None
            case StartTLS(tag=tag):
                # RFC 3501 §6.2.1: only on a plain connection with a certificate.
                if conn.tls or tls_context is None or not cfg.starttls:
                    send(conn, tagged(tag, "NO", "STARTTLS not available"), counters)
                    continue
                send(conn, tagged(tag, "OK", "Begin SSL/TLS negotiation now."), counters)
                # Anything pipelined after STARTTLS came in the clear: drop it, so it
                # cannot be injected into the TLS session (CVE-2011-0411's class).
                core.discard_buffer()
                try:
                    conn.starttls(tls_context)
                except (ssl.SSLError, OSError) as e:
                    log.info("STARTTLS failed, ip=[%s]: %s", conn.peer_ip, e)
                    return None
                ext = _cert_login(conn, cfg)
            case Authenticate(tag=tag, mechanism=mech, initial_response=initial):
                if mech not in sasl_mechanisms(cfg, conn.tls, ext is not None):
                    send(conn, tagged(tag, "NO", "Unsupported authentication mechanism"), counters)
                    continue
                try:
                    creds = sasl_exchange(conn, core, mech, initial, counters,
                                          scram=ScramAuthd.for_config(cfg.etc, "imap",
                                                                      conn.peer_ip),
                                          external_identity=ext)
                except EOFError:
                    return None
                if isinstance(creds, Failed):
                    # RFC 3501 §6.2.2: BAD for a cancelled or malformed exchange.
                    send(conn, tagged(tag, "BAD", creds.reason), counters)
                    continue
                user = creds.identity if isinstance(creds, ExternalCredentials) else \
                    creds.user if isinstance(creds, (LoginCredentials, VerifiedCredentials)) else \
                    creds.response.rpartition(b" ")[0].decode("utf-8", "replace")
                result = _verify(conn, tag, user, partial(verify, creds, conn.peer_ip), counters,
                                 mech)
                if result is None:
                    continue
                if not isinstance(result, LoginOK):
                    failures += 1
                    sleep(FAILED_LOGIN_DELAY)
                    send(conn, tagged(tag, "NO", "[AUTHENTICATIONFAILED] "
                                      "Authentication failed."), counters)
                    if failures >= MAX_FAILED_LOGINS:
                        send(conn, untagged("BYE Too many failed logins"), counters)
                        return None
                    continue
                core.set_state(State.AUTHENTICATED)
                return result
            case Login(tag=tag, user=user, password=password):
                if cfg.tls_required and not conn.tls and cfg.starttls:
                    send(conn, tagged(tag, "NO", "STARTTLS first", "PRIVACYREQUIRED"), counters)
                    continue
                if cfg.defdomain and "@" not in user:
                    user += cfg.defdomain if cfg.defdomain.startswith("@") else "@" + cfg.defdomain
                result = _verify(conn, tag, user, partial(authenticate, user, password,
                                                          conn.peer_ip), counters, "")
                if result is None:
                    continue
                if not isinstance(result, LoginOK):
                    failures += 1
                    sleep(FAILED_LOGIN_DELAY)
                    send(conn, tagged(tag, "NO", "Login failed."), counters)
                    if failures >= MAX_FAILED_LOGINS:
                        send(conn, untagged("BYE Too many failed logins"), counters)
                        return None
                    continue
                core.set_state(State.AUTHENTICATED)
                return result
            case _:
                # The command table lets nothing else through in this state.
                send(conn, tagged(getattr(ev, "tag", "*"), "BAD", "Not allowed now"), counters)


def _verify(conn: Wire, tag: str, user: str, check: Callable[[], Any], counters: Counters,
            how: str) -> LoginOK | bool | None:
    """Ask authd: LoginOK, False (refused; the caller delays and counts), None (answered NO
    [UNAVAILABLE] already: authd is down, which is never a bad password)."""
    try:
        info = check()
    except AuthUnavailable:
        log.warning("authdaemon unavailable, user=%s, ip=[%s]", user, conn.peer_ip)
        send(conn, tagged(tag, "NO", "[UNAVAILABLE] Temporary problem, please try again later"),
             counters)
        return None
    if info is not None and "disableimap" in getattr(info, "options", {}) and \
            info.options.get("disableimap", "1") not in ("0",):
        info = None
    if info is None:
        # Courier's log lines: "method=" only for AUTHENTICATE.
        log.info("LOGIN FAILED, %suser=%s, ip=[%s]", f"method={how}, " if how else "", user,
                 conn.peer_ip)
        return False
    log.info("LOGIN, user=%s, ip=[%s], port=[%d], protocol=IMAP%s",
             user, conn.peer_ip, conn.peer_port, f", method={how}" if how else "")
    return LoginOK(tag, user, info)


def sasl_exchange(conn: Wire, core: ImapConnection, mech: str, initial: bytes | None,
                  counters: Counters, scram: ScramAuthd | None = None,
                  external_identity: str | None = None) -> Credentials | Failed:
    """Run one AUTHENTICATE exchange to its end (RFC 3501 §6.2.2); EOFError if the client goes."""
    first: bytes | None = None
    if initial is not None:
        decoded = decode_initial_response(initial)   # RFC 4959 §3: "=" is empty
        if isinstance(decoded, Failed):
            return decoded
        first = decoded
    try:
        ex = ServerExchange(mech, hostname=socket.gethostname(),
                            nonce=cram_nonce(int(time.time())), scram=scram,
                            external_identity=external_identity)
    except UnknownMechanism:
        return Failed("Unsupported authentication mechanism")
    step = ex.start(first)
    while isinstance(step, Challenge):
        send(conn, b"+ " + base64.b64encode(step.data) + b"\r\n", counters)
        while True:
            try:
                line = core.next_sasl_line()
            except LineTooLong:
                return Failed("Authentication response too long")
            if line is not NEED_DATA:
                break
            data = conn.recv(65536)
            if not data:
                raise EOFError
            counters.rcvd += len(data)
            core.receive_data(data)
        assert isinstance(line, bytes)
        step = ex.step(line)
    return step
