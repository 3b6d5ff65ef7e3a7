"""The header pass of an incoming message, sans-I/O (Courier's submit: headers).

The message streams through: only its header section is held, up to a limit,
so that we can count Received: fields (a routing loop), refuse an absurd header
(Courier's BOFHHEADERLIMIT: 100000 octets, 500 fields), and add Message-ID and
Date where the client left them out and the service is configured to
(NOADDMSGID=0 / NOADDDATE=0: the submission port, RFC 6409 §8.2/§8.3). Added
fields go at the end of the header, as Courier's submit puts them. The body is
passed on untouched, byte for byte.

Input is the message with LF line ends in whole lines, as the driver writes it
to the spool.
"""

from __future__ import annotations

from dataclasses import dataclass

from libcourier.smtp.reply import Reply

MAX_RECEIVED = 100            # Courier: more than 100 Received: is a loop (546)
MAX_HEADER_FIELDS = 500       # Courier's headercnt
MAX_HEADER_OCTETS = 100_000   # Courier's BOFHHEADERLIMIT default (never below 1000)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    add_message_id: str | None = None   # the Message-ID value to add when missing
    add_date: str | None = None         # the Date value to add when missing
    max_octets: int = MAX_HEADER_OCTETS
    max_fields: int = MAX_HEADER_FIELDS
    max_received: int = MAX_RECEIVED


class HeaderFilter:
    def __init__(self, rules: HeaderRules):
        self.rules = rules
        self.refusal: Reply | None = None
        self._in_header = True
        self._head = bytearray()
        self._fields = 0
        self._received = 0
        self._seen: set[bytes] = set()

    def feed(self, data: bytes) -> bytes:
        """Take message text; return what may be written now."""
        if self.refusal is not None:
            return b""
        if not self._in_header:
            return data
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            line = data[start:end]
            start = end
            if line in (b"\n", b"\r\n"):
                self._in_header = False
                return self._header_out() + line + data[start:]
            self._take(line)
            if self.refusal is not None:
                return b""
        return b""

    def finish(self) -> bytes:
        """The message ended: what is still held (a message that is all header)."""
        if self.refusal is not None or not self._in_header:
            return b""
        self._in_header = False
        return self._header_out()

    def _take(self, line: bytes) -> None:
        self._head += line
        if line[:1] not in (b" ", b"\t"):
            self._fields += 1
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            self._seen.add(name)
            if name == b"received":
                self._received += 1
        if self._received > self.rules.max_received:
            self.refusal = Reply.make(554, "5.4.6",
                                      "Routing loop detected -- too many Received: headers.")
        elif len(self._head) > self.rules.max_octets or self._fields > self.rules.max_fields:
            self.refusal = Reply.make(552, "5.3.4", "Message header size exceeds policy limit.")
        if self.refusal is not None:
            self._head.clear()

    def _header_out(self) -> bytes:
        out = bytes(self._head)
        self._head.clear()
        if out and not out.endswith(b"\n"):
            out += b"\n"        # a final header line without its newline
        if self.rules.add_message_id and b"message-id" not in self._seen:
            out += b"Message-ID: " + self.rules.add_message_id.encode() + b"\n"
        if self.rules.add_date and b"date" not in self._seen:
            out += b"Date: " + self.rules.add_date.encode() + b"\n"
        return out
