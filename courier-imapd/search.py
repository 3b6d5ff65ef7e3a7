"""SEARCH keys (RFC 3501 §6.4.4): the grammar into a key tree, and its evaluation.

Sans-I/O like core.py: `parse_search_program` reads the arguments of SEARCH
(also the search part of SORT and THREAD, RFC 5256) from the core's Reader into
a tree of frozen dataclasses; `matches` evaluates a tree against one message
through the `Facts` protocol, which the driver (searchdata.py) implements with
the Maildir, the folder index and the message file. Keys are tried cheapest
first inside an AND, so a flag test saves a file read.

RFC 3501 §9 (formal syntax):

    search          = "SEARCH" [SP "CHARSET" SP astring] 1*(SP search-key)
    search-key      = "ALL" / "ANSWERED" / "BCC" SP astring /
                      "BEFORE" SP date / "BODY" SP astring /
                      "CC" SP astring / "DELETED" / "FLAGGED" /
                      "FROM" SP astring / "KEYWORD" SP flag-keyword /
                      "NEW" / "OLD" / "ON" SP date / "RECENT" / "SEEN" /
                      "SINCE" SP date / "SUBJECT" SP astring /
                      "TEXT" SP astring / "TO" SP astring /
                      "UNANSWERED" / "UNDELETED" / "UNFLAGGED" /
                      "UNKEYWORD" SP flag-keyword / "UNSEEN" /
                      "DRAFT" / "HEADER" SP header-fld-name SP astring /
                      "LARGER" SP number / "NOT" SP search-key /
                      "OR" SP search-key SP search-key /
                      "SENTBEFORE" SP date / "SENTON" SP date /
                      "SENTSINCE" SP date / "SMALLER" SP number /
                      "UID" SP sequence-set / "UNDRAFT" / sequence-set /
                      "(" search-key *(SP search-key) ")"
    date            = date-text / DQUOTE date-text DQUOTE
    date-text       = date-day "-" date-month "-" date-year
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from courier_imapd.core import ParseError, Reader, SeqRange

CHARSETS = ("US-ASCII", "UTF-8")          # what CHARSET may name (else NO [BADCHARSET])
BADCHARSET = "BADCHARSET (" + " ".join(CHARSETS) + ")"
MAX_DEPTH = 64          # nested parentheses / NOT / OR
MAX_KEYS = 1000         # keys in one command, all levels counted
MAX_NEEDLE = 16 * 1024  # characters of one search string


# -- the key tree --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class Flag:
    """A system flag by its Maildir letter (S, T, F, R, D), set or not (UN...)."""
    letter: str
    present: bool


@dataclass(frozen=True, slots=True)
class Recent:
    """RECENT (recent=True), OLD (recent=False); NEW is AND(RECENT, UNSEEN)."""
    recent: bool


@dataclass(frozen=True, slots=True)
class Keyword:
    name: str
    present: bool


@dataclass(frozen=True, slots=True)
class Seq:
    ranges: tuple[SeqRange, ...]
    uid: bool


@dataclass(frozen=True, slots=True)
class Size:
    larger: bool          # LARGER n: RFC822.SIZE > n; SMALLER n: < n
    n: int


@dataclass(frozen=True, slots=True)
class Date:
    """BEFORE/ON/SINCE on the internal date, SENT* on the Date: header, by day."""
    op: str               # "BEFORE", "ON", "SINCE"
    day: datetime.date
    sent: bool


@dataclass(frozen=True, slots=True)
class Header:
    """HEADER name text, and FROM/TO/CC/BCC/SUBJECT; name lower case."""
    name: str
    needle: str           # casefolded


@dataclass(frozen=True, slots=True)
class Text:
    """BODY (body_only) and TEXT (header and body), on decoded content."""
    needle: str           # casefolded
    body_only: bool


@dataclass(frozen=True, slots=True)
class Not:
    key: Key


@dataclass(frozen=True, slots=True)
class Or:
    a: Key
    b: Key


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class Modseq:
    """RFC 7162 §3.1.5: MODSEQ [entry-name entry-type] n — mod-sequence at least n."""
    n: int


Key = All | Flag | Recent | Keyword | Seq | Size | Date | Header | Text | Not | Or | And | Modseq


@dataclass(frozen=True, slots=True)
class Program:
    """What SEARCH (or the search part of SORT/THREAD) asked: the charset named,
    upper case (None: not named), and the key; the driver answers NO [BADCHARSET]
    for a charset not in CHARSETS."""
    charset: str | None
    key: Key


# -- the grammar ---------------------------------------------------------------------

_FLAG_KEYS = {
    "ANSWERED": Flag("R", True), "DELETED": Flag("T", True), "DRAFT": Flag("D", True),
    "FLAGGED": Flag("F", True), "SEEN": Flag("S", True),
    "UNANSWERED": Flag("R", False), "UNDELETED": Flag("T", False), "UNDRAFT": Flag("D", False),
    "UNFLAGGED": Flag("F", False), "UNSEEN": Flag("S", False),
    "ALL": All(), "RECENT": Recent(True), "OLD": Recent(False),
    "NEW": And((Recent(True), Flag("S", False))),
}
_HEADER_KEYS = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_DATE_KEYS = {"BEFORE": ("BEFORE", False), "ON": ("ON", False), "SINCE": ("SINCE", False),
              "SENTBEFORE": ("BEFORE", True), "SENTON": ("ON", True),
              "SENTSINCE": ("SINCE", True)}
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}


def _date(r: Reader) -> datetime.date:
    """date = date-text / DQUOTE date-text DQUOTE; date-day = 1*2DIGIT."""
    raw = r.quoted() if r.peek() == 0x22 else r.atom()
    parts = raw.split(b"-")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 2 \
            or not parts[2].isdigit() or len(parts[2]) != 4:
        raise ParseError("bad date (want d-Mon-yyyy)")
    month = _MONTHS.get(parts[1].decode("ascii", "replace").upper())
    if month is None:
        raise ParseError("bad month in date")
    try:
        return datetime.date(int(parts[2]), month, int(parts[0]))
    except ValueError:
        raise ParseError("bad date") from None


class _Parser:
    def __init__(self, r: Reader, charset: str | None):
        self.r = r
        self.count = 0
        # A string in a charset we do not know cannot be read; the command is
        # still parsed (so syntax errors stay BAD) and answered NO [BADCHARSET].
        self.codec = "utf-8" if charset in (None, *CHARSETS) else "latin-1"

    def text(self) -> str:
        self.r.sp()
        raw = self.r.astring()
        try:
            s = raw.decode(self.codec)
        except UnicodeDecodeError:
            raise ParseError("search string is not valid UTF-8") from None
        if len(s) > MAX_NEEDLE:
            raise ParseError("search string too long")
        return s.casefold()

    def number(self) -> int:
        self.r.sp()
        return self.r.number()

    def key(self, depth: int) -> Key:
        r = self.r
        self.count += 1
        if self.count > MAX_KEYS:
            raise ParseError(f"too many search keys (limit {MAX_KEYS})")
        if depth > MAX_DEPTH:
            raise ParseError(f"search keys nested too deep (limit {MAX_DEPTH})")
        c = r.peek()
        if c == 0x28:                                     # "(" search-key *(SP search-key) ")"
            r.expect(b"(")
            keys = [self.key(depth + 1)]
            while not r.maybe(b")"):
                r.sp()
                keys.append(self.key(depth + 1))
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if c is not None and (0x30 <= c <= 0x39 or c == 0x2A):
            return Seq(r.sequence_set(), False)
        word = r.atom().decode("ascii").upper()
        fixed = _FLAG_KEYS.get(word)
        if fixed is not None:
            return fixed
        if word in _HEADER_KEYS:
            return Header(_HEADER_KEYS[word], self.text())
        if word in _DATE_KEYS:
            op, sent = _DATE_KEYS[word]
            r.sp()
            return Date(op, _date(r), sent)
        if word == "HEADER":
            r.sp()
            name = r.astring().decode("ascii", "replace").strip().lower()
            if not name or any(ch in name for ch in ": \t"):
                raise ParseError("bad header field name")
            return Header(name, self.text())
        if word in ("BODY", "TEXT"):
            return Text(self.text(), word == "BODY")
        if word in ("LARGER", "SMALLER"):
            return Size(word == "LARGER", self.number())
        if word in ("KEYWORD", "UNKEYWORD"):
            r.sp()
            return Keyword(r.atom().decode("ascii"), word == "KEYWORD")
        if word == "NOT":
            r.sp()
            return Not(self.key(depth + 1))
        if word == "OR":
            r.sp()
            a = self.key(depth + 1)
            r.sp()
            return Or(a, self.key(depth + 1))
        if word == "UID":
            r.sp()
            return Seq(r.sequence_set(), True)
        if word == "MODSEQ":
            # RFC 7162 §3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer;
            # per-flag entries are not kept apart here, so the name is read and not used.
            r.sp()
            if r.peek() == 0x22:
                r.quoted()
                r.sp()
                if r.atom().decode("ascii").lower() not in ("priv", "shared", "all"):
                    raise ParseError("bad MODSEQ entry type")
                r.sp()
            a = r.atom()
            if not a.isdigit() or len(a) > 19 or int(a) >= 1 << 63:
                raise ParseError("bad mod-sequence value")
            return Modseq(int(a))
        raise ParseError(f"unknown search key {word[:40]}")


def parse_keys(r: Reader, charset: str | None) -> Key:
    """1*(SP search-key) to the end of the command (the caller consumed nothing after
    the previous argument): one key, or an And of several (§6.4.4 implicit AND)."""
    p = _Parser(r, charset)
    keys: list[Key] = []
    while not r.at_end():
        r.sp()
        keys.append(p.key(0))
    if not keys:
        raise ParseError("a search key is needed")
    return keys[0] if len(keys) == 1 else And(tuple(keys))


def parse_search_program(r: Reader) -> Program:
    """The arguments of SEARCH after the command name: [SP CHARSET x] 1*(SP key)."""
    charset = None
    save = r.pos
    if r.maybe(b" ") and r.maybe(b"CHARSET "):
        charset = r.astring().decode("ascii", "replace").upper()
    else:
        r.pos = save
    return Program(charset, parse_keys(r, charset))


# -- evaluation ----------------------------------------------------------------------

class Facts(Protocol):
    """One message, as the evaluator asks about it; each answer computed at most once."""
    seq: int
    uid: int
    flags: str
    recent: bool

    def keywords(self) -> frozenset[str]: ...     # casefolded keyword names
    def size(self) -> int: ...                    # RFC822.SIZE
    def internal_day(self) -> datetime.date: ...  # day of INTERNALDATE (server's zone)
    def sent_day(self) -> datetime.date | None: ...   # day of Date: in its own zone
    def header_has(self, name: str, needle: str) -> bool: ...
    def text_has(self, needle: str, body_only: bool) -> bool: ...
    def modseq(self) -> int: ...                  # RFC 7162 mod-sequence


@dataclass(frozen=True, slots=True)
class Bounds:
    """What Seq keys resolve against: the mailbox's message count and top UID."""
    count: int
    top_uid: int


def _in_ranges(n: int, ranges: tuple[SeqRange, ...], top: int) -> bool:
    for a, b in ranges:
        lo = top if a is None else a
        hi = top if b is None else b
        if lo > hi:
            lo, hi = hi, lo
        if lo <= n <= hi:
            return True
    return False


def cost(key: Key) -> int:
    """A rough price of evaluating `key` for one message: 0 in memory, 1 the index or
    a header read, 3 the whole message."""
    if isinstance(key, (Header, Size)) or (isinstance(key, Date) and key.sent):
        return 1
    if isinstance(key, Text):
        return 3
    if isinstance(key, Not):
        return cost(key.key)
    if isinstance(key, Or):
        return max(cost(key.a), cost(key.b))
    if isinstance(key, And):
        return max((cost(k) for k in key.keys), default=0)
    return 0


def optimize(key: Key) -> Key:
    """And children ordered cheapest first (evaluation short-circuits); nested Ands
    flattened. The meaning is unchanged: AND and OR are commutative."""
    if isinstance(key, And):
        flat: list[Key] = []
        for k in key.keys:
            k = optimize(k)
            flat.extend(k.keys if isinstance(k, And) else (k,))
        return And(tuple(sorted(flat, key=cost)))
    if isinstance(key, Or):
        a, b = optimize(key.a), optimize(key.b)
        return Or(a, b) if cost(a) <= cost(b) else Or(b, a)
    if isinstance(key, Not):
        return Not(optimize(key.key))
    return key


# RFC 3501 leaves SENT* open for a message without a usable Date: header; like
# Dovecot we take its date as 0, the epoch, so SENTBEFORE finds it (golden data).
NO_DATE = datetime.date(1970, 1, 1)


def _date_ok(op: str, day: datetime.date | None, want: datetime.date) -> bool:
    if day is None:
        day = NO_DATE
    if op == "BEFORE":
        return day < want
    if op == "ON":
        return day == want
    return day >= want


def matches(key: Key, m: Facts, bounds: Bounds) -> bool:
    """Does message `m` match `key` (RFC 3501 §6.4.4)?"""
    match key:
        case All():
            return True
        case Flag(letter=letter, present=present):
            return (letter in m.flags) == present
        case Recent(recent=recent):
            return m.recent == recent
        case Keyword(name=name, present=present):
            return (name.casefold() in m.keywords()) == present
        case Seq(ranges=ranges, uid=uid):
            if uid:
                return _in_ranges(m.uid, ranges, bounds.top_uid)
            return _in_ranges(m.seq, ranges, bounds.count)
        case Size(larger=larger, n=n):
            return m.size() > n if larger else m.size() < n
        case Date(op=op, day=day, sent=sent):
            return _date_ok(op, m.sent_day() if sent else m.internal_day(), day)
        case Header(name=name, needle=needle):
            return m.header_has(name, needle)
        case Text(needle=needle, body_only=body_only):
            return m.text_has(needle, body_only)
        case Modseq(n=n):
            return m.modseq() >= n
        case Not(key=inner):
            return not matches(inner, m, bounds)
        case Or(a=a, b=b):
            return matches(a, m, bounds) or matches(b, m, bounds)
        case And(keys=keys):
            return all(matches(k, m, bounds) for k in keys)
    raise AssertionError(f"unknown search key {key!r}")


def search(key: Key, messages: list[Facts], bounds: Bounds,
           on_each: Callable[[Facts], None] | None = None) -> list[Facts]:
    """The messages matching `key`, in order. `on_each` runs after each message (the
    driver drops per-message caches there so memory stays bounded)."""
    key = optimize(key)
    out = []
    for m in messages:
        if matches(key, m, bounds):
            out.append(m)
        if on_each is not None:
            on_each(m)
    return out
