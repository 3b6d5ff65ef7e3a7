"""Spool records and the envelope file format.

An envelope (at the end of a queue entry `msgs/<qid>`, in courierd's
`msgs/<qid>.st`, or a former-layout `msgs/<qid>.env`) is UTF-8 text, one field
a line:

    courier-py-envelope 1                 <- format name and version, always first
    received 1700000000.123456
    sender <value>                        <- "" (empty value) for the null reverse-path <>
    body 7BIT | 8BITMIME
    smtputf8 0 | 1
    envid <value>                         <- optional (RFC 3461 ENVID)
    ret FULL | HDRS                       <- optional (RFC 3461 RET)
    client <value>
    warned 1                              <- optional: the delay DSN was sent (never "0")
    verp 1                                <- optional: MAIL FROM ... VERP (XVERP=Courier)
    security STARTTLS                     <- optional: MAIL FROM ... SECURITY=STARTTLS
    rcpt <address>\t<orcpt>\t<notify>     <- one per recipient, in order; empty = none
    end                                   <- always last: a truncated file is detected

Values are escaped so that any string survives: backslash, TAB, CR, LF and
other control characters are written as \\\\, \\t, \\r, \\n and \\xHH; everything
else (UTF-8 addresses with SMTPUTF8 included) is kept as it is. Unknown keys
are an error (a newer writer's file must not be half-understood). The optional
lines are written only when set, so an envelope without them is byte-for-byte
what older writers produced, and their files read as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMAT_LINE = "courier-py-envelope 1"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
# Courier's SECURITY levels above NONE (NONE is stored as no line at all).
SECURITY_LEVELS = ("STARTTLS",)


class SpoolError(Exception):
    """A damaged or missing spool entry, or a failed spool write."""


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    orcpt: str | None = None
    notify: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str                     # "" for the null reverse-path
    recipients: tuple[Recipient, ...]
    received: float                 # unix time accepted
    body: str = "7BIT"              # or "8BITMIME"
    smtputf8: bool = False
    envid: str | None = None
    ret: str | None = None
    client: str = ""                # e.g. "[127.0.0.1] helo=foo" for logs
    warned: bool = False            # courierd sent the one delay warning (RFC 3464 "delayed")
    verp: bool = False              # remote copies go out with a VERP return path per recipient
    security: str | None = None     # "STARTTLS": only over verified TLS (Courier's SECURITY)


_ESC = {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"}
_UNESC = {"\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


_NEEDS_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f]")


def escape(value: str) -> str:
    if not _NEEDS_ESCAPE.search(value):
        return value        # the usual address: nothing to escape, no per-character loop
    out = []
    for ch in value:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = value[i + 1:i + 2]
        if nxt in _UNESC:
            out.append(_UNESC[nxt])
            i += 2
        elif nxt == "x" and len(value) >= i + 4:
            try:
                out.append(chr(int(value[i + 2:i + 4], 16)))
            except ValueError:
                raise SpoolError(f"bad escape in {value!r}") from None
            i += 4
        else:
            raise SpoolError(f"bad escape in {value!r}")
    return "".join(out)


def format_envelope(env: Envelope) -> bytes:
    lines = [FORMAT_LINE, f"received {env.received:.6f}", f"sender {escape(env.sender)}",
             f"body {escape(env.body)}", f"smtputf8 {int(env.smtputf8)}"]
    if env.envid is not None:
        lines.append(f"envid {escape(env.envid)}")
    if env.ret is not None:
        lines.append(f"ret {escape(env.ret)}")
    lines.append(f"client {escape(env.client)}")
    if env.warned:
        # Written only when set, so files of senders that know nothing of it
        # are byte-for-byte what they were.
        lines.append("warned 1")
    if env.verp:
        lines.append("verp 1")
    if env.security is not None:
        lines.append(f"security {escape(env.security)}")
    for r in env.recipients:
        lines.append("rcpt " + "\t".join(escape(v or "") for v in (r.address, r.orcpt, r.notify)))
    lines.append("end")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_envelope(data: bytes) -> Envelope:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SpoolError("envelope file too large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolError("envelope is not UTF-8") from None
    lines = text.split("\n")
    if not lines or lines[0] != FORMAT_LINE:
        raise SpoolError("not a courier-py envelope (or an unknown version)")
    if len(lines) < 3 or lines[-1] != "" or lines[-2] != "end":
        raise SpoolError("envelope is truncated")
    fields: dict[str, str] = {}
    rcpts: list[Recipient] = []
    for line in lines[1:-2]:
        key, sep, value = line.partition(" ")
        if not sep:
            raise SpoolError(f"malformed envelope line {line[:60]!r}")
        if key == "rcpt":
            parts = value.split("\t")
            if len(parts) != 3 or not parts[0]:
                raise SpoolError(f"malformed recipient line {line[:60]!r}")
            addr, orcpt, notify = (unescape(p) for p in parts)
            rcpts.append(Recipient(addr, orcpt or None, notify or None))
            continue
        if key not in ("received", "sender", "body", "smtputf8", "envid", "ret", "client",
                       "warned", "verp", "security"):
            raise SpoolError(f"unknown envelope field {key!r}")
        if key in fields:
            raise SpoolError(f"duplicate envelope field {key!r}")
        fields[key] = value
    for key in ("received", "sender", "body", "smtputf8"):
        if key not in fields:
            raise SpoolError(f"envelope lacks {key!r}")
    try:
        received = float(fields["received"])
    except ValueError:
        raise SpoolError("bad received time") from None
    if fields["smtputf8"] not in ("0", "1"):
        raise SpoolError("bad smtputf8 flag")
    if fields.get("warned", "0") not in ("0", "1"):
        raise SpoolError("bad warned flag")
    if fields.get("verp", "0") not in ("0", "1"):
        raise SpoolError("bad verp flag")
    if fields.get("security", "STARTTLS") not in SECURITY_LEVELS:
        raise SpoolError("bad security level")
    return Envelope(
        sender=unescape(fields["sender"]),
        recipients=tuple(rcpts),
        received=received,
        body=unescape(fields["body"]),
        smtputf8=fields["smtputf8"] == "1",
        envid=unescape(fields["envid"]) if "envid" in fields else None,
        ret=unescape(fields["ret"]) if "ret" in fields else None,
        client=unescape(fields.get("client", "")),
        warned=fields.get("warned") == "1",
        verp=fields.get("verp") == "1",
        security=fields.get("security"),
    )
