"""Server-side SASL (RFC 4422) without I/O: one ServerExchange per AUTH/AUTHENTICATE.

The protocol driver (IMAP AUTHENTICATE, POP3 AUTH, SMTP AUTH) owns the wire
framing ("+ ", "334 ", "+ " ...) and the base64 transport; this core only turns
client responses into the next Step:

- ``Challenge(data)``: send base64(data) to the client and feed its next line to
  ``step``;
- ``LoginCredentials`` / ``CramCredentials`` / ``ExternalCredentials``: the
  exchange is over, verify them through authd (authclient.auth_login /
  auth_cram / auth_pre) and answer success or failure;
- ``Failed(reason)``: the client cancelled or sent malformed data; answer the
  protocol's failure reply (the session goes on).

Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login-00), CRAM-MD5
(RFC 2195) and its SHA1/SHA256 variants (Courier's authlib names), EXTERNAL
(RFC 4422 Appendix A), and SCRAM-SHA-1/SCRAM-SHA-256 (RFC 5802/7677, without
channel binding). Only authd holds SCRAM keys, so the exchange needs two answers
from it in the middle, given as two more steps:

- ``ScramKeysWanted(mech, user)`` after client-first: ask authd for the salt and
  iteration count and call ``scram_keys(found)`` (None: unknown user, a made-up
  salt is used; ``unavailable=`` when authd could not be asked);
- ``ScramProofToCheck(proof)`` after client-final: ask authd to check the proof
  and call ``scram_verdict((info, server_signature) or None)``;

then the server-final-message goes out as a last challenge and the exchange
ends with ``VerifiedCredentials`` (info None: wrong password; ``unavailable``
set: authd could not be asked). Sans-I/O cores (pop3d, esmtpd) pass
``scram_events=True`` and turn those steps into events for their drivers; a
driver that runs the exchange itself (imapd's login) may instead pass a
``ScramBackend`` (libcourier.authclient.ScramAuthd) and the exchange answers
both steps through it.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from libcourier.sasl.scram import MECHANISMS as SCRAM_MECHANISMS
from libcourier.sasl.scram import MIN_ITERATIONS, ScramError, ScramProof, ScramServer

__all__ = [
    "CRAM_MECHANISMS",
    "IMPLEMENTED",
    "MAX_SASL_LINE",
    "PLAINTEXT_MECHANISMS",
    "SCRAM_MECHANISMS",
    "Challenge",
    "CramCredentials",
    "ExternalCredentials",
    "Failed",
    "LoginCredentials",
    "ScramBackend",
    "ScramKeysWanted",
    "ScramProofToCheck",
    "ScramUnavailable",
    "ServerExchange",
    "Step",
    "UnknownMechanism",
    "VerifiedCredentials",
    "cram_nonce",
    "decode_initial_response",
    "offered_mechanisms",
]

# One client line of base64: 12288 chars carry 9216 bytes, far more than any
# user name + password we accept below (Courier's authlib caps a request at 8 KB).
MAX_SASL_LINE = 12288
# Each decoded field (authzid, authcid, password, CRAM response).
MAX_FIELD = 1024
# Mechanisms that send the password itself (only over TLS unless allowed).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
CRAM_MECHANISMS = frozenset({"CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"})
# In the order we prefer to offer them when nothing else decides.
IMPLEMENTED = ("EXTERNAL", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-SHA256", "CRAM-SHA1",
               "CRAM-MD5", "PLAIN", "LOGIN")
# Unknown SCRAM users get a made-up salt stable for this process, so the answer to
# client-first does not tell who exists (RFC 5802 §9).
_FAKE_SALT_KEY = secrets.token_bytes(32)


class UnknownMechanism(ValueError):
    """The client named a mechanism we do not implement (IMAP NO, SMTP 504 5.5.4)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes  # send base64(data) to the client


@dataclass(frozen=True, slots=True)
class LoginCredentials:
    user: str
    password: str
    authzid: str  # "" or equal to user: a different one is refused before we get here


@dataclass(frozen=True, slots=True)
class CramCredentials:
    mech: str  # "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"
    challenge: bytes  # what we sent, e.g. b"<1896.697170952@postoffice.example.net>"
    response: bytes  # "user SP hex-digest", as the client sent it (decoded)


@dataclass(frozen=True, slots=True)
class ExternalCredentials:
    identity: str  # from the TLS client certificate


@dataclass(frozen=True, slots=True)
class VerifiedCredentials:
    """SCRAM: authd already checked the proof. info is the account (authclient.AuthInfo),
    None when the proof was wrong; `unavailable` says why authd could not be asked."""

    mech: str
    user: str
    info: Any = None
    unavailable: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


@dataclass(frozen=True, slots=True)
class ScramKeysWanted:
    """Ask authd for ``user``'s salt and iterations, then call ServerExchange.scram_keys()."""
    mech: str
    user: str


@dataclass(frozen=True, slots=True)
class ScramProofToCheck:
    """Ask authd to check the proof, then call ServerExchange.scram_verdict()."""
    proof: ScramProof

    def __repr__(self) -> str:
        return f"ScramProofToCheck(mech={self.proof.mech!r}, user={self.proof.user!r})"


class ScramUnavailable(Exception):
    """The SCRAM backend (authd) cannot answer now: the driver answers "try later"."""


class ScramBackend(Protocol):
    def salt(self, mech: str, user: str) -> tuple[bytes, int] | None: ...

    def verify(self, proof: ScramProof) -> tuple[Any, bytes] | None: ...


Step = (Challenge | LoginCredentials | CramCredentials | ExternalCredentials
        | VerifiedCredentials | ScramKeysWanted | ScramProofToCheck | Failed)


class _State(enum.Enum):
    START = enum.auto()
    PLAIN_WAIT = enum.auto()  # sent the empty challenge, want "authzid NUL authcid NUL passwd"
    LOGIN_USER = enum.auto()  # sent "Username:"
    LOGIN_PASS = enum.auto()  # sent "Password:"
    CRAM_WAIT = enum.auto()  # sent "<nonce@host>"
    EXTERNAL_WAIT = enum.auto()  # sent the empty challenge, want the authzid
    SCRAM_FIRST = enum.auto()  # want client-first
    SCRAM_KEYS = enum.auto()   # gave ScramKeysWanted, want scram_keys()
    SCRAM_FINAL = enum.auto()  # sent server-first, want client-final
    SCRAM_VERDICT = enum.auto()  # gave ScramProofToCheck, want scram_verdict()
    SCRAM_ACK = enum.auto()  # sent server-final, want the client's empty response
    DONE = enum.auto()


def cram_nonce(now: int) -> bytes:
    """The "random.time" part of a CRAM challenge (RFC 2195 §2: unique per exchange).

    The driver owns the clock and passes int(time.time()); the random part makes
    the challenge unguessable even within one second. Drivers pass the same value
    as SCRAM's server nonce (RFC 5802 §5.1: fresh and random), hence 64 bits of it.
    """
    return f"{secrets.randbits(64)}.{now}".encode("ascii")


def decode_initial_response(text: bytes) -> bytes | Failed:
    """An initial response as carried by SMTP AUTH / IMAP SASL-IR: "=" is empty (RFC 4954 §4)."""
    if text == b"=":
        return b""
    decoded = _b64decode(text)
    if decoded is None:
        return Failed("initial response is not valid base64")
    return decoded


def _b64decode(data: bytes) -> bytes | None:
    # RFC 4648 strict: no whitespace, no junk, correct padding.
    if len(data) > MAX_SASL_LINE:
        return None
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _text(field: bytes) -> str | None:
    # RFC 4616 §2: UTF-8 without NUL; we also refuse CR/LF, which would break the
    # authd protocol's line framing further down.
    if len(field) > MAX_FIELD or any(b in field for b in b"\0\r\n"):
        return None
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        return None


class ServerExchange:
    """One SASL authentication exchange, server side."""

    def __init__(self, mechanism: str, *, hostname: str, nonce: bytes | None = None,
                 external_identity: str | None = None,
                 scram: ScramBackend | None = None, scram_events: bool = False) -> None:
        mech = mechanism.upper()
        if mech not in IMPLEMENTED:
            raise UnknownMechanism(mechanism)
        if mech == "EXTERNAL" and not external_identity:
            # Without a verified client certificate there is nothing to assert.
            raise UnknownMechanism(mechanism)
        if mech in SCRAM_MECHANISMS and scram is None and not scram_events:
            raise UnknownMechanism(mechanism)   # nobody to ask for the keys
        self._scram_backend = scram
        self._scram: ScramServer | None = None
        self._scram_info: Any = None
        self._unavailable = ""
        self.mechanism = mech
        self._hostname = hostname
        self._nonce = nonce
        self._external = external_identity
        self._state = _State.START
        self._user = ""
        self._challenge = b""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def start(self, initial_response: bytes | None) -> Step:
        """Begin; ``initial_response`` is already base64-decoded (b"" for "=")."""
        return self._through_backend(self._start(initial_response))

    def step(self, client_data_b64: bytes) -> Step:
        """Feed the client's line (base64, without CRLF); b"*" cancels (RFC 4422 §3.5)."""
        return self._through_backend(self._step(client_data_b64))

    def scram_keys(self, found: tuple[bytes, int] | None, unavailable: str = "") -> Step:
        """authd's answer to ScramKeysWanted: (salt, iterations), None for no such user
        or no SCRAM keys, ``unavailable`` = why authd could not be asked."""
        if self._state is not _State.SCRAM_KEYS:
            raise RuntimeError("SASL exchange not waiting for SCRAM keys")
        assert self._scram is not None
        if unavailable:
            self._unavailable = unavailable
        if found is None:
            # RFC 5802 §9: the same answer for users who do not exist.
            fake = hmac.new(_FAKE_SALT_KEY, self._scram.user.encode("utf-8"),
                            hashlib.sha256).digest()
            found = (fake[:16], MIN_ITERATIONS)
        try:
            first = self._scram.server_first(*found)
        except ScramError as e:   # a stored iteration count out of bounds
            return self._fail(f"SCRAM keys: {e}")
        self._state = _State.SCRAM_FINAL
        return Challenge(first)

    def scram_verdict(self, result: tuple[Any, bytes] | None, unavailable: str = "") -> Step:
        """authd's answer to ScramProofToCheck: (account, ServerSignature), None for a
        wrong proof, ``unavailable`` = why authd could not be asked."""
        if self._state is not _State.SCRAM_VERDICT:
            raise RuntimeError("SASL exchange not waiting for a SCRAM verdict")
        assert self._scram is not None
        user = self._scram.user
        if unavailable or result is None:
            self._state = _State.DONE
            return VerifiedCredentials(self.mechanism, user, None, unavailable)
        self._scram_info, signature = result
        self._state = _State.SCRAM_ACK
        return Challenge(self._scram.server_final(signature))

    def _through_backend(self, step: Step) -> Step:
        # A driver that passed a ScramBackend gets the two SCRAM questions answered here.
        backend = self._scram_backend
        while backend is not None:
            if isinstance(step, ScramKeysWanted):
                try:
                    step = self.scram_keys(backend.salt(step.mech, step.user))
                except ScramUnavailable as e:
                    step = self.scram_keys(None, str(e) or "authentication backend unavailable")
            elif isinstance(step, ScramProofToCheck):
                try:
                    step = self.scram_verdict(backend.verify(step.proof))
                except ScramUnavailable as e:
                    step = self.scram_verdict(None, str(e) or "authentication backend unavailable")
            else:
                break
        return step

    def _start(self, initial_response: bytes | None) -> Step:
        if self._state is not _State.START:
            raise RuntimeError("SASL exchange already started")
        mech = self.mechanism
        if mech == "PLAIN":
            if initial_response is None:
                self._state = _State.PLAIN_WAIT
                return Challenge(b"")  # RFC 4422 §5: empty challenge, client sends all
            return self._plain(initial_response)
        if mech == "LOGIN":
            if initial_response is None or initial_response == b"":
                self._state = _State.LOGIN_USER
                return Challenge(b"Username:")
            return self._login_user(initial_response)
        if mech in SCRAM_MECHANISMS:
            snonce = (self._nonce.decode("ascii", "replace") if self._nonce
                      else secrets.token_urlsafe(18))
            try:
                self._scram = ScramServer(mech, snonce)
            except ScramError as e:
                return self._fail(str(e))
            if initial_response is None or initial_response == b"":
                self._state = _State.SCRAM_FIRST
                return Challenge(b"")   # RFC 4422 §5: the client speaks first
            return self._scram_first(initial_response)
        if mech in CRAM_MECHANISMS:
            # RFC 2195: the server speaks first; an initial response has no meaning.
            if initial_response:
                return self._fail("CRAM takes no initial response")
            nonce = self._nonce if self._nonce is not None else cram_nonce(0)
            self._challenge = b"<" + nonce + b"@" + self._hostname.encode("utf-8", "replace") + b">"
            self._state = _State.CRAM_WAIT
            return Challenge(self._challenge)
        # EXTERNAL (RFC 4422 Appendix A): the message is an optional authzid.
        if initial_response is None:
            self._state = _State.EXTERNAL_WAIT
            return Challenge(b"")
        return self._external_authzid(initial_response)

    def _step(self, client_data_b64: bytes) -> Step:
        if self._state in (_State.START, _State.DONE, _State.SCRAM_KEYS, _State.SCRAM_VERDICT):
            raise RuntimeError("SASL exchange not waiting for a response")
        line = client_data_b64.strip(b" \t")
        if line == b"*":
            return self._fail("authentication cancelled")
        if len(line) > MAX_SASL_LINE:
            return self._fail("response too long")
        data = _b64decode(line)
        if data is None:
            return self._fail("response is not valid base64")
        match self._state:
            case _State.PLAIN_WAIT:
                return self._plain(data)
            case _State.LOGIN_USER:
                return self._login_user(data)
            case _State.LOGIN_PASS:
                return self._login_pass(data)
            case _State.CRAM_WAIT:
                return self._cram(data)
            case _State.SCRAM_FIRST:
                return self._scram_first(data)
            case _State.SCRAM_FINAL:
                return self._scram_final(data)
            case _State.SCRAM_ACK:
                # RFC 5802 §5: the client answers the server-final-message with nothing.
                self._state = _State.DONE
                assert self._scram is not None
                return VerifiedCredentials(self.mechanism, self._scram.user, self._scram_info)
            case _:
                return self._external_authzid(data)

    # -- mechanisms ---------------------------------------------------------

    def _fail(self, reason: str) -> Failed:
        self._state = _State.DONE
        return Failed(reason)

    def _plain(self, data: bytes) -> Step:
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        parts = data.split(b"\0")
        if len(parts) != 3:
            return self._fail("PLAIN message must be authzid NUL authcid NUL password")
        fields = [_text(p) for p in parts]
        authzid, authcid, passwd = fields
        if authzid is None or authcid is None or passwd is None:
            return self._fail("PLAIN field too long or not UTF-8")
        if not authcid or not passwd:
            return self._fail("PLAIN authcid and password must not be empty")
        if authzid and authzid != authcid:
            # RFC 4616 §2: the server decides; we allow no proxy authorization.
            return self._fail("authorization identity differs from authentication identity")
        self._state = _State.DONE
        return LoginCredentials(authcid, passwd, authzid)

    def _login_user(self, data: bytes) -> Step:
        user = _text(data)
        if not user:
            return self._fail("LOGIN user name empty, too long or not UTF-8")
        self._user = user
        self._state = _State.LOGIN_PASS
        return Challenge(b"Password:")

    def _login_pass(self, data: bytes) -> Step:
        password = _text(data)
        if not password:
            return self._fail("LOGIN password empty, too long or not UTF-8")
        self._state = _State.DONE
        return LoginCredentials(self._user, password, "")

    def _cram(self, data: bytes) -> Step:
        # RFC 2195 §2: "user SP digest", digest in lowercase hex.
        user, sep, digest = data.rpartition(b" ")
        if not sep or _text(user) in (None, "") or len(data) > MAX_FIELD:
            return self._fail("CRAM response must be user SP hex-digest")
        size = {"CRAM-MD5": 32, "CRAM-SHA1": 40, "CRAM-SHA256": 64}[self.mechanism]
        if len(digest) != size or any(c not in b"0123456789abcdefABCDEF" for c in digest):
            return self._fail("CRAM digest is not a hex digest of the right length")
        self._state = _State.DONE
        return CramCredentials(self.mechanism, self._challenge, data)

    def _scram_first(self, data: bytes) -> Step:
        assert self._scram is not None
        try:
            req = self._scram.client_first(data)
        except ScramError as e:
            return self._fail(f"SCRAM client-first: {e}")
        self._state = _State.SCRAM_KEYS
        return ScramKeysWanted(self.mechanism, req.user)

    def _scram_final(self, data: bytes) -> Step:
        assert self._scram is not None
        try:
            proof = self._scram.client_final(data)
        except ScramError as e:
            return self._fail(f"SCRAM client-final: {e}")
        if self._unavailable:
            # authd could not give the keys: no point asking it about the proof.
            self._state = _State.DONE
            return VerifiedCredentials(self.mechanism, self._scram.user, None,
                                       self._unavailable)
        self._state = _State.SCRAM_VERDICT
        return ScramProofToCheck(proof)

    def _external_authzid(self, data: bytes) -> Step:
        authzid = _text(data)
        if authzid is None:
            return self._fail("EXTERNAL authorization identity too long or not UTF-8")
        assert self._external is not None  # checked in __init__
        if authzid and authzid != self._external:
            return self._fail("authorization identity differs from the certificate's")
        self._state = _State.DONE
        return ExternalCredentials(self._external)


def offered_mechanisms(configured: Iterable[str], *, tls: bool, allow_plaintext: bool,
                       external: bool = False, scram: bool = False) -> tuple[str, ...]:
    """The configured list (ESMTPAUTH, POP3AUTH, IMAP AUTH=...) filtered to what we implement.

    Order and case follow the configuration; duplicates drop. PLAIN and LOGIN
    only over TLS unless ``allow_plaintext`` (RFC 4954 §4, RFC 3501 §11.1);
    EXTERNAL only when the connection carries a verified client certificate;
    SCRAM-* only when the driver can answer the exchange's SCRAM steps (``scram``).
    """
    seen: list[str] = []
    for name in configured:
        mech = name.strip().upper()
        if mech.startswith("AUTH="):
            mech = mech[5:]
        if mech not in IMPLEMENTED or mech in seen:
            continue
        if mech in PLAINTEXT_MECHANISMS and not (tls or allow_plaintext):
            continue
        if mech == "EXTERNAL" and not external:
            continue
        if mech in SCRAM_MECHANISMS and not scram:
            continue
        seen.append(mech)
    return tuple(seen)
