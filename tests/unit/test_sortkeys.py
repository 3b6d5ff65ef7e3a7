"""The SORT/THREAD keys stored in courierpyindex records (libcourier.maildir.sortkeys)
give the same answers as computing them from the header fields, message by message
and for whole SORT and THREAD commands."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from courier_imapd import sort, thread
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import index as mindex
from libcourier.maildir import sortkeys
from libcourier.maildir.sortkeys import parse_date

N = len(mindex.HEADER_FIELDS)
AT = {n: i for i, n in enumerate(mindex.HEADER_FIELDS)}

SUBJECT_BITS = ["Re:", "re: ", "RE :", "Fwd:", "fw:", "FWD [x]:", "[list]", "[fwd: ", "]",
                " (fwd)", "(FWD)", "\t", "  ", "hello", "Hello", "ÉMILE", "émile", "Ağustos",
                "=?utf-8?q?=C3=89mile?=", "=?iso-8859-1?b?6Q==?=", "\r\n ", "[]", "x"]
DATES = [b"Mon, 7 Feb 1994 21:52:25 -0800", b"7 Feb 1994 21:52:25 +0100",
         b"Tue, 1 Jan 2030 00:00:00 GMT", b"Thu, 13 Feb 69 23:32 -0330 (Newfoundland)",
         b"Fri, 31 Dec 9999 23:59:59 -1200", b"1 Jan 0001 00:00:00 +1400", b"garbage",
         b"Mon, 32 Feb 1994 21:52:25 -0800", b"Sun, 1 Jan 2006\r\n 10:00:00 +0000", b""]
ID_BITS = ["<a@b>", '<"q\\"x"@h.example>', "< sp ace @ h >", "<no-at>", "<x@y", "junk",
           "<1@h>", "<2@h>", "<3@h>", "\r\n\t", " ", "<>", "<@>", "<é@ü>"]

subjects = st.one_of(st.none(), st.lists(st.sampled_from(SUBJECT_BITS), max_size=8)
                     .map(lambda xs: "".join(xs).encode("utf-8")))
dates = st.one_of(st.none(), st.sampled_from(DATES))
ids = st.one_of(st.none(), st.lists(st.sampled_from(ID_BITS), max_size=6)
                .map(lambda xs: "".join(xs).encode("utf-8")))


@st.composite
def header_tuples(draw: st.DrawFn) -> tuple[bytes | None, ...]:
    hs: list[bytes | None] = [None] * N
    hs[AT[b"date"]] = draw(dates)
    hs[AT[b"subject"]] = draw(subjects)
    hs[AT[b"message-id"]] = draw(ids)
    hs[AT[b"in-reply-to"]] = draw(ids)
    hs[AT[b"references"]] = draw(ids)
    return tuple(hs)


@dataclass
class Msg:
    """A message of the fakes' kind: with `indexed`, its keys come from an encoded
    index record, as searchdata.MessageFacts gives them; otherwise from field()."""
    seq: int
    headers: tuple[bytes | None, ...]
    arrival: float
    indexed: bool

    def __post_init__(self) -> None:
        payload = mindex.encode(mindex.Entry(100, headers=self.headers))
        self.stored = mindex.keys(payload, mindex.toc(payload))

    def keys(self) -> sortkeys.SortKeys | None:
        return self.stored if self.indexed else None

    def field(self, name: bytes) -> bytes | None:
        return self.headers[AT[name]] if name in AT else None

    def memo(self, key: str, compute):  # noqa: ANN001, ANN201 - nothing kept in a test
        return compute()

    def sent_time(self) -> float:
        k = self.keys()
        d = k.sent if k is not None else parse_date(self.field(b"date"))
        return self.arrival if d is None else d[1]

    def internal_time(self) -> float:
        return self.arrival

    def size(self) -> int:
        return 100


@settings(max_examples=300, deadline=None)
@given(header_tuples())
def test_stored_keys_equal_computed(hs: tuple[bytes | None, ...]) -> None:
    m = Msg(1, hs, 0.0, True)
    k = m.stored
    assert k is not None
    plain = Msg(1, hs, 0.0, False)
    assert k.sent == parse_date(hs[AT[b"date"]])
    assert (k.subject, k.reply) == thread._subject(plain)
    assert k.subject == sort.sort_key("SUBJECT", plain)
    assert (k.message_id, k.references) == thread._ids(plain)
    assert sortkeys.decode(sortkeys.encode(k)) == k


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(header_tuples(), st.integers(0, 5)), min_size=1, max_size=12),
       st.sampled_from(["SUBJECT", "DATE"]), st.booleans())
def test_sort_and_thread_same_with_stored_keys(rows, key: str, reverse: bool) -> None:
    def run(indexed: bool) -> tuple[list[int], str, str]:
        ms = [Msg(i + 1, hs, float(a), indexed) for i, (hs, a) in enumerate(rows)]
        order = [m.seq for m in sort.sort_messages((sort.Criterion(key, reverse),), ms)]
        seq = lambda m: m.seq  # noqa: E731
        return (order,
                thread.format_threads(thread.thread("REFERENCES", ms), seq),
                thread.format_threads(thread.thread("ORDEREDSUBJECT", ms), seq))
    assert run(True) == run(False)


def test_no_keys_without_header_fields() -> None:
    payload = mindex.encode(mindex.Entry(5, crlf_size=7))
    assert mindex.keys(payload, mindex.toc(payload)) is None
    # a header tuple too short for the keys (an older record's) stores none either
    short = mindex.encode(mindex.Entry(5, headers=(b"x",)))
    assert mindex.keys(short, mindex.toc(short)) is None


def test_keys_content() -> None:
    hs: list[bytes | None] = [None] * N
    hs[AT[b"date"]] = b"Mon, 7 Feb 1994 21:52:25 -0800"
    hs[AT[b"subject"]] = b"Re: [list] Fwd: Hello (fwd)"
    hs[AT[b"message-id"]] = b"<own@h>"
    hs[AT[b"in-reply-to"]] = b"<parent@h>"
    payload = mindex.encode(mindex.Entry(5, headers=tuple(hs)))
    k = mindex.keys(payload, mindex.toc(payload))
    assert k is not None and k.subject == b"HELLO" and k.reply
    assert k.sent is not None and k.sent[0].isoformat() == "1994-02-07"
    assert k.sent[1] == 760686745.0
    assert (k.message_id, k.references) == (b"own@h", (b"parent@h",))


@pytest.mark.parametrize("bad", [b"", b"\x00" * 5, sortkeys._HEAD.pack(0.0, -1, 0, -1, 0),
                                 sortkeys._HEAD.pack(0.0, 1, 99, -1, 0),
                                 sortkeys._HEAD.pack(0.0, 1, 0, -2, 0),
                                 sortkeys._HEAD.pack(0.0, 99_999_999, 0, -1, 0)])
def test_damaged_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(sortkeys.KeysError):
        sortkeys.decode(bad)


# -- a real folder: the first command computes and records, a later session reads keys --

FOLDER = [
    b"Subject: Plans\nMessage-ID: <p1@h>\nDate: Mon, 7 Feb 1994 21:52:25 -0800\n\nx\n",
    b"Subject: Re: plans\nMessage-ID: <p2@h>\nIn-Reply-To: <p1@h>\n"
    b"Date: Tue, 8 Feb 1994 08:00:00 +0000\n\nx\n",
    b"Subject: [list] =?utf-8?q?=C3=89mile?=\nMessage-ID: <e1@h>\nDate: garbage\n\nx\n",
    b"Subject: Fwd: Re: plans (fwd)\nMessage-ID: <p3@h>\nReferences: <p1@h>\r\n <p2@h>\n"
    b"Date: 1 Jan 2030 00:00:00 GMT\n\nx\n",
    b"Subject: emile\nMessage-ID: <\"e 2\"@h>\nReferences: <gone@h> <e1@h>\n\nx\n",
    b"From: nobody\n\nno subject, no date, no id\n",
]


def test_folder_answers_same_from_stored_keys(tmp_path) -> None:  # noqa: ANN001
    import os
    from pathlib import Path

    from courier_imapd import search as s
    from courier_imapd import searchdata
    from courier_imapd.core import Reader
    from courier_imapd.mailbox import MailboxView

    from libcourier.maildir.folder import Maildir

    root = Path(tmp_path) / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i, data in enumerate(FOLDER):
        p = root / "cur" / f"{1000 + i}.M{i}P1.host:2,"
        p.write_bytes(data)
        os.utime(p, (1_600_000_000 + 3600 * (i % 3), 1_600_000_000 + 3600 * (i % 3)))
    view = MailboxView("INBOX", Maildir(root), False)
    crit = [(sort.Criterion(k, r),) for k in ("SUBJECT", "DATE") for r in (False, True)]

    def answers(box: searchdata.MailboxFacts) -> list[object]:
        bounds = s.Bounds(len(view.messages), view.messages[-1].uid)
        sent = s.parse_keys(Reader([(b" SENTON 8-Feb-1994", None)]), "UTF-8")
        out: list[object] = [[m.seq for m in sort.sort_messages(c, box.facts)] for c in crit]
        out += [thread.format_threads(thread.thread(a, box.facts), lambda m: m.seq)
                for a in thread.ALGORITHMS]
        out.append([m.seq for m in s.search(sent, box.facts, bounds)])
        return out

    searchdata._memo = None
    first = searchdata.MailboxFacts(view)
    assert all(first.keys_of(f.seq) is None for f in first.facts)     # an empty index
    computed = answers(first)
    assert computed[4:] == ["(1 (2)(4))(5)(3)(6)", "(1 2 4)(3 5)(6)", [2]]
    # the files' bytes replaced (same sizes: the index still applies): a new session
    # can only answer from the keys the first command stored
    for m in view.messages:
        p = view.maildir.path_of(m)
        p.write_bytes(b"X" * p.stat().st_size)
    searchdata._memo = None
    fresh = searchdata.MailboxFacts(view)
    assert all(fresh.keys_of(f.seq) is not None for f in fresh.facts)
    assert answers(fresh) == computed
