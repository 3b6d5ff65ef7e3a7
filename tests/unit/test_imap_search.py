"""SEARCH (RFC 3501 §6.4.4): the grammar into key trees, and evaluation on a real Maildir."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest
from courier_imapd import core as c
from courier_imapd import search as s
from courier_imapd import searchdata
from courier_imapd.mailbox import MailboxView
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir.folder import Maildir


def parse(line: bytes, literals: tuple[bytes, ...] = ()) -> c.Search | c.BadCommand:
    segs: list[tuple[bytes, bytes | None]] = []
    parts = line.split(b"{}")
    assert len(parts) == len(literals) + 1
    for text, lit in zip(parts, literals, strict=False):
        segs.append((text, lit))     # the core keeps the text before "{n}" only
    segs.append((parts[-1], None))
    cmd = c.parse_command(segs, c.State.SELECTED)
    assert isinstance(cmd, (c.Search, c.BadCommand)), cmd
    return cmd


def key(text: bytes) -> s.Key:
    cmd = parse(b"a SEARCH " + text)
    assert isinstance(cmd, c.Search), cmd
    return cmd.program.key


# -- grammar ------------------------------------------------------------------------------

def test_every_simple_key() -> None:
    assert key(b"ALL") == s.All()
    assert key(b"answered") == s.Flag("R", True)
    assert key(b"UNANSWERED") == s.Flag("R", False)
    assert key(b"DELETED UNDELETED") == s.And((s.Flag("T", True), s.Flag("T", False)))
    assert key(b"DRAFT") == s.Flag("D", True) and key(b"UNDRAFT") == s.Flag("D", False)
    assert key(b"FLAGGED") == s.Flag("F", True) and key(b"UNFLAGGED") == s.Flag("F", False)
    assert key(b"SEEN") == s.Flag("S", True) and key(b"UNSEEN") == s.Flag("S", False)
    assert key(b"RECENT") == s.Recent(True) and key(b"OLD") == s.Recent(False)
    assert key(b"NEW") == s.And((s.Recent(True), s.Flag("S", False)))
    assert key(b"KEYWORD $Junk") == s.Keyword("$Junk", True)
    assert key(b"UNKEYWORD foo") == s.Keyword("foo", False)
    assert key(b"LARGER 10") == s.Size(True, 10)
    assert key(b"SMALLER 0") == s.Size(False, 0)
    assert key(b"UID 1:*,7") == s.Seq(((1, None), (7, 7)), True)
    assert key(b"2,4:5") == s.Seq(((2, 2), (4, 5)), False)
    assert key(b"*") == s.Seq(((None, None),), False)


def test_string_keys_fold_and_decode() -> None:
    assert key(b"FROM Alice") == s.Header("from", "alice")
    assert key(b'TO "Bob Smith"') == s.Header("to", "bob smith")
    assert key(b"CC x BCC y") == s.And((s.Header("cc", "x"), s.Header("bcc", "y")))
    assert key(b"SUBJECT STRASSE") == s.Header("subject", "strasse")
    assert key(b"HEADER X-Mailer Mutt") == s.Header("x-mailer", "mutt")
    assert key(b'HEADER "List-Id" ""') == s.Header("list-id", "")
    assert key(b"BODY zeppelin") == s.Text("zeppelin", True)
    assert key(b"TEXT Zeppelin") == s.Text("zeppelin", False)
    # a literal argument; UTF-8 in it
    cmd = parse(b"a SEARCH CHARSET UTF-8 SUBJECT {}", ("Straße".encode(),))
    assert isinstance(cmd, c.Search)
    assert cmd.program == s.Program("UTF-8", s.Header("subject", "strasse"))


def test_date_keys() -> None:
    assert key(b"BEFORE 1-Feb-1994") == s.Date("BEFORE", datetime.date(1994, 2, 1), False)
    assert key(b'ON "01-feb-1994"') == s.Date("ON", datetime.date(1994, 2, 1), False)
    assert key(b"SINCE 29-Feb-2024") == s.Date("SINCE", datetime.date(2024, 2, 29), False)
    assert key(b"SENTBEFORE 1-Jan-2000") == s.Date("BEFORE", datetime.date(2000, 1, 1), True)
    assert key(b"SENTON 1-Jan-2000").sent and key(b"SENTSINCE 1-Jan-2000").op == "SINCE"


def test_nesting_or_not() -> None:
    assert key(b"OR SEEN FLAGGED") == s.Or(s.Flag("S", True), s.Flag("F", True))
    assert key(b"NOT (SEEN FLAGGED)") == s.Not(s.And((s.Flag("S", True), s.Flag("F", True))))
    assert key(b"OR (FROM a TO b) NOT OR 1 UID 3") == s.Or(
        s.And((s.Header("from", "a"), s.Header("to", "b"))),
        s.Not(s.Or(s.Seq(((1, 1),), False), s.Seq(((3, 3),), True))))
    assert key(b"((SEEN))") == s.Flag("S", True)


def test_charset() -> None:
    cmd = parse(b"a SEARCH CHARSET us-ascii ALL")
    assert isinstance(cmd, c.Search) and cmd.program.charset == "US-ASCII"
    # an unknown charset still parses; the session answers NO [BADCHARSET]
    cmd = parse(b"a SEARCH CHARSET KOI8-R FROM x")
    assert isinstance(cmd, c.Search) and cmd.program.charset == "KOI8-R"
    assert parse(b"a SEARCH ALL").program.charset is None  # type: ignore[union-attr]


@pytest.mark.parametrize("line", [
    b"a SEARCH", b"a SEARCH ", b"a SEARCH FOO", b"a SEARCH FROM", b"a SEARCH OR SEEN",
    b"a SEARCH NOT", b"a SEARCH (SEEN", b"a SEARCH SEEN)", b"a SEARCH ()", b"a SEARCH BEFORE x",
    b"a SEARCH BEFORE 1-Foo-2000", b"a SEARCH BEFORE 31-Feb-2000", b"a SEARCH BEFORE 1-Jan-20",
    b"a SEARCH LARGER x", b"a SEARCH LARGER -1", b"a SEARCH UID x", b"a SEARCH 0",
    b"a SEARCH 1:0x", b"a SEARCH CHARSET", b"a SEARCH CHARSET UTF-8", b"a SEARCH SEEN  SEEN",
    b"a SEARCH HEADER \"\" x", b"a SEARCH HEADER \"a:b\" x", b"a SEARCH KEYWORD",
    b"a SEARCH FROM \"\xff\"",
])
def test_bad(line: bytes) -> None:
    assert isinstance(parse(line), c.BadCommand)


def test_limits() -> None:
    deep = b"NOT " * (s.MAX_DEPTH + 1) + b"SEEN"
    assert isinstance(parse(b"a SEARCH " + deep), c.BadCommand)
    assert isinstance(parse(b"a SEARCH " + b"NOT " * (s.MAX_DEPTH - 1) + b"SEEN"), c.Search)
    parens = b"(" * (s.MAX_DEPTH + 2) + b"SEEN" + b")" * (s.MAX_DEPTH + 2)
    assert isinstance(parse(b"a SEARCH " + parens), c.BadCommand)
    many = b" ".join([b"SEEN"] * (s.MAX_KEYS + 1))
    bad = parse(b"a SEARCH " + many)
    assert isinstance(bad, c.BadCommand) and "too many" in bad.text
    long = parse(b"a SEARCH BODY {}", (b"x" * (s.MAX_NEEDLE + 1),))
    assert isinstance(long, c.BadCommand)


def test_uid_search_sort_thread_in_command_table() -> None:
    assert isinstance(c.parse_command([(b"a UID SEARCH UID 1:*", None)], c.State.SELECTED),
                      c.Search)
    cmd = c.parse_command([(b"a SEARCH ALL", None)], c.State.AUTHENTICATED)
    assert isinstance(cmd, c.BadCommand)


_KEYS = st.recursive(
    st.sampled_from([b"ALL", b"SEEN", b"UNSEEN", b"NEW", b"1:3", b"UID 2:*", b"LARGER 5",
                     b"FROM x", b"BODY \"a b\"", b"ON 1-Jan-2020", b"KEYWORD k"]),
    lambda inner: st.one_of(
        st.builds(lambda a: b"NOT " + a, inner),
        st.builds(lambda a, b: b"OR " + a + b" " + b, inner, inner),
        st.builds(lambda xs: b"(" + b" ".join(xs) + b")", st.lists(inner, min_size=1, max_size=3))),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_KEYS)
def test_any_generated_program_parses(text: bytes) -> None:
    assert isinstance(parse(b"a SEARCH " + text), c.Search)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_any_bytes_parse_or_bad(tail: bytes) -> None:
    line = b"a SEARCH " + tail.replace(b"\r", b"").replace(b"\n", b"")
    cmd = c.parse_command([(line, None)], c.State.SELECTED)
    assert isinstance(cmd, (c.Search, c.BadCommand))


# -- evaluation on a Maildir ---------------------------------------------------------------

DAY = 86400
T0 = time.mktime((2021, 6, 15, 12, 0, 0, 0, 0, -1))      # local noon, 15 Jun 2021

MESSAGES = [
    # (flags, internal date, message)
    ("S", T0, b"From: Alice Example <alice@example.com>\nTo: bob@example.net\n"
     b"Subject: Lunch on Friday\nDate: Tue, 15 Jun 2021 23:30:00 -0700\n"
     b"X-Mailer: Mutt\n\nShall we try the zeppelin cafe?\n"),
    ("", T0 + DAY, b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\n"
     b"To: alice@example.com\nCc: carol@example.org\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\n"
     b"Date: Wed, 16 Jun 2021 08:00:00 +0200\nContent-Type: text/plain; charset=iso-8859-1\n"
     b"Content-Transfer-Encoding: quoted-printable\n\nSch=F6ne Gr=FC=DFe aus M=FCn=\nchen\n"),
    ("FR", T0 + 2 * DAY, b"From: carol@example.org\nTo: alice@example.com\nBcc: boss@example.org\n"
     b"Subject: report\nDate: not a date\nMIME-Version: 1.0\n"
     b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\n"
     b"See attached.\n--XX\nContent-Type: application/octet-stream\n"
     b"Content-Transfer-Encoding: base64\n\nc2VjcmV0IHBsYW5z\n--XX\nContent-Type: text/plain\n"
     b"Content-Transfer-Encoding: base64\n\nVGhlIHF1YXJ0ZXJseSBudW1iZXJz\n--XX--\n"),
    ("T", T0 + 3 * DAY, b"Subject: no sender\n\n"),
]


@pytest.fixture
def box(tmp_path: Path) -> searchdata.MailboxFacts:
    root = tmp_path / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i, (flags, when, data) in enumerate(MESSAGES):
        p = root / "cur" / f"{1000 + i}.M{i}P1.host:2,{flags}"
        p.write_bytes(data)
        os.utime(p, (when, when))
    view = MailboxView("INBOX", Maildir(root), False)
    view.recent = {view.messages[3].uid}
    return searchdata.MailboxFacts(view)


def run(box: searchdata.MailboxFacts, text: bytes) -> list[int]:
    view = box.view
    bounds = s.Bounds(len(view.messages), view.messages[-1].uid)
    return [m.seq for m in s.search(key(text), box.facts, bounds)]


@pytest.mark.parametrize("text, want", [
    (b"ALL", [1, 2, 3, 4]),
    (b"SEEN", [1]), (b"UNSEEN", [2, 3, 4]), (b"FLAGGED", [3]), (b"ANSWERED", [3]),
    (b"DELETED", [4]), (b"UNDELETED", [1, 2, 3]), (b"DRAFT", []), (b"UNDRAFT", [1, 2, 3, 4]),
    (b"RECENT", [4]), (b"NEW", [4]), (b"OLD", [1, 2, 3]),
    (b"KEYWORD foo", []), (b"UNKEYWORD foo", [1, 2, 3, 4]),
    (b"2:3", [2, 3]), (b"*", [4]), (b"UID *", [4]), (b"UID 2,4", [2, 4]), (b"5:9", []),
    (b"FROM alice", [1]), (b"FROM \"J\xc3\xbcrgen\"", [2]), (b"FROM MULLER", []),
    (b"FROM \"m\xc3\xbcller\"", [2]), (b"FROM m\xc3\xbcller", None), (b"TO alice@example.com", [2, 3]), (b"CC carol", [2]),
    (b"BCC boss", [3]), (b"SUBJECT \"gr\xc3\xbc\xc3\x9fe\"", [2]), (b"SUBJECT \"GR\xc3\x9cSSE\"", [2]),
    (b"SUBJECT \"\"", [1, 2, 3, 4]), (b"FROM \"\"", [1, 2, 3]),
    (b"HEADER x-mailer mutt", [1]), (b"HEADER X-MAILER \"\"", [1]), (b"HEADER date \"2021\"", [1, 2]),
    (b"BODY zeppelin", [1]), (b"TEXT zeppelin", [1]), (b"BODY lunch", []), (b"TEXT lunch", [1]),
    (b"BODY \"m\xc3\xbcnchen\"", [2]), (b"BODY \"sch\xc3\xb6ne gr\xc3\xbc\xc3\x9fe\"", [2]),
    (b"BODY quarterly", [3]), (b"BODY secret", []), (b"TEXT \"boss@\"", [3]),
    (b"TEXT \"\"", [1, 2, 3, 4]),
    (b"LARGER 200", [2, 3]), (b"SMALLER 40", [4]),
    (b"OR SEEN DELETED", [1, 4]), (b"NOT SEEN", [2, 3, 4]),
    (b"NOT (OR FROM alice BODY quarterly)", [2, 4]),
    (b"NOT (FROM alice OR BODY quarterly SUBJECT x)", [1, 2, 3, 4]),
    (b"OR (UNSEEN FROM carol) (SEEN FROM alice)", [1, 3]),
])
def test_search(box: searchdata.MailboxFacts, text: bytes, want: list[int] | None) -> None:
    if want is None:     # 8-bit bytes in an atom: RFC 3501 §9 wants a quoted string or literal
        assert isinstance(parse(b"a SEARCH " + text), c.BadCommand)
        return
    assert run(box, text) == want


def test_date_evaluation(box: searchdata.MailboxFacts) -> None:
    # internal dates: 15, 16, 17, 18 Jun 2021 (local); by day, time and zone ignored
    assert run(box, b"ON 16-Jun-2021") == [2]
    assert run(box, b"BEFORE 16-Jun-2021") == [1]
    assert run(box, b"SINCE 17-Jun-2021") == [3, 4]
    assert run(box, b"SINCE 1-Jan-2030") == []
    # Date: as written, in its own zone: 15 Jun 23:30 -0700 is 16 Jun in UTC but
    # sent on the 15th; message 3's Date: does not parse and 4 has none: dated 1 Jan 1970
    # as Dovecot does (tests/data/imap-golden)
    assert run(box, b"SENTON 15-Jun-2021") == [1]
    assert run(box, b"SENTBEFORE 16-Jun-2021") == [1, 3, 4]
    assert run(box, b"SENTON 1-Jan-1970") == [3, 4]
    assert run(box, b"SENTSINCE 16-Jun-2021") == [2]
    assert run(box, b"NOT SENTON 15-Jun-2021") == [2, 3, 4]


def test_header_search_uses_the_index(box: searchdata.MailboxFacts) -> None:
    # a first search fills the folder index; later ones answer from it without
    # opening message files (proved by removing read permission... as root that
    # proves nothing, so by replacing the files' content with same-size garbage
    # and keeping names: the index is keyed on base name and size)
    assert run(box, b"FROM alice") == [1]
    for m in box.view.messages:
        p = box.view.maildir.path_of(m)
        p.write_bytes(b"X" * p.stat().st_size)
    fresh = searchdata.MailboxFacts(box.view)
    bounds = s.Bounds(4, box.view.messages[-1].uid)
    assert [m.seq for m in s.search(key(b"FROM alice"), fresh.facts, bounds)] == [1]
    assert [m.seq for m in s.search(key(b"SUBJECT report"), fresh.facts, bounds)] == [3]
    # BODY reads the file: the garbage has no zeppelin any more
    assert [m.seq for m in s.search(key(b"BODY zeppelin"), fresh.facts, bounds)] == []


def test_vanished_message_matches_no_content_key(box: searchdata.MailboxFacts) -> None:
    m = box.view.messages[0]
    box.view.maildir.path_of(m).unlink()
    assert run(box, b"BODY zeppelin") == []
    assert run(box, b"SEEN") == [1]      # flags are still known to the session


def test_optimize_puts_cheap_keys_first() -> None:
    k = s.optimize(key(b"BODY x FROM y SEEN (TEXT z UNSEEN)"))
    assert isinstance(k, s.And)
    assert [type(x).__name__ for x in k.keys] == ["Flag", "Flag", "Header", "Text", "Text"]


# -- the wire: one transcript whole, byte by byte, and pipelined ---------------------------

WIRE = (b"a SEARCH CHARSET UTF-8 OR SUBJECT {5}\r\n\xc3\xa9t\xc3\xa9 BODY {3+}\r\nfoo (UNSEEN)\r\n"
        b"b UID SORT (REVERSE DATE) UTF-8 FROM {1+}\r\nx\r\n"
        b"c THREAD REFERENCES US-ASCII ALL\r\n")
WANT = [
    c.Search("a", False, s.Program("UTF-8", s.And((
        s.Or(s.Header("subject", "été"), s.Text("foo", True)), s.Flag("S", False))))),
    ("b", "SORT"), ("c", "THREAD"),
]


def _events(chunks: list[bytes]) -> tuple[list[object], bytes]:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    out: list[object] = []
    sent = b""
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            ev = conn.next_event()
            if ev is c.NEED_DATA:
                break
            out.append(ev)
        sent += conn.data_to_send()
    return out, sent


@pytest.mark.parametrize("split", ["whole", "bytes", "pipelined"])
def test_transcript_three_ways(split: str) -> None:
    if split == "whole":
        chunks = [WIRE]
    elif split == "bytes":
        chunks = [WIRE[i:i + 1] for i in range(len(WIRE))]
    else:
        chunks = [WIRE + b"d SEARCH ALL"]      # trailing bytes of a command not yet ended
    events, sent = _events(chunks)
    assert sent == b"+ go ahead\r\n"           # only the synchronising literal waits
    assert events[0] == WANT[0]
    assert isinstance(events[1], c.Sort) and events[1].uid and events[1].tag == "b"
    assert events[1].program.key == s.Header("from", "x")
    assert isinstance(events[2], c.Thread) and events[2].algorithm == "REFERENCES"
    assert len(events) == 3


def test_keywords_and_badcharset_through_a_session(tmp_path: Path) -> None:
    from tests.unit.test_imap_session import session
    root = tmp_path / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        (root / "cur" / f"100{i}.M1P1.h:2,").write_bytes(b"Subject: s%d\n\nbody\n" % i)
    out = session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX\r\n"
                  b"c STORE 2 +FLAGS ($Junk Work)\r\nd SEARCH KEYWORD $junk\r\n"
                  b"e SEARCH UNKEYWORD work\r\nf SEARCH KEYWORD Work NOT KEYWORD $Junk\r\n"
                  b"g SEARCH CHARSET BIG5 ALL\r\nh UID SEARCH KEYWORD work\r\nz LOGOUT\r\n")
    assert b"* SEARCH 2\r\nd OK SEARCH completed.\r\n" in out
    assert b"* SEARCH 1 3\r\ne OK" in out
    assert b"* SEARCH\r\nf OK" in out
    assert b"g NO [BADCHARSET (US-ASCII UTF-8)] BIG5 is not supported\r\n" in out
    assert b"* SEARCH 2\r\nh OK" in out


@pytest.mark.parametrize("raw, name, values", [
    (b"A: 1\nB: 2\n x\n\nbody\nA: not a header\n", "a", [b" 1"]),
    (b"A: 1\nB: 2\n x\n\nbody\n", "b", [b" 2\n x"]),                 # folds kept
    (b"A: 1\r\nB: 2\r\n\tx\r\n\r\nbody\r\n", "b", [b" 2\n\tx"]),      # CRLF stored
    (b"\nA: in the body\n", "a", []),                                   # no header at all
    (b"A: 1\nb : 3\nA:4", "a", [b" 1", b"4"]),                          # every one; no blank line
    (b"X-A: 1\nA:2\n\n", "a", [b"2"]),                                  # whole names only
    (b"List-Id: <x.example>\n\n", "list-id", [b" <x.example>"]),
])
def test_header_values(raw: bytes, name: str, values: list[bytes]) -> None:
    import io
    assert searchdata.header_values(searchdata.read_header(io.BytesIO(raw)), name) == values


def test_read_header_reads_only_the_header() -> None:
    import io
    body = b"x" * (1 << 20)
    fh = io.BytesIO(b"Subject: s\n\n" + body)
    assert searchdata.read_header(fh) == b"Subject: s\n"
    assert fh.tell() <= searchdata.HEADER_READ
    long = b"X: " + b"y" * 100_000 + b"\nSubject: late\n\nbody"
    assert searchdata.header_values(searchdata.read_header(io.BytesIO(long)), "subject") == \
        [b" late"]


def test_memo_is_bounded_and_answers_stay_right(box: searchdata.MailboxFacts,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(searchdata, "MAX_MEMO", 500)
    box.memo.values.clear()
    box.memo.used = 0
    for _ in range(2):
        assert run(box, b"FROM alice") == [1]
        assert run(box, b"OR SUBJECT report TO alice") == [2, 3]
    # kept until past the bound, then computed each time without being kept
    assert 0 < len(box.memo.values) < 8
    assert box.memo.used < 500 + searchdata.MEMO_OVERHEAD + 200
