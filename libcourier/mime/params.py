"""Content-Type / Content-Disposition values: type, subtype and parameters
(RFC 2045 §5.1, RFC 2183), with RFC 2231 continuations joined.

Like Dovecot, an RFC 2231 parameter split into `name*0*`, `name*1*`, ... is
reported once as `name*` (or `name` when no segment is encoded) with the raw
segments concatenated; charset/percent decoding is left to the client (IMAP
sends parameter values as they are, RFC 3501 §7.4.2 body-fld-param).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PARAMS = 100        # parameters kept per field

_TOKEN = re.compile(rb"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+")


@dataclass(frozen=True, slots=True)
class Param:
    name: bytes
    value: bytes


def _skip_cfws(v: bytes, i: int) -> int:
    """Past whitespace and (nested) comments (RFC 5322 §3.2.2)."""
    n = len(v)
    while i < n:
        c = v[i]
        if c in b" \t\r\n":
            i += 1
        elif c == 0x28:
            depth = 0
            while i < n:
                if v[i] == 0x5C:
                    i += 2
                    continue
                if v[i] == 0x28:
                    depth += 1
                elif v[i] == 0x29:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _token(v: bytes, i: int) -> tuple[bytes, int]:
    m = _TOKEN.match(v, i)
    return (m.group(0), m.end()) if m else (b"", i)


def _value(v: bytes, i: int) -> tuple[bytes, int]:
    """token / quoted-string at i (an unterminated quoted string runs to the end)."""
    if i < len(v) and v[i] == 0x22:
        out = bytearray()
        i += 1
        while i < len(v) and v[i] != 0x22:
            if v[i] == 0x5C and i + 1 < len(v):
                i += 1
            if v[i] not in b"\r\n":
                out.append(v[i])
            i += 1
        return bytes(out), i + 1
    # be lenient like Dovecot: a bare value runs up to ; or whitespace
    j = i
    while j < len(v) and v[j] not in b"; \t\r\n":
        j += 1
    return v[i:j], j


def parse_params(v: bytes, i: int = 0) -> tuple[Param, ...]:
    """`*(";" parameter)` from offset i; malformed parameters are skipped."""
    plain: list[Param] = []
    segments: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    n = len(v)
    while i < n and len(plain) + len(segments) < MAX_PARAMS:
        i = _skip_cfws(v, i)
        if i >= n:
            break
        if v[i] != 0x3B:            # ";" — anything else up to the next ";" is junk
            j = v.find(b";", i)
            if j < 0:
                break
            i = j
        i = _skip_cfws(v, i + 1)
        name, i = _token(v, i)
        i = _skip_cfws(v, i)
        if not name or i >= n or v[i] != 0x3D:
            continue
        i = _skip_cfws(v, i + 1)
        value, i = _value(v, i)
        m = re.fullmatch(rb"(.+?)\*(\d{1,3})(\*?)", name)
        if m:           # RFC 2231 §3 continuation
            segments.setdefault(m.group(1), []).append(
                (int(m.group(2)), bool(m.group(3)), value))
        else:
            plain.append(Param(name, value))
    for base, segs in segments.items():
        segs.sort(key=lambda s: s[0])
        encoded = segs[0][1]
        plain.append(Param(base + b"*" if encoded else base, b"".join(s[2] for s in segs)))
    return tuple(plain)


def parse_content_type(v: bytes) -> tuple[bytes, bytes, tuple[Param, ...]] | None:
    """RFC 2045 §5.1 `type "/" subtype *(";" parameter)`; None if not of that form."""
    i = _skip_cfws(v, 0)
    typ, i = _token(v, i)
    i = _skip_cfws(v, i)
    if not typ or i >= len(v) or v[i] != 0x2F:
        return None
    i = _skip_cfws(v, i + 1)
    sub, i = _token(v, i)
    if not sub:
        return None
    return typ.lower(), sub.lower(), parse_params(v, i)


def parse_disposition(v: bytes) -> tuple[bytes, tuple[Param, ...]] | None:
    """RFC 2183 §2 `disposition-type *(";" disposition-parm)`."""
    i = _skip_cfws(v, 0)
    typ, i = _token(v, i)
    if not typ:
        return None
    return typ, parse_params(v, i)
