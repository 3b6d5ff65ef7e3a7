"""A sans-I/O SMTP client core (RFC 5321) for remote delivery.

Bytes from the server go in with `receive(data)`, bytes for the server come
out of `data_to_send()`; the driver owns the socket, the timeouts and TLS.
One session carries one transaction (one message, its recipients for one
destination), then QUIT; with keep_open=True it goes IDLE instead, and the
driver may start another transaction on the same connection
(next_transaction: RSET first when the last one ended early) or quit().

The sequence (RFC 5321 §3, §4.1):
  greeting 220 -> EHLO (502/5xx: HELO, §4.1.4) -> [STARTTLS (RFC 3207) ->
  the driver wraps the socket and calls tls_started() -> EHLO again] ->
  [AUTH PLAIN/LOGIN (RFC 4954) for smarthosts] -> MAIL -> RCPT... -> DATA ->
  the dot-stuffed message -> "." -> QUIT.
With PIPELINING (RFC 2920 §3.1) MAIL, every RCPT and DATA go in one write
and their replies are matched in order.

Courier's own extensions (doc/draft-varshavchik-*-smtpext.txt, and what its
esmtp module does with them):
- VERP: a message flagged `verp` goes out with MAIL ... VERP to a server that
  offers XVERP=Courier; to any other server each recipient gets its own
  transaction on the session, with the return path libcourier.smtp.verp makes.
- SECURITY=STARTTLS (the message's, or esmtproutes /SECURITY=STARTTLS): the
  message goes only over STARTTLS to a server whose EHLO in clear offers
  STARTTLS and XSECURITY=...,STARTTLS (Courier's esmtp_helo checks it there,
  not again after STARTTLS; over SMTPS the one EHLO, in TLS, must offer it),
  and MAIL carries SECURITY=STARTTLS on. A server that cannot is a permanent
  failure (5.7.10), as Courier's "Unable to set minimum security level"; so
  is a TLS handshake that fails (tls_failed). The driver verifies the
  certificate.
- XEXDATA: MAIL carries EXDATA, and a 558 reply to the final "." is read as
  one reply per accepted recipient (draft-varshavchik-exdata-smtpext §5, 7.2:
  a recipient whose reply is missing gets 451).

Every recipient ends with one Reply: the server's RCPT reply when that was an
error, else the reply to the final "."; when the session fails earlier, the
reply that failed it (the server's, or a local 4xx for a broken connection or
a garbled reply). The driver maps 2xx/4xx/5xx to done/retry/bounce.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from libcourier.idn import IdnError, address_to_ascii
from libcourier.mime.downgrade import header_needs_utf8, to_7bit
from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer
from libcourier.smtp.dotstuff import END_OF_DATA, dot_stuff
from libcourier.smtp.grammar import xtext_encode
from libcourier.smtp.reply import Reply
from libcourier.smtp.verp import verp_sender

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; accept some slack for
# sloppy servers, but bound the lines of one reply too (an EHLO list is short).
MAX_REPLY_LINE = 2048
MAX_REPLY_LINES = 100
# SASL mechanisms for a relay's AUTH, best first (Courier's authsaslclient order).
CRAM_MECHANISMS = {"CRAM-SHA256": hashlib.sha256, "CRAM-SHA1": hashlib.sha1,
                   "CRAM-MD5": hashlib.md5}
EXDATA_LINES = 10             # lines allowed per recipient in a 558 reply (XEXDATA)

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*?)\r?\n\Z", re.S)
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |\Z)")


class TlsPolicy(enum.Enum):
    NONE = "none"              # never STARTTLS
    OPPORTUNISTIC = "opportunistic"   # STARTTLS when offered, go on in clear otherwise
    REQUIRED = "required"      # STARTTLS or a bounce (esmtproutes /SECURITY=REQUIRED)
    SMTPS = "smtps"            # TLS from the first byte: the driver wraps before the greeting


class State(enum.Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    TLS_WAIT = "tls-wait"       # the driver performs the handshake
    AUTH = "auth"
    AUTH_LOGIN_USER = "auth-login-user"
    AUTH_LOGIN_PASS = "auth-login-pass"
    AUTH_CRAM = "auth-cram"     # waiting for the CRAM-* challenge
    MAIL = "mail"               # waiting for MAIL, RCPT and DATA replies
    DATA_BODY = "data-body"     # 354 seen, waiting for the reply to "."
    IDLE = "idle"               # keep_open: a transaction ended, the session is reusable
    RSET = "rset"               # keep_open: RSET before the next MAIL
    QUIT = "quit"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: str
    orcpt: str | None = None      # "rfc822;addr" (RFC 3461 §4.2), passed on when DSN is offered
    notify: str | None = None     # "NEVER" or "SUCCESS,FAILURE,DELAY"


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str                   # "" for the null reverse-path
    recipients: tuple[Rcpt, ...]
    message: bytes                # LF or CRLF line ends; dot-stuffed here
    eightbit: bool = False        # BODY=8BITMIME (RFC 6152)
    smtputf8: bool = False        # RFC 6531
    envid: str | None = None      # RFC 3461 §4.4
    ret: str | None = None        # FULL or HDRS
    verp: bool = False            # Courier's VERP: a return path per recipient
    security: str | None = None   # "STARTTLS": Courier's SECURITY=STARTTLS


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Event: wrap the socket in TLS now, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class Finished:
    """Event: every recipient has its reply; the driver may close once the
    output is flushed (QUIT has been queued)."""
    results: dict[str, Reply]


@dataclass(slots=True)
class _Pipeline:
    # What replies we still wait for, in order: ("MAIL",), ("RCPT", addr), ("DATA",)
    expect: list[tuple[str, str]] = field(default_factory=list)
    mail_reply: Reply | None = None
    accepted: list[str] = field(default_factory=list)


def local_reply(code: int, enhanced: str, text: str) -> Reply:
    """A reply made up here (connection lost, policy), in the same shape as the server's."""
    return Reply.make(code, enhanced, text)


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """(code, is_last, text) of one reply line; ValueError when it is not one (§4.2)."""
    m = _REPLY_LINE.match(line)
    if m is None or (m.group(2) == b"" and m.group(3) != b""):
        raise ValueError("malformed reply line")
    return int(m.group(1)), m.group(2) != b"-", m.group(3).decode("utf-8", "replace")


def _make_reply(code: int, texts: list[str]) -> Reply:
    enhanced = None
    lines = []
    for t in texts:
        m = _ENHANCED.match(t)
        # RFC 2034 §4: the enhanced code is on each line; keep it once, by class.
        if m and m.group(1)[0] == str(code)[0]:
            enhanced = enhanced or m.group(1)
            t = t[m.end():]
        lines.append(t)
    return Reply(code, enhanced, tuple(lines) or ("",))


class SmtpClient:
    def __init__(self, helo: str, txn: Transaction, *, tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
                 auth: tuple[str, str] | None = None, tls_active: bool = False,
                 keep_open: bool = False):
        if not txn.recipients:
            raise ValueError("a transaction needs a recipient")
        self.helo = helo
        self.txn = txn
        self.tls = tls
        self.auth = auth
        self.tls_active = tls_active or tls is TlsPolicy.SMTPS
        self.state = State.GREETING
        self.extensions: dict[str, str] = {}   # EHLO keyword -> parameters
        self.results: dict[str, Reply] = {}
        self.last_reply: Reply | None = None
        self._buf = ReceiveBuffer(MAX_REPLY_LINE)
        self._lines: list[str] = []
        self._code: int | None = None
        self._out = bytearray()
        self._pipe = _Pipeline()
        self._finished_sent = False
        self.keep_open = keep_open
        self.session_refused = False
        # The server offered STARTTLS but refused it or its handshake failed
        # (the driver keeps Courier's "broken STARTTLS" list with it).
        self.starttls_failed = False
        self._needs_rset = False
        self._cram = ""                # the CRAM-* mechanism chosen for AUTH
        self.transactions = 0          # completed on this connection
        # The transaction's (sender, recipients) batches still to send: one
        # batch, or one per recipient for VERP to a server without XVERP.
        self._batches: list[tuple[str, tuple[Rcpt, ...]]] | None = None
        self._batch: tuple[Rcpt, ...] = ()
        self._batch_sender = ""

    # -- driver interface --

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def finished(self) -> bool:
        return self._finished_sent

    def receive(self, data: bytes) -> list[StartTLS | Finished]:
        """Feed server bytes; the events they cause. b"" means the server closed."""
        events: list[StartTLS | Finished] = []
        if not data:
            self._fail(local_reply(421, "4.4.2", "connection closed by the server"), events,
                       alive=False)
            return events
        self._buf.feed(data)
        while self.state not in (State.DONE, State.TLS_WAIT):
            try:
                line = self._buf.next_line()
            except LineTooLong:
                self._fail(local_reply(421, "4.5.0", "reply line too long"), events)
                break
            if line is NEED_DATA:
                break
            try:
                code, last, text = parse_reply_line(line)
            except ValueError:
                self._fail(local_reply(421, "4.5.0", "malformed reply from the server"), events)
                break
            if self._code is not None and code != self._code:
                self._fail(local_reply(421, "4.5.0", "reply codes differ within a reply"), events)
                break
            self._code = code
            self._lines.append(text)
            if len(self._lines) > max(MAX_REPLY_LINES, EXDATA_LINES * len(self._batch)):
                self._fail(local_reply(421, "4.5.0", "reply has too many lines"), events)
                break
            if not last:
                continue
            reply = _make_reply(code, self._lines)
            self._lines, self._code = [], None
            self.last_reply = reply
            self._on_reply(reply, events)
        return events

    def tls_failed(self, reason: str) -> list[Finished]:
        """The driver's TLS handshake failed; the connection is unusable (RFC
        3207 §4.1). Temporary, unless the message asked for SECURITY=STARTTLS:
        then the server could not give a satisfactory certificate, which the
        draft (§4) and Courier make a permanent failure."""
        self.starttls_failed = True
        if self.txn.security:
            events: list[StartTLS | Finished] = []
            self._fail(local_reply(554, "5.7.10", f"Unable to set minimum security level: "
                                   f"{reason}"), events, alive=False)
            return [e for e in events if isinstance(e, Finished)]
        return self.connection_lost(reason)

    def connection_lost(self, reason: str) -> list[Finished]:
        """The driver lost the connection (error or timeout)."""
        events: list[StartTLS | Finished] = []
        self._fail(local_reply(421, "4.4.2", reason), events, alive=False)
        return [e for e in events if isinstance(e, Finished)]

    def next_transaction(self, txn: Transaction) -> list[StartTLS | Finished]:
        """keep_open: start another transaction on this IDLE session."""
        if self.state is not State.IDLE:
            raise RuntimeError("next_transaction outside IDLE")
        if not txn.recipients:
            raise ValueError("a transaction needs a recipient")
        events: list[StartTLS | Finished] = []
        self.txn = txn
        self.results = {}
        self._pipe = _Pipeline()
        self._finished_sent = False
        self._batches = None
        if self._needs_rset:
            # RFC 5321 §4.1.1.5: the last transaction may still be open at the
            # server (MAIL accepted, no DATA): clear it.
            self._send("RSET")
            self.state = State.RSET
        else:
            self._start_mail(events)
        return events

    def quit(self) -> None:
        """keep_open: end an IDLE session."""
        if self.state is State.IDLE:
            self._send("QUIT")
            self.state = State.QUIT

    def tls_started(self) -> None:
        """The driver finished the TLS handshake: forget what was said in clear
        (RFC 3207 §4.2) and greet again."""
        if self.state is not State.TLS_WAIT:
            raise RuntimeError("tls_started outside STARTTLS")
        self.tls_active = True
        self.extensions = {}
        self._buf = ReceiveBuffer(MAX_REPLY_LINE)
        self._send(f"EHLO {self.helo}")
        self.state = State.EHLO

    # -- internals --

    def _send(self, line: str) -> None:
        self._out += line.encode("utf-8") + b"\r\n"

    def _finish(self, events: list) -> None:
        if not self._finished_sent:
            self._finished_sent = True
            events.append(Finished(dict(self.results)))

    def _fail(self, reply: Reply, events: list, *, alive: bool = True) -> None:
        """Every recipient still without a reply gets this one; QUIT unless the
        connection is gone (closed, or the server said 421: §3.8)."""
        for r in self.txn.recipients:
            self.results.setdefault(r.address, reply)
        # The server refused the session itself (5xx greeting or HELO): a
        # statement about this host, not the recipients; drivers try the next
        # exchanger and retry later (RFC 5321 §3.1 allows a 554 greeting).
        self.session_refused = (reply is self.last_reply and reply.code >= 500
                                and self.state in (State.GREETING, State.EHLO, State.HELO))
        server_closing = reply is self.last_reply and reply.code == 421
        if alive and not server_closing and self.state not in (State.DONE, State.QUIT,
                                                                State.TLS_WAIT):
            self._send("QUIT")
            self.state = State.QUIT
        else:
            self.state = State.DONE
        self._finish(events)

    def _on_reply(self, reply: Reply, events: list) -> None:
        match self.state:
            case State.GREETING:
                if reply.code != 220:
                    self._fail(reply, events)
                    return
                self._send(f"EHLO {self.helo}")
                self.state = State.EHLO
            case State.EHLO:
                if reply.code == 250:
                    self._parse_ehlo(reply)
                    self._after_hello(events)
                elif 500 <= reply.code < 600 and not self.tls_active:
                    self._send(f"HELO {self.helo}")   # §4.1.4: a server without EHLO
                    self.state = State.HELO
                else:
                    self._fail(reply, events)
            case State.HELO:
                if reply.code != 250:
                    self._fail(reply, events)
                    return
                self.extensions = {}
                self._after_hello(events)
            case State.STARTTLS:
                if reply.code == 220:
                    self.state = State.TLS_WAIT
                    events.append(StartTLS())
                    return
                self.starttls_failed = True
                if self.tls is TlsPolicy.REQUIRED or self.txn.security:
                    self._fail(_as_temp(reply), events)
                else:
                    # Opportunistic: RFC 3207 §4 lets us go on in clear.
                    self.tls = TlsPolicy.NONE
                    self._after_hello(events)
            case State.AUTH | State.AUTH_LOGIN_USER | State.AUTH_LOGIN_PASS | State.AUTH_CRAM:
                self._on_auth(reply, events)
            case State.MAIL:
                self._on_pipeline(reply, events)
            case State.DATA_BODY:
                if reply.code == 558 and "XEXDATA" in self.extensions:
                    self.results.update(_exdata_replies(reply, self._pipe.accepted))
                else:
                    for addr in self._pipe.accepted:
                        self.results[addr] = reply
                self._end_transaction(events, clean=True)
            case State.RSET:
                if reply.code == 250:
                    self._needs_rset = False
                    self._start_mail(events)
                else:
                    self._fail(reply, events)
            case State.IDLE:
                # Unsolicited (typically 421 on an idle timeout): not reusable.
                self.state = State.DONE
            case State.QUIT:
                self.state = State.DONE
            case _:
                pass

    def _parse_ehlo(self, reply: Reply) -> None:
        self.extensions = {}
        for line in reply.lines[1:]:
            kw, _, params = line.strip().partition(" ")
            if kw:
                self.extensions[kw.upper()] = params.strip()

    def _end_transaction(self, events: list, *, clean: bool) -> None:
        """A transaction got its last reply: QUIT, or IDLE for the next one.
        `clean`: it ended with the reply to "." (nothing left open at the server)."""
        if self._batches:
            # VERP to a server without XVERP: the next recipient's own transaction.
            if clean:
                self._start_mail(events)
            else:
                self._send("RSET")
                self.state = State.RSET
            return
        self.transactions += 1
        if self.keep_open:
            self.state = State.IDLE
            self._needs_rset = not clean
        else:
            self._send("QUIT")
            self.state = State.QUIT
        self._finish(events)

    def _ext_values(self, name: str) -> set[str] | None:
        """The comma-separated values of an EHLO keyword given as NAME=a,b (Courier's
        XVERP=Courier, XSECURITY=NONE,STARTTLS); None when not offered."""
        for kw, params in self.extensions.items():
            base, eq, values = kw.partition("=")
            if base == name:
                text = values if eq else params
                return {v for v in text.upper().replace(" ", ",").split(",") if v}
        return None

    def _security_refusal(self) -> Reply | None:
        """SECURITY=STARTTLS over SMTPS: the server must take the level on (after
        STARTTLS it was checked in the EHLO in clear, _after_hello)."""
        if not self.txn.security or self.tls is not TlsPolicy.SMTPS:
            return None
        if self.txn.security in (self._ext_values("XSECURITY") or ()):
            return None
        return local_reply(554, "5.7.10", "Unable to set minimum security level: the "
                           f"server does not offer XSECURITY={self.txn.security}")

    def _after_hello(self, events: list) -> None:
        if self.txn.security and not self.tls_active:
            # Courier's esmtp_helo: SECURITY needs STARTTLS and XSECURITY in the
            # EHLO in clear, else the message is undeliverable.
            missing = None
            if "STARTTLS" not in self.extensions or self.tls is TlsPolicy.NONE:
                missing = "STARTTLS"
            elif self.txn.security not in (self._ext_values("XSECURITY") or ()):
                missing = f"XSECURITY={self.txn.security}"
            if missing:
                self._fail(local_reply(554, "5.7.10", "Unable to set minimum security level: "
                                       f"{missing} is not available"), events)
                return
        if not self.tls_active and self.tls in (TlsPolicy.OPPORTUNISTIC, TlsPolicy.REQUIRED):
            if "STARTTLS" in self.extensions:
                self._send("STARTTLS")
                self.state = State.STARTTLS
                return
            if self.tls is TlsPolicy.REQUIRED:
                # Courier (libesmtp.c) fails the message for good: the one
                # thing that would make the server acceptable is missing.
                self._fail(local_reply(554, "5.7.10", "/SECURITY=REQUIRED set, but TLS "
                                       "is not available"), events)
                return
        if self.auth is not None:
            mechs = self.extensions.get("AUTH", "").upper().split()
            user, password = self.auth
            # Courier's authsaslclient prefers the challenge-response mechanisms:
            # the password never crosses the wire (RFC 2195).
            for mech in CRAM_MECHANISMS:
                if mech in mechs:
                    self._cram = mech
                    self._send(f"AUTH {mech}")
                    self.state = State.AUTH_CRAM
                    return
            if "PLAIN" in mechs:
                token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
                self._send(f"AUTH PLAIN {token}")   # RFC 4616 with an initial response
                self.state = State.AUTH
                return
            if "LOGIN" in mechs:
                self._send("AUTH LOGIN")
                self.state = State.AUTH_LOGIN_USER
                return
            self._fail(local_reply(421, "4.7.0", "the smarthost offers no AUTH CRAM-*, "
                                   "PLAIN or LOGIN"), events)
            return
        self._start_mail(events)

    def _on_auth(self, reply: Reply, events: list) -> None:
        if self.state is State.AUTH:
            if reply.code == 235:
                self._start_mail(events)
            else:
                self._fail(_as_temp(reply), events)   # a credentials problem: ours to fix
            return
        if reply.code != 334:
            self._fail(_as_temp(reply), events)
            return
        assert self.auth is not None
        if self.state is State.AUTH_CRAM:
            self._send(cram_response(self._cram, self.auth[0], self.auth[1],
                                     reply.lines[0].strip()))
            self.state = State.AUTH
            return
        if self.state is State.AUTH_LOGIN_USER:
            self._send(base64.b64encode(self.auth[0].encode()).decode())
            self.state = State.AUTH_LOGIN_PASS
        else:
            self._send(base64.b64encode(self.auth[1].encode()).decode())
            self.state = State.AUTH

    def _mail_line(self) -> str:
        t = self.txn
        parts = [f"MAIL FROM:<{self._addr(self._batch_sender)}>"]
        if "SIZE" in self.extensions:
            parts.append(f"SIZE={len(t.message)}")
        if t.eightbit and "8BITMIME" in self.extensions:
            parts.append("BODY=8BITMIME")
        if t.smtputf8 and "SMTPUTF8" in self.extensions:
            parts.append("SMTPUTF8")
        if t.verp and "COURIER" in (self._ext_values("XVERP") or ()):
            parts.append("VERP")
        if "XEXDATA" in self.extensions:
            parts.append("EXDATA")
        if t.security:
            parts.append(f"SECURITY={t.security}")
        if "DSN" in self.extensions:
            if t.ret:
                parts.append(f"RET={t.ret}")
            if t.envid:
                parts.append(f"ENVID={xtext_encode(t.envid)}")
        return " ".join(parts)

    def _rcpt_line(self, r: Rcpt) -> str:
        parts = [f"RCPT TO:<{self._addr(r.address)}>"]
        if "DSN" in self.extensions:
            if r.notify:
                parts.append(f"NOTIFY={r.notify}")
            if r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                parts.append(f"ORCPT={kind};{xtext_encode(self._addr(addr))}")
        return " ".join(parts)

    def _addr(self, address: str) -> str:
        # Courier's udomainace: to a server without SMTPUTF8 an IDN domain goes
        # as its A-labels (RFC 5890); a UTF-8 local part cannot (_needs_smtputf8).
        return address if "SMTPUTF8" in self.extensions else ace_address(address)

    def _policy_refusal(self) -> Reply | None:
        t = self.txn
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and len(t.message) > int(limit):
            return local_reply(552, "5.3.4", f"message size exceeds the server's limit of "
                               f"{limit} bytes")
        if "SMTPUTF8" not in self.extensions and _needs_smtputf8(t):
            # RFC 6531 §3.2: a message that needs SMTPUTF8 (UTF-8 addresses, or
            # UTF-8 header fields when sent as SMTPUTF8) is not downgraded; the
            # sender learns by a DSN.
            return local_reply(553, "5.6.7", "the server does not support SMTPUTF8")
        return None

    def _downgrade(self) -> None:
        """RFC 6152 §3, as Courier's esmtp module does: 8-bit content for a
        server without 8BITMIME is converted to quoted-printable per MIME part
        (libcourier.mime.downgrade) instead of being sent 8-bit or returned."""
        t = self.txn
        if "8BITMIME" in self.extensions or t.message.isascii():
            return
        self.txn = dataclasses.replace(t, message=to_7bit(t.message), eightbit=False)

    def _start_mail(self, events: list) -> None:
        self._downgrade()
        refusal = self._policy_refusal() or self._security_refusal()
        if refusal is not None:
            self._fail(refusal, events)
            return
        if self._batches is None:
            self._batches = self._plan_batches()
        self._batch_sender, self._batch = self._batches.pop(0)
        self.state = State.MAIL
        self._pipe = _Pipeline()
        self._send(self._mail_line())
        self._pipe.expect.append(("MAIL", ""))
        if "PIPELINING" in self.extensions:
            for r in self._batch:
                self._send(self._rcpt_line(r))
                self._pipe.expect.append(("RCPT", r.address))
            self._send("DATA")
            self._pipe.expect.append(("DATA", ""))

    def _plan_batches(self) -> list[tuple[str, tuple[Rcpt, ...]]]:
        t = self.txn
        if t.verp and t.sender and "COURIER" not in (self._ext_values("XVERP") or ()):
            return [(verp_sender(t.sender, r.address), (r,)) for r in t.recipients]
        return [(t.sender, t.recipients)]

    def _on_pipeline(self, reply: Reply, events: list) -> None:
        p = self._pipe
        pipelining = "PIPELINING" in self.extensions
        kind, addr = p.expect.pop(0)
        if kind == "MAIL":
            p.mail_reply = reply
            if reply.code != 250:
                for r in self._batch:
                    self.results.setdefault(r.address, reply)
            elif not pipelining:
                r = self._batch[0]
                self._send(self._rcpt_line(r))
                p.expect.append(("RCPT", r.address))
        elif kind == "RCPT":
            if p.mail_reply is not None and p.mail_reply.code == 250:
                if reply.code in (250, 251):
                    p.accepted.append(addr)
                else:
                    self.results[addr] = reply
            if not pipelining and p.mail_reply is not None and p.mail_reply.code == 250:
                done = sum(r.address in self.results for r in self._batch) + len(p.accepted)
                if done < len(self._batch):
                    r = self._batch[done]
                    self._send(self._rcpt_line(r))
                    p.expect.append(("RCPT", r.address))
                elif p.accepted:
                    self._send("DATA")
                    p.expect.append(("DATA", ""))
        elif kind == "DATA":
            if reply.code == 354:
                if p.accepted:
                    self._out += dot_stuff(self.txn.message) + END_OF_DATA
                    self.state = State.DATA_BODY
                    return
                # RFC 2920 §3.1: every RCPT failed but DATA was accepted: send an
                # empty message, whose reply we ignore (no recipient left).
                self._out += END_OF_DATA
                self._pipe.accepted = []
                self.state = State.DATA_BODY
                return
            for a in p.accepted:
                self.results[a] = reply
            p.accepted = []
        if not p.expect:
            # No DATA in flight any more (refused, or never sent).
            for r in self._batch:
                self.results.setdefault(r.address, p.mail_reply if p.mail_reply
                                        and p.mail_reply.code != 250 else reply)
            self._end_transaction(events, clean=False)


def ace_address(address: str) -> str:
    """local@domain with the domain in A-labels (IDNA, as Courier's libidn), or
    as it was when it is ASCII already or cannot be converted."""
    try:
        return address_to_ascii(address)
    except IdnError:
        return address


def _needs_smtputf8(t: Transaction) -> bool:
    if not all(ace_address(a).isascii() for a in (t.sender, *(r.address for r in
                                                                t.recipients))):
        return True
    return t.smtputf8 and header_needs_utf8(t.message)


def _exdata_replies(reply: Reply, accepted: list[str]) -> dict[str, Reply]:
    """A 558 reply to the final ".": each of its lines is a line of one
    recipient's own reply, in the order of the accepted recipients (the EXDATA
    draft §5). Lines that are not reply lines are skipped, as Courier does;
    recipients left without a reply get 451 (§7.2)."""
    out: dict[str, Reply] = {}
    pending = iter(accepted)
    lines: list[str] = []
    code: int | None = None
    for text in reply.lines:
        try:
            sub, last, rest = parse_reply_line(text.encode("utf-8") + b"\r\n")
        except ValueError:
            continue
        if code is not None and sub != code:
            lines = []           # a new code mid-reply: start again with this line
        code = sub
        lines.append(rest)
        if last:
            addr = next(pending, None)
            if addr is None:
                break            # more replies than recipients: the extra ones say nothing
            out[addr] = _make_reply(sub, lines)
            lines, code = [], None
    for addr in pending:
        out[addr] = local_reply(451, "4.5.0", "incomplete 558 reply to DATA")
    return out


def cram_response(mech: str, user: str, password: str, challenge_b64: str) -> str:
    """RFC 2195 §2: base64(user SP hex(HMAC(password, challenge))); CRAM-SHA1 and
    CRAM-SHA256 are Courier's same scheme with those digests."""
    try:
        challenge = base64.b64decode(challenge_b64, validate=True)
    except ValueError:
        challenge = b""        # a garbled challenge: the server will refuse us
    digest = hmac.new(password.encode(), challenge, CRAM_MECHANISMS[mech]).hexdigest()
    return base64.b64encode(f"{user} {digest}".encode()).decode()


def _as_temp(reply: Reply) -> Reply:
    """A session-level refusal that is our configuration's problem (TLS, AUTH):
    keep the message queued rather than bounce it."""
    if reply.code >= 500:
        return Reply(421, "4.7.0", reply.lines)
    return reply
