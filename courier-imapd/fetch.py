"""FETCH data items (RFC 3501 §6.4.5, §7.4.2) from Maildir files.

Messages are stored with LF line ends and served with CRLF; RFC822.SIZE is the
size of the CRLF form, so it equals the number of bytes BODY[] sends. A message
is read once per FETCH item set; the CRLF size is cached by the view.
"""

from __future__ import annotations

import time
from pathlib import Path

from courier_imapd.core import FetchItem

from libcourier.maildir.folder import MessageRef

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def to_crlf(data: bytes) -> bytes:
    """Every line end as CRLF, whether it was stored as LF or CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(path: Path) -> int:
    """Size of the CRLF form, read in chunks so a large message is not held whole."""
    total = 0
    prev_cr = False
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lf = chunk.count(b"\n")
            crlf = chunk.count(b"\r\n") + (1 if prev_cr and chunk.startswith(b"\n") else 0)
            total += len(chunk) + lf - crlf
            prev_cr = chunk.endswith(b"\r")
    return total


def internaldate(mtime: float) -> str:
    """RFC 3501 date-time: "17-Jul-1996 02:44:25 -0700", in local time like Courier."""
    t = time.localtime(mtime)
    off = t.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{t.tm_mday:2d}-{MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} '
            f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"')


def split_header(msg: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) of a CRLF message (RFC 5322 §2.1)."""
    if msg.startswith(b"\r\n"):
        return b"\r\n", msg[2:]
    i = msg.find(b"\r\n\r\n")
    if i < 0:
        return msg, b""
    return msg[:i + 4], msg[i + 4:]


def header_fields(header: bytes, names: tuple[str, ...], negate: bool) -> bytes:
    """The header lines (with continuations) whose field name is (not) in names."""
    want = {n.lower().encode("utf-8") for n in names}
    out: list[bytes] = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line + b"\r\n")
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in want) != negate
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


def section_name(item: FetchItem) -> bytes:
    if item.name != "BODY":
        return item.name.encode("ascii")
    sec = item.section
    if item.fields:
        sec += " (" + " ".join(f.upper() for f in item.fields) + ")"
    out = b"BODY[" + sec.encode("utf-8") + b"]"
    if item.partial is not None:
        out += b"<%d>" % item.partial[0]
    return out


def sets_seen(item: FetchItem) -> bool:
    """RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \\Seen."""
    return (item.name == "BODY" and not item.peek) or item.name in ("RFC822", "RFC822.TEXT")


def needs_content(item: FetchItem) -> bool:
    return item.name in ("BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT")


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def body_part(item: FetchItem, msg: bytes) -> bytes:
    """The formatted `NAME {n}\\r\\n<bytes>` for a content item of a CRLF message."""
    if item.name in ("RFC822", "BODY") and item.section == "":
        data = msg
    else:
        header, text = split_header(msg)
        if item.name == "RFC822.HEADER" or item.section == "HEADER":
            data = header
        elif item.name == "RFC822.TEXT" or item.section == "TEXT":
            data = text
        else:
            data = header_fields(header, item.fields, item.section == "HEADER.FIELDS.NOT")
    if item.partial is not None:
        off, count = item.partial
        data = data[off:off + count]
    return section_name(item) + b" " + literal(data)


def message_parts(items: tuple[FetchItem, ...], msg: MessageRef, path: Path, seq_flags: str,
                  size: int | None) -> tuple[list[bytes], int | None]:
    """All parts for one message except FLAGS (the caller knows \\Recent).

    Returns (parts, crlf size if it was computed). `seq_flags` is the formatted
    flag list, used where FLAGS is asked for. Raises OSError when the file went away.
    """
    parts: list[bytes] = []
    content: bytes | None = None
    if any(needs_content(i) for i in items):
        with open(path, "rb") as fh:
            content = to_crlf(fh.read())
        size = len(content)
    for item in items:
        if item.name == "UID":
            parts.append(b"UID %d" % msg.uid)
        elif item.name == "FLAGS":
            parts.append(b"FLAGS " + seq_flags.encode("ascii"))
        elif item.name == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + internaldate(msg.mtime).encode("ascii"))
        elif item.name == "RFC822.SIZE":
            if size is None:
                size = crlf_size(path)
            parts.append(b"RFC822.SIZE %d" % size)
        else:
            assert content is not None
            parts.append(body_part(item, content))
    return parts, size



