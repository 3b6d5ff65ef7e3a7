"""The ESMTP server protocol without I/O (RFC 5321, with RFC 1870, 2034, 2920, 3030, 3207, 3461, 4954, 6152, 6531).

Bytes go in with `feed`, a list of events comes out: replies to send, message
data to store, and the points where the driver must act before the dialogue
may go on (commit the message, do the TLS handshake, close). The core never
touches a socket, a file or the clock; policy (is this recipient ours?) is a
hook object it calls, so all I/O stays in the driver and the hook.

Every command goes through one table (COMMANDS): the states it is legal in
(check step) and its handler (act step), as OpenSMTPD and mox do. Limits:
command lines 512 octets (§4.5.3.1.4), text lines 1000 (§4.5.3.1.6), message
size, recipients per message, bad commands per session.

DATA decisions (SMTP smuggling, CVE-2023-51766 and friends):
- Only CRLF "." CRLF ends DATA. A "." line ended by a bare LF, or a "." line
  that follows a line ended by a bare LF, is content, never the end.
- A message containing a bare LF or a bare CR anywhere is read to the real
  end and then refused with 550 5.6.2 (RFC 5321 §2.3.8: bare CR/LF MUST NOT be
  treated as line ends). Refusing instead of "fixing" means no two readings of
  the same bytes can ever disagree about where a message ends or what it
  holds, which is the root of every smuggling variant. Postfix does the same
  with smtpd_forbid_bare_newline=reject. Real MTAs never send bare LF.
- Over-long lines and over-size messages are read to the end too, then
  answered (550 5.6.0 / 552 5.3.4) after the dot, never mid-stream, so the
  client stays in step.

BDAT decisions (RFC 3030 CHUNKING):
- A chunk is read by its octet count, nothing else: no dot, no stuffing, so
  there is no end-of-data marker to smuggle. Every chunk announced with a
  readable size is read, even when the command is refused (wrong state, no
  recipients, over SIZE), so the client stays in step (§2, §3).
- The content rules are those of DATA: a bare CR or LF, or a line over 1000
  octets, refuses the message (BINARYMIME is not offered, so 7BIT/8BITMIME
  line rules hold, RFC 3030 §3). The chunk where the problem shows is
  answered with the error; later chunks of that transaction are read and
  discarded (§2 "must accept and discard additional BDAT chunks after the
  failed BDAT") and answered 503 until BDAT LAST or RSET ends it.
- A last line without CRLF is completed with CRLF: the spool keeps lines, and
  DATA cannot send such a message either.

Octets (DATA and BDAT): a NUL refuses the message (550 5.6.0: IMAP cannot serve
it without BINARY, RFC 3501 §4.3); 8-bit octets without BODY=8BITMIME are
accepted unchanged and the envelope records 8BITMIME.
- DATA inside a BDAT transaction is 503 (§2); a BDAT whose size cannot be
  read leaves us unable to find the next command, so it is answered and the
  connection closed (421).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from libcourier.proto import NEED_DATA, ClientError, LineTooLong, ReceiveBuffer
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
)
from libcourier.sasl.scram import ScramProof
from libcourier.smtp import (
    MAX_COMMAND_LINE,
    MAX_TEXT_LINE,
    Reply,
    parse_command,
    parse_helo_domain,
    parse_mail_from,
    parse_rcpt_to,
)
from libcourier.smtp.grammar import (
    parse_bdat,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    parse_security,
)
from libcourier.spool.envelope import Recipient

# Courier's private extensions, as courieresmtpd offers them (module.esmtp
# configure.ac): VERP return paths (libcourier.smtp.verp), extended DATA
# replies, and a minimum transport security for the onward delivery.
COURIER_EXTENSIONS = ["XVERP=Courier", "XEXDATA", "XSECURITY=NONE,STARTTLS"]
_COURIER_PARAMETERS = frozenset({"VERP", "EXDATA", "SECURITY"})

# A DATA line longer than this is not kept in memory even to check it: it is
# dropped as it arrives (ReceiveBuffer) and the message is refused.
DATA_LINE_MEMORY = 64 * 1024


class State(enum.Enum):
    GREETED = "greeted"        # before EHLO/HELO (also right after STARTTLS)
    READY = "ready"            # after EHLO/HELO, no transaction
    MAIL = "mail"              # MAIL accepted, no recipient yet
    RCPT = "rcpt"              # at least one recipient accepted
    DATA = "data"              # reading message text
    CHUNKING = "chunking"      # between BDAT chunks of one transaction (RFC 3030)
    BDAT = "bdat"              # reading a BDAT chunk's octets
    WAIT_COMMIT = "commit"     # the driver is committing the message
    WAIT_TLS = "starttls"      # the driver is doing the TLS handshake
    AUTH = "auth"              # a SASL exchange waits for the client's next line (RFC 4954 §4)
    WAIT_AUTH = "authcheck"    # the driver is verifying the credentials with authd
    CLOSED = "closed"


# --- the policy hook ------------------------------------------------------

class VerdictKind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    code: int = 250
    enhanced: str = "2.1.5"
    text: str = "Ok."

    @classmethod
    def accept(cls) -> Verdict:
        return _ACCEPT       # frozen: one is enough for every MAIL and RCPT

    @classmethod
    def reject(cls, code: int = 550, enhanced: str = "5.1.1", text: str = "User unknown.") -> Verdict:
        return cls(VerdictKind.REJECT, code, enhanced, text)

    @classmethod
    def tempfail(cls, code: int = 451, enhanced: str = "4.3.0", text: str = "Try again later.") -> Verdict:
        return cls(VerdictKind.TEMPFAIL, code, enhanced, text)


_ACCEPT = Verdict(VerdictKind.ACCEPT)


class Policy(Protocol):
    """What the core asks about a transaction; the driver supplies it (it may do I/O)."""

    def check_sender(self, sender: str, session: SessionInfo) -> Verdict: ...

    def check_recipient(self, address: str, session: SessionInfo) -> Verdict: ...


class AcceptAll:
    """A policy for tests and for `sendmail`-like trusted submitters."""

    def check_sender(self, sender: str, session: SessionInfo) -> Verdict:
        return Verdict.accept()

    def check_recipient(self, address: str, session: SessionInfo) -> Verdict:
        return Verdict.accept()


# --- limits, session facts, transactions ----------------------------------

@dataclass(frozen=True, slots=True)
class Limits:
    max_size: int = 10 * 1024 * 1024     # SIZELIMIT; 0 = no limit (as Courier)
    max_recipients: int = 100            # RFC 5321 §4.5.3.1.8 minimum; Courier's bofh default
    recipients_hard: bool = False        # bofh `maxrcpts N hard`: 552 instead of 452
    max_errors: int = 20                 # bad commands before 421
    max_idle_commands: int = 100         # commands outside a transaction between two MAILs
    max_command_line: int = MAX_COMMAND_LINE
    max_text_line: int = MAX_TEXT_LINE
    # DATA lines may end in a bare LF (taken as CRLF; "." LF ends DATA too). Only for
    # `sendmail -bs`: a local user's pipe carries their own message, nobody's to smuggle
    # a second one past us; a network client never gets it (see the module doc).
    lf_lines: bool = False


@dataclass(slots=True)
class SessionInfo:
    """Facts about the session the policy and the driver may look at."""
    hostname: str                 # our name (`me`), for the greeting and EHLO
    tls_available: bool = False   # a certificate is configured: offer STARTTLS
    tls_active: bool = False
    helo: str = ""
    esmtp: bool = False           # EHLO (not HELO): extensions usable
    authenticated: str = ""       # the AUTH user; "" = none
    auth_mechanism: str = ""      # the SASL mechanism it authenticated with
    # SASL mechanisms offered in the clear (ESMTPAUTH) and under TLS (ESMTPAUTH_TLS),
    # already filtered by libcourier.sasl.offered_mechanisms and what authd verifies.
    auth_plain: tuple[str, ...] = ()
    auth_tls: tuple[str, ...] = ()
    auth_required: bool = False   # AUTH_REQUIRED: MAIL needs AUTH first (530 5.7.0)
    # A fresh CRAM "random.time" / SCRAM server nonce for each AUTH (RFC 2195 §2, RFC 5802
    # §5.1): the driver owns the clock and the randomness, the core asks once per exchange.
    nonce: Callable[[], bytes] | None = None
    external_identity: str | None = None   # a verified TLS client certificate's identity
    scram: bool = False           # the driver answers AuthScramKeys/AuthScramProof (authd can)
    greeting: tuple[str, ...] = ()   # the `esmtpgreeting` lines; () = "<hostname> ESMTP"
    # What the driver can carry into its queue: a driver whose queue format has no
    # SMTPUTF8, VERP or SECURITY turns the words off (and the parameters are refused).
    offer_smtputf8: bool = True
    offer_courier: bool = True      # XVERP, XEXDATA, XSECURITY

    def auth_offered(self) -> tuple[str, ...]:
        mechs = self.auth_tls if self.tls_active else self.auth_plain
        # Courier appends EXTERNAL (FORMATS.md §2.3) when TLS_EXTERNAL and a verified
        # client certificate give a login; the driver sets external_identity then.
        if self.tls_active and self.external_identity and "EXTERNAL" not in mechs:
            mechs = (*mechs, "EXTERNAL")
        return mechs


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str                          # "" for <>
    recipients: tuple[Recipient, ...]    # the spool's records: the envelope takes them as they are
    body: str = "7BIT"                   # or "8BITMIME" (RFC 6152)
    smtputf8: bool = False               # RFC 6531
    declared_size: int | None = None     # RFC 1870 SIZE=
    size: int = 0                        # octets received (after unstuffing, CRLF counted)
    envid: str | None = None             # RFC 3461 ENVID=, xtext-decoded
    ret: str | None = None               # RFC 3461 RET=: "FULL" or "HDRS"
    verp: bool = False                   # Courier's VERP (XVERP=Courier)
    security: str | None = None          # Courier's SECURITY=STARTTLS (XSECURITY)


@dataclass(slots=True)
class _Txn:
    sender: str = ""
    recipients: list[Recipient] = field(default_factory=list)
    body: str = "7BIT"
    smtputf8: bool = False
    declared_size: int | None = None
    envid: str | None = None
    ret: str | None = None
    verp: bool = False
    security: str | None = None
    chunking: bool = False               # a BDAT was taken: DATA is refused now (RFC 3030 §2)
    spool_open: bool = False             # DataStart went out and no end yet (BDAT only)
    failed: bool = False                 # a chunk failed: the rest are discarded
    eight_bit: bool = False              # an octet >= 128 was seen in the content


# --- events ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send. The driver may hold them until the input is drained (RFC 2920 §3.1)."""
    data: bytes


@dataclass(frozen=True, slots=True)
class DataStart:
    """354 was sent: open the spool file (and write the Received: line)."""
    transaction: Transaction


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Unstuffed message text with its CRLF line ends, in order."""
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageReady:
    """The message ended well: commit it, then call message_accepted / message_failed."""
    transaction: Transaction


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """The message is refused (the reply is already queued): discard the spool file."""
    reason: str


@dataclass(frozen=True, slots=True)
class StartTLS:
    """220 was queued: send it, do the handshake, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class Close:
    """Send what is queued and close the connection."""
    reason: str


@dataclass(frozen=True, slots=True)
class AuthVerify:
    """A SASL exchange ended with credentials: verify them, then call auth_result()."""
    credentials: LoginCredentials | CramCredentials | ExternalCredentials | VerifiedCredentials
    mechanism: str

    def __repr__(self) -> str:  # never show a password in a log or traceback
        return f"AuthVerify(mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class AuthScramKeys:
    """AUTH SCRAM-* after client-first (RFC 5802 §5): ask authd for the user's salt and
    iterations, then call scram_keys()."""
    mechanism: str
    user: str


@dataclass(frozen=True, slots=True)
class AuthScramProof:
    """AUTH SCRAM-* after client-final: authd checks the proof; call scram_verdict()."""
    proof: ScramProof

    def __repr__(self) -> str:
        return f"AuthScramProof(mechanism={self.proof.mech!r}, user={self.proof.user!r})"


Event = (Send | DataStart | DataChunk | MessageReady | MessageAborted | StartTLS | Close
         | AuthVerify | AuthScramKeys | AuthScramProof)


def _r(code: int, enhanced: str | None, *lines: str) -> Reply:
    return Reply.make(code, enhanced, *lines)


# The replies every message gets, formatted once (a transaction sends each of them).
_SENDER_OK = Send(_r(250, "2.1.0", "Ok.").to_bytes())
_RECIPIENT_OK = Send(_r(250, "2.1.5", "Ok.").to_bytes())
_GO_AHEAD = Send(_r(354, None, "Ok.").to_bytes())

HELP_TEXT = ("courier-py ESMTP server. Commands:",
             "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH")


class SmtpServer:
    """One SMTP session's protocol state. Not thread-safe; one per connection."""

    def __init__(self, session: SessionInfo, policy: Policy, limits: Limits | None = None):
        self.session = session
        self.policy = policy
        self.limits = limits or Limits()
        self.state = State.GREETED
        self.errors = 0
        self._idle_commands = 0          # commands outside a transaction since the last MAIL
        self.rejections = 0              # 5xx replies sent so far
        self._buf = ReceiveBuffer(self.limits.max_command_line)
        self._txn = _Txn()
        self._out: list[Event] = []
        # DATA bookkeeping
        self._data_size = 0
        self._data_problem: Reply | None = None
        self._prev_crlf = True       # the previous DATA line ended with CRLF
        self._chunk = bytearray()
        self._sasl: ServerExchange | None = None
        # BDAT bookkeeping: octets still to read, LAST, the reply decided when
        # the command came (None: the chunk is taken), the state to go back to,
        # and the end of the message text that is not a whole line yet.
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_reply: Reply | None = None
        self._bdat_after = State.READY
        self._bdat_counted = True        # the refusal counts toward max_errors
        self._partial = b""

    # -- public API --------------------------------------------------------

    def greeting(self) -> bytes:
        # RFC 5321 §4.2: 220 <domain>; RFC 2034: no enhanced code on the greeting.
        return _r(220, None, *(self.session.greeting or (f"{self.session.hostname} ESMTP",))
                  ).to_bytes()

    def feed(self, data: bytes) -> list[Event]:
        """Take received bytes; return what to do. b"" means the client closed."""
        if self.state is State.CLOSED:
            return []
        if data:
            self._buf.feed(data)
            return self._run()
        # EOF: a message in progress is lost (never half-committed).
        if self.state is State.DATA or self._txn.spool_open:
            self._out.append(MessageAborted("connection closed during DATA"))
        self.state = State.CLOSED
        self._out.append(Close("connection closed by client"))
        return self._take()

    def message_accepted(self, queue_id: str, reply: Reply | None = None) -> list[Event]:
        """The driver committed the message (fsync'd): say 250 (`reply` when the driver
        words it) and go on with pipelined input."""
        assert self.state is State.WAIT_COMMIT
        assert reply is None or reply.code == 250
        self._send(reply or _r(250, "2.0.0", f"Ok. {queue_id}"))
        self._reset_txn(State.READY)
        return self._run()

    def message_failed(self, reply: Reply | None = None) -> list[Event]:
        """The commit failed (disk full, ...): a temporary error, the message is not ours."""
        assert self.state is State.WAIT_COMMIT
        self._send(reply or _r(451, "4.3.0", "Unable to queue the message, try again later."))
        self._reset_txn(State.READY)
        return self._run()

    def tls_started(self) -> list[Event]:
        """RFC 3207 §4.2: after the handshake the session starts over; EHLO again."""
        assert self.state is State.WAIT_TLS
        self.session.tls_active = True
        self.session.helo = ""
        self.session.esmtp = False
        # RFC 3207 §4.2: forget everything learnt in the clear, AUTH included.
        self.session.authenticated = ""
        self.session.auth_mechanism = ""
        self._reset_txn(State.GREETED)
        return self._run()

    def auth_result(self, user: str | None, *, temporary: bool = False) -> list[Event]:
        """The driver's verdict on AuthVerify: the user authenticated, or None (refused)."""
        assert self.state is State.WAIT_AUTH
        mech = self._sasl.mechanism if self._sasl else ""
        self._sasl = None
        self._buf.max_line = self.limits.max_command_line
        self.state = State.READY
        if temporary:
            # RFC 4954 §6: authd is down; never "bad password" for that.
            self._send(_r(454, "4.7.0", "Temporary authentication failure."))
        elif user is None:
            # RFC 4954 §6 / RFC 5248: counted, so guessing ends in 421.
            self._error(_r(535, "5.7.8", "Authentication credentials invalid."))
        else:
            self.session.authenticated = user
            self.session.auth_mechanism = mech
            self._send(_r(235, "2.7.0", "Authentication successful."))
        return self._run()

    def scram_keys(self, found: tuple[bytes, int] | None, unavailable: str = "") -> list[Event]:
        """authd's answer to AuthScramKeys: (salt, iterations), None (no such user or no
        SCRAM keys: a made-up salt, RFC 5802 §9), or why authd could not be asked."""
        assert self.state is State.WAIT_AUTH and self._sasl is not None
        self._auth_step(self._sasl.scram_keys(found, unavailable))
        return self._run()

    def scram_verdict(self, result: tuple[object, bytes] | None,
                      unavailable: str = "") -> list[Event]:
        """authd's answer to AuthScramProof: (account, ServerSignature) or None (wrong)."""
        assert self.state is State.WAIT_AUTH and self._sasl is not None
        self._auth_step(self._sasl.scram_verdict(result, unavailable))
        return self._run()

    def timeout(self) -> list[Event]:
        self._send(_r(421, "4.4.2", f"{self.session.hostname} Timeout, closing connection."))
        if self.state is State.DATA or self._txn.spool_open:
            self._out.append(MessageAborted("timeout during DATA"))
        return self._close("timeout")

    # -- plumbing ----------------------------------------------------------

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _send(self, reply: Reply) -> None:
        if reply.code >= 500:
            self.rejections += 1        # the driver's TARPIT delays after these
        self._out.append(Send(reply.to_bytes()))

    def _close(self, reason: str) -> list[Event]:
        self.state = State.CLOSED
        self._out.append(Close(reason))
        return self._take()

    def _reset_txn(self, state: State) -> None:
        if self._txn.spool_open:
            # RSET or EHLO between BDAT chunks (RFC 3030 §2): the chunks are dropped.
            self._out.append(MessageAborted("transaction reset during BDAT"))
        self._txn = _Txn()
        self.state = state

    def _error(self, reply: Reply) -> None:
        """A client error: answer, count, and close once there were too many."""
        self._send(reply)
        self.errors += 1
        if self.errors >= self.limits.max_errors and self.state is not State.CLOSED:
            self._send(_r(421, "4.7.0", f"{self.session.hostname} Too many errors, closing connection."))
            self.state = State.CLOSED
            self._out.append(Close("too many errors"))

    def _run(self) -> list[Event]:
        while self.state not in (State.CLOSED, State.WAIT_COMMIT, State.WAIT_TLS,
                                 State.WAIT_AUTH):
            if self.state is State.DATA:
                if not self._data_step():
                    break
                continue
            if self.state is State.BDAT:
                if not self._bdat_step():
                    break
                continue
            try:
                line = self._buf.next_line()
            except LineTooLong:
                if self.state is State.AUTH:
                    self._auth_failed(_r(500, "5.5.6", "Authentication exchange line too long."))
                    continue
                self._error(_r(500, "5.5.2", "Line too long."))
                continue
            if line is NEED_DATA:
                break
            assert isinstance(line, bytes)
            if self.state is State.AUTH:
                self._auth_line(line)
                continue
            self._command(line)
        return self._take()

    # -- commands: check, then act ----------------------------------------

    def _command(self, line: bytes) -> None:
        if self.state in (State.GREETED, State.READY):
            self._idle_commands += 1
        if self._idle_commands > self.limits.max_idle_commands:
            # A client that never gets to MAIL (NOOP/RSET/VRFY/EHLO loops) is not
            # sending mail; it only holds one of MAXDAEMONS slots.
            self._send(_r(421, "4.7.0", f"{self.session.hostname} Too many commands "
                          "without a mail transaction, closing connection."))
            self.state = State.CLOSED
            self._out.append(Close("too many commands without MAIL"))
            return
        try:
            cmd = parse_command(line)
        except ClientError as e:
            code, enh = (e.code or "500 5.5.2").split()
            self._error(_r(int(code), enh, e.text))
            return
        entry = COMMANDS.get(cmd.verb)
        if entry is None:
            self._error(_r(500, "5.5.2", "Syntax error, command unrecognized."))
            return
        states, handler = entry
        if self.state not in states:
            self._error(_sequence_reply(cmd.verb, self.state))
            return
        try:
            handler(self, cmd.arg)
        except ClientError as e:
            code, enh = (e.code or "501 5.5.4").split()
            self._error(_r(int(code), enh, e.text))

    def _ehlo(self, arg: str) -> None:
        # RFC 5321 §4.1.4: EHLO may come at any time and resets the transaction.
        self.session.helo = parse_helo_domain(arg)
        self.session.esmtp = True
        self._reset_txn(State.READY)
        lines = [f"{self.session.hostname} Ok."]
        if self.session.tls_available and not self.session.tls_active:
            lines.append("STARTTLS")
        offered = self.session.auth_offered()
        if offered:
            lines.append("AUTH " + " ".join(offered))    # RFC 4954 §3
        # RFC 3461 DSN, RFC 3030 CHUNKING (BINARYMIME is not offered).
        # Courier's own extensions (FORMATS.md §2.3; MAIL parameters VERP,
        # EXDATA and SECURITY=, see _mail), in Courier's order.
        if self.session.offer_courier:
            lines += COURIER_EXTENSIONS
        lines += ["PIPELINING", "8BITMIME"]
        if self.session.offer_smtputf8:
            lines.append("SMTPUTF8")
        lines += ["DSN", "CHUNKING"]
        # RFC 1870 §4: SIZE with the limit (0 = no fixed limit).
        lines.append(f"SIZE {self.limits.max_size}" if self.limits.max_size else "SIZE")
        lines.append("ENHANCEDSTATUSCODES")
        self._send(Reply(250, None, tuple(lines)))

    def _helo(self, arg: str) -> None:
        self.session.helo = parse_helo_domain(arg)
        self.session.esmtp = False
        self._reset_txn(State.READY)
        self._send(_r(250, None, f"{self.session.hostname} Ok."))

    def _mail(self, arg: str) -> None:
        if self.session.auth_required and not self.session.authenticated:
            # Courier's AUTH_REQUIRED (the submission port, RFC 6409 §4.3).
            self._error(_r(530, "5.7.0", "Authentication required."))
            return
        path = parse_mail_from(arg)      # RFC 5321 §4.1.1.2
        txn = _Txn(sender=path.address)
        if path.params and not self.session.esmtp:
            # RFC 1869 §4.4: no parameters after HELO.
            self._error(_r(555, "5.5.4", "MAIL parameters need EHLO."))
            return
        for key, value in path.params.items():
            if key == "SIZE":            # RFC 1870 §6
                if value is None or not value.isdigit() or len(value) > 20:
                    raise ClientError("Invalid SIZE value.", "501 5.5.4")
                txn.declared_size = int(value)
                if self.limits.max_size and txn.declared_size > self.limits.max_size:
                    self._error(_r(552, "5.3.4", "Message size exceeds fixed maximum message size."))
                    return
            elif key == "BODY":          # RFC 6152 §3
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    raise ClientError("BODY must be 7BIT or 8BITMIME.", "501 5.5.4")
                txn.body = body
            elif key == "AUTH" and self.session.auth_offered():
                # RFC 4954 §5: the submitter's identity for relays. We trust nobody's
                # claim but our own AUTH, so the value is checked and not kept.
                if not value:
                    raise ClientError("AUTH= needs a value.", "501 5.5.4")
            elif key in _COURIER_PARAMETERS and not self.session.offer_courier \
                    or key == "SMTPUTF8" and not self.session.offer_smtputf8:
                self._error(_r(555, "5.5.4", f"Unsupported parameter {key}."))
                return
            elif key == "SMTPUTF8":      # RFC 6531 §3.4
                if value is not None:
                    raise ClientError("SMTPUTF8 takes no value.", "501 5.5.4")
                txn.smtputf8 = True
            elif key == "RET":           # RFC 3461 §4.3
                txn.ret = parse_ret(value)
            elif key == "ENVID":         # RFC 3461 §4.4
                txn.envid = parse_envid(value)
            elif key == "VERP":          # XVERP=Courier: one return path per recipient
                if value is not None:
                    raise ClientError("VERP takes no value.", "501 5.5.4")
                txn.verp = True
            elif key == "EXDATA":
                # XEXDATA: the client could read a 558 reply to DATA. Every
                # recipient here gets the same outcome, and the draft lets a
                # server always answer plainly, as Courier's courieresmtpd does.
                if value is not None:
                    raise ClientError("EXDATA takes no value.", "501 5.5.4")
            elif key == "SECURITY":      # XSECURITY=NONE,STARTTLS
                txn.security = parse_security(value)
            else:
                # RFC 5321 §4.1.1.11: parameters not recognized -> 555.
                self._error(_r(555, "5.5.4", f"Unsupported parameter {key}."))
                return
        if not path.address.isascii() and not txn.smtputf8:
            # RFC 6531 §3.5: a UTF-8 address without SMTPUTF8.
            self._error(_r(553, "5.6.7", "Non-ASCII address needs SMTPUTF8."))
            return
        verdict = self.policy.check_sender(path.address, self.session)
        if verdict.kind is not VerdictKind.ACCEPT:
            self._verdict_reply(verdict)
            return
        self._txn = txn
        self.state = State.MAIL
        self._idle_commands = 0
        self._out.append(_SENDER_OK)

    def _rcpt(self, arg: str) -> None:
        path = parse_rcpt_to(arg)        # RFC 5321 §4.1.1.3
        if path.params and not self.session.esmtp:
            self._error(_r(555, "5.5.4", "RCPT parameters need EHLO."))
            return
        notify: str | None = None
        orcpt: str | None = None
        for key, value in path.params.items():
            if key == "NOTIFY":          # RFC 3461 §4.1
                notify = parse_notify(value)
            elif key == "ORCPT":         # RFC 3461 §4.2
                orcpt = parse_orcpt(value)
            else:
                self._error(_r(555, "5.5.4", f"Unsupported parameter {key}."))
                return
        address = path.address
        if not address.isascii() and not self._txn.smtputf8:
            self._error(_r(553, "5.6.7", "Non-ASCII address needs SMTPUTF8."))
            return
        if len(self._txn.recipients) >= self.limits.max_recipients:
            if self.limits.recipients_hard:
                # bofh `maxrcpts N hard`: the admin wants the extra ones bounced.
                self._send(_r(552, "5.5.3", "Too many recipients."))
            else:
                # RFC 5321 §4.5.3.1.10: 452 and the client sends the rest later.
                self._send(_r(452, "4.5.3", "Too many recipients."))
            return
        verdict = self.policy.check_recipient(address, self.session)
        if verdict.kind is not VerdictKind.ACCEPT:
            self._verdict_reply(verdict)
            return
        self._txn.recipients.append(Recipient(address, orcpt, notify))
        self.state = State.RCPT
        self._out.append(_RECIPIENT_OK)

    def _verdict_reply(self, verdict: Verdict) -> None:
        reply = _r(verdict.code, verdict.enhanced, verdict.text)
        if verdict.kind is VerdictKind.REJECT:
            self._error(reply)      # a dictionary attack counts against the session
        else:
            self._send(reply)

    def _data(self, arg: str) -> None:
        if arg.strip():
            raise ClientError("DATA takes no parameters.", "501 5.5.4")
        if self.state is State.MAIL:
            # RFC 5321 §3.3: no valid recipients -> 554 (or 503).
            self._error(_r(554, "5.5.1", "No valid recipients."))
            return
        self.state = State.DATA
        self._data_size = 0
        self._data_problem = None
        self._prev_crlf = True
        self._buf.max_line = DATA_LINE_MEMORY
        self._out.append(_GO_AHEAD)
        self._out.append(DataStart(self._transaction()))

    def _rset(self, arg: str) -> None:
        if arg.strip():
            raise ClientError("RSET takes no parameters.", "501 5.5.4")
        self._reset_txn(State.GREETED if not self.session.helo else State.READY)
        self._send(_r(250, "2.0.0", "Ok."))

    def _noop(self, arg: str) -> None:
        self._send(_r(250, "2.0.0", "Ok."))

    def _quit(self, arg: str) -> None:
        self._send(_r(221, "2.0.0", f"{self.session.hostname} closing connection."))
        self.state = State.CLOSED
        self._out.append(Close("QUIT"))

    def _vrfy(self, arg: str) -> None:
        if not arg.strip():
            raise ClientError("VRFY needs an argument.", "501 5.5.4")
        # RFC 5321 §3.5.3: 252 when we will not verify but will accept.
        self._send(_r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery."))

    def _expn(self, arg: str) -> None:
        self._error(_r(502, "5.5.1", "EXPN not available."))

    def _help(self, arg: str) -> None:
        self._send(_r(214, "2.0.0", *HELP_TEXT))

    def _auth(self, arg: str) -> None:
        """RFC 4954 §4: AUTH mechanism [initial-response]."""
        if not self.session.esmtp:
            self._error(_r(503, "5.5.1", "Send EHLO first."))
            return
        if self.session.authenticated:
            self._error(_r(503, "5.5.1", "Already authenticated."))   # RFC 4954 §4
            return
        words = arg.split()
        if not words or len(words) > 2:
            raise ClientError("Syntax: AUTH mechanism [initial-response]", "501 5.5.4")
        mech = words[0].upper()
        if mech not in self.session.auth_offered():
            if not self.session.tls_active and mech in self.session.auth_tls:
                # RFC 4954 §6: 538 when the mechanism needs an encrypted channel.
                self._error(_r(538, "5.7.11", "Encryption required for requested "
                               "authentication mechanism."))
            else:
                self._error(_r(504, "5.5.4", "Unrecognized authentication type."))
            return
        initial: bytes | None = None
        if len(words) == 2:
            decoded = decode_initial_response(words[1].encode("ascii", "replace"))
            if isinstance(decoded, Failed):
                self._error(_r(501, "5.5.2", decoded.reason))
                return
            initial = decoded
        try:
            self._sasl = ServerExchange(mech, hostname=self.session.hostname,
                                        nonce=self.session.nonce() if self.session.nonce
                                        else None,
                                        external_identity=self.session.external_identity,
                                        scram_events=self.session.scram)
        except UnknownMechanism:
            self._error(_r(504, "5.5.4", "Unrecognized authentication type."))
            return
        # RFC 4954 §4: the exchange's lines may be up to 12288 octets.
        self._buf.max_line = MAX_SASL_LINE + 2
        self._auth_step(self._sasl.start(initial))

    def _auth_line(self, line: bytes) -> None:
        assert self._sasl is not None
        self._auth_step(self._sasl.step(line.rstrip(b"\r\n")))

    def _auth_step(self, step: object) -> None:
        match step:
            case Challenge(data=data):
                # RFC 4954 §4: "334 " base64, no enhanced code.
                self.state = State.AUTH
                self._out.append(Send(b"334 " + base64.b64encode(data) + b"\r\n"))
            case Failed(reason=reason):
                if reason == "authentication cancelled":
                    self._auth_failed(_r(501, "5.0.0", "AUTH aborted."))   # RFC 4954 §4
                else:
                    self._auth_failed(_r(501, "5.5.2", reason))
            case ScramKeysWanted(mech=mech, user=user):
                self.state = State.WAIT_AUTH
                self._out.append(AuthScramKeys(mech, user))
            case ScramProofToCheck(proof=proof):
                self.state = State.WAIT_AUTH
                self._out.append(AuthScramProof(proof))
            case LoginCredentials() | CramCredentials() | ExternalCredentials() | \
                    VerifiedCredentials():
                assert self._sasl is not None
                self.state = State.WAIT_AUTH
                self._out.append(AuthVerify(step, self._sasl.mechanism))

    def _auth_failed(self, reply: Reply) -> None:
        self._sasl = None
        self._buf.max_line = self.limits.max_command_line
        self.state = State.READY
        self._error(reply)

    def _starttls(self, arg: str) -> None:
        if arg.strip():
            raise ClientError("STARTTLS takes no parameters.", "501 5.5.4")
        if self.session.tls_active:
            self._error(_r(503, "5.5.1", "TLS already active."))
            return
        if not self.session.tls_available:
            self._error(_r(502, "5.5.1", "STARTTLS not available."))
            return
        self._send(_r(220, "2.0.0", "Ready to start TLS."))
        # RFC 3207 §4.2 (and CVE-2011-0411): anything the client pipelined after
        # STARTTLS arrived in clear text and must not be taken as TLS input.
        self._buf.skip(len(self._buf))
        self.state = State.WAIT_TLS
        self._out.append(StartTLS())

    # -- BDAT (RFC 3030) ---------------------------------------------------

    def _bdat(self, arg: str) -> None:
        bdat = parse_bdat(arg)
        if bdat.size is None:
            # Without a size the chunk cannot be told from the next command:
            # any reading would be a guess, so answer and close (RFC 5321 §3.8).
            self._send(_r(501, "5.5.4", bdat.error or "Syntax error."))
            self._send(_r(421, "4.5.0", f"{self.session.hostname} Lost step after a bad BDAT, "
                          "closing connection."))
            if self._txn.spool_open:
                self._txn.spool_open = False
                self._out.append(MessageAborted("bad BDAT"))
            self.state = State.CLOSED
            self._out.append(Close("bad BDAT"))
            return
        before = self.state
        self._bdat_left = bdat.size
        self._bdat_last = bdat.last
        self._bdat_after = before
        self._bdat_reply = None
        self._bdat_counted = not self._txn.failed
        in_txn = before in (State.RCPT, State.CHUNKING)
        if not self.session.esmtp:
            self._bdat_reply = _r(503, "5.5.1", "BDAT needs EHLO.")
        elif before in (State.GREETED, State.READY):
            self._bdat_reply = _sequence_reply("BDAT", before)
        elif before is State.MAIL:
            self._bdat_reply = _r(554, "5.5.1", "No valid recipients.")
        elif self._txn.failed:
            # RFC 3030 §2: discard the chunks that follow a failed one.
            self._bdat_reply = _r(503, "5.5.1", "Previous BDAT failed, chunk discarded; "
                                  "send RSET.")
        elif bdat.error is not None:
            self._bdat_reply = _r(501, "5.5.4", bdat.error)
        if self._bdat_reply is not None and in_txn:
            self._fail_chunks()
        elif self._bdat_reply is None:
            if not self._txn.chunking:
                self._txn.chunking = True
                self._txn.spool_open = True
                self._data_size = 0
                self._data_problem = None
                self._partial = b""
                self._out.append(DataStart(self._transaction()))
            if self.limits.max_size and self._data_size + bdat.size > self.limits.max_size:
                # Known before reading: the chunk is still read (and dropped).
                self._problem(_r(552, "5.3.4", "Message size exceeds fixed maximum message size."))
        self.state = State.BDAT

    def _fail_chunks(self) -> None:
        """The transaction failed: drop its spool file; later chunks are discarded."""
        self._txn.failed = True
        self._txn.chunking = True
        self._bdat_after = State.CHUNKING
        if self._txn.spool_open:
            self._txn.spool_open = False
            self._out.append(MessageAborted("BDAT transaction failed"))

    def _bdat_step(self) -> bool:
        """Read the chunk's octets; False when more input is needed."""
        if self._bdat_left:
            data = self._buf.take(self._bdat_left)
            if not data:
                self._flush_chunk()
                return False
            self._bdat_left -= len(data)
            if self._bdat_reply is None and self._data_problem is None:
                self._bdat_data(data)
            if self._bdat_left:
                self._flush_chunk()
                return False
        self._bdat_end()
        return True

    def _content(self, data: bytes) -> None:
        """The octet rules of DATA and BDAT alike (stated policy, see the module doc)."""
        if b"\0" in data:
            self._problem(_r(550, "5.6.0", "Message contains NUL characters."))
        elif not self._txn.eight_bit and not data.isascii():
            self._txn.eight_bit = True

    def _bdat_data(self, data: bytes) -> None:
        """Check and pass on whole lines; the unfinished one waits in _partial."""
        self._data_size += len(data)
        self._content(data)
        text = self._partial + data
        cut = text.rfind(b"\n") + 1
        lines, self._partial = text[:cut], text[cut:]
        limit = self.limits.max_text_line
        if (lines.count(b"\r\n") != lines.count(b"\n") or lines.count(b"\r") != lines.count(b"\n")
                or b"\r" in self._partial[:-1]):
            self._problem(_r(550, "5.6.2", "Message contains bare CR or LF characters "
                             "(RFC 5321 section 2.3.8)."))
        elif len(self._partial) + 1 > limit or (
                len(lines) > limit and max(map(len, lines.split(b"\n"))) + 1 > limit):
            self._problem(self._long_line())
        if self._data_problem is not None:
            self._partial = b""
            return
        self._chunk += lines
        if len(self._chunk) >= 65536:
            self._flush_chunk()

    def _bdat_end(self) -> None:
        """The chunk is read: answer it (RFC 3030 §2: one reply per BDAT)."""
        self._flush_chunk()
        reply = self._bdat_reply
        counted = self._bdat_counted
        if reply is None and self._bdat_last and self._partial:
            if self._partial.endswith(b"\r"):
                self._problem(_r(550, "5.6.2", "Message contains bare CR or LF characters "
                                 "(RFC 5321 section 2.3.8)."))
            else:
                self._out.append(DataChunk(self._partial + b"\r\n"))
                self._data_size += 2
            self._partial = b""
        if reply is None and self._data_problem is not None:
            reply = self._data_problem
            self._fail_chunks()
        if reply is not None:
            if counted:
                self._error(reply)
            else:
                self._send(reply)
            if self.state is State.CLOSED:
                return
            if self._bdat_last and self._txn.failed:
                self._reset_txn(State.READY)
            else:
                self.state = self._bdat_after
            return
        if self._bdat_last:
            self._txn.spool_open = False
            self.state = State.WAIT_COMMIT
            self._out.append(MessageReady(self._transaction()))
            return
        self.state = State.CHUNKING
        self._send(_r(250, "2.0.0", f"{self._data_size} octets received."))

    # -- DATA --------------------------------------------------------------

    def _transaction(self) -> Transaction:
        t = self._txn
        # 8-bit octets under BODY=7BIT (or none): kept byte for byte, but the
        # envelope says 8BITMIME so that relaying never passes them to a 7-bit-only
        # host as if they were 7-bit (as Postfix and Courier accept undeclared 8-bit).
        body = "8BITMIME" if t.eight_bit and t.body == "7BIT" else t.body
        return Transaction(t.sender, tuple(t.recipients), body, t.smtputf8,
                           t.declared_size, self._data_size, t.envid, t.ret, t.verp,
                           t.security)

    def _flush_chunk(self) -> None:
        if self._chunk:
            self._out.append(DataChunk(bytes(self._chunk)))
            self._chunk.clear()

    def _data_step(self) -> bool:
        """Consume DATA lines; False when more input is needed."""
        bulk = True
        while True:
            if bulk and self._data_problem is None and self._prev_crlf:
                done = self._data_bulk()
                if done is not None:
                    return done
                bulk = False     # not again before the next input: no rescanning per line
            # Line by line: what the bulk pass would not decide (a line to refuse, an
            # unfinished or over-long line), and everything after a problem.
            try:
                line = self._buf.next_line()
            except LineTooLong:
                # Its line end is unknown (dropped); assume CRLF so the client's
                # real end of data is found. The message is refused anyway.
                self._problem(self._long_line())
                self._prev_crlf = True
                continue
            if line is NEED_DATA:
                self._flush_chunk()
                return False
            assert isinstance(line, bytes)
            crlf = line.endswith(b"\r\n")
            if not crlf and self.limits.lf_lines and line.endswith(b"\n"):
                line, crlf = line[:-1] + b"\r\n", True
            if crlf and line == b".\r\n" and self._prev_crlf:
                self._flush_chunk()
                self._end_of_data()
                return True
            if not crlf or b"\r" in line[:-2]:
                self._problem(_r(550, "5.6.2", "Message contains bare CR or LF characters "
                                 "(RFC 5321 section 2.3.8)."))
            self._prev_crlf = crlf
            if len(line) > self.limits.max_text_line:
                self._problem(self._long_line())
            self._content(line)
            if line.startswith(b"."):
                line = line[1:]      # RFC 5321 §4.5.2: transparency
            self._data_size += len(line)
            if self.limits.max_size and self._data_size > self.limits.max_size:
                self._problem(_r(552, "5.3.4", "Message size exceeds fixed maximum message size."))
            if self._data_problem is None:
                self._chunk += line
                if len(self._chunk) >= 65536:
                    self._flush_chunk()

    def _data_bulk(self) -> bool | None:
        """The common case at C speed: all whole lines buffered, up to the end of data,
        checked and unstuffed at once. True at the end of data, False when more input
        is needed; None when a line needs the line-by-line rules (a bare CR or LF, a
        NUL, a line over the limit, the size limit reached, no whole line yet), which
        then decide: this pass only ever takes what they would take unchanged."""
        data = self._buf.peek()
        # The end is "." CRLF after a CRLF (the previous line, or the DATA line: the
        # caller checks _prev_crlf); any LF ends a line, so "\r\n." starts one.
        if data.startswith(b".\r\n"):
            end = 0
        else:
            end = data.find(b"\r\n.\r\n")
            end = end + 2 if end >= 0 else -1
        cut = end if end >= 0 else data.rfind(b"\n") + 1
        if cut == 0 and end != 0:
            return None
        block = data[:cut]
        if block:
            # One split at the CRLFs serves both checks: what is left once they are
            # taken out holds no CR or LF (no bare one: the line-by-line rule's
            # verdict, found by memchr), and no line without its CRLF reaches limit-1.
            lines = block.split(b"\r\n")
            rest = b"".join(lines)
            if b"\r" in rest or b"\n" in rest or b"\0" in rest:
                return None
            limit = self.limits.max_text_line      # with the CRLF
            if len(block) >= limit and max(map(len, lines)) >= limit - 1:
                return None
            # RFC 5321 §4.5.2: one leading dot off every line.
            text = (block[1:] if block.startswith(b".") else block).replace(b"\n.", b"\n")
            if self.limits.max_size and self._data_size + len(text) > self.limits.max_size:
                return None
            if not self._txn.eight_bit and not block.isascii():
                self._txn.eight_bit = True
            self._buf.skip(cut)
            self._data_size += len(text)
            self._chunk += text
        if end < 0:
            self._flush_chunk()
            return False
        self._buf.skip(3)
        self._flush_chunk()
        self._end_of_data()
        return True

    def _long_line(self) -> Reply:
        return _r(550, "5.6.0", f"Message has a line longer than {self.limits.max_text_line} "
                  "characters.")

    def _problem(self, reply: Reply) -> None:
        if self._data_problem is None:
            self._data_problem = reply
            self._chunk.clear()

    def _end_of_data(self) -> None:
        self._buf.max_line = self.limits.max_command_line
        if self._data_problem is not None:
            self._send(self._data_problem)
            self._out.append(MessageAborted(self._data_problem.text))
            self._reset_txn(State.READY)
            return
        self.state = State.WAIT_COMMIT
        self._out.append(MessageReady(self._transaction()))


def _sequence_reply(verb: str, state: State) -> Reply:
    """RFC 5321 §4.1.4 / §3.3: commands out of order get 503 5.5.1."""
    if state is State.GREETED:
        return _r(503, "5.5.1", "Send EHLO/HELO first.")
    if state is State.CHUNKING and verb == "DATA":
        return _r(503, "5.5.1", "DATA cannot follow BDAT in one transaction.")   # RFC 3030 §2
    if verb == "BDAT":
        return _r(503, "5.5.1", "Need MAIL and RCPT before BDAT.")
    if state is State.CHUNKING:
        return _r(503, "5.5.1", f"{verb} not allowed during a BDAT transaction.")
    if verb == "MAIL":
        return _r(503, "5.5.1", "Nested MAIL command.")
    if verb in ("RCPT",):
        return _r(503, "5.5.1", "Need MAIL before RCPT.")
    if verb == "DATA":
        return _r(503, "5.5.1", "Need RCPT before DATA.")
    return _r(503, "5.5.1", f"{verb} not allowed now.")


_ANY = frozenset({State.GREETED, State.READY, State.MAIL, State.RCPT, State.CHUNKING})
Handler = Callable[[SmtpServer, str], None]

# The command table: verb -> (states it is legal in, handler).
COMMANDS: dict[str, tuple[frozenset[State], Handler]] = {
    "EHLO": (_ANY, SmtpServer._ehlo),
    "HELO": (_ANY, SmtpServer._helo),
    "MAIL": (frozenset({State.READY}), SmtpServer._mail),
    "RCPT": (frozenset({State.MAIL, State.RCPT}), SmtpServer._rcpt),
    "DATA": (frozenset({State.MAIL, State.RCPT}), SmtpServer._data),
    # RFC 3030 §2: legal anywhere, so that a chunk sent out of turn is still read.
    "BDAT": (_ANY, SmtpServer._bdat),
    "RSET": (_ANY, SmtpServer._rset),
    "NOOP": (_ANY, SmtpServer._noop),
    "QUIT": (_ANY, SmtpServer._quit),
    "VRFY": (_ANY, SmtpServer._vrfy),
    "EXPN": (_ANY, SmtpServer._expn),
    "HELP": (_ANY, SmtpServer._help),
    # RFC 3207 §4: after EHLO, outside a transaction.
    "STARTTLS": (frozenset({State.READY}), SmtpServer._starttls),
    # RFC 4954 §4: after EHLO, not during a mail transaction.
    "AUTH": (frozenset({State.READY}), SmtpServer._auth),
}
