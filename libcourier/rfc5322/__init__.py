"""RFC 5322 header fields and addresses, on bytes.

Header values stay bytes: 8-bit and UTF-8 headers (RFC 6532) are kept as they
came, and only the IMAP views decide how to quote them. Everything here is pure
(no I/O) and bounded: callers hand in values already limited in size.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

MAX_ADDRESSES = 1000        # addresses kept from one header field (the rest are dropped)

__all__ = [
    "Address",
    "GroupEnd",
    "GroupStart",
    "MAX_ADDRESSES",
    "Token",
    "TokenKind",
    "decode_words",
    "parse_addresses",
    "split_field",
    "tokenize",
    "unfold",
]


def unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3: unfolding removes the CRLF of each fold, keeping the WSP after it.

    Also takes bare LF (stored Maildir files use LF) and strips the final line end.
    """
    return value.replace(b"\r\n", b"").replace(b"\n", b"").rstrip(b"\r")


def split_field(line: bytes) -> tuple[bytes, bytes] | None:
    """(name, raw value) of one unfolded or folded header field; None without a colon.

    RFC 5322 §3.6.8 field names are printable ASCII without colon; obsolete syntax
    (§4.5) allows WSP before the colon, which is dropped here.
    """
    i = line.find(b":")
    if i <= 0:
        return None
    name = line[:i].rstrip(b" \t")
    if not name or any(c <= 0x20 or c >= 0x7F for c in name):
        return None
    return name, line[i + 1:]


class TokenKind(enum.Enum):
    ATOM = "atom"           # RFC 5322 §3.2.3 atom, also dot-atoms and obsolete dots
    QUOTED = "quoted"       # §3.2.4 quoted-string, value unquoted
    COMMENT = "comment"     # §3.2.2 comment, outer parentheses removed
    DOMAIN_LITERAL = "literal"    # §3.4.1 [ ... ], brackets kept
    SPECIAL = "special"     # one of ()<>[]:;@\,." handled as structure


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    value: bytes


_SPECIALS = b"<>:;@,."


def tokenize(value: bytes) -> list[Token]:
    """Structured header value -> tokens (RFC 5322 §3.2). Never raises: an
    unterminated quoted string, comment or literal runs to the end of the value.
    Whitespace is dropped; a dot is its own SPECIAL so obsolete local parts
    (§4.4: "a . b") can be rejoined by the caller."""
    out: list[Token] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x22:                                     # "quoted-string"
            i += 1
            buf = bytearray()
            while i < n and value[i] != 0x22:
                if value[i] == 0x5C and i + 1 < n:          # quoted-pair
                    i += 1
                if value[i] not in b"\r\n":
                    buf.append(value[i])
                i += 1
            out.append(Token(TokenKind.QUOTED, bytes(buf)))
            i += 1
        elif c == 0x28:                                     # (comment), nested
            depth, i = 1, i + 1
            buf = bytearray()
            while i < n:
                ch = value[i]
                if ch == 0x5C and i + 1 < n:
                    buf.append(value[i + 1])
                    i += 2
                    continue
                if ch == 0x28:
                    depth += 1
                elif ch == 0x29:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                if ch not in b"\r\n":
                    buf.append(ch)
                i += 1
            out.append(Token(TokenKind.COMMENT, bytes(buf)))
        elif c == 0x5B:                                     # [domain literal]
            j = value.find(b"]", i)
            j = n if j < 0 else j + 1
            out.append(Token(TokenKind.DOMAIN_LITERAL, value[i:j]))
            i = j
        elif c in _SPECIALS:
            out.append(Token(TokenKind.SPECIAL, bytes((c,))))
            i += 1
        else:
            j = i
            while j < n and value[j] not in b' \t\r\n"(<>:;@,.[':
                j += 1
            if j == i:          # a stray ) ] or \ : take it as a one-byte atom
                j = i + 1
            out.append(Token(TokenKind.ATOM, value[i:j]))
            i = j
    return out


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox as IMAP's ENVELOPE reports it (RFC 3501 §7.4.2): the display
    name (or the comment of an addr-spec, as common practice), the obsolete
    source route (§4.4 obs-route), local part and domain. None is NIL."""
    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    host: bytes | None


@dataclass(frozen=True, slots=True)
class GroupStart:
    """RFC 5322 §3.4 group "name:" — IMAP sends (NIL NIL name NIL)."""
    name: bytes


@dataclass(frozen=True, slots=True)
class GroupEnd:
    """End of a group — IMAP sends (NIL NIL NIL NIL)."""


AddressItem = Address | GroupStart | GroupEnd


def _text(tokens: list[Token]) -> bytes:
    """Phrase tokens joined as words (RFC 5322 §3.2.5 phrase, obsolete dots allowed)."""
    words: list[bytes] = []
    for t in tokens:
        if t.kind is TokenKind.COMMENT:
            continue
        if t.kind is TokenKind.SPECIAL and t.value == b"." and words:
            words[-1] += b"."
            continue
        words.append(t.value)
    return b" ".join(words)


def _addr_spec(tokens: list[Token]) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(route, local part, domain) from the tokens inside <> or of a bare addr-spec."""
    route = None
    # obs-route (§4.4): "@a,@b:" before the addr-spec; kept for IMAP's adl field.
    colon = next((k for k, t in enumerate(tokens)
                  if t.kind is TokenKind.SPECIAL and t.value == b":"), -1)
    if colon >= 0 and tokens and tokens[0].kind is TokenKind.SPECIAL and tokens[0].value == b"@":
        route = b"".join(t.value for t in tokens[:colon] if t.kind is not TokenKind.COMMENT)
        tokens = tokens[colon + 1:]
    at = max((k for k, t in enumerate(tokens)
              if t.kind is TokenKind.SPECIAL and t.value == b"@"), default=-1)
    local_toks = tokens if at < 0 else tokens[:at]
    local = b"".join(t.value for t in local_toks if t.kind is not TokenKind.COMMENT)
    if at < 0:
        return route, local or None, None
    domain = b"".join(t.value for t in tokens[at + 1:] if t.kind is not TokenKind.COMMENT)
    return route, local, domain


def _mailbox(tokens: list[Token]) -> Address | None:
    """One mailbox: name-addr (§3.4 `[display-name] <addr-spec>`) or addr-spec."""
    if not tokens:
        return None
    lt = next((k for k, t in enumerate(tokens)
               if t.kind is TokenKind.SPECIAL and t.value == b"<"), -1)
    if lt >= 0:
        gt = next((k for k in range(lt + 1, len(tokens))
                   if tokens[k].kind is TokenKind.SPECIAL and tokens[k].value == b">"), len(tokens))
        name = _text(tokens[:lt])
        route, local, domain = _addr_spec(tokens[lt + 1:gt])
        return Address(name or None, route, local, domain)
    route, local, domain = _addr_spec(tokens)
    comments = [t.value for t in tokens if t.kind is TokenKind.COMMENT]
    name = comments[-1] if comments else None
    if local is None and domain is None:
        return None
    return Address(name or None, route, local, domain)


# The address lists most messages carry: `local@domain`, `Name Words <local@domain>`,
# `"Quoted Name" <local@domain>`, separated by commas. Such a list is read with one
# regular expression per address instead of the tokenizer (ENVELOPE of a mailbox
# being indexed spent half its time here); what parse_addresses would make of the
# same bytes is what this gives (a differential test checks it). Anything else
# (comments, groups, routes, quoted-pairs, dots in a display name, empty elements,
# whitespace inside the addr-spec) goes the general way.
_ATOM = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]"
_SPEC = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff.-]+"
_SIMPLE_ADDRESS = re.compile(
    rb'[ \t]*(?:(?:(' + _ATOM + rb'+(?:[ \t]+' + _ATOM + rb'+)*)|"([^"\\\r\n]*)")?[ \t]*<('
    + _SPEC + rb")@(" + _SPEC + rb")>|(" + _SPEC + rb")@(" + _SPEC + rb"))[ \t]*(,|$)").match


def _simple_addresses(value: bytes) -> list[AddressItem] | None:
    """The mailboxes of a list of simple addresses (above); None for any other list."""
    out: list[AddressItem] = []
    pos, n = 0, len(value)
    while True:
        m = _SIMPLE_ADDRESS(value, pos)
        if m is None:
            return None
        atoms, quoted, local, domain, bare_local, bare_domain, comma = m.groups()
        if local is None:
            out.append(Address(None, None, bare_local, bare_domain))
        else:
            name = b" ".join(atoms.split()) if atoms is not None else quoted
            out.append(Address(name or None, None, local, domain))
        pos = m.end()
        if not comma:
            return out[:MAX_ADDRESSES] if pos == n else None


def parse_addresses(value: bytes) -> list[AddressItem]:
    """address-list (RFC 5322 §3.4, with the obsolete forms of §4.4: empty list
    elements, routes) -> mailboxes and group markers, at most MAX_ADDRESSES."""
    simple = _simple_addresses(value)
    if simple is not None:
        return simple
    return parse_address_tokens(value)


def parse_address_tokens(value: bytes) -> list[AddressItem]:
    """parse_addresses through the tokenizer, whatever the list holds."""
    tokens = tokenize(value)
    out: list[AddressItem] = []
    cur: list[Token] = []
    in_group = False
    depth = 0           # inside <...>, where "," and ":" are part of a route

    def flush() -> None:
        addr = _mailbox(cur)
        if addr is not None and len(out) < MAX_ADDRESSES:
            out.append(addr)
        cur.clear()

    for t in tokens:
        if t.kind is TokenKind.SPECIAL:
            if t.value == b"<":
                depth += 1
            elif t.value == b">":
                depth = max(0, depth - 1)
            elif depth == 0 and t.value == b",":
                flush()
                continue
            elif depth == 0 and t.value == b":" and not in_group:
                out.append(GroupStart(_text(cur)))
                cur.clear()
                in_group = True
                continue
            elif depth == 0 and t.value == b";":
                flush()
                if in_group:
                    out.append(GroupEnd())
                    in_group = False
                continue
        cur.append(t)
    flush()
    if in_group:
        out.append(GroupEnd())
    return out


_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(charset: bytes, enc: bytes, text: bytes) -> str | None:
    cs = charset.split(b"*", 1)[0].decode("ascii", "replace")   # RFC 2231 §5 language suffix
    try:
        if enc in b"bB":
            raw = base64.b64decode(text + b"=" * (-len(text) % 4))
        else:
            raw = binascii.a2b_qp(text.replace(b"_", b" "))
        return raw.decode(cs, "replace")
    except (LookupError, ValueError, binascii.Error):
        return None


def decode_words(value: bytes) -> str:
    """RFC 2047 decoding of an unstructured value to text. Whitespace between two
    adjacent encoded words is dropped (§6.2); undecodable words and unknown
    charsets stay as they are; other bytes are taken as UTF-8 (RFC 6532)."""
    out: list[str] = []
    pos = 0
    last_was_word = False
    for m in _WORD.finditer(value):
        between = value[pos:m.start()]
        decoded = _decode_word(*m.groups())
        if decoded is None:
            out.append((between + m.group(0)).decode("utf-8", "replace"))
            last_was_word = False
        else:
            if not (last_was_word and between.strip(b" \t\r\n") == b""):
                out.append(between.decode("utf-8", "replace"))
            out.append(decoded)
            last_was_word = True
        pos = m.end()
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)
