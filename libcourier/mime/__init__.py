"""A MIME tree (RFC 2045/2046) with byte offsets, from one linear pass.

`parse(fh)` reads a message file once, line by line, and returns its tree of
`Part`s. Nothing but the few header fields IMAP needs (Content-*, and the
envelope fields of messages) is kept, each bounded in size, so a 50 MB message
costs the same memory as a small one. Offsets and sizes are in terms of the
message's CRLF form — Maildir files are stored with LF and served with CRLF, so
BODY[1] must send the CRLF bytes and BODYSTRUCTURE must count them (RFC 3501
§7.4.2: size in octets "in its transfer encoding", as the client receives it).

Broken input is reported as best the RFCs allow: a missing final boundary ends
the part at end of file (RFC 2046 §5.1.1 says nothing better), a multipart
without boundary parameter is taken as text/plain like Dovecot does, nesting
beyond MAX_DEPTH or more than MAX_PARTS parts is left unparsed as a leaf.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import BinaryIO

from libcourier.mime.params import Param, parse_content_type, parse_params

__all__ = ["MAX_DEPTH", "MAX_PARTS", "Param", "Part", "parse", "parse_content_type",
           "parse_params"]

MAX_LINE = 1 << 16           # a physical line is read in pieces of at most this many bytes
CHUNK = 1 << 16              # bytes read from the file at a time
FAST_HEADER = 1 << 18        # headers up to this size are parsed as one block
MAX_FIELD = 1 << 16          # bytes kept of one header field value
MAX_DEPTH = 64               # nested multipart / message levels parsed
MAX_PARTS = 10000            # parts parsed in one message

# Header fields kept per part: what BODYSTRUCTURE and ENVELOPE read.
KEPT = frozenset({
    b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"content-disposition", b"content-language", b"content-location", b"content-md5",
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
    b"in-reply-to", b"message-id", b"references",    # references: THREAD (RFC 5256)
})
ADDRESS_FIELDS = frozenset({b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"})
# A KEPT field of a header block (whole lines, each ending in LF) with an LF put in
# front: its name after an LF, optional WSP before the colon (RFC 5322 §4.5 obs-field),
# and the value: the rest of the line and its folded continuations (§2.2.3), without
# the last line end (left for the next field's LF; a literal LF to start with is what
# lets the engine skip to candidates, twice as fast as ^ in MULTILINE mode). Lines
# without a colon, and their continuations, match nothing, as in _parse_header.
_KEPT_FIELD = re.compile(
    rb"\n(" + b"|".join(re.escape(n) for n in sorted(KEPT, key=len, reverse=True))
    + rb")[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?=\n)", re.IGNORECASE).findall
_BLANK_LINE = re.compile(rb"\n\r?\n").search     # the end of a header block


@dataclass(slots=True)
class Part:
    """One body part. Offsets are into the CRLF form of the whole message.

    header_start..body_start is the part's MIME header including its blank line;
    body_start..body_end its body (for a multipart: preamble, parts, epilogue; the
    CRLF before a boundary belongs to the boundary, RFC 2046 §5.1.1).
    """
    header_start: int
    body_start: int = 0
    body_end: int = 0
    lines: int = 0                      # line ends (LF) in the body
    fields: dict[bytes, bytes] = field(default_factory=dict)   # first of each KEPT field
    type: bytes = b"text"               # lower case
    subtype: bytes = b"plain"
    params: tuple[Param, ...] = ()
    explicit_type: bool = False         # the part had a usable Content-Type
    children: list[Part] = field(default_factory=list)          # multipart parts
    message: Part | None = None         # message/rfc822: the encapsulated message

    @property
    def is_multipart(self) -> bool:
        return self.type == b"multipart"

    @property
    def size(self) -> int:
        return self.body_end - self.body_start

    def field(self, name: bytes) -> bytes | None:
        return self.fields.get(name)


@dataclass(slots=True)
class _Line:
    data: bytes        # the piece as stored (LF or CRLF line end, or none for a split line)
    start: int         # CRLF offset of its first byte
    lf_before: int     # LF count before it
    line_start: bool   # first piece of a physical line


class _Reader:
    """Pieces of lines of a file with their offsets in the CRLF form.

    An internal buffer of at most MAX_LINE + CHUNK bytes; `skip_body` passes over
    lines that cannot be boundaries in bulk (the common case: body text), counting
    their CRLF length and line ends without a Python step per line.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.buf = b""
        self.off = 0              # next unread byte of buf
        self.pos = 0              # CRLF offset of the next piece
        self.lfs = 0              # LFs so far
        self.at_line_start = True
        self.prev_cr = False      # the previous piece ended with CR (a CRLF split in two)
        self.parts = 0

    def _fill(self) -> bool:
        data = self.fh.read(CHUNK)
        if not data:
            return False
        self.buf = self.buf[self.off:] + data
        self.off = 0
        return True

    def _account(self, end: int) -> bytes:
        """Consume buf[off:end] as read; returns it."""
        r = self.buf[self.off:end]
        self._advance(end)
        return r

    def _advance(self, end: int) -> None:
        """Consume buf[off:end] as read, counted in place (no copy of a body passed over)."""
        buf, off = self.buf, self.off
        n_lf = buf.count(b"\n", off, end)
        crlf = end - off + n_lf
        # (most stored messages have no CR at all: one memchr instead of a CRLF count)
        if buf.find(b"\r", off, end) >= 0:
            crlf -= buf.count(b"\r\n", off, end)
        if self.prev_cr and end > off and buf[off] == 10:
            crlf -= 1             # its CR came in the previous piece
        self.off = end
        self.pos += crlf
        self.lfs += n_lf
        last = buf[end - 1] if end > off else -1
        self.at_line_start = last == 10
        self.prev_cr = last == 13

    def next(self) -> _Line | None:
        """The next line, or the next MAX_LINE bytes of a longer one."""
        while True:
            i = self.buf.find(b"\n", self.off, self.off + MAX_LINE)
            if i >= 0:
                end = i + 1
                break
            if len(self.buf) - self.off >= MAX_LINE:
                end = self.off + MAX_LINE
                break
            if not self._fill():
                if self.off >= len(self.buf):
                    return None
                end = len(self.buf)
                break
        line = _Line(b"", self.pos, self.lfs, self.at_line_start)
        line.data = self._account(end)
        return line

    def skip_rest(self) -> None:
        """Pass over everything left, counting it in bulk: a body no boundary can end."""
        while True:
            if self.off < len(self.buf):
                self._advance(len(self.buf))
            if not self._fill():
                return

    def skip_body(self) -> None:
        """Pass over whole lines that do not start with "-" (none can be a boundary),
        stopping at the start of one that does, or at end of file."""
        while True:
            if self.at_line_start and self.buf[self.off:self.off + 1] == b"-":
                return
            j = self.buf.find(b"\n-", self.off)
            if j >= 0:
                self._advance(j + 1)
                return
            k = self.buf.rfind(b"\n", self.off)
            if k >= 0:
                self._advance(k + 1)
            elif len(self.buf) - self.off >= MAX_LINE:
                self._advance(len(self.buf))      # a long line without LF: in bulk too
            if not self._fill():
                return


@dataclass(slots=True)
class _End:
    """What ended a part: a boundary line of the stack, or end of file (index -1)."""
    index: int
    close: bool
    line: _Line | None


def _is_blank(data: bytes) -> bool:
    return data in (b"\n", b"\r\n")


def _boundary(line: _Line, stack: list[bytes]) -> _End | None:
    """RFC 2046 §5.1.1: "--" boundary ["--"] at the start of a line. Like Dovecot,
    anything after the boundary (transport padding or not) is ignored; the
    innermost matching boundary wins."""
    d = line.data
    if not line.line_start or not d.startswith(b"--") or not stack:
        return None
    for i, b in enumerate(stack):
        if d.startswith(b, 2):
            return _End(i, d.startswith(b"--", 2 + len(b)), line)
    return None


def _finish(part: Part, end: _End, reader: _Reader) -> None:
    """Set body_end and lines from what ended the body."""
    if end.line is None:
        part.body_end = reader.pos
        part.lines = reader.lfs - part.lines
        return
    ln = end.line
    if ln.start > part.body_start:
        # the line end before the boundary belongs to the boundary
        part.body_end = ln.start - 2
        part.lines = ln.lf_before - 1 - part.lines
    else:
        part.body_end = part.body_start
        part.lines = 0
    part.body_end = max(part.body_end, part.body_start)
    part.lines = max(part.lines, 0)


def _skip_to_boundary(reader: _Reader, stack: list[bytes]) -> _End:
    if not stack:
        # No multipart is open (a single-part message, or past the last close
        # delimiter): no line can end this body, so the rest of the file is it.
        # Without this, every body line starting with "-" was a step in Python.
        reader.skip_rest()
        return _End(-1, False, None)
    while True:
        reader.skip_body()
        line = reader.next()
        if line is None:
            return _End(-1, False, None)
        end = _boundary(line, stack)
        if end is not None:
            return end


def _keep(part: Part, name: bytes | None, value: bytes) -> None:
    if name is None or name not in KEPT:
        return
    old = part.fields.get(name)
    if old is None:
        part.fields[name] = value[:MAX_FIELD]
    elif name in ADDRESS_FIELDS and len(old) < MAX_FIELD:
        # repeated address fields are one list (as Dovecot and Courier read them)
        part.fields[name] = (old + b"," + value)[:MAX_FIELD]


def _fast_header(part: Part, reader: _Reader, stack: list[bytes]) -> bool:
    """The common case: the whole header, up to its blank line, is (or after a
    refill or two is) in the reader's buffer and holds no boundary line; parse it
    as one block. False: nothing consumed, use the line-by-line path."""
    if not reader.at_line_start or reader.prev_cr:
        return False
    while True:
        buf, off = reader.buf, reader.off
        if buf[off:off + 1] == b"\n" or buf[off:off + 2] == b"\r\n":
            return False
        blank = _BLANK_LINE(buf, off)    # (two finds scanned all the buffer for the absent one)
        if blank is not None:
            e = blank.start()
            break
        if len(buf) - off > FAST_HEADER or not reader._fill():
            return False
    block = buf[off:e + 1]
    if stack and (block.startswith(b"--") or b"\n--" in block):
        return False
    # Only the KEPT fields are looked at, found by one regular expression over the
    # block (a Python step per header line was a tenth of a cold FETCH ENVELOPE).
    for name, value in _KEPT_FIELD(b"\n" + block):
        _keep(part, name.lower(), value + b"\n")
    reader._advance(blank.end())
    part.body_start = reader.pos
    part.lines = reader.lfs          # LFs before the body, subtracted in _finish
    return True


def _parse_header(part: Part, reader: _Reader, stack: list[bytes]) -> _End | None:
    """Read the header of `part`; returns an _End if a boundary or EOF came first."""
    if _fast_header(part, reader, stack):
        return None
    name: bytes | None = None
    value = bytearray()

    def keep() -> None:
        _keep(part, name, bytes(value))

    while True:
        line = reader.next()
        if line is None:
            keep()
            part.body_start = reader.pos
            return _End(-1, False, None)
        if line.line_start:
            end = _boundary(line, stack)
            if end is not None:
                keep()
                part.body_start = line.start
                return end
            data = line.data
            while not data.endswith(b"\n"):
                # a physical line longer than one read: gather it (bounded), so a
                # field name is never cut from its colon
                more = reader.next()
                if more is None:
                    break
                if len(data) < MAX_FIELD:
                    data += more.data[:MAX_FIELD - len(data)]
                if more.data.endswith(b"\n"):
                    break
            line.data = data
            if _is_blank(line.data):
                keep()
                part.body_start = reader.pos
                part.lines = reader.lfs      # LFs before the body, subtracted in _finish
                return None
            if line.data[:1] in (b" ", b"\t"):          # folded continuation (§2.2.3)
                if name is not None and len(value) < MAX_FIELD:
                    value += line.data[:MAX_FIELD - len(value)]
                continue
            keep()
            colon = line.data.find(b":")
            if colon > 0:
                name = line.data[:colon].rstrip(b" \t").lower()
                value = bytearray(line.data[colon + 1:colon + 1 + MAX_FIELD])
            else:
                name = None       # not a header field: ignored (RFC 5322 §2.2 needs a colon)
        elif name is not None and len(value) < MAX_FIELD:
            value += line.data[:MAX_FIELD - len(value)]


MEMO_VALUE = 256        # Content-Type values up to this long are remembered


@functools.lru_cache(maxsize=512)
def _memo_content_type(v: bytes) -> tuple[bytes, bytes, tuple[Param, ...]] | None:
    return parse_content_type(v)


def _content_type(v: bytes) -> tuple[bytes, bytes, tuple[Param, ...]] | None:
    """parse_content_type, remembered for short values: a folder's messages repeat a
    few (text/plain; charset=utf-8), and parsing one was a tenth of a MIME parse. The
    answer is immutable (bytes and frozen Params), so sharing it is safe."""
    return _memo_content_type(v) if len(v) <= MEMO_VALUE else parse_content_type(v)


def _set_type(part: Part, default: tuple[bytes, bytes]) -> None:
    part.type, part.subtype = default
    ct = part.fields.get(b"content-type")
    if ct is None:
        if default == (b"text", b"plain"):
            part.params = (Param(b"charset", b"us-ascii"),)
        return
    parsed = _content_type(ct)
    if parsed is None:
        # RFC 2045 §5.2: an invalid Content-Type is taken as text/plain; us-ascii
        part.type, part.subtype = b"text", b"plain"
        part.params = (Param(b"charset", b"us-ascii"),)
        return
    part.type, part.subtype, part.params = parsed
    part.explicit_type = True
    if part.type == b"text" and _param(part, b"charset") is None:
        # RFC 2045 §5.2 / RFC 2046 §4.1.2: text without charset is us-ascii
        part.params = (*part.params, Param(b"charset", b"us-ascii"))


def _param(part: Part, name: bytes) -> bytes | None:
    for p in part.params:
        if p.name.lower() == name:
            return p.value
    return None


def _parse_part(reader: _Reader, stack: list[bytes], default: tuple[bytes, bytes],
                depth: int, start: int) -> tuple[Part, _End]:
    reader.parts += 1
    part = Part(start)
    end = _parse_header(part, reader, stack)
    _set_type(part, default)
    if end is not None:          # no body at all
        part.lines = 0
        part.body_end = part.body_start
        return part, end
    deep = depth >= MAX_DEPTH or reader.parts >= MAX_PARTS
    if part.type == b"multipart" and not deep and _param(part, b"boundary"):
        # (a multipart without boundary has no findable parts: its body is skipped
        # like a leaf's and the views report one empty part, as Dovecot does)
        boundary = _param(part, b"boundary") or b""  # (checked non-empty above)
        inner = [boundary, *stack]
        child_default = (b"message", b"rfc822") if part.subtype == b"digest" else (b"text", b"plain")
        end = _skip_to_boundary(reader, inner)                  # preamble
        while end.index == 0 and not end.close and reader.parts < MAX_PARTS:
            assert end.line is not None
            child, end = _parse_part(reader, inner, child_default, depth + 1, reader.pos)
            part.children.append(child)
        if end.index == 0 and not end.close:
            end = _skip_to_boundary(reader, inner)              # over the part limit
        if end.index == 0:                                      # close delimiter: epilogue
            end = _skip_to_boundary(reader, stack)
        else:
            end = _End(end.index - 1 if end.index > 0 else -1, end.close, end.line)
    elif part.type == b"message" and part.subtype in (b"rfc822", b"global") and not deep:
        child, end = _parse_part(reader, stack, (b"text", b"plain"), depth + 1, part.body_start)
        part.message = child
    else:
        end = _skip_to_boundary(reader, stack)
    _finish(part, end, reader)
    # The CRLF before the boundary that ended this part belongs to the boundary,
    # so the last child (or the encapsulated message) may have been finished past
    # this part's end: pull it back.
    if part.children:
        _clamp(part.children[-1], part.body_end)
    if part.message is not None:
        _clamp(part.message, part.body_end)
    return part, end


def _clamp(part: Part, limit: int) -> None:
    part.header_start = min(part.header_start, limit)
    part.body_start = min(part.body_start, limit)
    part.body_end = min(part.body_end, limit)
    if part.children:
        _clamp(part.children[-1], limit)
    if part.message is not None:
        _clamp(part.message, limit)


def parse(fh: BinaryIO, *, header_only: bool = False) -> Part:
    """The MIME tree of the message in `fh` (read from its start, once).

    header_only: read only the top-level header (enough for ENVELOPE); the
    returned part has its fields and type but no body offsets or children.
    """
    fh.seek(0)
    reader = _Reader(fh)
    if header_only:
        part = Part(0)
        _parse_header(part, reader, [])
        _set_type(part, (b"text", b"plain"))
        part.lines = 0
        part.body_end = part.body_start
        return part
    part, end = _parse_part(reader, [], (b"text", b"plain"), 0, 0)
    if end.index >= 0:
        # cannot happen at top level (empty stack); kept for safety
        _finish(part, _End(-1, False, None), reader)
    return part
