"""IMAP4rev1 protocol core without I/O (RFC 3501): command assembly, parser, formatter.

Bytes go in with `receive_data`; `next_event` hands out typed commands (or a
`BadCommand` to answer BAD, or NEED_DATA). Continuation requests for
synchronising literals are queued in `data_to_send()`. The core knows the
session state only to check the command table; the driver tells it when the
state changes (`set_state`), and the limits change with it (pre-login:
small lines and tiny literals, since that code runs as root).

Grammar references are RFC 3501 §9 (formal syntax); LITERAL+ is RFC 7888.
"""

from __future__ import annotations

import contextvars
import datetime
import enum
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libcourier.maildir.mutf7 import decode_mutf7
from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer

if TYPE_CHECKING:
    from courier_imapd.search import Program
    from courier_imapd.sort import Criterion


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int          # one line of a command, CRLF included
    max_literal: int       # one literal
    max_command: int       # all lines and literals of one command together


PRELOGIN_LIMITS = Limits(max_line=8 * 1024, max_literal=1024, max_command=16 * 1024)
SESSION_LIMITS = Limits(max_line=64 * 1024, max_literal=32 * 1024 * 1024,
                        max_command=64 * 1024 + 32 * 1024 * 1024)
MAX_TAG = 64
# Literals in one command: each costs a segment record far larger than its "{0+}"
# line, so without a count a client could turn 32 MiB of input into ~10x the memory.
MAX_LITERALS = 1000

# -- commands -----------------------------------------------------------------------

# A sequence set: ranges with None for "*" (RFC 3501 §9 sequence-set).
SeqRange = tuple[int | None, int | None]

ALL_STATES = frozenset(State) - {State.LOGOUT}
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


@dataclass(frozen=True, slots=True)
class Capability:
    tag: str


@dataclass(frozen=True, slots=True)
class Noop:
    tag: str


@dataclass(frozen=True, slots=True)
class Logout:
    tag: str


@dataclass(frozen=True, slots=True)
class StartTLS:
    tag: str


@dataclass(frozen=True, slots=True)
class Login:
    tag: str
    user: str
    password: str

    def __repr__(self) -> str:  # never show a password in a log or traceback
        return f"Login(tag={self.tag!r}, user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Authenticate:
    tag: str
    mechanism: str
    initial_response: bytes | None = None   # SASL-IR (RFC 4959), still base64; b"=" is empty


@dataclass(frozen=True, slots=True)
class Select:
    tag: str
    mailbox: str
    readonly: bool          # EXAMINE
    condstore: bool = False                 # RFC 7162 §3.1.8: SELECT box (CONDSTORE)
    qresync: QResync | None = None          # RFC 7162 §3.2.5: SELECT box (QRESYNC (...))


@dataclass(frozen=True, slots=True)
class QResync:
    """The client's cache: UIDVALIDITY, its HIGHESTMODSEQ, and the UIDs it knows."""
    uidvalidity: int
    modseq: int
    known_uids: tuple[SeqRange, ...] | None = None
    seq_match: tuple[tuple[SeqRange, ...], tuple[SeqRange, ...]] | None = None


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    tag: str
    reference: str
    pattern: str
    lsub: bool
    select_opts: tuple[str, ...] = ()    # RFC 5258 selection options, e.g. SPECIAL-USE
    return_opts: tuple[str, ...] = ()    # RFC 5258 RETURN (...), e.g. SPECIAL-USE
    patterns: tuple[str, ...] = ()       # RFC 5258 §3: several patterns "(a b)"; else (pattern,)
    status_items: tuple[str, ...] = ()   # RFC 5819 RETURN (STATUS (...))
    extended: bool = False               # RFC 5258 syntax used: \NonExistent, not \Noselect


@dataclass(frozen=True, slots=True)
class Status:
    tag: str
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    tag: str


@dataclass(frozen=True, slots=True)
class MailboxCommand:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE: a verb and one mailbox."""
    tag: str
    verb: str
    mailbox: str
    use: tuple[str, ...] = ()     # CREATE ... (USE (\Sent)), RFC 6154 §3


@dataclass(frozen=True, slots=True)
class Rename:
    tag: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Check:
    tag: str


@dataclass(frozen=True, slots=True)
class Close:
    tag: str


@dataclass(frozen=True, slots=True)
class Expunge:
    tag: str
    uid_set: tuple[SeqRange, ...] | None = None   # UID EXPUNGE (RFC 4315 §2.1)


@dataclass(frozen=True, slots=True)
class Idle:
    tag: str                  # RFC 2177


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client's DONE ending an IDLE."""


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch attribute. `name` is FLAGS, UID, INTERNALDATE, RFC822.SIZE, RFC822,
    RFC822.HEADER, RFC822.TEXT, ENVELOPE, BODYSTRUCTURE, BODY.STRUCTURE (the bare
    BODY item: the non-extensible structure) or BODY; for BODY, `section` is a
    section-spec (RFC 3501 §6.4.5: "", "1.2", "HEADER", "2.TEXT", "1.MIME",
    "HEADER.FIELDS", "3.HEADER.FIELDS.NOT" ...; upper case) with `fields` for the
    HEADER.FIELDS forms, and `partial` (offset, count)."""
    name: str
    section: str = ""
    fields: tuple[str, ...] = ()
    peek: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    tag: str
    uid: bool
    sequence: tuple[SeqRange, ...]
    items: tuple[FetchItem, ...]
    changedsince: int | None = None     # RFC 7162 §3.1.4 FETCH modifier
    vanished: bool = False              # RFC 7162 §3.2.6 (UID FETCH, with CHANGEDSINCE)


class StoreMode(enum.Enum):
    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


@dataclass(frozen=True, slots=True)
class Store:
    tag: str
    uid: bool
    sequence: tuple[SeqRange, ...]
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None   # RFC 7162 §3.1.3 STORE modifier


@dataclass(frozen=True, slots=True)
class Search:
    """SEARCH / UID SEARCH (RFC 3501 §6.4.4); the key tree is in search.py."""
    tag: str
    uid: bool
    program: Program


@dataclass(frozen=True, slots=True)
class Sort:
    """SORT / UID SORT (RFC 5256 §3)."""
    tag: str
    uid: bool
    criteria: tuple[Criterion, ...]
    program: Program


@dataclass(frozen=True, slots=True)
class Thread:
    """THREAD / UID THREAD (RFC 5256 §3): ORDEREDSUBJECT or REFERENCES."""
    tag: str
    uid: bool
    algorithm: str
    program: Program


@dataclass(frozen=True, slots=True)
class Append:
    """RFC 3501 §6.3.11: the message as sent (CRLF lines), its flags and INTERNALDATE
    (seconds since the epoch, None: now)."""
    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internaldate: float | None
    message: bytes

    def __repr__(self) -> str:
        return f"Append(tag={self.tag!r}, mailbox={self.mailbox!r}, {len(self.message)} bytes)"


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY / UID COPY (RFC 3501 §6.4.7), and MOVE / UID MOVE (RFC 6851) when `move`."""
    tag: str
    uid: bool
    sequence: tuple[SeqRange, ...]
    mailbox: str
    move: bool = False


@dataclass(frozen=True, slots=True)
class Enable:
    tag: str                      # RFC 5161
    extensions: tuple[str, ...]   # upper case, as named by the client


@dataclass(frozen=True, slots=True)
class Unselect:
    tag: str                      # RFC 3691: CLOSE without the expunge


@dataclass(frozen=True, slots=True)
class Id:
    """RFC 2971: the client's field/value pairs (None for NIL), at most 30."""
    tag: str
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Quota:
    """GETQUOTA root / GETQUOTAROOT mailbox / SETQUOTA root (...) (RFC 9208 §4)."""
    tag: str
    verb: str                     # GETQUOTA, GETQUOTAROOT or SETQUOTA
    name: str                     # the quota root, or the mailbox for GETQUOTAROOT


@dataclass(frozen=True, slots=True)
class AclCommand:
    """SETACL / DELETEACL / GETACL / LISTRIGHTS / MYRIGHTS (RFC 4314 §3)."""
    tag: str
    verb: str
    mailbox: str
    identifier: str | None = None     # SETACL, DELETEACL, LISTRIGHTS
    rights: str = ""                  # SETACL's mod-rights, checked letters


@dataclass(frozen=True, slots=True)
class BadCommand:
    """Answer `tag BAD text` (tag "*" when there was no usable tag)."""
    tag: str
    text: str


Command = (Capability | Noop | Logout | StartTLS | Login | Authenticate | Select
           | ListMailboxes | Status | Namespace | MailboxCommand | Rename | Check | Close
           | Expunge | Idle | Fetch | Store | Search | Sort | Thread | Append | Copy | Enable | Unselect | Id
           | Quota | AclCommand)


class ParseError(Exception):
    pass


# -- reading arguments ----------------------------------------------------------------

ATOM_SPECIALS = b'(){ %*"\\]' + bytes(range(0x20)) + b"\x7f"
_ATOM_CHARS = bytes(c for c in range(0x21, 0x7f) if c not in ATOM_SPECIALS)
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")


class Reader:
    """A cursor over one command: text segments, each possibly followed by a literal."""

    def __init__(self, segments: list[tuple[bytes, bytes | None]]):
        self.segs = segments
        self.i = 0
        self.pos = 0

    @property
    def _text(self) -> bytes:
        return self.segs[self.i][0]

    def peek(self) -> int | None:
        """The next byte of text, or None at a literal or the end."""
        t = self._text
        return t[self.pos] if self.pos < len(t) else None

    def at_literal(self) -> bool:
        return self.pos >= len(self._text) and self.segs[self.i][1] is not None

    def at_end(self) -> bool:
        return self.pos >= len(self._text) and self.segs[self.i][1] is None

    def expect(self, b: bytes) -> None:
        t = self._text
        if t[self.pos:self.pos + len(b)].upper() != b.upper():
            raise ParseError(f"expected {b.decode()!r}")
        self.pos += len(b)

    def sp(self) -> None:
        self.expect(b" ")

    def maybe(self, b: bytes) -> bool:
        if self._text[self.pos:self.pos + len(b)].upper() == b.upper():
            self.pos += len(b)
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected text at end of command")

    def atom(self, extra: bytes = b"", stop: bytes = b"") -> bytes:
        t = self._text
        start = self.pos
        allowed = _ATOM_CHARS + extra
        while self.pos < len(t) and t[self.pos] in allowed and t[self.pos] not in stop:
            self.pos += 1
        if self.pos == start:
            raise ParseError("expected an atom")
        return t[start:self.pos]

    def literal(self) -> bytes:
        if not self.at_literal():
            raise ParseError("expected a literal")
        data = self.segs[self.i][1]
        assert data is not None
        self.i += 1
        self.pos = 0
        return data

    def quoted(self) -> bytes:
        # RFC 3501 §4.3: quoted = DQUOTE *QUOTED-CHAR DQUOTE; only \" and \\ escape.
        self.expect(b'"')
        t = self._text
        out = bytearray()
        while True:
            if self.pos >= len(t):
                raise ParseError("unterminated quoted string")
            c = t[self.pos]
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                if self.pos + 1 >= len(t) or t[self.pos + 1] not in b'"\\':
                    raise ParseError("bad escape in quoted string")
                out.append(t[self.pos + 1])
                self.pos += 2
                continue
            if c in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in quoted string")
            out.append(c)
            self.pos += 1

    def string(self) -> bytes:
        if self.at_literal():
            return self.literal()
        if self.peek() == 0x22:
            return self.quoted()
        raise ParseError("expected a string")

    def astring(self) -> bytes:
        """RFC 3501 astring: atom (with "]" allowed) / string."""
        if self.at_literal() or self.peek() == 0x22:
            return self.string()
        return self.atom(b"]")

    def list_mailbox(self) -> bytes:
        """list-mailbox = 1*list-char / string; list-char adds % * and ]."""
        if self.at_literal() or self.peek() == 0x22:
            return self.string()
        return self.atom(b"%*]")

    def number(self) -> int:
        a = self.atom()
        if not a.isdigit() or len(a) > 10:
            raise ParseError("expected a number")
        return int(a)

    def nz_number(self) -> int:
        n = self.number()
        if n == 0 or n > 0xFFFFFFFF:
            raise ParseError("number out of range")
        return n

    def sequence_set(self) -> tuple[SeqRange, ...]:
        """RFC 3501 §9: sequence-set = (seq-number / seq-range) *("," sequence-set)."""
        raw = self.atom(b"*")
        out: list[SeqRange] = []
        for part in raw.split(b","):
            ends = part.split(b":")
            if len(ends) > 2 or not all(ends):
                raise ParseError("bad sequence set")
            vals: list[int | None] = []
            for e in ends:
                if e == b"*":
                    vals.append(None)
                elif e.isdigit() and len(e) <= 10 and 0 < int(e) <= 0xFFFFFFFF:
                    vals.append(int(e))
                else:
                    raise ParseError("bad sequence set")
            out.append((vals[0], vals[-1]))
            if len(out) > 10000:
                raise ParseError("sequence set too long")
        return tuple(out)

    def flag_list(self) -> tuple[str, ...]:
        """flag-list = "(" [flag *(SP flag)] ")"; flags may also come bare (STORE)."""
        flags: list[str] = []
        if self.maybe(b"("):
            while not self.maybe(b")"):
                if flags:
                    self.sp()
                flags.append(self.flag())
            return tuple(flags)
        flags.append(self.flag())
        while self.maybe(b" "):
            flags.append(self.flag())
        return tuple(flags)

    def flag(self) -> str:
        if self.maybe(b"\\"):
            return "\\" + self.atom().decode("ascii")
        return self.atom().decode("ascii")


def _utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("not valid UTF-8") from None


# Set while a command of a connection in UTF8=ACCEPT mode is parsed (RFC 6855 §3:
# names are UTF-8 then, so "R&D" is R&D, not bad modified UTF-7).
_UTF8_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("utf8_names", default=False)


def _mutf7(b: bytes) -> str:
    """A name as the client sent it -> the name as text. RFC 3501 §5.1.3: modified
    UTF-7; a client that sends raw UTF-8 anyway (8-bit bytes cannot be mUTF-7) is taken
    at its word, as Courier does. After ENABLE UTF8=ACCEPT a name that is not valid
    modified UTF-7 is taken as it is; a valid one is still decoded, because clients
    (imapclient, for one) keep encoding names after enabling UTF-8."""
    name = _utf8(b)
    if not name.isascii():
        return name
    try:
        return decode_mutf7(name)
    except ValueError as e:
        if _UTF8_NAMES.get():
            return name
        raise ParseError(f"bad modified UTF-7 mailbox name ({e})") from None


def mailbox_name(b: bytes) -> str:
    """RFC 3501 §5.1: INBOX is case-insensitive; other names stay as sent."""
    name = _mutf7(b)
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX.":
        return "INBOX." + name[6:]
    return name


# -- per-command parsers (RFC 3501 §6) ----------------------------------------------

def _no_args(cls: type) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        r.end()
        return cls(tag)
    return parse


def _p_login(tag: str, r: Reader, uid: bool) -> Command:
    # §6.2.3 login = "LOGIN" SP userid SP password
    r.sp()
    user = r.astring()
    r.sp()
    pw = r.astring()
    r.end()
    return Login(tag, _utf8(user), _utf8(pw))


def _p_authenticate(tag: str, r: Reader, uid: bool) -> Command:
    r.sp()
    mech = r.atom().decode("ascii").upper()
    initial = None
    if r.maybe(b" "):
        initial = r.atom(b"=")  # RFC 4959 §3: initial-resp = base64 / "="
    r.end()
    return Authenticate(tag, mech, initial)


def _mod_sequence(r: Reader, allow_zero: bool = False) -> int:
    # RFC 7162 §7: mod-sequence-value = 1*DIGIT, at most 2^63-1
    a = r.atom()
    if not a.isdigit() or len(a) > 19 or int(a) >= 1 << 63 or (int(a) == 0 and not allow_zero):
        raise ParseError("bad mod-sequence value")
    return int(a)


def _p_qresync(r: Reader) -> QResync:
    # RFC 7162 §7: "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #              [SP seq-match-data] ")";  seq-match-data = "(" sequence-set SP sequence-set ")"
    r.expect(b"(")
    validity = r.nz_number()
    r.sp()
    ms = _mod_sequence(r)
    known = match = None
    if r.maybe(b" "):
        if r.peek() != 0x28:
            known = r.sequence_set()
            if r.maybe(b" "):
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(b")")
    return QResync(validity, ms, known, match)


def _seq_match(r: Reader) -> tuple[tuple[SeqRange, ...], tuple[SeqRange, ...]]:
    r.expect(b"(")
    seqs = r.sequence_set()
    r.sp()
    uids = r.sequence_set()
    r.expect(b")")
    return seqs, uids


def _p_select(readonly: bool) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        r.sp()
        box = mailbox_name(r.astring())
        condstore, qresync = False, None
        if r.maybe(b" ("):
            # RFC 4466 §2.1 select-params; RFC 7162 CONDSTORE and QRESYNC
            while not r.maybe(b")"):
                if condstore or qresync:
                    r.sp()
                if r.maybe(b"CONDSTORE"):
                    condstore = True
                elif r.maybe(b"QRESYNC "):
                    qresync = _p_qresync(r)
                else:
                    raise ParseError("unknown SELECT parameter")
        r.end()
        return Select(tag, box, readonly, condstore, qresync)
    return parse


# RFC 5258 / RFC 6154 options we act on; others are refused with BAD (§3: a server
# must not ignore a selection option it does not know). Courier's own LIST options
# (ACL MYRIGHTS POSTADDRESS: data after each name, courier_imapd.acl.list_data) are
# accepted in the same place and do not make the LIST an extended one.
COURIER_LIST_OPTS = frozenset({"ACL", "MYRIGHTS", "POSTADDRESS"})
LIST_SELECT_OPTS = frozenset({"SPECIAL-USE", "SUBSCRIBED", "REMOTE", "RECURSIVEMATCH"}) \
    | COURIER_LIST_OPTS
LIST_RETURN_OPTS = frozenset({"SPECIAL-USE", "CHILDREN", "SUBSCRIBED", "STATUS"})
MAX_LIST_PATTERNS = 100


def _list_opts(r: Reader, allowed: frozenset[str],
               status: list[str] | None = None) -> tuple[str, ...]:
    r.expect(b"(")
    opts: list[str] = []
    while not r.maybe(b")"):
        if opts:
            r.sp()
        o = r.atom().decode("ascii").upper()
        if o not in allowed:
            raise ParseError(f"unsupported LIST option {o[:40]}")
        if o == "STATUS" and status is not None:
            # RFC 5819 §4: return-option =/ "STATUS" SP "(" status-att *(SP status-att) ")"
            r.sp()
            r.expect(b"(")
            while not r.maybe(b")"):
                if status:
                    r.sp()
                a = r.atom().decode("ascii").upper()
                if a not in STATUS_ITEMS:
                    raise ParseError(f"unknown STATUS item {a[:40]}")
                status.append(a)
            if not status:
                raise ParseError("empty STATUS item list")
        opts.append(o)
        if len(opts) > 20:
            raise ParseError("too many LIST options")
    return tuple(opts)


def _p_list(lsub: bool) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        # §6.3.8 list = "LIST" SP mailbox SP list-mailbox; RFC 5258 §6 adds
        # [list-select-opts SP] before the mailbox and [SP list-return-opts] at the end.
        # mbox-or-pat = list-mailbox / patterns; patterns = "(" list-mailbox *(SP ...) ")"
        r.sp()
        select: tuple[str, ...] = ()
        extended = False
        if not lsub and r.peek() == 0x28:
            select = _list_opts(r, LIST_SELECT_OPTS)
            extended = not select or not set(select) <= COURIER_LIST_OPTS
            r.sp()
            if "RECURSIVEMATCH" in select and set(select) <= {"RECURSIVEMATCH", "REMOTE"}:
                # §3: RECURSIVEMATCH needs another option that selects (SUBSCRIBED here)
                raise ParseError("RECURSIVEMATCH alone")
        ref = _mutf7(r.astring())
        r.sp()
        pats: list[str] = []
        if not lsub and r.peek() == 0x28:
            r.expect(b"(")
            extended = True
            while not r.maybe(b")"):
                if pats:
                    r.sp()
                pats.append(_mutf7(r.list_mailbox()))
                if len(pats) > MAX_LIST_PATTERNS:
                    raise ParseError("too many LIST patterns")
            if not pats:
                raise ParseError("empty LIST pattern list")
        else:
            pats.append(_mutf7(r.list_mailbox()))
        ret: tuple[str, ...] = ()
        status: list[str] = []
        if not lsub and r.maybe(b" RETURN "):
            ret = _list_opts(r, LIST_RETURN_OPTS, status)
            extended = True
        r.end()
        return ListMailboxes(tag, ref, pats[0], lsub, select, ret, tuple(pats), tuple(status),
                             extended)
    return parse


def _p_enable(tag: str, r: Reader, uid: bool) -> Command:
    # RFC 5161 §4: command-any =/ "ENABLE" 1*(SP capability)
    names: list[str] = []
    while r.maybe(b" "):
        names.append(r.atom().decode("ascii").upper())
        if len(names) > 50:
            raise ParseError("too many ENABLE arguments")
    r.end()
    if not names:
        raise ParseError("ENABLE needs a capability")
    return Enable(tag, tuple(names))


ID_MAX_PAIRS = 30       # RFC 2971 §3.3: at most 30 field-value pairs,
ID_MAX_FIELD = 30       # fields of at most 30 octets,
ID_MAX_VALUE = 1024     # values of at most 1024 octets


def _p_id(tag: str, r: Reader, uid: bool) -> Command:
    # RFC 2971 §4: id = "ID" SP id_params_list
    # id_params_list ::= "(" #(string SPACE nstring) ")" / nil
    r.sp()
    if r.maybe(b"NIL"):
        r.end()
        return Id(tag, None)
    r.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    while not r.maybe(b")"):
        if pairs:
            r.sp()
        field = r.string()
        r.sp()
        value = None if r.maybe(b"NIL") else r.string()
        if len(field) > ID_MAX_FIELD or (value is not None and len(value) > ID_MAX_VALUE):
            raise ParseError("ID field or value too long")
        pairs.append((field.decode("utf-8", "replace"),
                      None if value is None else value.decode("utf-8", "replace")))
        if len(pairs) > ID_MAX_PAIRS:
            raise ParseError("more than 30 ID pairs")
    r.end()
    return Id(tag, tuple(pairs))


def _p_quota(verb: str) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        # RFC 9208 §4.2-4.4: getquota = "GETQUOTA" SP quota-root-name;
        # getquotaroot = "GETQUOTAROOT" SP mailbox;
        # setquota = "SETQUOTA" SP quota-root-name SP setquota-list
        r.sp()
        raw = r.astring()
        name = mailbox_name(raw) if verb == "GETQUOTAROOT" else _utf8(raw)
        if verb == "SETQUOTA":
            r.sp()
            r.expect(b"(")
            n = 0
            while not r.maybe(b")"):
                if n:
                    r.sp()
                r.atom()
                r.sp()
                r.number()
                n += 1
                if n > 20:
                    raise ParseError("too many quota resources")
        r.end()
        return Quota(tag, verb, name)
    return parse


# RFC 4314 §2.1 rights, plus RFC 2086's c and d that Courier stores and shows.
ACL_RIGHTS = frozenset("acdeiklprstwx")
MAX_ACL_IDENTIFIER = 255


def _p_acl(verb: str) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        # RFC 4314 §3.1-3.5: setacl = "SETACL" SP mailbox SP identifier SP mod-rights;
        # deleteacl / listrights = verb SP mailbox SP identifier; getacl / myrights =
        # verb SP mailbox; identifier = astring; mod-rights = astring (["+" / "-"] rights).
        r.sp()
        box = mailbox_name(r.astring())
        ident: str | None = None
        rights = ""
        if verb in ("SETACL", "DELETEACL", "LISTRIGHTS"):
            r.sp()
            ident = _utf8(r.astring())
            if not ident or len(ident) > MAX_ACL_IDENTIFIER:
                raise ParseError("bad ACL identifier")
        if verb == "SETACL":
            r.sp()
            rights = _utf8(r.astring())
            letters = rights[1:] if rights[:1] in ("+", "-") else rights
            # RFC 4314 §2.1: an unknown right MUST cause BAD; "k" is Courier's "c".
            if any(c not in ACL_RIGHTS for c in letters):
                raise ParseError("unknown right in " + rights[:40])
            rights = rights.replace("k", "c")
        r.end()
        return AclCommand(tag, verb, box, ident, rights)
    return parse


# RFC 3501 §6.3.10; DELETED and DELETED-STORAGE: RFC 9208 §4.2 (QUOTA=RES-MESSAGE and
# QUOTA=RES-STORAGE servers support them).
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED",
                "DELETED-STORAGE", "HIGHESTMODSEQ")     # HIGHESTMODSEQ: RFC 7162 §3.1.10


def _p_status(tag: str, r: Reader, uid: bool) -> Command:
    # §6.3.10 status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    r.sp()
    box = mailbox_name(r.astring())
    r.sp()
    r.expect(b"(")
    items: list[str] = []
    while not r.maybe(b")"):
        if items:
            r.sp()
        a = r.atom().decode("ascii").upper()
        if a not in STATUS_ITEMS:
            raise ParseError(f"unknown STATUS item {a}")
        items.append(a)
    if not items:
        raise ParseError("empty STATUS item list")
    r.end()
    return Status(tag, box, tuple(items))


def _p_mailbox_verb(verb: str) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        r.sp()
        box = mailbox_name(r.astring())
        use: tuple[str, ...] = ()
        if verb == "CREATE" and r.maybe(b" ("):
            # RFC 4466 §2.2 create-param; RFC 6154 §6: "USE" SP "(" [use-attr *(SP use-attr)] ")"
            r.expect(b"USE (")
            attrs: list[str] = []
            while not r.maybe(b")"):
                if attrs:
                    r.sp()
                r.expect(b"\\")
                attrs.append("\\" + r.atom().decode("ascii").capitalize())
                if len(attrs) > 10:
                    raise ParseError("too many USE attributes")
            r.expect(b")")
            use = tuple(attrs)
        r.end()
        return MailboxCommand(tag, verb, box, use)
    return parse


def _p_rename(tag: str, r: Reader, uid: bool) -> Command:
    r.sp()
    old = mailbox_name(r.astring())
    r.sp()
    new = mailbox_name(r.astring())
    r.end()
    return Rename(tag, old, new)


_MACROS = {
    # RFC 3501 §6.4.5: the macros ALL, FAST and FULL.
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY.STRUCTURE"),
}
_SIMPLE_ITEMS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "RFC822", "RFC822.HEADER",
                 "RFC822.TEXT", "ENVELOPE", "BODYSTRUCTURE", "MODSEQ"}   # MODSEQ: RFC 7162
# §6.4.5 section-spec = section-msgtext / (section-part ["." section-text])
_SECTION = re.compile(r"(?:[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8}){0,99})?"
                      r"|(?:(?:[1-9][0-9]{0,8}\.){0,100})(?:HEADER|HEADER\.FIELDS|"
                      r"HEADER\.FIELDS\.NOT|TEXT)"
                      r"|(?:[1-9][0-9]{0,8}\.){1,100}MIME")


def _fetch_att(r: Reader) -> FetchItem:
    name = r.atom(stop=b"[<").decode("ascii").upper()
    if name in _SIMPLE_ITEMS:
        return FetchItem(name)
    if name not in ("BODY", "BODY.PEEK"):
        raise ParseError(f"unsupported FETCH item {name[:40]}")
    peek = name == "BODY.PEEK"
    if not r.maybe(b"["):
        if peek:
            raise ParseError("BODY.PEEK needs a section")
        return FetchItem("BODY.STRUCTURE")     # bare BODY: non-extensible BODYSTRUCTURE
    section = r.atom(b"").decode("ascii").upper() if r.peek() not in (0x5D, None) else ""
    if not _SECTION.fullmatch(section):
        raise ParseError(f"bad section {section[:40]}")
    fields: list[str] = []
    if section.endswith(("HEADER.FIELDS", "HEADER.FIELDS.NOT")):
        r.sp()
        r.expect(b"(")
        while not r.maybe(b")"):
            if fields:
                r.sp()
            fields.append(_utf8(r.astring()))
            if len(fields) > 1000:
                raise ParseError("too many header fields")
        if not fields:
            raise ParseError("empty header field list")
    r.expect(b"]")
    partial = None
    if r.maybe(b"<"):
        off = r.atom(stop=b">").split(b".")
        if len(off) != 2 or not all(x.isdigit() and len(x) <= 10 for x in off) or int(off[1]) == 0:
            raise ParseError("bad partial <offset.count>")
        r.expect(b">")
        partial = (int(off[0]), int(off[1]))
    return FetchItem("BODY", section, tuple(fields), peek, partial)


def _p_fetch(tag: str, r: Reader, uid: bool) -> Command:
    # §6.4.5 fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #                "(" fetch-att *(SP fetch-att) ")")
    r.sp()
    seq = r.sequence_set()
    r.sp()
    items: list[FetchItem] = []
    if r.maybe(b"("):
        while not r.maybe(b")"):
            if items:
                r.sp()
            items.append(_fetch_att(r))
            if len(items) > 100:
                raise ParseError("too many FETCH items")
        if not items:
            raise ParseError("empty FETCH item list")
    else:
        save = r.pos
        word = r.atom().decode("ascii").upper()
        if word in _MACROS:
            items = [FetchItem(n) for n in _MACROS[word]]
        else:
            r.pos = save
            items.append(_fetch_att(r))
    changedsince, vanished = None, False
    if r.maybe(b" ("):
        # RFC 4466 fetch-modifiers; RFC 7162: "CHANGEDSINCE" SP mod-sequence-value,
        # "VANISHED" (UID FETCH only, and only with CHANGEDSINCE)
        while not r.maybe(b")"):
            if changedsince is not None or vanished:
                r.sp()
            if r.maybe(b"CHANGEDSINCE "):
                changedsince = _mod_sequence(r, allow_zero=True)
            elif r.maybe(b"VANISHED"):
                vanished = True
            else:
                raise ParseError("unknown FETCH modifier")
        if vanished and (not uid or changedsince is None):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    r.end()
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))   # RFC 3501 §6.4.8: UID FETCH always returns UID
    if changedsince is not None and not any(i.name == "MODSEQ" for i in items):
        items.append(FetchItem("MODSEQ"))   # RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ
    return Fetch(tag, uid, seq, tuple(items), changedsince, vanished)


def _p_store(tag: str, r: Reader, uid: bool) -> Command:
    # §6.4.6 store = "STORE" SP sequence-set SP store-att-flags
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    r.sp()
    seq = r.sequence_set()
    r.sp()
    unchangedsince = None
    if r.maybe(b"(UNCHANGEDSINCE "):
        # RFC 7162 §3.1.3: store-modifier = "UNCHANGEDSINCE" SP mod-sequence-valzer
        # (zero allowed: UNCHANGEDSINCE 0 fails for every message that has a modseq)
        unchangedsince = _mod_sequence(r, allow_zero=True)
        r.expect(b") ")
    mode = StoreMode.REPLACE
    if r.maybe(b"+"):
        mode = StoreMode.ADD
    elif r.maybe(b"-"):
        mode = StoreMode.REMOVE
    r.expect(b"FLAGS")
    silent = r.maybe(b".SILENT")
    r.sp()
    flags = r.flag_list()
    r.end()
    return Store(tag, uid, seq, mode, silent, flags, unchangedsince)


# SEARCH, SORT and THREAD parse their keys in search.py, sort.py and thread.py, which
# import this module for Reader and ParseError: imported when first used (the session
# module imports them all at start, before any privilege drop).

def _p_search(tag: str, r: Reader, uid: bool) -> Command:
    # §6.4.4
    from courier_imapd.search import parse_search_program
    program = parse_search_program(r)
    r.end()
    return Search(tag, uid, program)


def _p_sort(tag: str, r: Reader, uid: bool) -> Command:
    # RFC 5256 §3
    from courier_imapd.sort import parse_sort_args
    criteria, program = parse_sort_args(r)
    r.end()
    return Sort(tag, uid, criteria, program)


def _p_thread(tag: str, r: Reader, uid: bool) -> Command:
    # RFC 5256 §3
    from courier_imapd.thread import parse_thread_args
    algorithm, program = parse_thread_args(r)
    r.end()
    return Thread(tag, uid, algorithm, program)


def _p_expunge(tag: str, r: Reader, uid: bool) -> Command:
    uid_set = None
    if uid:
        r.sp()
        uid_set = r.sequence_set()
    r.end()
    return Expunge(tag, uid_set)


_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
# RFC 3501 §9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
_DATE_TIME = re.compile(rb"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")


def parse_date_time(b: bytes) -> float:
    m = _DATE_TIME.fullmatch(b)
    if m is None or m.group(2).upper().decode() not in _MONTHS:
        raise ParseError("bad date-time")
    sign = -1 if m.group(7) == b"-" else 1
    tz = datetime.timezone(sign * datetime.timedelta(hours=int(m.group(8)), minutes=int(m.group(9))))
    try:
        dt = datetime.datetime(int(m.group(3)), _MONTHS[m.group(2).upper().decode()],
                               int(m.group(1)), int(m.group(4)), int(m.group(5)),
                               int(m.group(6)), tzinfo=tz)
    except ValueError:
        raise ParseError("bad date-time") from None
    return dt.timestamp()


def _p_append(tag: str, r: Reader, uid: bool) -> Command:
    # §6.3.11 append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    r.sp()
    box = mailbox_name(r.astring())
    if r.at_end():
        raise ParseError("APPEND needs the message as a literal")
    r.sp()
    flags: tuple[str, ...] = ()
    if r.peek() == 0x28:
        flags = r.flag_list()
        if any(f.upper() == "\\RECENT" for f in flags):
            raise ParseError("\\Recent cannot be set by APPEND")
        r.sp()
    date = None
    if r.peek() == 0x22:
        date = parse_date_time(r.quoted())
        r.sp()
    if r.maybe(b"UTF8 (~"):
        # RFC 6855 §4: append-data =/ "UTF8" SP "(" literal8 ")"
        msg = r.literal()
        r.expect(b")")
    else:
        msg = r.literal()
    r.end()
    return Append(tag, box, flags, date, msg)


def _p_copy(move: bool) -> Callable[[str, Reader, bool], Command]:
    def parse(tag: str, r: Reader, uid: bool) -> Command:
        # §6.4.7 copy = "COPY" SP sequence-set SP mailbox; RFC 6851 §3 move likewise
        r.sp()
        seq = r.sequence_set()
        r.sp()
        box = mailbox_name(r.astring())
        r.end()
        return Copy(tag, uid, seq, box, move)
    return parse


Parser = Callable[[str, Reader, bool], Command]

# The one command table: name -> (parser, states in which it is legal, UID-able).
COMMANDS: dict[str, tuple[Parser, frozenset[State]]] = {
    "CAPABILITY": (_no_args(Capability), ALL_STATES),      # §6.1.1
    "NOOP": (_no_args(Noop), ALL_STATES),                  # §6.1.2
    "LOGOUT": (_no_args(Logout), ALL_STATES),              # §6.1.3
    "STARTTLS": (_no_args(StartTLS), NOT_AUTH),            # §6.2.1
    "AUTHENTICATE": (_p_authenticate, NOT_AUTH),           # §6.2.2
    "LOGIN": (_p_login, NOT_AUTH),                         # §6.2.3
    "SELECT": (_p_select(False), AUTH),                    # §6.3.1
    "EXAMINE": (_p_select(True), AUTH),                    # §6.3.2
    "CREATE": (_p_mailbox_verb("CREATE"), AUTH),           # §6.3.3
    "DELETE": (_p_mailbox_verb("DELETE"), AUTH),           # §6.3.4
    "RENAME": (_p_rename, AUTH),                           # §6.3.5
    "SUBSCRIBE": (_p_mailbox_verb("SUBSCRIBE"), AUTH),     # §6.3.6
    "UNSUBSCRIBE": (_p_mailbox_verb("UNSUBSCRIBE"), AUTH),  # §6.3.7
    "LIST": (_p_list(False), AUTH),                        # §6.3.8
    "LSUB": (_p_list(True), AUTH),                         # §6.3.9
    "STATUS": (_p_status, AUTH),                           # §6.3.10
    "NAMESPACE": (_no_args(Namespace), AUTH),              # RFC 2342
    "CHECK": (_no_args(Check), SELECTED),                  # §6.4.1
    "CLOSE": (_no_args(Close), SELECTED),                  # §6.4.2
    "EXPUNGE": (_p_expunge, SELECTED),                     # §6.4.3, RFC 4315 UID EXPUNGE
    "IDLE": (_no_args(Idle), AUTH),                        # RFC 2177
    "SEARCH": (_p_search, SELECTED),                       # §6.4.4
    "SORT": (_p_sort, SELECTED),                           # RFC 5256
    "THREAD": (_p_thread, SELECTED),                       # RFC 5256
    "FETCH": (_p_fetch, SELECTED),                         # §6.4.5
    "STORE": (_p_store, SELECTED),                         # §6.4.6
    "APPEND": (_p_append, AUTH),                           # §6.3.11
    "COPY": (_p_copy(False), SELECTED),                    # §6.4.7
    "MOVE": (_p_copy(True), SELECTED),                     # RFC 6851
    "ENABLE": (_p_enable, frozenset({State.AUTHENTICATED})),  # RFC 5161 §3.1
    "UNSELECT": (_no_args(Unselect), SELECTED),            # RFC 3691
    "ID": (_p_id, ALL_STATES),                             # RFC 2971
    "GETQUOTA": (_p_quota("GETQUOTA"), AUTH),              # RFC 9208 §4.2
    "GETQUOTAROOT": (_p_quota("GETQUOTAROOT"), AUTH),      # RFC 9208 §4.3
    "SETQUOTA": (_p_quota("SETQUOTA"), AUTH),              # RFC 9208 §4.4 (refused)
    "SETACL": (_p_acl("SETACL"), AUTH),                    # RFC 4314 §3.1
    "DELETEACL": (_p_acl("DELETEACL"), AUTH),              # RFC 4314 §3.2
    "GETACL": (_p_acl("GETACL"), AUTH),                    # RFC 4314 §3.3
    "LISTRIGHTS": (_p_acl("LISTRIGHTS"), AUTH),            # RFC 4314 §3.4
    "MYRIGHTS": (_p_acl("MYRIGHTS"), AUTH),                # RFC 4314 §3.5
}
UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD", "EXPUNGE", "COPY", "MOVE"}  # §6.4.8, RFC 6851


def parse_command(segments: list[tuple[bytes, bytes | None]], state: State,
                  utf8: bool = False) -> Command | BadCommand:
    """Parse one assembled command (the last segment's text has no line end); `utf8`:
    the client enabled UTF8=ACCEPT, its mailbox names are UTF-8 (RFC 6855 §3)."""
    token = _UTF8_NAMES.set(utf8)
    try:
        return _parse_command(segments, state)
    finally:
        _UTF8_NAMES.reset(token)


def _parse_command(segments: list[tuple[bytes, bytes | None]], state: State) -> Command | BadCommand:
    r = Reader(segments)
    try:
        tag_b = r.atom()
    except ParseError:
        return BadCommand("*", "Missing tag")
    if b"+" in tag_b or len(tag_b) > MAX_TAG:
        return BadCommand("*", "Invalid tag")
    tag = tag_b.decode("ascii")
    try:
        r.sp()
        name = r.atom().decode("ascii").upper()
        uid = False
        if name == "UID":
            r.sp()
            name = r.atom().decode("ascii").upper()
            if name not in UID_COMMANDS:
                return BadCommand(tag, f"UID {name[:40]} is not a UID command")
            uid = True
        entry = COMMANDS.get(name)
        if entry is None:
            return BadCommand(tag, f"Unknown command {name[:40]}")
        parser, states = entry
        if state not in states:
            return BadCommand(tag, f"{name} is not valid in the {state.value} state")
        return parser(tag, r, uid)
    except ParseError as e:
        return BadCommand(tag, f"Syntax error: {e}")
    except UnicodeDecodeError:
        return BadCommand(tag, "Syntax error: non-ASCII where ASCII is required")


# -- the connection: assembling lines and literals -------------------------------------

class _Phase(enum.Enum):
    LINE = 1          # reading a command line
    LITERAL = 2       # reading literal bytes into the current command
    SKIP_LITERAL = 3  # discarding a rejected non-synchronising literal
    SKIP_LINE = 4     # discarding the rest of a rejected command


class ImapConnection:
    """Sans-I/O IMAP server connection: bytes in, commands out."""

    def __init__(self, state: State = State.NOT_AUTHENTICATED, limits: Limits = PRELOGIN_LIMITS):
        self.state = state
        self.limits = limits
        self._buf = ReceiveBuffer(limits.max_line)
        self._out = bytearray()
        self._phase = _Phase.LINE
        self._segments: list[tuple[bytes, bytes | None]] = []
        self._pending_text = b""
        self._literal_left = 0
        self._literal_parts: list[bytes] = []
        self._command_size = 0
        self._skip_tag = "*"
        self.idling = False       # set by the driver after "+ idling"; only DONE is read
        self.utf8 = False         # set by the driver after ENABLE UTF8=ACCEPT (RFC 6855)

    def set_state(self, state: State, limits: Limits | None = None) -> None:
        self.state = state
        if limits is not None:
            self.limits = limits
            self._buf.max_line = limits.max_line

    def receive_data(self, data: bytes) -> None:
        self._buf.feed(data)

    def discard_buffer(self) -> int:
        """Drop unread input (after STARTTLS, RFC 3501 §6.2.1: no plaintext injection)."""
        n = len(self._buf)
        self._buf.take_all()
        self._reset_command()
        return n

    def buffered(self) -> int:
        return len(self._buf)

    def unread(self) -> bytes:
        """The input received past the last command, not consumed (a warm worker
        taking the connection over parses it again: courier_imapd.warm)."""
        return self._buf.peek()

    def at_rest(self) -> bool:
        """Between commands: nothing buffered, no command, literal or reply half done,
        not in IDLE. Only then may the session's state be handed on (hibernate.py)."""
        return (not len(self._buf) and self._phase is _Phase.LINE and not self._segments
                and not self._out and not self.idling)

    def next_sasl_line(self) -> bytes | object:
        """One AUTHENTICATE continuation line without CRLF (RFC 3501 §6.2.2), or NEED_DATA.

        Not a command: the driver calls this while an exchange waits on "+ ".
        Raises LineTooLong past the line limit (the driver cancels the exchange).
        """
        line = self._buf.next_line()
        if line is NEED_DATA:
            return NEED_DATA
        assert isinstance(line, bytes)
        return line.rstrip(b"\r\n")

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _reset_command(self) -> None:
        self._phase = _Phase.LINE
        self._segments = []
        self._literal_parts = []
        self._literal_left = 0
        self._command_size = 0

    def _tag_of(self, head: bytes | None = None) -> str:
        if self._segments:
            first = self._segments[0][0]
        else:
            first = self._pending_text if head is None else head
        tag = first.split(b" ", 1)[0]
        if tag and len(tag) <= MAX_TAG and all(c in _ATOM_CHARS for c in tag) and b"+" not in tag:
            return tag.decode("ascii")
        return "*"

    def next_event(self) -> Command | BadCommand | IdleDone | object:
        while True:
            if self._phase in (_Phase.LITERAL, _Phase.SKIP_LITERAL):
                if not len(self._buf):
                    return NEED_DATA
                chunk = self._buf.take(self._literal_left)
                self._literal_left -= len(chunk)
                if self._phase is _Phase.LITERAL:
                    self._literal_parts.append(chunk)
                if self._literal_left:
                    return NEED_DATA
                if self._phase is _Phase.LITERAL:
                    self._segments.append((self._pending_text, b"".join(self._literal_parts)))
                    self._literal_parts = []
                    self._phase = _Phase.LINE
                else:
                    self._phase = _Phase.SKIP_LINE
                continue
            try:
                line = self._buf.next_line()
            except LineTooLong as e:
                if self._phase is _Phase.SKIP_LINE:
                    # Part of a command already answered BAD: no second answer.
                    self._reset_command()
                    continue
                # Answer with the client's tag when the line's start names one, so a
                # client waiting for it is not left hanging (the bytes are gone).
                tag = self._tag_of(e.head if self._phase is _Phase.LINE else None)
                self._reset_command()
                return BadCommand(tag, f"Line too long (limit {self.limits.max_line} bytes)")
            if line is NEED_DATA:
                return NEED_DATA
            assert isinstance(line, bytes)
            if self.idling:
                # RFC 2177: the only thing a client may send while idling is DONE.
                self.idling = False
                if line.rstrip(b"\r\n").upper() == b"DONE":
                    return IdleDone()
                return BadCommand("*", "Expected DONE to end IDLE")
            m = _LITERAL_AT_END.search(line)
            if self._phase is _Phase.SKIP_LINE:
                # Inside a rejected command: drain its further non-synchronising literals.
                if m and m.group(2):
                    self._literal_left = int(m.group(1))
                    self._phase = _Phase.SKIP_LITERAL
                else:
                    # The command's last line, or a synchronising literal we never
                    # answer with "+": the client will not send it (§7.5).
                    self._reset_command()
                continue
            self._command_size += len(line)
            if m is None:
                text = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                self._segments.append((text, None))
                segs = self._segments
                self._reset_command()
                if len(segs) == 1 and not text.strip():
                    return BadCommand("*", "Empty command line")
                return parse_command(segs, self.state, self.utf8)
            size = int(m.group(1))
            sync = not m.group(2)
            self._pending_text = line[:m.start()]
            if not self._segments:
                self._skip_tag = self._tag_of()
            too_big = size > self.limits.max_literal or \
                self._command_size + size > self.limits.max_command
            too_many = len(self._segments) >= MAX_LITERALS
            if too_big or too_many:
                tag = self._tag_of()
                if sync:
                    # The client waits for "+" and will not send the literal (§7.5).
                    self._reset_command()
                else:
                    # RFC 7888 §4: a LITERAL+ literal is on its way; read and drop it.
                    self._literal_left = size
                    self._phase = _Phase.SKIP_LITERAL
                    self._segments = []
                if too_many:
                    return BadCommand(tag, f"Too many literals (limit {MAX_LITERALS})")
                return BadCommand(tag, f"Literal too large (limit {self.limits.max_literal} bytes)")
            self._command_size += size
            if sync:
                self._out += b"+ go ahead\r\n"   # Courier's wording: "+ OK" ; RFC leaves text free
            if size == 0:
                self._segments.append((self._pending_text, b""))
                continue
            self._literal_left = size
            self._phase = _Phase.LITERAL


# -- the formatter --------------------------------------------------------------------

def quote(s: str | bytes) -> bytes:
    """An IMAP string: quoted when it can be, else a literal (RFC 3501 §4.3)."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    if len(b) < 1024 and not any(c in b"\r\n\x00" or c >= 0x80 for c in b):
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(b) + b


def astring_out(s: str) -> bytes:
    b = s.encode("utf-8")
    if b and all(c in _ATOM_CHARS for c in b) and b.upper() != b"NIL":
        return b
    return quote(b)


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """`tag OK|NO|BAD [code] text` (RFC 3501 §7.1)."""
    c = f"[{code}] " if code else ""
    return f"{tag} {status} {c}{text}\r\n".encode("utf-8", "replace")


def untagged(text: str | bytes) -> bytes:
    b = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return b"* " + b + b"\r\n"


def bad(cmd: BadCommand) -> bytes:
    return tagged(cmd.tag, "BAD", cmd.text)


@dataclass(frozen=True, slots=True)
class StreamedLiteral:
    """`NAME {size}` and a literal whose bytes come from `chunks` while they are sent,
    so a large message is never held whole (the caller reads its file lazily)."""
    name: bytes
    size: int
    chunks: Iterable[bytes]


class LiteralShort(Exception):
    """A streamed literal ended before its announced size: the client is now out of
    step (RFC 3501 §4.3 counts octets), so the only safe thing is to end the session."""


FetchPart = bytes | StreamedLiteral


def fetch_response_pieces(seq: int, parts: list[FetchPart]) -> Iterator[bytes]:
    """`* n FETCH (...)` as pieces to send in order; streamed literals are passed through
    chunk by chunk, cut at their announced size, and LiteralShort if they fall short."""
    pending = b"* %d FETCH (" % seq
    for k, part in enumerate(parts):
        if k:
            pending += b" "
        if not isinstance(part, StreamedLiteral):
            pending += part
            continue
        yield pending + part.name + b" {%d}\r\n" % part.size
        pending = b""
        left = part.size
        for chunk in part.chunks:
            if len(chunk) > left:
                chunk = chunk[:left]
            if chunk:
                left -= len(chunk)
                yield chunk
            if not left:
                break
        if left:
            raise LiteralShort(f"{part.name!r}: {left} of {part.size} bytes missing")
    yield pending + b")\r\n"


def fetch_response(seq: int, parts: list[FetchPart]) -> bytes:
    """`* n FETCH (...)` in one piece; parts already formatted, literals included."""
    return b"".join(fetch_response_pieces(seq, parts))
