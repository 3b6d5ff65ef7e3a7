"""IMAP views of a MIME tree: ENVELOPE, BODY, BODYSTRUCTURE (RFC 3501 §7.4.2)
and section addressing (RFC 3501 §6.4.5).

Pure formatting of what `libcourier.mime.parse` found; no I/O. Where RFC 3501
leaves a choice (quoting, defaults, empty sections), the choices follow Dovecot,
the project's reference; the deviations are listed in tests/unit/test_imap_golden.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from libcourier.mime import Part
from libcourier.mime.params import Param, parse_disposition, parse_params
from libcourier.rfc5322 import Address, GroupEnd, GroupStart, parse_addresses, unfold

__all__ = ["Section", "body", "bodystructure", "envelope", "imap_string", "nstring",
           "parse_section", "resolve"]


_NEEDS_LITERAL = re.compile(rb"[^\x20-\x7e]").search


_QUOTED: dict[bytes, bytes] = {}     # imap_string of short strings seen (bounded)
_QUOTED_MAX = 4096                   # entries kept
_QUOTED_LEN = 40                     # strings up to this long are kept


def imap_string(s: bytes) -> bytes:
    """A quoted string (RFC 3501 §4.3) when it can be one, else a literal: CR, LF,
    NUL and 8-bit octets cannot be quoted; like Dovecot, other controls (TAB) go as
    a literal too."""
    got = _QUOTED.get(s)
    if got is not None:
        # a folder's views repeat a few short strings ("text" "plain" "charset"...)
        return got
    if _NEEDS_LITERAL(s):
        return b"{%d}\r\n" % len(s) + s
    if b"\\" in s or b'"' in s:
        got = b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    else:
        got = b'"' + s + b'"'
    if len(s) <= _QUOTED_LEN and len(_QUOTED) < _QUOTED_MAX:
        _QUOTED[s] = got
    return got


def nstring(s: bytes | None) -> bytes:
    return b"NIL" if s is None else imap_string(s)


@dataclass(frozen=True, slots=True)
class _Folded:
    """A header value that had line ends (folding): sent as a literal without them."""
    value: bytes


def _field(part: Part, name: bytes) -> bytes | _Folded | None:
    """A header value trimmed; None when absent or empty. Like Dovecot, a folded
    value loses its line ends, its TABs become spaces, and it goes as a literal."""
    v = part.field(name)
    if v is None:
        return None
    v = v.strip(b" \t\r\n")
    if not v:
        return None
    if b"\n" in v or b"\r" in v:
        return _Folded(unfold(v).replace(b"\t", b" "))
    return v


def _nfield(part: Part, name: bytes) -> bytes:
    if name not in part.fields:
        return b"NIL"           # (most fields a view asks for are absent)
    v = _field(part, name)
    if isinstance(v, _Folded):
        return b"{%d}\r\n" % len(v.value) + v.value
    return nstring(v)


def _plain(part: Part, name: bytes) -> bytes | None:
    v = _field(part, name)
    return v.value if isinstance(v, _Folded) else v


def _address(a: Address | GroupStart | GroupEnd) -> bytes:
    if isinstance(a, GroupStart):
        return b"(NIL NIL " + imap_string(a.name) + b" NIL)"
    if isinstance(a, GroupEnd):
        return b"(NIL NIL NIL NIL)"
    return (b"(" + nstring(a.name) + b" " + nstring(a.route) + b" " + nstring(a.mailbox)
            + b" " + nstring(a.host) + b")")


_MEMO_MAX = 4096         # entries kept in each of the memos below
_MEMO_VALUE = 256        # header values up to this long are remembered
# Address lists formatted, by raw header value: a folder's messages repeat a few
# (the owner in To:, the usual senders), and parsing one was a tenth of a record.
_ADDRESS_LISTS: dict[bytes, bytes | None] = {}


def _addresses(part: Part, name: bytes) -> bytes | None:
    v = part.fields.get(name)
    if v is None:
        return None
    got = _ADDRESS_LISTS.get(v, False)
    if got is not False:
        return got      # type: ignore[return-value]
    items = parse_addresses(unfold(v))
    got = b"(" + b"".join(_address(a) for a in items) + b")" if items else None
    if len(v) <= _MEMO_VALUE and len(_ADDRESS_LISTS) < _MEMO_MAX:
        _ADDRESS_LISTS[v] = got
    return got


def envelope(msg: Part) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE of a message (the root, or a message/rfc822's
    encapsulated message). Sender and Reply-To default to From (§7.4.2)."""
    frm = _addresses(msg, b"from")
    sender = _addresses(msg, b"sender") or frm
    reply_to = _addresses(msg, b"reply-to") or frm
    items = [
        _nfield(msg, b"date"),
        _nfield(msg, b"subject"),
        frm or b"NIL", sender or b"NIL", reply_to or b"NIL",
        _addresses(msg, b"to") or b"NIL",
        _addresses(msg, b"cc") or b"NIL",
        _addresses(msg, b"bcc") or b"NIL",
        _nfield(msg, b"in-reply-to"),
        _nfield(msg, b"message-id"),
    ]
    return b"(" + b" ".join(items) + b")"


_PARAM_LISTS: dict[tuple[Param, ...], bytes] = {}     # _params answers (bounded)


def _params(params: tuple[Param, ...]) -> bytes:
    if not params:
        return b"NIL"
    got = _PARAM_LISTS.get(params)
    if got is None:
        got = b"(" + b" ".join(imap_string(p.name) + b" " + imap_string(p.value)
                               for p in params) + b")"
        if len(got) <= _MEMO_VALUE and len(_PARAM_LISTS) < _MEMO_MAX:
            _PARAM_LISTS[params] = got
    return got


def _disposition(part: Part) -> bytes:
    v = _plain(part, b"content-disposition")
    parsed = parse_disposition(v) if v is not None else None
    if parsed is None:
        return b"NIL"
    typ, params = parsed
    return b"(" + imap_string(typ) + b" " + _params(params) + b")"


def _language(part: Part) -> bytes:
    """body-fld-lang: one string, or a list for several (RFC 3066 tags, comma separated)."""
    v = _plain(part, b"content-language")
    if v is None:
        return b"NIL"
    langs = [x.strip(b" \t") for x in v.split(b",") if x.strip(b" \t")]
    if not langs:
        return b"NIL"
    if len(langs) == 1:
        return imap_string(langs[0])
    return b"(" + b" ".join(imap_string(x) for x in langs) + b")"


_EXTENSION_FIELDS = (b"content-disposition", b"content-language", b"content-location",
                     b"content-md5")


def _extension(part: Part, single: bool) -> bytes:
    """body-ext-1part (md5 first) or body-ext-mpart (params first) minus the head."""
    fields = part.fields
    if not any(f in fields for f in _EXTENSION_FIELDS):
        return b"NIL NIL NIL NIL" if single else b"NIL NIL NIL"     # (the usual part)
    tail = _disposition(part) + b" " + _language(part) + b" " + _nfield(part, b"content-location")
    if single:
        return _nfield(part, b"content-md5") + b" " + tail
    return tail


def _structure(part: Part, ext: bool) -> bytes:
    if part.children:
        out = b"(" + b"".join(_structure(c, ext) for c in part.children)
        out += b" " + imap_string(part.subtype)
        if ext:
            out += b" " + _params(part.params) + b" " + _extension(part, False)
        return out + b")"
    if part.is_multipart:
        # RFC 3501 body-type-mpart needs at least one part; a multipart whose
        # boundary never occurs has none, so report an empty text/plain part
        # in its place, as Dovecot does.
        empty = Part(part.body_start, part.body_start, part.body_start)
        empty.params = (Param(b"charset", b"us-ascii"),)
        out = b"(" + _structure(empty, ext) + b" " + imap_string(part.subtype)
        if ext:
            out += b" " + _params(part.params) + b" " + _extension(part, False)
        return out + b")"
    enc = _plain(part, b"content-transfer-encoding") or b"7bit"
    fields = [imap_string(part.type), imap_string(part.subtype), _params(part.params),
              _nfield(part, b"content-id"),
              _nfield(part, b"content-description"),
              imap_string(enc), b"%d" % part.size]
    if part.message is not None:
        fields += [envelope(part.message), _structure(part.message, ext), b"%d" % part.lines]
    elif part.type == b"text":
        fields.append(b"%d" % part.lines)
    if ext:
        fields.append(_extension(part, True))
    return b"(" + b" ".join(fields) + b")"


def bodystructure(root: Part) -> bytes:
    """BODYSTRUCTURE: the structure with extension data (RFC 3501 §7.4.2)."""
    return _structure(root, True)


def body(root: Part) -> bytes:
    """BODY: the non-extensible form."""
    return _structure(root, False)


# --- sections --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Section:
    """A parsed section-spec (RFC 3501 §6.4.5): part numbers and a text part
    ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")."""
    parts: tuple[int, ...]
    text: str


def parse_section(spec: str) -> Section | None:
    """"1.2.HEADER" -> Section((1, 2), "HEADER"); None if not a section-spec."""
    parts: list[int] = []
    rest = spec.upper()
    while rest and rest[0].isdigit():
        num, _, rest = rest.partition(".")
        if not num.isdigit() or len(num) > 9 or int(num) == 0:
            return None
        parts.append(int(num))
        if not rest and spec.endswith("."):
            return None
    if len(parts) > 100:
        return None
    if rest not in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        return None
    if rest == "MIME" and not parts:
        return None            # §6.4.5: MIME only follows a part number
    return Section(tuple(parts), rest)


def _find(root: Part, parts: tuple[int, ...]) -> Part | None:
    """The part numbered `parts` (RFC 3501 §6.4.5). A multipart's numbers are its
    children; a non-multipart part has only part 1, itself, and a number may
    follow only when it is a message/rfc822, whose message it then enters. (This
    is also how Dovecot walks the tree, imap-msgpart.c.)"""
    part = root
    for idx, k in enumerate(parts):
        more = idx + 1 < len(parts)
        if part.children:
            if k > len(part.children):
                return None
            part = part.children[k - 1]
        elif part.is_multipart or k != 1 or (more and part.message is None):
            return None
        if more and part.message is not None:
            part = part.message
    return part


def resolve(root: Part, sec: Section) -> tuple[int, int, bool] | None:
    """(start, stop, header_fields) offsets of the section in the CRLF form, or
    None when the section does not exist (Dovecot and we send it empty).
    header_fields is True when the range is a header to filter by field names."""
    target = _find(root, sec.parts) if sec.parts else root
    if target is None:
        return None
    if sec.text == "":
        if not sec.parts:
            return 0, root.body_end, False
        return target.body_start, target.body_end, False
    if sec.text == "MIME":
        return target.header_start, target.body_start, False
    msg = target if not sec.parts else target.message
    if msg is None:
        return None     # HEADER/TEXT of a part that is not message/rfc822
    if sec.text == "TEXT":
        return msg.body_start, msg.body_end, False
    return msg.header_start, msg.body_start, sec.text != "HEADER"


_ = parse_params    # re-exported for callers building their own views
