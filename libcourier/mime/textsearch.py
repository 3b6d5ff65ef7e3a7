"""Searching a message's decoded text (IMAP SEARCH BODY / TEXT, RFC 3501 §6.4.4).

`contains(fh, needle, body_only=...)` answers whether the casefolded `needle`
occurs in the message as a reader would see it: header fields RFC 2047-decoded
and unfolded, text/* bodies with their Content-Transfer-Encoding undone
(quoted-printable, base64) and their charset turned into Unicode. Non-text
leaves (images, application/*) are not searched. BODY looks only at body
text; TEXT also at every header (the message's, each MIME part's, each
attached message's).

Memory is bounded whatever the size of the message: a small message is read
once into memory; a large one is parsed (one pass, libcourier.mime) and then
streamed a chunk at a time, each piece decoded incrementally, keeping only the
last len(needle) - 1 characters between pieces so a match across a chunk
boundary is still seen.
"""

from __future__ import annotations

import binascii
import codecs
import io
import re
from collections.abc import Iterator
from typing import BinaryIO

from libcourier.mime import MAX_DEPTH, MAX_PARTS, Part, parse, parse_content_type
from libcourier.rfc5322 import decode_words

IN_MEMORY = 1 << 20        # messages up to this many bytes are read whole
CHUNK = 1 << 16            # bytes streamed at a time from larger ones
MAX_HEADER = 1 << 20       # bytes of one header block gathered for decoding
MAX_QP_CARRY = 1 << 16     # an unfinished quoted-printable line held at most this long


def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _crlf_chunks(fh: BinaryIO) -> Iterator[bytes]:
    """The message's CRLF form (the offsets libcourier.mime reports) in pieces; a CR
    at the end of a read waits for the next one so a split CRLF stays one."""
    fh.seek(0)
    carry = b""
    while raw := fh.read(CHUNK):
        data = carry + raw
        carry = b""
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        if data:
            yield _to_crlf(data)
    if carry:
        yield carry


def _param(part: Part, name: bytes) -> bytes | None:
    for p in part.params:
        if p.name.lower() == name:
            return p.value
    return None


def _charset(part: Part) -> str:
    return _codec(_param(part, b"charset"))


def _codec(charset: bytes | None) -> str:
    cs = (charset or b"us-ascii").decode("ascii", "replace").strip().lower()
    try:
        name = codecs.lookup(cs).name
    except LookupError:
        return "utf-8"      # an unknown charset: its ASCII subset still matches
    # US-ASCII text often carries 8-bit bytes anyway; UTF-8 is the useful guess.
    return "utf-8" if name == "ascii" else name


class _Finder:
    """Feed text; `found` once the needle has been seen (across feeds too)."""

    def __init__(self, needle: str):
        self.needle = needle
        self.keep = max(len(needle) - 1, 0)
        self.tail = ""
        self.found = needle == ""

    def feed(self, text: str) -> None:
        if self.found or not text:
            return
        # for ASCII, casefold() is lower(), which is cheaper
        s = self.tail + (text.lower() if text.isascii() else text.casefold())
        if self.needle in s:
            self.found = True
            return
        self.tail = s[-self.keep:] if self.keep else ""

    def reset(self) -> None:
        """A part ended: no match spans two parts."""
        self.tail = ""


class _BodyDecoder:
    """Transfer decoding and charset decoding of one leaf, in pieces."""

    def __init__(self, part: Part, finder: _Finder, cte: bytes | None = None,
                 codec: str | None = None):
        if cte is None:
            cte = part.fields.get(b"content-transfer-encoding") or b""
        cte = cte.strip().lower()
        self.cte = cte if cte in (b"base64", b"quoted-printable") else b""
        self.text = codecs.getincrementaldecoder(codec or _charset(part))(errors="replace")
        self.finder = finder
        self.carry = b""

    def feed(self, data: bytes) -> None:
        if self.cte == b"base64":
            data = self.carry + b"".join(data.split())
            cut = len(data) - len(data) % 4
            data, self.carry = data[:cut], data[cut:]
            try:
                data = binascii.a2b_base64(data)
            except binascii.Error:
                data = b""        # damaged base64: nothing readable in this piece
        elif self.cte == b"quoted-printable":
            data = self.carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < MAX_QP_CARRY:
                self.carry = data
                return
            if cut == 0:
                cut = len(data)
            data, self.carry = binascii.a2b_qp(data[:cut]), data[cut:]
        self.finder.feed(self.text.decode(data))

    def close(self) -> None:
        if self.carry:
            if self.cte == b"quoted-printable":
                self.finder.feed(self.text.decode(binascii.a2b_qp(self.carry)))
            self.carry = b""
        self.finder.feed(self.text.decode(b"", final=True))
        self.finder.reset()


def _header_text(block: bytes) -> str:
    """A header block as text: fields unfolded, RFC 2047 words decoded, one a line."""
    block = block.replace(b"\r\n", b"\n").replace(b"\n\t", b"\t").replace(b"\n ", b" ")
    if b"=?" not in block:
        return block.decode("utf-8", "replace")      # no encoded word: one decode
    out: list[str] = []
    for field in block.split(b"\n"):
        if field:
            out.append(decode_words(field))
    return "\n".join(out)


def _segments(root: Part, body_only: bool) -> list[tuple[int, int, Part, bool]]:
    """(start, stop, part, is_header) for what is searched, in file order."""
    out: list[tuple[int, int, Part, bool]] = []

    def walk(p: Part) -> None:
        if not body_only and p.body_start > p.header_start:
            out.append((p.header_start, p.body_start, p, True))
        if p.children:
            for c in p.children:
                walk(c)
        elif p.message is not None:
            walk(p.message)
        elif p.type == b"text" and p.body_end > p.body_start:
            out.append((p.body_start, p.body_end, p, False))

    walk(root)
    out.sort(key=lambda s: s[0])
    return out


def _search(chunks: Iterator[bytes], segs: list[tuple[int, int, Part, bool]],
            needle: str) -> bool:
    finder = _Finder(needle)
    if finder.found:
        return True
    k = 0
    pos = 0                       # CRLF offset of the current chunk
    header = bytearray()
    decoder: _BodyDecoder | None = None
    for chunk in chunks:
        end = pos + len(chunk)
        while k < len(segs):
            start, stop, part, is_header = segs[k]
            if start >= end:
                break
            piece = chunk[max(start - pos, 0):min(stop, end) - pos]
            if is_header:
                if len(header) < MAX_HEADER:
                    header += piece[:MAX_HEADER - len(header)]
            else:
                if decoder is None:
                    decoder = _BodyDecoder(part, finder)
                decoder.feed(piece)
            if stop > end:
                break             # the segment goes on in the next chunk
            if is_header:
                finder.feed(_header_text(bytes(header)))
                finder.reset()
                header.clear()
            elif decoder is not None:
                decoder.close()
                decoder = None
            if finder.found:
                return True
            k += 1
        if finder.found:
            return True
        if k >= len(segs):
            break
        pos = end
    if decoder is not None:
        decoder.close()
    elif header:
        finder.feed(_header_text(bytes(header)))
    return finder.found


# Bytes whose presence means the raw message may hide text that its decoded form
# shows: encodings (RFC 2047 words, base64, quoted-printable), charsets whose
# ASCII-looking bytes decode to other text (UTF-7, UTF-16/32), NUL and ESC
# (ISO-2022 shifts). Lower case: looked for in the lowered message.
_HIDES = (b"=?", b"base64", b"quoted-printable", b"utf-7", b"utf-16", b"utf-32",
          b"\x00", b"\x1b")


def surely_absent(data: bytes, needle: str) -> bool:
    """True when the raw message proves that `needle` is nowhere in its decoded text:
    the message is ASCII (so decoding is the identity and casefold() is lower()),
    has nothing in _HIDES, the needle is ASCII without white space (so no fold or
    line end can split it), and the lowered bytes do not hold it. False: look."""
    if not needle.isascii() or not needle or any(c.isspace() for c in needle):
        return False
    if not data.isascii():
        return False
    low = data.lower()
    return needle.encode("ascii") not in low and not any(h in low for h in _HIDES)


class _Fallback(Exception):
    """The fast walk met something only the full parser answers exactly."""


_CT = re.compile(rb"^content-type[ \t]*:(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_CTE = re.compile(rb"^content-transfer-encoding[ \t]*:(.*(?:\n[ \t].*)*)",
                  re.IGNORECASE | re.MULTILINE)


def _fast_walk(part: bytes, default: tuple[bytes, bytes], depth: int, stack: list[bytes],
               body_only: bool, finder: _Finder, count: list[int]) -> None:
    """The common case in memory, with bytes.find instead of a line-by-line parse:
    one part (LF line ends) searched like _segments/_search would search it. Raises
    _Fallback where the two could differ (a boundary that is a prefix of another,
    more than MAX_PARTS parts, nesting beyond MAX_DEPTH, a boundary line inside a
    header), so the caller parses the message fully instead."""
    count[0] += 1
    if count[0] >= MAX_PARTS or depth >= MAX_DEPTH:
        raise _Fallback
    if part.startswith(b"\n"):
        header, body = b"", part[1:]
    else:
        i = part.find(b"\n\n")
        header, body = (part, b"") if i < 0 else (part[:i + 1], part[i + 2:])
    if stack and (header.startswith(b"--") or b"\n--" in header):
        raise _Fallback           # a boundary may end this header early
    if header and not body_only:
        finder.feed(_header_text(header))
        finder.reset()
    if finder.found:
        return
    m = _CT.search(header)
    typ, sub, params = default[0], default[1], ()
    if m is not None:
        parsed = parse_content_type(m.group(1).replace(b"\n", b""))
        typ, sub, params = parsed if parsed is not None else (b"text", b"plain", ())

    def param(name: bytes) -> bytes | None:
        for p in params:
            if p.name.lower() == name:
                return p.value
        return None

    if typ == b"multipart":
        boundary = param(b"boundary")
        if not boundary:
            return                # no findable parts: nothing to search (as parse)
        if any(b.startswith(boundary) or boundary.startswith(b) for b in stack):
            raise _Fallback
        delim = b"\n--" + boundary
        text = b"\n" + body
        pos = text.find(delim)
        child = (b"message", b"rfc822") if sub == b"digest" else (b"text", b"plain")
        while pos >= 0:
            line_end = text.find(b"\n", pos + 1)
            if text.startswith(b"--", pos + len(delim)):
                return            # the close delimiter: the epilogue is not content
            if line_end < 0:
                return
            nxt = text.find(delim, line_end)
            _fast_walk(text[line_end + 1:nxt if nxt >= 0 else len(text)], child, depth + 1,
                       [boundary, *stack], body_only, finder, count)
            if finder.found:
                return
            pos = nxt
        return
    if typ == b"message" and sub in (b"rfc822", b"global"):
        _fast_walk(body, (b"text", b"plain"), depth + 1, stack, body_only, finder, count)
        return
    if typ != b"text" or not body:
        return
    m = _CTE.search(header)
    cte = m.group(1).replace(b"\n", b"") if m is not None else b""
    dec = _BodyDecoder(Part(0), finder, cte, _codec(param(b"charset")))
    dec.feed(body)
    dec.close()


def contains(fh: BinaryIO, needle: str, *, body_only: bool) -> bool:
    """Whether the casefolded `needle` is in the message's decoded text (see above)."""
    fh.seek(0)
    data = fh.read(IN_MEMORY + 1)
    if len(data) <= IN_MEMORY and surely_absent(data, needle):
        return False
    if len(data) <= IN_MEMORY:
        finder = _Finder(needle)
        try:
            _fast_walk(data.replace(b"\r\n", b"\n"), (b"text", b"plain"), 0, [], body_only,
                       finder, [0])
            return finder.found
        except _Fallback:
            pass
        root = parse(io.BytesIO(data))
        return _search(iter((_to_crlf(data),)), _segments(root, body_only), needle)
    root = parse(fh)
    return _search(_crlf_chunks(fh), _segments(root, body_only), needle)
