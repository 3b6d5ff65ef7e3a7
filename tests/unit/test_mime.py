"""libcourier.mime: the MIME tree, its CRLF offsets, and the IMAP views on odd input."""

from __future__ import annotations

import io
import tracemalloc

import pytest
from courier_imapd.fetch import to_crlf
from hypothesis import given, settings
from hypothesis import strategies as st

import libcourier.mime as mime
from libcourier.mime import imapview as v
from libcourier.mime.params import Param, parse_content_type, parse_params
from libcourier.rfc5322 import Address, GroupEnd, GroupStart, decode_words, parse_addresses

NESTED = (b"From: a@b.c\nSubject: nest\nContent-Type: multipart/mixed; boundary=out\n\n"
          b"preamble\n--out\nContent-Type: text/plain\n\nhello\nworld\n"
          b"--out\nContent-Type: message/rfc822\n\n"
          b"From: \"In, Side\" <in@side.example>\nSubject: inner\n"
          b"Content-Type: multipart/alternative; boundary=\"in\"\n\n"
          b"--in\n\nplain\n--in\nContent-Type: text/html\n\n<p>x</p>\n--in--\n"
          b"--out\nContent-Type: application/octet-stream\nContent-Disposition: attachment;"
          b" filename*0*=utf-8''a%20b; filename*1*=.txt\nContent-Language: en, de\n\nAAAA\n"
          b"--out--\nepilogue\n")


def tree(data: bytes) -> mime.Part:
    return mime.parse(io.BytesIO(data))


def section(data: bytes, spec: str) -> bytes | None:
    sec = v.parse_section(spec)
    assert sec is not None, spec
    found = v.resolve(tree(data), sec)
    if found is None:
        return None
    start, stop, _ = found
    return to_crlf(data)[start:stop]


def test_nested_structure_and_sections() -> None:
    root = tree(NESTED)
    assert [c.type + b"/" + c.subtype for c in root.children] == [
        b"text/plain", b"message/rfc822", b"application/octet-stream"]
    assert root.body_end == len(to_crlf(NESTED))
    # RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary
    assert section(NESTED, "1") == b"hello\r\nworld"
    assert section(NESTED, "1.MIME") == b"Content-Type: text/plain\r\n\r\n"
    assert section(NESTED, "2.HEADER").startswith(b"From: \"In, Side\"")
    assert section(NESTED, "2.1") == b"plain"
    assert section(NESTED, "2.2") == b"<p>x</p>"
    assert section(NESTED, "2.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    assert section(NESTED, "3") == b"AAAA"
    assert section(NESTED, "4") is None and section(NESTED, "1.2") is None
    assert section(NESTED, "TEXT").startswith(b"preamble\r\n--out")
    bs = v.bodystructure(root)
    assert b'"alternative" ("boundary" "in") NIL NIL NIL)' in bs
    assert b'("attachment" ("filename*" "utf-8\'\'a%20b.txt")) ("en" "de") NIL)' in bs
    assert b'(("In, Side" NIL "in" "side.example"))' in bs      # inner ENVELOPE
    assert b'"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1' in bs
    assert v.body(root).endswith(b' "mixed")')


def test_crlf_split_across_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny read size splits every line (and CRLFs) across pieces: same tree.
    data = NESTED.replace(b"\n", b"\r\n")
    want = v.bodystructure(tree(data))
    monkeypatch.setattr(mime, "MAX_LINE", 12)
    assert v.bodystructure(tree(data)) == want
    assert v.bodystructure(tree(NESTED)) == want


def test_missing_close_boundary_and_no_boundary() -> None:
    root = tree(b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nbody\n")
    assert len(root.children) == 1 and root.children[0].size == len(b"body\r\n")
    nob = tree(b"Content-Type: multipart/mixed\n\n--x\n\nbody\n")
    assert v.body(nob) == b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'


def test_header_only_and_empty() -> None:
    assert v.envelope(tree(b"")) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert v.body(tree(b"")) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
    head = mime.parse(io.BytesIO(b"Subject: s\n\nbody"), header_only=True)
    assert head.field(b"subject") == b" s\n" and head.children == []


def test_8bit_header_is_a_literal() -> None:
    env = v.envelope(tree("Subject: Grüße\n\n".encode()))
    assert env.startswith(b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe NIL")


def test_addresses() -> None:
    got = parse_addresses(b'"Q \\"x\\"" <q@x.org>, undisclosed-recipients:;, '
                          b'team: a@b.c, (c) d@e.f;, <@r1,@r2:e@f.g>, h@i.j (Name), ,')
    assert got == [
        Address(b'Q "x"', None, b"q", b"x.org"),
        GroupStart(b"undisclosed-recipients"), GroupEnd(),
        GroupStart(b"team"), Address(None, None, b"a", b"b.c"),
        Address(b"c", None, b"d", b"e.f"), GroupEnd(),
        Address(None, b"@r1,@r2", b"e", b"f.g"),
        Address(b"Name", None, b"h", b"i.j"),
    ]
    # obsolete local part with spaces around dots (RFC 5322 §4.4)
    assert parse_addresses(b"john . doe @ example.com") == [
        Address(None, None, b"john.doe", b"example.com")]


def test_params_and_words() -> None:
    assert parse_content_type(b' Text/HTML ; charset="utf-8" (c); name=a.b') == (
        b"text", b"html", (Param(b"charset", b"utf-8"), Param(b"name", b"a.b")))
    assert parse_content_type(b"text") is None
    assert parse_params(b"; a*1=y; a*0=x") == (Param(b"a", b"xy"),)
    assert decode_words(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?b?IGF1cw==?= x") == "Grüße aus x"
    assert decode_words(b"=?bogus?q?x?= y") == "x y" or decode_words(b"=?bogus?q?x?= y")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_structure(data: bytes) -> None:
    root = tree(data)
    size = len(to_crlf(data))
    assert root.body_end == size

    def walk(p: mime.Part) -> None:
        assert 0 <= p.header_start <= p.body_start <= p.body_end <= size
        for c in p.children:
            assert p.body_start <= c.header_start and c.body_end <= p.body_end
            walk(c)
        if p.message is not None:
            walk(p.message)

    walk(root)
    v.bodystructure(root)
    v.envelope(root)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([
    b"--b\n", b"--b--\n", b"--c\n", b"\n", b"x\n", b"Content-Type: multipart/mixed; boundary=c\n",
    b"Content-Type: message/rfc822\n", b"\r\n", b"y", b"From: a@b\n"]), max_size=40))
def test_boundary_soup(lines: list[bytes]) -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"".join(lines)
    test_any_bytes_give_a_structure.hypothesis.inner_test(data)   # type: ignore[attr-defined]


def test_large_message_constant_memory() -> None:
    body = (b"x" * 75 + b"\n") * 40000          # ~3 MB
    data = (b"Content-Type: multipart/mixed; boundary=q\n\n--q\n\n" + body
            + b"--q\nContent-Type: text/plain\n\n" + body + b"--q--\n")
    fh = io.BytesIO(data)
    tracemalloc.start()
    try:
        root = mime.parse(fh)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024
    assert root.children[1].lines == 39999     # LFs, the last one is the boundary's


def test_deep_nesting_is_bounded() -> None:
    data = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                    for i in range(500)) + b"\nend\n"
    root = tree(data)
    depth = 0
    while root.children:
        root, depth = root.children[0], depth + 1
    assert depth <= mime.MAX_DEPTH


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([
    b"--b\r\n", b"--b--\n", b"-x\n", b"\n", b"x\r\n", b"\r", b"\r\n",
    b"Content-Type: multipart/mixed; boundary=c\n", b"--c\n", b"Content-Type: message/rfc822\n",
    b"y" * 20, b"To: a@b,\n", b" c@d\n", b"Cc: e@f\r\n", b"junk line\n"]), max_size=40))
def test_small_reads_same_tree(lines: list[bytes]) -> None:
    # The bulk skipping and the buffer refills must not change a single offset.
    data = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"".join(lines)
    want = tree(data)
    old = mime.CHUNK, mime.MAX_LINE
    mime.CHUNK, mime.MAX_LINE = 7, 64
    try:
        got = tree(data)
    finally:
        mime.CHUNK, mime.MAX_LINE = old
    assert got == want
    assert want.body_end == len(to_crlf(data))
    fast = mime._fast_header
    mime._fast_header = lambda *a: False      # the line-by-line header path agrees
    try:
        assert tree(data) == want
    finally:
        mime._fast_header = fast


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_address_and_word_parsers_take_any_bytes(value: bytes) -> None:
    items = parse_addresses(value)
    assert len(items) <= 1000
    decode_words(value)
    parse_params(value)
    parse_content_type(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abc xyz,.:;<>@\"()", min_size=1, max_size=12), max_size=8))
def test_folding_round_trip(words: list[str]) -> None:
    # RFC 5322 §2.2.3: folding inserts CRLF before WSP; unfolding removes it again.
    from libcourier.rfc5322 import unfold
    value = " ".join(words).encode()
    folded = value.replace(b" ", b"\r\n ")
    assert unfold(folded) == value
    assert parse_addresses(folded) == parse_addresses(value)
