"""8-bit to 7-bit conversion of a message for a server without 8BITMIME, without I/O.

RFC 6152 §3: a client must not send 8-bit data to a server that does not
offer 8BITMIME; it may convert the message to 7 bits or return it. Courier
converts (module.esmtp's esmtp_send runs rfc2045_ac_check in its 7-bit mode
and rewrites the message); so does this, per MIME entity (RFC 2045 §6,
RFC 2046 §5):

- a leaf part whose transfer encoding is 7bit, 8bit, binary or absent and
  whose body has 8-bit bytes or a line longer than 998 octets (RFC 5322
  §2.1.1) is re-encoded as quoted-printable and its Content-Transfer-Encoding
  field replaced; a part labelled 8bit that is really 7-bit is relabelled;
- a multipart is split at its boundary and each part converted (a digest's
  parts default to message/rfc822); an 8bit/binary label on the multipart
  itself becomes 7bit;
- a message/rfc822 part is converted as a message of its own;
- a message without MIME-Version whose body has 8-bit bytes becomes a MIME
  text/plain message (charset utf-8 when the body is valid UTF-8, else
  unknown-8bit, RFC 1428), quoted-printable.

Parts already base64 or quoted-printable are left as they are (8-bit bytes in
them are the sender's breakage, not ours to guess at). Header fields are not
touched: 8-bit header bytes need SMTPUTF8 (RFC 6532), which the caller checks
(`header_needs_utf8`). Nesting deeper than MAX_DEPTH or more than MAX_PARTS
parts is encoded whole as one leaf, so the output is 7-bit whatever comes in.

Input may have LF or CRLF line ends; the output has LF (what the spool keeps
and dot_stuff expects).
"""

from __future__ import annotations

import binascii
import re

from libcourier.mime.params import parse_content_type

MAX_DEPTH = 20
MAX_PARTS = 1000
MAX_LINE = 998          # RFC 5322 §2.1.1, without the CRLF

_LONG_LINE = re.compile(rb"[^\n]{%d}" % (MAX_LINE + 1))
_LABEL_8BIT = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*(?:8bit|binary)")


def is_7bit(data: bytes) -> bool:
    """No 8-bit byte and no line longer than SMTP allows."""
    return data.isascii() and _LONG_LINE.search(data) is None


def header_needs_utf8(message: bytes) -> bool:
    """Whether the message's own header section holds 8-bit bytes (RFC 6532
    UTF-8 headers): a message that no conversion of ours can make 7-bit."""
    head, _ = _split(message.replace(b"\r\n", b"\n"))
    return not head.isascii()


def to_7bit(message: bytes) -> bytes:
    """The message converted as described above (LF line ends)."""
    budget = [MAX_PARTS]
    return _entity(message.replace(b"\r\n", b"\n"), 0, b"text", b"plain", True, budget)


def _split(entity: bytes) -> tuple[bytes, bytes]:
    """(header section with its final LF, body)."""
    if entity.startswith(b"\n"):
        return b"", entity[1:]
    i = entity.find(b"\n\n")
    if i < 0:
        return (entity if entity.endswith(b"\n") else entity + b"\n"), b""
    return entity[:i + 1], entity[i + 2:]


def _fields(head: bytes) -> list[bytes]:
    """The header fields, each with its continuation lines and final LF."""
    out: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += line
        else:
            out.append(line)
    return out


def _name(field: bytes) -> bytes:
    return field.partition(b":")[0].strip().lower()


def _get(fields: list[bytes], name: bytes) -> bytes | None:
    for f in fields:
        if _name(f) == name:
            return f.partition(b":")[2].replace(b"\n", b"").strip()
    return None


def _set(fields: list[bytes], name: bytes, line: bytes) -> list[bytes]:
    """Replace the field(s) called name by `line` (where the first was), else append."""
    out: list[bytes] = []
    done = False
    for f in fields:
        if _name(f) == name:
            if not done:
                out.append(line)
                done = True
            continue
        out.append(f)
    if not done:
        out.append(line)
    return out


def _qp(body: bytes) -> bytes:
    # RFC 2045 §6.7; binascii keeps LF line ends, escapes trailing white space
    # and "=", and breaks lines at 76 with soft line breaks.
    out = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
    # A lone "." line would be unambiguous after dot-stuffing, but a "From "
    # line start is what mbox readers mangle on the way: encode its F.
    out = out.replace(b"\nFrom ", b"\n=46rom ")
    return b"=46" + out[1:] if out.startswith(b"From ") else out


def _leaf(fields: list[bytes], body: bytes, cte: bytes | None) -> tuple[list[bytes], bytes]:
    if cte not in (None, b"7bit", b"8bit", b"binary"):
        return fields, body                     # base64, quoted-printable, x-...: as sent
    if is_7bit(body):
        if cte in (b"8bit", b"binary"):
            fields = _set(fields, b"content-transfer-encoding",
                          b"Content-Transfer-Encoding: 7bit\n")
        return fields, body
    fields = _set(fields, b"content-transfer-encoding",
                  b"Content-Transfer-Encoding: quoted-printable\n")
    return fields, _qp(body)


def _boundary(ct: tuple[bytes, bytes, tuple] | None) -> bytes | None:
    if ct is None:
        return None
    for p in ct[2]:
        if p.name.lower() == b"boundary" and p.value:
            return p.value
    return None


def _entity(entity: bytes, depth: int, dtype: bytes, dsub: bytes, top: bool,
            budget: list[int]) -> bytes:
    """One entity (a message, or a body part whose default type is dtype/dsub)."""
    if is_7bit(entity) and _LABEL_8BIT.search(entity) is None:
        return entity
    head, body = _split(entity)
    fields = _fields(head)
    budget[0] -= 1
    raw_ct = _get(fields, b"content-type")
    ct = parse_content_type(raw_ct) if raw_ct is not None else None
    cte = _get(fields, b"content-transfer-encoding")
    cte = cte.lower() if cte else None
    if top and _get(fields, b"mime-version") is None:
        # Not MIME (RFC 2045 §4): the body is text of unknown charset.
        if is_7bit(body):
            return entity
        if raw_ct is None:
            charset = b"utf-8" if _is_utf8(body) else b"unknown-8bit"
            fields.append(b"Content-Type: text/plain; charset=" + charset + b"\n")
        fields.append(b"MIME-Version: 1.0\n")
        fields, body = _leaf(fields, body, None)
        return b"".join(fields) + b"\n" + body
    typ, sub = (ct[0], ct[1]) if ct else (dtype, dsub)
    if depth >= MAX_DEPTH or budget[0] <= 0:
        fields, body = _leaf(fields, body, cte)
        return b"".join(fields) + b"\n" + body
    if typ == b"multipart" and _boundary(ct) is not None:
        body = _multipart(body, _boundary(ct), sub, depth, budget)
        if cte in (b"8bit", b"binary"):
            fields = _set(fields, b"content-transfer-encoding",
                          b"Content-Transfer-Encoding: 7bit\n")
    elif typ == b"message" and sub == b"rfc822" and cte in (None, b"7bit", b"8bit", b"binary"):
        body = _entity(body, depth + 1, b"text", b"plain", True, budget)
        if cte in (b"8bit", b"binary"):
            fields = _set(fields, b"content-transfer-encoding",
                          b"Content-Transfer-Encoding: 7bit\n")
    else:
        fields, body = _leaf(fields, body, cte)
    return b"".join(fields) + b"\n" + body


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _multipart(body: bytes, boundary: bytes, sub: bytes, depth: int,
               budget: list[int]) -> bytes:
    """RFC 2046 §5.1.1: delimiter lines are "--" boundary, the last one "--" boundary
    "--", each optionally followed by white space. Everything is kept line for
    line; only the parts (and 8-bit bytes in preamble and epilogue) change."""
    delim = b"--" + boundary
    out: list[bytes] = []             # output lines
    part: list[bytes] | None = None   # lines of the current part; None: outside parts
    outside: list[bytes] = []
    closed = False
    dtype, dsub = (b"message", b"rfc822") if sub == b"digest" else (b"text", b"plain")

    def flush() -> None:
        if part:
            out.extend(_entity(b"\n".join(part), depth + 1, dtype, dsub, False,
                               budget).split(b"\n"))
        if outside:
            out.extend(_ascii(b"\n".join(outside)).split(b"\n"))
            outside.clear()

    for line in body.split(b"\n"):
        bare = line.rstrip(b" \t\r")
        if not closed and bare.startswith(delim) and bare[len(delim):] in (b"", b"--"):
            flush()
            out.append(line)
            closed = bare != delim
            part = None if closed else []
        elif part is not None:
            part.append(line)
        else:
            outside.append(line)
    flush()                 # the epilogue, or a last part without its closing delimiter
    return b"\n".join(out)


def _ascii(text: bytes) -> bytes:
    # Preamble and epilogue are to be ignored by readers (RFC 2046 §5.1.1):
    # 8-bit bytes there are replaced, and overlong lines broken, not encoded.
    if is_7bit(text):
        return text
    text = bytes(b if b < 0x80 else 0x3F for b in text)
    return b"\n".join(line[i:i + MAX_LINE] for line in text.split(b"\n")
                      for i in range(0, max(len(line), 1), MAX_LINE))
