"""`sendmail -bs`: SMTP on stdin/stdout, spoken by esmtpd's own core.

What PHP's mail() with an SMTP-speaking sendmail, some cron setups and MUAs
use: an SMTP dialogue on a pipe with the local user. The protocol is
libcourier.smtp.server's SmtpServer, the core esmtpd drives over TCP, so the
grammar, the command table, the limits and the replies live in one place. This
module only sets it up for a pipe and names its events for sendmail.py's driver:
`Send` (reply bytes to write), `Begin` (a transaction passed DATA or its first
BDAT: open the submission), `Chunk` (message bytes, unstuffed, LF line ends),
`End` (the message is complete: commit, then call `data_result`), `Abort` (the
input ended inside the message, or the core refused it after reading it) and
`Closed`. After `End` the core holds further input until data_result(), so a
pipelined QUIT is answered after the 250, which is said only for a committed
message.

Offered, as esmtpd offers them (Courier's `sendmail -bs` runs courieresmtpd
itself): Courier's XVERP=Courier, XEXDATA and XSECURITY=NONE,STARTTLS,
PIPELINING, 8BITMIME, SMTPUTF8, DSN, CHUNKING, SIZE, ENHANCEDSTATUSCODES. The
SMTPUTF8, VERP and SECURITY flags and RET/ENVID/NOTIFY/ORCPT go into the
envelope (the maildrop block or the spool's); EXDATA is taken and answered
plainly, as esmtpd and courieresmtpd do.

What differs from the network server, on purpose:
- Not offered: STARTTLS and AUTH (the pipe's user is known: the driver's
  sender check is the policy).
- A DATA line may end in a bare LF, and "." LF ends DATA: the pipe carries one
  local user's own message, there is no one to smuggle a second one past us.
- Text lines up to 64 KiB (RFC 5321's 1000 is for the network; local scripts
  write long HTML lines); a longer one refuses the message with 550 5.6.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from courier_deliver.submit import MAX_RECIPIENTS

from libcourier.smtp.reply import Reply
from libcourier.smtp.server import (
    DATA_LINE_MEMORY,
    Close,
    DataChunk,
    DataStart,
    Limits,
    MessageAborted,
    MessageReady,
    Send,
    SessionInfo,
    SmtpServer,
    State,
    Verdict,
)
from libcourier.spool import Recipient

MAX_ERRORS = Limits().max_errors     # bad commands before we hang up (421)

__all__ = ["MAX_ERRORS", "Abort", "Begin", "Chunk", "Closed", "End", "Event", "Send", "State",
           "StdioSmtp"]


@dataclass(frozen=True, slots=True)
class Begin:
    sender: str                       # "" for <>
    recipients: tuple[Recipient, ...]
    ret: str | None
    envid: str | None
    smtputf8: bool = False
    verp: bool = False
    security: str | None = None


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


class _SenderPolicy:
    """The core's policy hook: the driver's sender check; every recipient is taken
    (courierd routes them, and bounces what it cannot deliver)."""

    def __init__(self, check_sender: Callable[[str], str | None]):
        self.check_sender_text = check_sender

    def check_sender(self, sender: str, session: SessionInfo) -> Verdict:
        refused = self.check_sender_text(sender)
        return Verdict.accept() if refused is None else Verdict.reject(553, "5.7.1", refused)

    def check_recipient(self, address: str, session: SessionInfo) -> Verdict:
        return Verdict.accept()


class StdioSmtp:
    def __init__(self, *, hostname: str, max_size: int,
                 check_sender: Callable[[str], str | None]):
        self.hostname = hostname
        info = SessionInfo(hostname, greeting=(f"{hostname} ESMTP courier-py sendmail -bs",))
        self.core = SmtpServer(info, _SenderPolicy(check_sender), Limits(
            max_size=max_size, max_recipients=MAX_RECIPIENTS,
            max_text_line=DATA_LINE_MEMORY, lf_lines=True))

    @property
    def state(self) -> State:
        return self.core.state

    def greeting(self) -> bytes:
        return self.core.greeting()

    def feed(self, data: bytes) -> list[Event]:
        """Input from the pipe (not empty: the end of input is eof())."""
        return self._events(self.core.feed(data)) if data else []

    def eof(self) -> list[Event]:
        return self._events(self.core.feed(b""))

    def data_result(self, reply: Reply) -> list[Event]:
        """The driver's answer to End: the reply to the message (250 once committed)."""
        if self.core.state is not State.WAIT_COMMIT:
            raise RuntimeError("data_result without a pending message")
        if reply.code == 250:
            return self._events(self.core.message_accepted("", reply))
        return self._events(self.core.message_failed(reply))

    def _events(self, events: list) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            match ev:
                case Send():        # the core's own event: the pipe sends it as it is
                    out.append(ev)
                case DataStart(transaction=t):
                    out.append(Begin(t.sender, t.recipients, t.ret, t.envid,
                                     t.smtputf8, t.verp, t.security))
                case DataChunk(data):
                    # Lossless: the core hands over whole CRLF lines, no bare CR or LF.
                    out.append(Chunk(data.replace(b"\r\n", b"\n")))
                case MessageReady():
                    out.append(End())
                case MessageAborted():
                    out.append(Abort())
                case Close():
                    out.append(Closed())
                case _:     # STARTTLS and AUTH are never offered here
                    raise AssertionError(f"unexpected event {ev!r}")
        return out
