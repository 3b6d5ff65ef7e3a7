"""The three kinds of failure (STYLE.md principle 3), each with its own wire answer.

- ClientError: the client's syntax is wrong -> SMTP 500/501, IMAP BAD, POP3 -ERR; log at debug.
- Refusal: well-formed but refused -> SMTP 5xx, IMAP NO [CODE], POP3 -ERR; log at info.
- ServerFault: our own fault -> SMTP 4xx, IMAP NO; log at error with a traceback.
Anything else raised inside a session ends the session, never the daemon.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of the three kinds; `text` is safe to send to the client."""

    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code  # e.g. IMAP response code "TRYCREATE" or SMTP "5.1.1"


class ClientError(ProtocolError):
    pass


class Refusal(ProtocolError):
    pass


class ServerFault(ProtocolError):
    pass
