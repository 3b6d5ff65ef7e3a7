"""SORT (RFC 5256 §3, RFC 5957) and the base subject of RFC 5256 §2.1."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from courier_imapd import core as c
from courier_imapd import search as s
from courier_imapd import sort

from libcourier.rfc5322.basesubject import base_subject, sort_form


@pytest.mark.parametrize("raw, base, reply", [
    (b"Hello", "Hello", False),
    (b"Re: Hello", "Hello", True),
    (b"RE:Hello", "Hello", True),
    (b"re : Hello", "Hello", True),              # subj-refwd: *WSP before ":"
    (b"Rex: Hello", "Rex: Hello", False),
    (b"Fwd: Hello", "Hello", True),
    (b"FW: Hello", "Hello", True),
    (b"Re: Re: Fwd:  Hello", "Hello", True),
    (b"Re[2]: Hello", "Hello", True),            # subj-refwd with a blob
    (b"Re [2]: Hello", "Hello", True),
    (b"[PATCH] Re: Hello", "Hello", True),       # blob then refwd (a subj-leader)
    (b"[list] Hello", "Hello", False),           # (4) a leading blob goes
    (b"[list]", "[list]", False),                # ... unless nothing would be left
    (b"[a] [b] ", "[b]", False),
    (b"Hello (fwd)", "Hello", True),             # (2) subj-trailer
    (b"Hello (fwd) (FWD)  ", "Hello", True),
    (b"[fwd: Hello]", "Hello", True),            # (6) subj-fwd
    (b"[Fwd: Re: [list] Hello (fwd)]", "Hello", True),
    (b"[fwd: Hello", "[fwd: Hello", False),
    (b"  Hello \t  world  ", "Hello world", False),
    (b"Hello\n world", "Hello world", False),    # folded
    (b"=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=", "Grüße", True),   # (1) RFC 2047 first
    (b"=?iso-8859-1?q?Re:?= =?iso-8859-1?q?_caf=E9?=", "café", True),
    (b"", "", False),
    (b"Re:", "", True),
    (None, "", False),
])
def test_base_subject(raw: bytes | None, base: str, reply: bool) -> None:
    assert base_subject(raw) == (base, reply)


def test_sort_form() -> None:
    assert sort_form("Hello") == sort_form("hELLO") == b"HELLO"     # i;ascii-casemap for ASCII
    # beyond ASCII folded and decomposed, as Dovecot: between "Agenda" and "Airport"
    assert sort_form("é") == sort_form("É") == "E\u0301".encode()
    assert sort_form("Agenda") < sort_form("Ağustos") < sort_form("Airport")


# -- the grammar ----------------------------------------------------------------------

def parse(line: bytes) -> c.Sort | c.BadCommand:
    cmd = c.parse_command([(line, None)], c.State.SELECTED)
    assert isinstance(cmd, (c.Sort, c.BadCommand)), cmd
    return cmd


def test_parse() -> None:
    cmd = parse(b"a UID SORT (REVERSE ARRIVAL subject displayfrom) UTF-8 SEEN FROM x")
    assert isinstance(cmd, c.Sort) and cmd.uid
    assert cmd.criteria == (sort.Criterion("ARRIVAL", True), sort.Criterion("SUBJECT", False),
                            sort.Criterion("DISPLAYFROM", False))
    assert cmd.program == s.Program("UTF-8", s.And((s.Flag("S", True), s.Header("from", "x"))))
    assert parse(b"a SORT (DATE) KOI8-R ALL").program.charset == "KOI8-R"  # type: ignore[union-attr]


@pytest.mark.parametrize("line", [
    b"a SORT", b"a SORT () UTF-8 ALL", b"a SORT (DATE) ALL", b"a SORT (FOO) UTF-8 ALL",
    b"a SORT (REVERSE) UTF-8 ALL", b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL",
    b"a SORT DATE UTF-8 ALL", b"a SORT (DATE) UTF-8", b"a SORT (DATE  SIZE) UTF-8 ALL",
    b"a SORT (" + b"DATE " * 40 + b"SIZE) UTF-8 ALL",
])
def test_bad(line: bytes) -> None:
    assert isinstance(parse(line), c.BadCommand)


# -- the order ----------------------------------------------------------------------------

@dataclass
class Msg:
    seq: int
    arrival: float = 0.0
    sent: float = 0.0
    octets: int = 0
    fields: dict[bytes, bytes] = field(default_factory=dict)

    def internal_time(self) -> float:
        return self.arrival

    def sent_time(self) -> float:
        return self.sent

    def size(self) -> int:
        return self.octets

    def field(self, name: bytes) -> bytes | None:
        return self.fields.get(name)

    def memo(self, key: str, compute):  # noqa: ANN001, ANN201 - nothing kept in a test
        return compute()

    def keys(self) -> None:      # not indexed: the keys are computed from field()
        return None


MSGS = [
    Msg(1, 30, 5, 300, {b"subject": b"Re: beta", b"from": b"Zed <zed@a.example>",
                        b"to": b"x@y", b"cc": b"Bob <bob@b>"}),
    Msg(2, 10, 5, 100, {b"subject": b"alpha", b"from": b"=?utf-8?q?=C3=89mile?= <emile@c>",
                        b"to": b"Al <al@y>"}),
    Msg(3, 20, 1, 200, {b"subject": b"[list] Beta", b"from": b"undisclosed-recipients:;, amy@d"}),
    Msg(4, 20, 9, 100, {b"from": b"bob@e", b"cc": b"(comment) anne@f"}),
]


def order(spec: str) -> list[int]:
    crit = []
    words = spec.split()
    while words:
        w = words.pop(0)
        rev = w == "REVERSE"
        if rev:
            w = words.pop(0)
        crit.append(sort.Criterion(w, rev))
    return [m.seq for m in sort.sort_messages(tuple(crit), MSGS)]  # type: ignore[arg-type]


@pytest.mark.parametrize("spec, want", [
    ("ARRIVAL", [2, 3, 4, 1]),                 # ties (3, 4) by sequence number
    ("REVERSE ARRIVAL", [1, 3, 4, 2]),         # ties stay in mailbox order
    ("DATE", [3, 1, 2, 4]),
    ("SIZE", [2, 4, 3, 1]),
    ("REVERSE SIZE ARRIVAL", [1, 3, 2, 4]),
    ("SUBJECT", [4, 2, 1, 3]),                 # "", alpha, beta, Beta (ascii-casemap tie)
    ("SUBJECT REVERSE DATE", [4, 2, 1, 3]),
    ("REVERSE SUBJECT", [1, 3, 2, 4]),
    ("FROM", [3, 4, 2, 1]),                    # amy (group skipped), bob, emile, zed
    ("TO", [3, 4, 2, 1]),                      # "", "", al, x
    ("CC", [2, 3, 4, 1]),                      # "", "", anne, bob
    ("DISPLAYFROM", [3, 4, 2, 1]),             # amy@d, bob@e, Émile, Zed
    ("DISPLAYTO", [3, 4, 2, 1]),               # "", "", Al, x@y
])
def test_order(spec: str, want: list[int]) -> None:
    assert order(spec) == want
