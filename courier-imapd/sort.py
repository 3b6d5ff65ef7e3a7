"""SORT (RFC 5256 §3) and its DISPLAYFROM / DISPLAYTO keys (RFC 5957): sans-I/O.

    sort            = ["UID" SP] "SORT" SP sort-criteria SP search-criteria
    sort-criteria   = "(" sort-criterion *(SP sort-criterion) ")"
    sort-criterion  = ["REVERSE" SP] sort-key
    sort-key        = "ARRIVAL" / "CC" / "DATE" / "FROM" / "SIZE" /
                      "SUBJECT" / "TO" / "DISPLAYFROM" / "DISPLAYTO"
    search-criteria = charset 1*(SP search-key)

The messages come as `SortFacts` (searchdata.py implements them); equal keys
keep mailbox order (§3: "sorted according to the order in which they appear in
the mailbox"), whatever REVERSE says about the keys before.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from courier_imapd.core import ParseError, Reader
from courier_imapd.search import Program, parse_keys

from libcourier.maildir.sortkeys import SortKeys, subject_key
from libcourier.rfc5322 import Address, decode_words, parse_addresses, unfold

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
             "DISPLAYFROM", "DISPLAYTO")
MAX_CRITERIA = 32
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Criterion:
    key: str              # one of SORT_KEYS
    reverse: bool


def parse_sort_args(r: Reader) -> tuple[tuple[Criterion, ...], Program]:
    """SP sort-criteria SP charset 1*(SP search-key), after the command name."""
    r.sp()
    r.expect(b"(")
    crit: list[Criterion] = []
    while not r.maybe(b")"):
        if crit:
            r.sp()
        word = r.atom().decode("ascii").upper()
        reverse = word == "REVERSE"
        if reverse:
            r.sp()
            word = r.atom().decode("ascii").upper()
        if word not in SORT_KEYS:
            raise ParseError(f"unknown sort key {word[:40]}")
        crit.append(Criterion(word, reverse))
        if len(crit) > MAX_CRITERIA:
            raise ParseError("too many sort criteria")
    if not crit:
        raise ParseError("empty sort criteria")
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    return tuple(crit), Program(charset, parse_keys(r, charset))


class SortFacts(Protocol):
    seq: int

    def internal_time(self) -> float: ...
    def sent_time(self) -> float: ...          # Date: in UTC, else INTERNALDATE (§2.2)
    def size(self) -> int: ...
    def field(self, name: bytes) -> bytes | None: ...
    def memo(self, key: str, compute: Callable[[], _T]) -> _T: ...   # kept across commands
    def keys(self) -> SortKeys | None: ...     # stored in the folder index, if it has them


def first_address(value: bytes | None) -> Address | None:
    """The first mailbox of an address field (groups looked into)."""
    if value is None:
        return None
    for a in parse_addresses(unfold(value)):
        if isinstance(a, Address) and (a.mailbox or a.host):
            return a
    return None


def _mailbox(m: SortFacts, name: bytes) -> bytes:
    """§3: the addr-mailbox (local part) of the first address, i;ascii-casemap."""
    a = first_address(m.field(name))
    return (a.mailbox or b"").upper() if a is not None else b""


def unicode_casemap(s: str) -> str:
    """RFC 5051 i;unicode-casemap, as near as Python gets: case folded, then
    decomposed (NFKD), so "Émile" sorts with the other E's."""
    return unicodedata.normalize("NFKD", s.casefold())


def _display(m: SortFacts, name: bytes) -> str:
    """RFC 5957 §2: the decoded display name of the first address, else its addr-spec;
    compared in i;unicode-casemap."""
    a = first_address(m.field(name))
    if a is None:
        return ""
    if a.name:
        shown = decode_words(a.name).strip()
        if shown:
            return unicode_casemap(shown)
    spec = (a.mailbox or b"") + (b"@" + a.host if a.host else b"")
    return unicode_casemap(spec.decode("utf-8", "replace"))


def sort_key(c: str, m: SortFacts) -> object:
    if c == "ARRIVAL":
        return m.internal_time()
    if c == "DATE":
        return m.sent_time()
    if c == "SIZE":
        return m.size()
    if c == "SUBJECT":
        k = m.keys()
        return k.subject if k is not None else subject_key(m.field(b"subject"))[0]
    if c in ("FROM", "TO", "CC"):
        return _mailbox(m, c.lower().encode())
    return _display(m, b"from" if c == "DISPLAYFROM" else b"to")


def _header_key(c: str, m: SortFacts) -> object:
    """A key read from the header: the base subject as the index stores it (nothing to
    remember), else computed once and remembered across commands."""
    if c == "SUBJECT":
        k = m.keys()
        if k is not None:
            return k.subject
    return m.memo("sort:" + c, lambda: sort_key(c, m))


def sort_messages(criteria: tuple[Criterion, ...], messages: list[SortFacts]) -> list[SortFacts]:
    """The messages in SORT order (they come in mailbox order)."""
    out = list(messages)
    # Stable sorts from the last criterion to the first give the lexicographic order;
    # sort(reverse=True) keeps equal elements in their order, so ties stay by sequence.
    for c in reversed(criteria):
        if c.key in ("ARRIVAL", "DATE", "SIZE"):      # cheap, and follow the file's mtime
            keys = {id(m): sort_key(c.key, m) for m in out}
        else:                                          # parsed from the header: remembered
            keys = {id(m): _header_key(c.key, m) for m in out}
        out.sort(key=lambda m: keys[id(m)], reverse=c.reverse)  # type: ignore[arg-type,return-value]
    return out
