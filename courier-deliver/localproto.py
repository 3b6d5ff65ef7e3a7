"""The courierlocal helper protocol, without I/O.

Request (queue manager -> helper), one line, the spool data file's fd passed
alongside with SCM_RIGHTS:

    DELIVER <sender> <recipient> [<user>]\\n

<user> is the account to look up in authd when it differs from the
recipient (the local part for a domain in `locals`); Delivered-To always
names the recipient. Both addresses are xtext (RFC 3461 §4: "+" followed by two upper-case hex
digits for any byte outside "!".."~", and for "+", "=", "<", ">"), over the
UTF-8 bytes of the address, so an SMTPUTF8 address or one with spaces travels
as one safe token. The null reverse-path is the token `<>`, which no xtext
address can be since "<" and ">" are always encoded.

Reply (helper -> queue manager), one line:

    OK <text>\\n | TEMP <text>\\n | PERM <text>\\n

The text is for logs and DSNs; control characters are replaced on the way out.

A client may send up to BATCH_MAX requests (each line with its fd, all in one
sendmsg) before it reads the replies, which come in the same order: the
helper delivers the requests it has in hand for one account together
(one fsync of the Maildir's new/ for all) and answers each on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libcourier.proto import NEED_DATA, ClientError, LineTooLong, ReceiveBuffer

MAX_ADDRESS = 1024   # bytes of one decoded address (RFC 5321 §4.5.3.1.3 allows 256; be lenient)
MAX_REQUEST_LINE = 16 + 3 * 3 * MAX_ADDRESS   # three addresses, every byte xtext-encoded
MAX_REPLY_TEXT = 512
MAX_REPLY_LINE = MAX_REPLY_TEXT + 8
BATCH_MAX = 32       # requests a client may send before it reads their replies
NULL_SENDER = "<>"

_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("="), ord("<"), ord(">")}
_HEX = "0123456789ABCDEF"


def xtext_encode(text: str) -> str:
    out = []
    for b in text.encode("utf-8", "surrogateescape"):
        out.append(chr(b) if b in _PLAIN else f"+{_HEX[b >> 4]}{_HEX[b & 15]}")
    return "".join(out)


def xtext_decode(token: str) -> str:
    """RFC 3461 §4 xtext; raises ClientError on a malformed token."""
    out = bytearray()
    i = 0
    while i < len(token):
        c = token[i]
        if c == "+":
            hexpart = token[i + 1:i + 3]
            if len(hexpart) != 2 or any(h not in _HEX for h in hexpart):
                raise ClientError(f"bad xtext escape at {i}")
            out.append(int(hexpart, 16))
            i += 3
            continue
        if not "!" <= c <= "~" or c == "=":
            raise ClientError(f"bad xtext character at {i}")
        out.append(ord(c))
        i += 1
    if len(out) > MAX_ADDRESS:
        raise ClientError("address too long")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError("address is not UTF-8") from None


class Status(enum.Enum):
    OK = "OK"
    TEMP = "TEMP"
    PERM = "PERM"


@dataclass(frozen=True, slots=True)
class DeliverRequest:
    sender: str       # "" for the null reverse-path
    recipient: str
    user: str | None = None   # authd lookup key, when not the recipient


@dataclass(frozen=True, slots=True)
class Reply:
    status: Status
    text: str


def format_request(req: DeliverRequest) -> bytes:
    for a in (req.sender, req.recipient, req.user or ""):
        if len(a.encode("utf-8", "surrogateescape")) > MAX_ADDRESS:
            raise ValueError("address too long")
    if not req.recipient:
        raise ValueError("empty recipient")
    sender = xtext_encode(req.sender) if req.sender else NULL_SENDER
    line = f"DELIVER {sender} {xtext_encode(req.recipient)}"
    if req.user is not None and req.user != req.recipient:
        if not req.user:
            raise ValueError("empty user")
        line += " " + xtext_encode(req.user)
    return (line + "\n").encode("ascii")


def parse_request_line(line: bytes) -> DeliverRequest:
    """One request line (with or without its LF); raises ClientError."""
    try:
        text = line.rstrip(b"\n").decode("ascii")
    except UnicodeDecodeError:
        raise ClientError("request is not ASCII") from None
    parts = text.split(" ")
    if len(parts) not in (3, 4) or parts[0] != "DELIVER":
        raise ClientError("expected: DELIVER <sender> <recipient> [<user>]")
    if not all(parts[1:]):
        raise ClientError("empty argument")
    sender = "" if parts[1] == NULL_SENDER else xtext_decode(parts[1])
    recipient = xtext_decode(parts[2])
    user = xtext_decode(parts[3]) if len(parts) == 4 else None
    return DeliverRequest(sender, recipient, user)


def _clean_text(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    raw = text.encode("utf-8")[:MAX_REPLY_TEXT]
    return raw.decode("utf-8", "ignore")


def format_reply(reply: Reply) -> bytes:
    text = _clean_text(reply.text)
    return f"{reply.status.value} {text}\n".encode() if text else \
        f"{reply.status.value}\n".encode()


def parse_reply_line(line: bytes) -> Reply:
    text = line.rstrip(b"\n").decode("utf-8", "replace")
    verb, _, rest = text.partition(" ")
    try:
        status = Status(verb)
    except ValueError:
        raise ClientError(f"bad reply {verb[:20]!r}") from None
    return Reply(status, rest)


class _LineReader:
    """Lines out of a bounded buffer: a request, then the next ones on a kept
    connection (at most BATCH_MAX are sent before their replies are read)."""

    def __init__(self, max_line: int) -> None:
        self._buf = ReceiveBuffer(max_line)
        self._too_long = False

    def feed(self, data: bytes) -> None:
        self._buf.feed(data)

    def _line(self) -> bytes | None:
        if self._too_long:
            raise ClientError("line too long")
        try:
            line = self._buf.next_line()
        except LineTooLong:
            self._too_long = True
            raise ClientError("line too long") from None
        return None if line is NEED_DATA else line  # type: ignore[return-value]

    @property
    def trailing(self) -> bytes:
        """Bytes after the line: the start of the next request, if any."""
        return bytes(self._buf.take_all())


class RequestReader(_LineReader):
    def __init__(self) -> None:
        super().__init__(MAX_REQUEST_LINE)

    def next_request(self) -> DeliverRequest | None:
        """The request once its line is complete, else None; raises ClientError."""
        line = self._line()
        return None if line is None else parse_request_line(line)


class ReplyReader(_LineReader):
    def __init__(self) -> None:
        super().__init__(MAX_REPLY_LINE)

    def next_reply(self) -> Reply | None:
        line = self._line()
        return None if line is None else parse_reply_line(line)
