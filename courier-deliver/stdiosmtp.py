"""`sendmail -bs`: SMTP on stdin/stdout, the core without I/O.

What PHP's mail() with an SMTP-speaking sendmail, some cron setups and MUAs
use: an SMTP dialogue on a pipe with the local user. Bytes go in with feed(),
events come out: `Send` (reply bytes to write), `Begin` (a transaction passed
DATA: open the submission), `Chunk` (message bytes, unstuffed, LF line ends),
`End` (the final dot: commit, then call `data_result`), `Abort` (the input
ended inside DATA) and `Closed`. After `End` the core holds further input
until the driver answers with data_result(), so a pipelined QUIT is answered
after the 250, which is said only for a committed message.

The grammar is libcourier.smtp's (RFC 5321 §4.1); one table says which
command may come in which state. Offered: PIPELINING, 8BITMIME, SIZE, DSN
(RET/ENVID/NOTIFY/ORCPT go into the envelope), ENHANCEDSTATUSCODES. Not
offered: SMTPUTF8 (non-ASCII addresses are refused), STARTTLS and AUTH (the
pipe's user is known: the driver's sender check is the policy hook), BDAT.
Unlike the network server, a "." line ended by a bare LF ends DATA too: the
pipe carries one local user's own message, there is no one to smuggle past.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from courier_deliver.submit import MAX_RECIPIENTS

from libcourier.proto.errors import ClientError
from libcourier.smtp.grammar import (
    MAX_COMMAND_LINE,
    parse_command,
    parse_envid,
    parse_helo_domain,
    parse_mail_from,
    parse_notify,
    parse_orcpt,
    parse_rcpt_to,
    parse_ret,
)
from libcourier.smtp.reply import Reply
from libcourier.spool import Recipient

MAX_DATA_PIECE = 64 * 1024   # a longer line passes through in pieces (never a "." line)
MAX_ERRORS = 20              # bad commands before we hang up (421)


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Begin:
    sender: str                       # "" for <>
    recipients: tuple[Recipient, ...]
    ret: str | None
    envid: str | None


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Closed:
    pass


Event = Send | Begin | Chunk | End | Abort | Closed


class State(enum.Enum):
    GREETED = "greeted"      # before EHLO/HELO
    READY = "ready"          # after EHLO/HELO, no transaction
    MAIL = "mail"            # MAIL accepted
    RCPT = "rcpt"            # at least one RCPT accepted
    DATA = "data"            # reading the message
    WAIT = "wait"            # the final dot seen: waiting for data_result()
    CLOSED = "closed"


# RFC 5321 §4.1.4: which commands are legal where (the rest answer 503).
_LEGAL = {
    "EHLO": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "HELO": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "MAIL": {State.READY},
    "RCPT": {State.MAIL, State.RCPT},
    "DATA": {State.RCPT},
    "RSET": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "NOOP": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "VRFY": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "HELP": {State.GREETED, State.READY, State.MAIL, State.RCPT},
    "QUIT": {State.GREETED, State.READY, State.MAIL, State.RCPT},
}


def _reply(code: int, enhanced: str | None, *lines: str) -> Send:
    return Send(Reply.make(code, enhanced, *lines).to_bytes())


class StdioSmtp:
    def __init__(self, *, hostname: str, max_size: int,
                 check_sender: Callable[[str], str | None]):
        self.hostname = hostname
        self.max_size = max_size
        self.check_sender = check_sender      # None: allowed; else the refusal text
        self.state = State.GREETED
        self._buf = bytearray()
        self._skipping = False                # inside an over-long command line
        self._line_start = True               # DATA: next byte starts a line
        self._errors = 0
        self._reset()

    def _reset(self) -> None:
        self._sender: str | None = None
        self._ret: str | None = None
        self._envid: str | None = None
        self._rcpts: list[Recipient] = []

    def greeting(self) -> bytes:
        return Reply.make(220, None, f"{self.hostname} ESMTP courier-py sendmail -bs").to_bytes()

    # -- input --

    def feed(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self._buf += data
        return self._process()

    def eof(self) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        if self.state in (State.DATA, State.WAIT):
            events.append(Abort())
        self.state = State.CLOSED
        events.append(Closed())
        return events

    def data_result(self, reply: Reply) -> list[Event]:
        """The driver's answer to End: the reply to the final dot."""
        if self.state is not State.WAIT:
            raise RuntimeError("data_result without a pending message")
        self.state = State.READY
        self._reset()
        return [Send(reply.to_bytes()), *self._process()]

    def _process(self) -> list[Event]:
        out: list[Event] = []
        while self.state not in (State.WAIT, State.CLOSED):
            if self.state is State.DATA:
                self._data(out)         # ends in WAIT, or needs more input
                break
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_COMMAND_LINE:
                    self._skipping = True
                    self._buf.clear()
                break
            line = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            if self._skipping or len(line) > MAX_COMMAND_LINE:
                self._skipping = False
                self._error(out, _reply(500, "5.5.2", "Line too long"))
                continue
            self._command(line, out)
        return out

    def _data(self, out: list[Event]) -> None:
        """Move the complete DATA lines to a Chunk event; End at the final dot."""
        pieces: list[bytes] = []
        ended = False
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_DATA_PIECE:
                    piece = bytes(self._buf[:MAX_DATA_PIECE])
                    del self._buf[:MAX_DATA_PIECE]
                    if self._line_start and piece.startswith(b"."):
                        piece = piece[1:]           # RFC 5321 §4.5.2 transparency
                    if piece.endswith(b"\r"):       # it may pair with the next LF
                        self._buf[:0] = b"\r"
                        piece = piece[:-1]
                    pieces.append(piece)
                    self._line_start = False
                    continue
                break
            line = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if self._line_start and body == b".":
                ended = True
                break
            if self._line_start and body.startswith(b"."):
                body = body[1:]
            pieces.append(body + b"\n")
            self._line_start = True
        if pieces:
            out.append(Chunk(b"".join(pieces)))
        if ended:
            self.state = State.WAIT
            out.append(End())

    # -- commands --

    def _error(self, out: list[Event], reply: Send) -> None:
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            out.append(_reply(421, "4.7.0", f"{self.hostname} Too many errors, closing"))
            out.append(Closed())
            self.state = State.CLOSED
            return
        out.append(reply)

    def _command(self, line: bytes, out: list[Event]) -> None:
        try:
            cmd = parse_command(line)
        except ClientError as e:
            self._error(out, _client_reply(e))
            return
        legal = _LEGAL.get(cmd.verb)
        if legal is None:
            self._error(out, _reply(502, "5.5.1", f"{cmd.verb} not implemented"))
            return
        if self.state not in legal:
            what = "Send EHLO first" if self.state is State.GREETED else "Bad sequence of commands"
            self._error(out, _reply(503, "5.5.1", what))
            return
        try:
            getattr(self, f"_do_{cmd.verb.lower()}")(cmd.arg, out)
        except ClientError as e:
            self._error(out, _client_reply(e))

    def _do_ehlo(self, arg: str, out: list[Event]) -> None:
        parse_helo_domain(arg)
        self._reset()
        self.state = State.READY
        size = f"SIZE {self.max_size}" if self.max_size else "SIZE"
        out.append(_reply(250, None, self.hostname, "PIPELINING", "8BITMIME", size, "DSN",
                          "ENHANCEDSTATUSCODES"))

    def _do_helo(self, arg: str, out: list[Event]) -> None:
        parse_helo_domain(arg)
        self._reset()
        self.state = State.READY
        out.append(_reply(250, None, self.hostname))

    def _do_mail(self, arg: str, out: list[Event]) -> None:
        path = parse_mail_from(arg)
        ret = envid = None
        for key, value in path.params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 18:
                    raise ClientError("SIZE needs a number", "501 5.5.4")
                if self.max_size and int(value) > self.max_size:
                    out.append(_reply(552, "5.3.4", "Message too big"))
                    return
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise ClientError("BODY must be 7BIT or 8BITMIME", "555 5.5.4")
            elif key == "RET":
                ret = parse_ret(value)
            elif key == "ENVID":
                envid = parse_envid(value)
            else:
                raise ClientError(f"{key} not supported", "555 5.5.4")
        sender = path.address
        if not sender.isascii():
            out.append(_reply(553, "5.6.7", "Non-ASCII addresses need SMTPUTF8, "
                                            "which is not offered"))
            return
        refused = self.check_sender(sender)
        if refused is not None:
            self._error(out, _reply(553, "5.7.1", refused))
            return
        self._sender, self._ret, self._envid = sender, ret, envid
        self.state = State.MAIL
        out.append(_reply(250, "2.1.0", "Ok"))

    def _do_rcpt(self, arg: str, out: list[Event]) -> None:
        path = parse_rcpt_to(arg)
        notify = orcpt = None
        for key, value in path.params.items():
            if key == "NOTIFY":
                notify = parse_notify(value)
            elif key == "ORCPT":
                orcpt = parse_orcpt(value)
            else:
                raise ClientError(f"{key} not supported", "555 5.5.4")
        addr = path.address
        if not addr.isascii():
            out.append(_reply(553, "5.6.7", "Non-ASCII addresses need SMTPUTF8, "
                                            "which is not offered"))
            return
        if len(self._rcpts) >= MAX_RECIPIENTS:
            out.append(_reply(452, "4.5.3", "Too many recipients"))
            return
        self._rcpts.append(Recipient(addr, orcpt, notify))
        self.state = State.RCPT
        out.append(_reply(250, "2.1.5", "Ok"))

    def _do_data(self, arg: str, out: list[Event]) -> None:
        if arg.strip():
            raise ClientError("DATA takes no argument", "501 5.5.4")
        assert self._sender is not None
        out.append(Begin(self._sender, tuple(self._rcpts), self._ret, self._envid))
        out.append(_reply(354, None, "End data with <CR><LF>.<CR><LF>"))
        self.state = State.DATA
        self._line_start = True

    def _do_rset(self, arg: str, out: list[Event]) -> None:
        self._reset()
        if self.state is not State.GREETED:
            self.state = State.READY
        out.append(_reply(250, "2.0.0", "Ok"))

    def _do_noop(self, arg: str, out: list[Event]) -> None:
        out.append(_reply(250, "2.0.0", "Ok"))

    def _do_vrfy(self, arg: str, out: list[Event]) -> None:
        out.append(_reply(252, "2.5.2", "Cannot VRFY; send mail and it will be tried"))

    def _do_help(self, arg: str, out: list[Event]) -> None:
        out.append(_reply(214, "2.0.0", "EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"))

    def _do_quit(self, arg: str, out: list[Event]) -> None:
        out.append(_reply(221, "2.0.0", f"{self.hostname} closing"))
        out.append(Closed())
        self.state = State.CLOSED


def _client_reply(e: ClientError) -> Send:
    code, _, enhanced = (e.code or "501 5.5.4").partition(" ")
    return _reply(int(code) if code.isdigit() else 501, enhanced or None, e.text)
