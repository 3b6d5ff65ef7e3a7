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
from collections.abc import Iterator
from typing import BinaryIO

from libcourier.mime import Part, parse
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
    cs = (_param(part, b"charset") or b"us-ascii").decode("ascii", "replace").strip().lower()
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
        s = self.tail + text.casefold()
        if self.needle in s:
            self.found = True
            return
        self.tail = s[-self.keep:] if self.keep else ""

    def reset(self) -> None:
        """A part ended: no match spans two parts."""
        self.tail = ""


class _BodyDecoder:
    """Transfer decoding and charset decoding of one leaf, in pieces."""

    def __init__(self, part: Part, finder: _Finder):
        cte = (part.fields.get(b"content-transfer-encoding") or b"").strip().lower()
        self.cte = cte if cte in (b"base64", b"quoted-printable") else b""
        self.text = codecs.getincrementaldecoder(_charset(part))(errors="replace")
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
    out: list[str] = []
    for field in block.replace(b"\r\n", b"\n").replace(b"\n\t", b"\t").replace(
            b"\n ", b" ").split(b"\n"):
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


def contains(fh: BinaryIO, needle: str, *, body_only: bool) -> bool:
    """Whether the casefolded `needle` is in the message's decoded text (see above)."""
    fh.seek(0)
    data = fh.read(IN_MEMORY + 1)
    if len(data) <= IN_MEMORY:
        root = parse(io.BytesIO(data))
        return _search(iter((_to_crlf(data),)), _segments(root, body_only), needle)
    root = parse(fh)
    return _search(_crlf_chunks(fh), _segments(root, body_only), needle)
