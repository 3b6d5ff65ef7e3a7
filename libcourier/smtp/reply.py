"""SMTP replies: one formatter for every reply the server (and later the client) sends.

RFC 5321 §4.2: `code SP text CRLF`, multi-line replies `code-text` on every line
but the last. RFC 2034 §4: with ENHANCEDSTATUSCODES the enhanced code follows the
reply code on every line, except on the greeting and the EHLO/HELO reply, where
the first line carries the server's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets including CRLF.
MAX_REPLY_LINE = 512


@dataclass(frozen=True, slots=True)
class Reply:
    code: int                       # 211..554
    enhanced: str | None            # RFC 3463 "x.y.z", or None (greeting, EHLO, 354)
    lines: tuple[str, ...]          # at least one; text only, no CR/LF

    @classmethod
    def make(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, tuple(lines) or ("",))

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def to_bytes(self) -> bytes:
        return format_reply(self.code, self.enhanced, self.lines)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    # A reply must never carry a line break the client could read as a second
    # reply (reply injection): control characters become spaces.
    return _CONTROL.sub(" ", text)


def format_reply(code: int, enhanced: str | None, lines: tuple[str, ...] | list[str]) -> bytes:
    if not 200 <= code <= 599:
        raise ValueError(f"reply code out of range: {code}")
    lines = list(lines) or [""]
    out: list[bytes] = []
    for i, text in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        body = _clean(text)
        if enhanced is not None:
            body = f"{enhanced} {body}" if body else enhanced
        line = f"{code}{sep}{body}".encode("utf-8", "replace")
        # Leave room for CRLF; cut on a byte boundary that keeps valid UTF-8.
        if len(line) > MAX_REPLY_LINE - 2:
            line = line[: MAX_REPLY_LINE - 2].decode("utf-8", "ignore").encode("utf-8")
        out.append(line + b"\r\n")
    return b"".join(out)
