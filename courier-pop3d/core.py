"""The POP3 protocol without I/O: bytes in, replies and events out (RFC 1939, 2449, 2595).

`Pop3Server` takes what the client sent (`receive_data`), answers every
command it can decide on its own into an output buffer (`data_to_send`) and
hands the driver an event for the rest (`next_event`):

    AuthRequest  USER/PASS complete: ask authd, then login_ok / login_failed /
                 login_unavailable / login_refused
    SaslAuth     AUTH (RFC 5034) exchange complete: verify the credentials through
                 authd, then answer as for AuthRequest (SCRAM: authd already
                 checked them, VerifiedCredentials carries its verdict)
    ScramKeys    AUTH SCRAM-*: ask authd for the user's salt, then scram_keys()
    ScramProof   AUTH SCRAM-*: ask authd to check the proof, then scram_verdict()
    StartTLS     STLS accepted: the "+OK" is queued, the receive buffer dropped;
                 handshake, then tls_started()
    Retrieve     RETR/TOP of a valid message: open it, respond_retrieve(ok),
                 then stream it through a WireEncoder
    Update       QUIT in TRANSACTION: remove the DELE'd messages, update_done()
    Closed       the session is over (QUIT in AUTHORIZATION, too many errors)

The maildrop is a `DropView` (sizes and UIDLs); deletion marks live here, so
nothing touches the disk before the UPDATE state (RFC 1939 §6). The core
imports nothing of socket, ssl, os, time or logging.

Grammar (RFC 1939 §3, RFC 2449 §3): a command is a case-insensitive keyword
of 3-4 characters, then arguments separated by a single space, ending in CRLF;
a command line is at most 255 octets including the CRLF (RFC 2449 §4). The
client's lines inside an AUTH exchange are base64 and may be longer (RFC 5034
§4), up to libcourier.sasl.MAX_SASL_LINE.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer
from libcourier.sasl import (
    MAX_SASL_LINE,
    Challenge,
    CramCredentials,
    ExternalCredentials,
    Failed,
    LoginCredentials,
    ScramKeysWanted,
    ScramProofToCheck,
    ServerExchange,
    UnknownMechanism,
    VerifiedCredentials,
    decode_initial_response,
    offered_mechanisms,
)
from libcourier.sasl.scram import ScramProof

__all__ = ["NEED_DATA"]

MAX_COMMAND_LINE = 255      # RFC 2449 §4, including CRLF
MAX_NUMBER_DIGITS = 10      # a message number or line count longer than this is nonsense


class State(Enum):
    AUTHORIZATION = "AUTHORIZATION"   # RFC 1939 §4
    TRANSACTION = "TRANSACTION"       # RFC 1939 §5
    UPDATE = "UPDATE"                 # RFC 1939 §6: QUIT seen, deletions in progress
    CLOSED = "CLOSED"


# -- commands (what the parser makes of a line) ---------------------------------------------

@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    password: str

    def __repr__(self) -> str:     # never let a password reach a log through repr()
        return "Pass(password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Simple:
    verb: str                       # STAT RSET NOOP QUIT CAPA STLS


@dataclass(frozen=True, slots=True)
class MsgArg:
    verb: str                       # LIST UIDL (msg may be None), RETR DELE
    msg: int | None


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: str                  # RFC 5034 §4: AUTH mechanism [initial-response]
    initial: bytes | None           # still base64 ("=" for an empty one)

    def __repr__(self) -> str:
        return f"Auth(mechanism={self.mechanism!r}, initial=<hidden>)"


@dataclass(frozen=True, slots=True)
class BadCommand:
    text: str                       # the -ERR text


Command = User | Pass | Simple | MsgArg | Top | Auth


# -- events for the driver ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuthRequest:
    user: str
    password: str

    def __repr__(self) -> str:
        return f"AuthRequest(user={self.user!r}, password=<hidden>)"


Credentials = LoginCredentials | CramCredentials | ExternalCredentials | VerifiedCredentials


@dataclass(frozen=True, slots=True)
class SaslAuth:
    credentials: Credentials

    def __repr__(self) -> str:
        return f"SaslAuth({type(self.credentials).__name__}, <hidden>)"


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """RFC 5802 after client-first: authd's salt and iteration count for `user`."""
    mech: str
    user: str


@dataclass(frozen=True, slots=True)
class ScramProofCheck:
    """RFC 5802 after client-final: authd checks the proof (the driver holds no keys)."""
    proof: ScramProof

    def __repr__(self) -> str:
        return f"ScramProofCheck(mech={self.proof.mech!r}, user={self.proof.user!r})"


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Retrieve:
    index: int                      # 0-based index into the DropView
    lines: int | None               # TOP's body line count; None for RETR
    # RFC 6856: 8-bit headers to a client that did not send UTF8; the driver sends the
    # message inside Courier's notice (unicode_wrapper) and says so to respond_retrieve.
    wrap: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    deleted: tuple[int, ...]        # 0-based indexes to remove


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = AuthRequest | SaslAuth | ScramKeys | ScramProofCheck | StartTLS | Retrieve | Update | Closed


@dataclass(frozen=True, slots=True)
class DropView:
    """What the core needs to know of the maildrop: per message its size and UIDL."""
    sizes: tuple[int, ...]          # octets as sent (CRLF), RFC 1939 §11
    uidls: tuple[str, ...]          # RFC 1939 §7: 1-70 chars 0x21-0x7E
    utf8: tuple[bool, ...] = ()     # 8-bit headers (Courier's isutf8); () = none has


@dataclass(frozen=True, slots=True)
class Options:
    stls: bool = False              # a certificate is configured and STLS is enabled
    tls: bool = False               # the connection is already TLS (pop3d-ssl)
    tls_required: bool = False      # POP3_TLS_REQUIRED: no USER/PASS in the clear
    login_delay: int = 10           # advertised only (RFC 2449 §6.5), as Courier does
    implementation: str = "courier-py"
    max_bad_commands: int = 10
    max_failed_logins: int = 3
    # SASL (RFC 5034): Courier's POP3AUTH (clear) and POP3AUTH_TLS (under TLS) lists,
    # already cut down to what authd can verify; hostname for CRAM challenges.
    sasl: tuple[str, ...] = ()
    sasl_tls: tuple[str, ...] = ()
    hostname: str = "localhost"
    external_identity: str | None = None   # a verified TLS client certificate's identity
    nonce: Callable[[], bytes] | None = None  # CRAM's "random.time" (the driver owns the clock)
    scram: bool = False             # the driver answers ScramKeys/ScramProofCheck (authd can)


# Which verbs each state accepts (RFC 1939 §4-5, RFC 2449 §5 CAPA in both, RFC 2595 §4 STLS
# only before login). Anything else is answered -ERR and the session goes on.
ALLOWED: dict[State, frozenset[str]] = {
    # RFC 6856 §2: UTF8 is an AUTHORIZATION-state command.
    State.AUTHORIZATION: frozenset({"USER", "PASS", "QUIT", "CAPA", "STLS", "AUTH", "UTF8"}),
    State.TRANSACTION: frozenset({"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET",
                                  "NOOP", "QUIT", "CAPA"}),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}
# APOP needs the plain-text password on the server; LANG (RFC 6856 §3) is not offered
# by Courier's pop3d either (its CAPA has no LANG line and it answers "Invalid command").
KNOWN_VERBS = frozenset().union(*ALLOWED.values()) | {"APOP", "LANG"}


def ok(text: str) -> bytes:
    return b"+OK " + text.encode("utf-8") + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    # RFC 2449 §8: an extended response code in brackets right after "-ERR ".
    prefix = f"[{code}] " if code else ""
    return b"-ERR " + (prefix + text).encode("utf-8") + b"\r\n"


def multiline(first: bytes, lines: Sequence[str]) -> bytes:
    """A multi-line response (RFC 1939 §3): lines dot-stuffed, ended by "."."""
    body = "".join(("." + ln if ln.startswith(".") else ln) + "\r\n" for ln in lines)
    return first + body.encode("utf-8") + b".\r\n"


def _number(arg: str) -> int | None:
    if not arg.isascii() or not arg.isdigit() or len(arg) > MAX_NUMBER_DIGITS:
        return None
    return int(arg)


def parse_command(line: bytes) -> Command | BadCommand:
    """One command line (with or without its CRLF) -> a Command, or BadCommand with the -ERR text."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BadCommand("Invalid characters in command.")
    if any(c < " " and c != "\t" or c == "\x7f" for c in text):
        return BadCommand("Invalid characters in command.")
    verb, _, rest = text.partition(" ")
    verb = verb.upper()
    if not verb:
        return BadCommand("Invalid command.")
    if verb not in KNOWN_VERBS:
        return BadCommand("Invalid command.")
    if verb == "PASS":
        # RFC 1939 §7 (PASS): the password may contain spaces; it is the rest of the line.
        if not rest:
            return BadCommand("Syntax error: PASS needs a password.")
        return Pass(rest)
    args = rest.split(" ") if rest else []
    if any(a == "" for a in args):
        return BadCommand("Syntax error: arguments are separated by one space.")
    match verb:
        case "USER":
            if len(args) != 1:
                return BadCommand("Syntax error: USER needs one name.")
            return User(args[0])
        case "AUTH":
            # RFC 5034 §4: AUTH mechanism [initial-response]. AUTH alone is not in
            # RFC 5034 (RFC 1734 had no listing form either); CAPA lists mechanisms.
            if len(args) not in (1, 2):
                return BadCommand("Syntax error: AUTH mechanism [initial-response].")
            return Auth(args[0].upper(), args[1].encode("ascii", "replace")
                        if len(args) == 2 else None)
        case "STAT" | "RSET" | "NOOP" | "QUIT" | "CAPA" | "STLS" | "UTF8":
            if args:
                return BadCommand(f"Syntax error: {verb} takes no arguments.")
            return Simple(verb)
        case "LIST" | "UIDL" | "RETR" | "DELE":
            optional = verb in ("LIST", "UIDL")
            if len(args) > 1 or (not args and not optional):
                return BadCommand(f"Syntax error: {verb} needs one message number."
                                  if not optional else f"Syntax error: {verb} [msg].")
            if not args:
                return MsgArg(verb, None)
            n = _number(args[0])
            if n is None:
                return BadCommand("Invalid message number.")
            return MsgArg(verb, n)
        case "TOP":
            if len(args) != 2:
                return BadCommand("Syntax error: TOP msg n.")
            n, k = _number(args[0]), _number(args[1])
            if n is None or k is None:
                return BadCommand("Syntax error: TOP msg n with numbers.")
            return Top(n, k)
        case _:   # APOP, LANG: known to exist, not offered here
            return BadCommand(f"{verb} is not supported.")


class Pop3Server:
    """One POP3 session's protocol state (the server side)."""

    def __init__(self, options: Options = Options(),
                 greeting: str = "Hello there."):
        self.options = options
        self.tls = options.tls
        # TLS_EXTERNAL's login; the driver gives a new one after STLS (tls_started).
        self.external_identity = options.external_identity
        self.state = State.AUTHORIZATION
        self._in = ReceiveBuffer(MAX_COMMAND_LINE)
        self._out = bytearray()
        self._pending: Event | None = None     # waiting for the driver's answer
        self._ready: Event | None = None       # decided by a driver's answer, not yet taken
        self._user: str | None = None
        self._bad = 0
        self._failed_logins = 0
        self._view = DropView((), ())
        self._deleted: set[int] = set()
        self._close_reason: str | None = None
        self._sasl: ServerExchange | None = None    # an AUTH exchange in progress
        self.utf8 = False                           # RFC 6856 §2: UTF8 issued
        self._out += ok(greeting)

    # -- plumbing ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._in.feed(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._close_reason = reason

    def next_event(self) -> Event | object:
        """The next event for the driver, or NEED_DATA when more input is needed."""
        while True:
            if self.state is State.CLOSED:
                return Closed(self._close_reason or "closed")
            if self._pending is not None:
                raise RuntimeError(f"the driver has not answered {self._pending!r}")
            if self._ready is not None:
                self._pending, self._ready = self._ready, None
                return self._pending
            try:
                line = self._in.next_line()
            except LineTooLong:
                if self._sasl is not None:
                    self._sasl_step_result(Failed("response too long"))
                    continue
                self._bad_command("Command line too long.")
                continue
            if line is NEED_DATA:
                return NEED_DATA
            assert isinstance(line, bytes)
            if self._sasl is not None:
                ev = self._sasl_step_result(self._sasl.step(line.rstrip(b"\r\n")))
            else:
                ev = self._handle(parse_command(line))
            if ev is not None:
                if not isinstance(ev, Closed):
                    self._pending = ev
                return ev

    def _bad_command(self, text: str) -> None:
        self._bad += 1
        self._out += err(text)
        if self._bad >= self.options.max_bad_commands:
            self._out += err("Too many bad commands, closing the connection.")
            self._close("too many bad commands")

    # -- dispatch ---------------------------------------------------------------------------

    def _handle(self, cmd: Command | BadCommand) -> Event | None:
        if isinstance(cmd, BadCommand):
            self._bad_command(cmd.text)
            return None
        verb = {User: "USER", Pass: "PASS", Top: "TOP", Auth: "AUTH"}.get(type(cmd)) \
            or cmd.verb  # type: ignore[union-attr]
        if verb not in ALLOWED[self.state]:
            self._bad_command(f"{verb} is not valid in the {self.state.value} state.")
            return None
        if self.state is State.AUTHORIZATION:
            return self._authorization(cmd)
        return self._transaction(cmd)

    # -- RFC 1939 §4, §7: AUTHORIZATION -----------------------------------------------------

    def _authorization(self, cmd: Command) -> Event | None:
        match cmd:
            case Simple(verb="QUIT"):
                self._out += ok("Bye-bye.")
                self._close("quit")
                return Closed("quit")
            case Simple(verb="CAPA"):
                self._capa()
            case Simple(verb="UTF8"):
                # RFC 6856 §2: from now on user names, passwords and SASL identities
                # are UTF-8 (we accept them either way) and messages go out unaltered.
                self.utf8 = True
                self._out += ok("UTF8 enabled")
            case Auth(mechanism=mech, initial=initial):
                return self._auth(mech, initial)
            case Simple(verb="STLS"):
                # RFC 2595 §4: only before login, only once, only with a certificate.
                if self.tls:
                    self._out += err("Already using TLS.")
                elif not self.options.stls:
                    self._out += err("STLS is not available.")
                else:
                    self._out += ok("Begin SSL/TLS negotiation now.")
                    # Bytes pipelined after STLS arrived in the clear: drop them so they
                    # cannot be injected into the TLS session (CVE-2011-0411's class).
                    self._in.take_all()
                    self._user = None
                    return StartTLS()
            case User(name=name):
                if self._tls_needed():
                    self._out += err("TLS required to log in.", "AUTH")
                    return None
                self._user = name
                self._out += ok("Password required.")
            case Pass(password=password):
                if self._tls_needed():
                    self._out += err("TLS required to log in.", "AUTH")
                    return None
                if self._user is None:
                    self._out += err("USER first.")
                    return None
                user, self._user = self._user, None
                return AuthRequest(user, password)
        return None

    def _tls_needed(self) -> bool:
        return self.options.tls_required and not self.tls

    # -- RFC 5034: AUTH -----------------------------------------------------------------------

    def sasl_mechanisms(self) -> tuple[str, ...]:
        """What CAPA's SASL line offers now (FORMATS.md §2.2): POP3AUTH_TLS under TLS,
        POP3AUTH in the clear; PLAIN/LOGIN in the clear only where USER/PASS is
        allowed there too; EXTERNAL only with a verified client certificate."""
        o = self.options
        configured = o.sasl_tls if self.tls else o.sasl
        # Courier appends EXTERNAL to the list when a certificate gives a login.
        return offered_mechanisms((*configured, "EXTERNAL"), tls=self.tls,
                                  allow_plaintext=not self._tls_needed(),
                                  external=self.tls and self.external_identity is not None,
                                  scram=o.scram)

    def _auth(self, mech: str, initial: bytes | None) -> Event | None:
        if mech not in self.sasl_mechanisms():
            # RFC 5034 §4: an unsupported mechanism is refused and AUTHORIZATION goes on.
            self._out += err("Unsupported authentication mechanism.", "AUTH"
                             if self._tls_needed() else None)
            return None
        decoded: bytes | None = None
        if initial is not None:
            d = decode_initial_response(initial)
            if isinstance(d, Failed):
                return self._sasl_step_result(d)
            decoded = d
        try:
            nonce = self.options.nonce() if self.options.nonce else None
            exchange = ServerExchange(mech, hostname=self.options.hostname, nonce=nonce,
                                      external_identity=self.external_identity,
                                      scram_events=self.options.scram)
        except UnknownMechanism:
            self._out += err("Unsupported authentication mechanism.")
            return None
        self._sasl = exchange
        # The client's answers are base64 lines that may exceed 255 octets (RFC 5034 §4).
        self._in.max_line = MAX_SASL_LINE + 2
        return self._sasl_step_result(exchange.start(decoded))

    def _sasl_step_result(self, step: object) -> Event | None:
        match step:
            case Challenge(data=data):
                # RFC 5034 §4: "+" SP base64 challenge (empty for an empty challenge).
                self._out += b"+ " + base64.b64encode(data) + b"\r\n"
                return None
            case Failed():
                self._end_sasl()
                # RFC 5034 §4: cancelled or malformed -> -ERR, still in AUTHORIZATION.
                self._bad_command("Authentication aborted.")
                return None
            case ScramKeysWanted(mech=mech, user=user):
                return ScramKeys(mech, user)
            case ScramProofToCheck(proof=proof):
                return ScramProofCheck(proof)
            case LoginCredentials() | CramCredentials() | ExternalCredentials() | \
                    VerifiedCredentials():
                self._end_sasl()
                return SaslAuth(step)
        raise AssertionError(f"unexpected SASL step {step!r}")

    def _end_sasl(self) -> None:
        self._sasl = None
        self._in.max_line = MAX_COMMAND_LINE

    def capabilities(self) -> list[str]:
        """RFC 2449 §5 CAPA lines, in Courier's pop3dcapa order (FORMATS.md §2.2)."""
        caps: list[str] = []
        mechs = self.sasl_mechanisms()
        if mechs:
            caps.append("SASL " + " ".join(mechs))
        if self.state is State.AUTHORIZATION and self.options.stls and not self.tls:
            caps.append("STLS")
        caps.append("TOP")
        if not self._tls_needed():
            caps.append("USER")
        caps += [f"LOGIN-DELAY {self.options.login_delay}", "PIPELINING", "UIDL",
                 "UTF8 USER", "RESP-CODES", "AUTH-RESP-CODE",
                 f"IMPLEMENTATION {self.options.implementation}"]
        return caps

    def _capa(self) -> None:
        self._out += multiline(ok("Here's what I can do:"), self.capabilities())

    # -- driver answers -----------------------------------------------------------------------

    def _answer(self, kind: type | tuple[type, ...]) -> None:
        if not isinstance(self._pending, kind):
            raise RuntimeError(f"no {kind!r} is waiting for an answer")
        self._pending = None

    def scram_keys(self, found: tuple[bytes, int] | None, unavailable: str = "") -> None:
        """authd's answer to ScramKeys: (salt, iterations), None (no such user or no
        SCRAM keys: the exchange goes on with a made-up salt), or why it could not answer."""
        self._answer(ScramKeys)
        assert self._sasl is not None
        self._ready = self._sasl_step_result(self._sasl.scram_keys(found, unavailable))

    def scram_verdict(self, result: tuple[object, bytes] | None, unavailable: str = "") -> None:
        """authd's answer to ScramProofCheck: (account, ServerSignature) or None (wrong);
        the final SaslAuth comes from next_event() once the client acknowledged."""
        self._answer(ScramProofCheck)
        assert self._sasl is not None
        self._ready = self._sasl_step_result(self._sasl.scram_verdict(result, unavailable))

    def login_ok(self, view: DropView) -> None:
        self._answer((AuthRequest, SaslAuth))
        self._view = view
        self._deleted = set()
        self.state = State.TRANSACTION
        self._out += ok("logged in.")

    def login_failed(self) -> None:
        """Wrong user or password (the driver has already waited its delay)."""
        self._answer((AuthRequest, SaslAuth))
        self._failed_logins += 1
        self._out += err("Login failed.", "AUTH")     # RFC 3206 §4 AUTH
        if self._failed_logins >= self.options.max_failed_logins:
            self._out += err("Too many failed logins, closing the connection.")
            self._close("too many failed logins")

    def login_unavailable(self) -> None:
        """authd is down or timed out: try again later (RFC 3206 §4 SYS/TEMP)."""
        self._answer((AuthRequest, SaslAuth))
        self._out += err("Temporary problem, please try again later.", "SYS/TEMP")

    def login_refused(self, text: str, code: str | None) -> None:
        """Authenticated, but the maildrop cannot be used (IN-USE, disabled, broken).

        The driver may already have switched to the user, so the session ends.
        """
        self._answer((AuthRequest, SaslAuth))
        self._out += err(text, code)
        self._close("login refused")

    def tls_started(self, external_identity: str | None = None) -> None:
        """STLS's handshake is done; external_identity: the client certificate's login."""
        self._answer(StartTLS)
        self.tls = True
        self.external_identity = external_identity

    def _wrap(self, i: int) -> bool:
        return not self.utf8 and i < len(self._view.utf8) and self._view.utf8[i]

    def respond_retrieve(self, opened: bool, wrapper_octets: int = 0) -> None:
        """Queue RETR/TOP's status line; when opened, the driver then streams the message.

        wrapper_octets: the length of the notice around a wrapped message, which
        Courier adds (as stored, LF ends) to the size it announces.
        """
        ev = self._pending
        self._answer(Retrieve)
        assert isinstance(ev, Retrieve)
        if not opened:
            self._out += err("Can't open the message file - it's gone!")
        elif ev.lines is None:
            self._out += ok(f"{self._view.sizes[ev.index] + wrapper_octets} octets follow.")
        else:
            self._out += ok("headers follow.")

    def update_done(self, failed: int = 0) -> None:
        """RFC 1939 §6: +OK when every DELE'd message is gone, else -ERR; then close."""
        self._answer(Update)
        if failed:
            self._out += err(f"{failed} message(s) could not be deleted.", "SYS/TEMP")
        else:
            self._out += ok("Bye-bye.")
        self._close("quit")

    # -- RFC 1939 §5: TRANSACTION -------------------------------------------------------------

    def _msg(self, n: int) -> int | None:
        """0-based index of message n, or None after answering -ERR."""
        if n < 1 or n > len(self._view.sizes):
            self._out += err("Invalid message number.")
            return None
        if n - 1 in self._deleted:
            self._out += err(f"Message {n} has been deleted.")
            return None
        return n - 1

    def _live(self) -> list[int]:
        return [i for i in range(len(self._view.sizes)) if i not in self._deleted]

    def _transaction(self, cmd: Command) -> Event | None:
        v = self._view
        match cmd:
            case Simple(verb="QUIT"):
                self.state = State.UPDATE
                return Update(tuple(sorted(self._deleted)))
            case Simple(verb="CAPA"):
                self._capa()
            case Simple(verb="STAT"):
                live = self._live()
                self._out += ok(f"{len(live)} {sum(v.sizes[i] for i in live)}")
            case Simple(verb="NOOP"):
                self._out += ok("Yup.")
            case Simple(verb="RSET"):
                self._deleted.clear()
                self._out += ok("Resurrected.")
            case MsgArg(verb="LIST", msg=None):
                live = self._live()
                # Message numbers stay those of the session's start (RFC 1939 §5).
                self._out += multiline(
                    ok(f"{len(live)} messages ({sum(v.sizes[i] for i in live)} octets)"),
                    [f"{i + 1} {v.sizes[i]}" for i in live])
            case MsgArg(verb="UIDL", msg=None):
                self._out += multiline(ok(""), [f"{i + 1} {v.uidls[i]}" for i in self._live()])
            case MsgArg(verb=verb, msg=n):
                assert n is not None
                i = self._msg(n)
                if i is None:
                    return None
                if verb == "LIST":
                    self._out += ok(f"{n} {v.sizes[i]}")
                elif verb == "UIDL":
                    self._out += ok(f"{n} {v.uidls[i]}")
                elif verb == "DELE":
                    self._deleted.add(i)
                    self._out += ok("Deleted.")
                else:
                    return Retrieve(i, None, self._wrap(i))
            case Top(msg=n, lines=k):
                i = self._msg(n)
                if i is not None:
                    return Retrieve(i, k, self._wrap(i))
        return None


# -- message bytes on the wire (RFC 1939 §3 byte-stuffing) -------------------------------------

class WireEncoder:
    """Turns a stored message into what RETR/TOP send, chunk by chunk, as Courier's pop3d does.

    Every LF becomes CRLF and every other byte is sent as is (a stored CRLF goes
    out as CR CR LF, exactly as Courier's do_retr() sends it, so the sizes in a
    courierpop3dsizelist Courier wrote stay true); a line starting with "." gets
    one more "." (RFC 1939 §3). When the message does not end in LF (or is
    empty) a CRLF follows, which the size does not count (Courier's size is
    octets + LFs). `finish()` adds the ".\\r\\n". For TOP (`body_lines` set) the
    header, the blank line ("" or a lone CR before the LF) and that many body
    lines are sent, then `done` turns true and the caller may stop reading.

    `octets` counts the message's octets plus one per LF: the size LIST reports.
    """

    __slots__ = ("body_lines", "done", "octets", "stuffed", "_at_start", "_in_header",
                 "_line_head")

    def __init__(self, body_lines: int | None = None):
        self.body_lines = body_lines
        self.done = False
        self.octets = 0
        self.stuffed = 0
        self._at_start = True        # the next byte starts a line
        self._in_header = True
        self._line_head = b""        # the first two bytes of the current line (TOP)

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        if self.body_lines is None:
            return self._plain(chunk)
        out = bytearray()
        pos, n = 0, len(chunk)
        while pos < n:
            if self._at_start and not self._in_header:
                if self.body_lines == 0:
                    self.done = True
                    break
                self.body_lines -= 1
            nl = chunk.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            seg = chunk[pos:end]
            if self._at_start:
                self._line_head = b""
            if self._in_header and len(self._line_head) < 2:
                self._line_head += seg[:2 - len(self._line_head)]
            out += self._plain(seg)
            if nl >= 0 and self._in_header and self._line_head in (b"\n", b"\r\n"):
                self._in_header = False     # the blank line ends the header (RFC 5322 §2.1)
            pos = end
        return bytes(out)

    def _plain(self, chunk: bytes) -> bytes:
        """LF to CRLF and dot-stuffing over a whole chunk at C speed."""
        lfs = chunk.count(b"\n")
        self.octets += len(chunk) + lfs
        body = chunk.replace(b"\n", b"\r\n") if lfs else chunk
        stuffed = body.count(b"\n.")
        if stuffed:
            body = body.replace(b"\n.", b"\n..")
        if self._at_start and body[:1] == b".":
            body = b"." + body
            stuffed += 1
        self.stuffed += stuffed
        self._at_start = body.endswith(b"\n")
        return body

    def finish(self) -> bytes:
        """The end: a CRLF unless the last byte sent was a LF (Courier: also for an empty
        message), then ".\\r\\n"."""
        tail = b"" if self._at_start and (self.octets or self.done) else b"\r\n"
        self._at_start = True
        self.done = True
        return tail + b".\r\n"


# Courier's pop3dserver.C MIMEWRAPTXT: a message with 8-bit headers, to a client that
# did not send UTF8 (RFC 6856 §2: it must not get them raw), goes out as a
# message/global attachment of this notice.
_WRAP_HEAD = (
    "From: Mail Delivery Subsystem <postmaster>\n"
    "Subject: Cannot display Unicode content\n"
    "Mime-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=\"{b}\"\n"
    "\n\n\n--{b}\n"
    "Content-Type: text/plain\n\n"
    "This E-mail message was determined to be Unicode-formatted\n"
    "but your E-mail reader does not support Unicode E-mail.\n\n"
    "Please use an E-mail reader that supports POP3 with UTF-8\n"
    "(see https://tools.ietf.org/html/rfc6856.html).\n\n"
    "This can also happen when the sender's E-mail program does not\n"
    "correctly format the sent message.\n\n"
    "The original message is included as a separate attachment\n"
    "so that it can be downloaded manually.\n\n"
    "--{b}\n"
    "Content-Type: message/global\n\n")


def unicode_wrapper(boundary: str) -> tuple[bytes, bytes]:
    """(before, after) the stored message, as stored (LF ends): Courier's notice."""
    return (_WRAP_HEAD.format(b=boundary).encode("ascii"),
            f"\n--{boundary}--\n".encode("ascii"))


def wire_size(chunks: Iterable[bytes]) -> int:
    """The RFC 1939 size Courier reports for a message given as chunks: octets + LFs."""
    return sum(len(c) + c.count(b"\n") for c in chunks)
