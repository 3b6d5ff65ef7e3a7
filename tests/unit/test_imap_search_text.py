"""libcourier.mime.textsearch: BODY/TEXT on decoded content, in memory and streamed."""

from __future__ import annotations

import base64
import io
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.mime import parse
from libcourier.mime import textsearch as ts

MULTI = (b"From: =?utf-8?b?w4lsb2lzZQ==?= <e@example.fr>\nSubject: =?utf-8?q?caf=C3=A9?= menu\n"
         b"Content-Type: multipart/mixed; boundary=\"b1\"\n\npreamble word-preamble\n--b1\n"
         b"Content-Type: multipart/alternative; boundary=b2\n\n--b2\n"
         b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
         b"Cr=C3=A8me br=C3=BB=\nl=C3=A9e for dessert\n--b2\n"
         b"Content-Type: text/html; charset=iso-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
         b"<p>Gr\xfc\xdfe</p>\n--b2--\n--b1\n"
         b"Content-Type: image/png\nContent-Transfer-Encoding: base64\n\n"
         + base64.encodebytes(b"hidden inside an image") + b"--b1\n"
         b"Content-Type: message/rfc822\n\nSubject: inner subject\nX-Inner: deep header\n\n"
         b"inner body text\n--b1\n"
         b"Content-Type: text/plain; charset=koi8-r\nContent-Transfer-Encoding: base64\n\n"
         + base64.encodebytes("Привет, мир".encode("koi8-r")) + b"--b1--\nepilogue-word\n")


def has(data: bytes, needle: str, body_only: bool) -> bool:
    return ts.contains(io.BytesIO(data), needle.casefold(), body_only=body_only)


@pytest.mark.parametrize("needle, body, text", [
    ("crème brûlée", True, True),        # QP with a soft line break in the middle
    ("CRÈME", True, True),
    ("grüße", True, True),               # 8-bit ISO-8859-1 html
    ("GRÜSSE", True, True),              # casefold: ß -> ss
    ("привет, мир", True, True),         # KOI8-R in base64
    ("hidden inside", False, False),     # not text: an image is not searched
    ("inner body", True, True),          # a text part of an attached message
    ("deep header", False, True),        # the attached message's header: TEXT only
    ("Élo", False, True),                # RFC 2047 in the top header: TEXT only
    ("café menu", False, True),
    ("word-preamble", False, False),     # preamble and epilogue are not content
    ("epilogue-word", False, False),
    ("image/png", False, True),          # MIME part headers count for TEXT
    ("", True, True),
    ("not there at all", False, False),
])
def test_multipart(needle: str, body: bool, text: bool) -> None:
    assert has(MULTI, needle, True) is body
    assert has(MULTI, needle, False) is text


def test_no_match_across_parts() -> None:
    # "for dessert" ends the plain part; "<p>Gr" starts the next part
    assert not has(MULTI, "dessert\n<p>gr", True)
    assert not has(MULTI, "dessert<p>gr", True)


def test_broken_input_does_not_raise() -> None:
    bad = (b"Content-Type: text/plain; charset=no-such-charset\n"
           b"Content-Transfer-Encoding: base64\n\n!!!not base64 at all===\n\xff\xfe")
    assert has(bad, "zzz", True) is False
    bad_qp = b"Content-Transfer-Encoding: quoted-printable\n\nabc=ZZ=\n=4" + b"x" * 70000
    assert has(bad_qp, "abc", True)
    assert has(b"", "", False) and not has(b"", "x", False)
    assert has(b"no header, no blank line, zeppelin", "zeppelin", False)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming path on small messages: everything over 10 bytes streams in
    7-byte chunks, so every needle crosses chunk boundaries."""
    monkeypatch.setattr(ts, "IN_MEMORY", 10)
    monkeypatch.setattr(ts, "CHUNK", 7)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("needle", ["crème brûlée", "grüße", "привет, мир", "inner body",
                                    "deep header", "élo"])
def test_streamed_equals_in_memory(needle: str) -> None:
    assert has(MULTI, needle, False)
    assert not has(MULTI, "hidden inside", False)
    crlf = MULTI.replace(b"\n", b"\r\n")
    assert has(crlf, needle, False)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcé €\n", min_size=0, max_size=300), st.integers(0, 290),
       st.integers(1, 12), st.sampled_from(["base64", "quoted-printable", "8bit"]))
def test_any_text_any_chunking(body: str, at: int, chunk: int, cte: str) -> None:
    raw = body.encode("utf-8")
    if cte == "base64":
        enc = base64.encodebytes(raw)
    elif cte == "quoted-printable":
        import quopri
        enc = quopri.encodestring(raw)
    else:
        enc = raw
    msg = (b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: "
           + cte.encode() + b"\n\n" + enc)
    # a needle taken from the body (the decoder must find it however the bytes fall)
    needle = body.replace("\n", " ")[at:at + 5] if "\n" not in body[at:at + 5] else ""
    old = ts.IN_MEMORY, ts.CHUNK
    try:
        ts.IN_MEMORY, ts.CHUNK = 0, chunk
        streamed = ts.contains(io.BytesIO(msg), needle.casefold(), body_only=True)
    finally:
        ts.IN_MEMORY, ts.CHUNK = old
    whole = ts.contains(io.BytesIO(msg), needle.casefold(), body_only=True)
    assert streamed == whole
    if needle.strip() or needle == "":
        assert whole == (needle.casefold() in body.casefold())


def test_large_message_bounded_memory(tmp_path) -> None:
    """A 40 MB base64 attachment plus a text part: memory stays far below the size."""
    path = tmp_path / "big"
    with open(path, "wb") as fh:
        fh.write(b"Subject: big\nContent-Type: multipart/mixed; boundary=z\n\n--z\n"
                 b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n")
        line = base64.encodebytes(b"a" * 57 * 1000)      # ~78 KB of base64 text
        for _ in range(520):
            fh.write(line)
        fh.write(base64.encodebytes(b"needle-at-the-end") + b"--z--\n")
    assert path.stat().st_size > 40_000_000
    tracemalloc.start()
    try:
        with open(path, "rb") as fh:
            assert ts.contains(fh, "needle-at-the-end", body_only=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, peak


# -- the fast in-memory walk against the full parse ----------------------------------------

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
NEEDLES = ["zeppelin", "the", "é", "привет", "content-type", "base64", "charset", "lyrics",
           "dingus", "=", "ü", "deployment forecast"]


def full_parse(data: bytes, needle: str, body_only: bool) -> bool:
    root = parse(io.BytesIO(data))
    return ts._search(iter((ts._to_crlf(data),)), ts._segments(root, body_only), needle)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus {CORPUS} not present")
def test_fast_walk_equals_full_parse_on_the_corpus() -> None:
    for eml in sorted(CORPUS.glob("*.eml")):
        data = eml.read_bytes()
        for needle in NEEDLES:
            for body_only in (True, False):
                assert has(data, needle, body_only) == full_parse(data, needle, body_only), \
                    (eml.name, needle, body_only)


@pytest.mark.parametrize("data", [
    # an inner boundary that starts with the outer one: only the full parse is exact
    b"Content-Type: multipart/mixed; boundary=ab\n\n--ab\n"
    b"Content-Type: multipart/mixed; boundary=abc\n\n--abc\n\nfirst zeppelin\n--abc--\n--ab--\n",
    # a header cut by a boundary line
    b"Content-Type: multipart/mixed; boundary=q\n\n--q\nSubject: x\n--q\n\nzeppelin\n--q--\n",
    # a part with no close delimiter and CRLF line ends
    b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\r\nzep\r\npelin zeppelin\r\n",
    MULTI,
])
def test_fast_walk_fallbacks(data: bytes) -> None:
    for needle in ("zeppelin", "first", "x"):
        for body_only in (True, False):
            assert has(data, needle, body_only) == full_parse(data, needle, body_only)


def test_surely_absent_only_when_the_raw_bytes_prove_it() -> None:
    plain = b"Subject: hi\n\nnothing to see\n"
    assert ts.surely_absent(plain, "zeppelin")
    assert not ts.surely_absent(plain, "nothing")          # present: must look
    assert not ts.surely_absent(plain, "to see")           # white space: folds may split it
    assert not ts.surely_absent(plain, "é")                # not ASCII
    for hides in (b"Subject: =?utf-8?q?zeppelin?=\n\n", b"Content-Transfer-Encoding: BASE64\n\n",
                  b"Content-Type: text/plain; charset=UTF-7\n\n+AHoAZQBwAHAAZQBsAGkAbg-\n",
                  b"Subject: x\n\n\xc3\xa9", b"\x1b$B"):
        assert not ts.surely_absent(hides, "zeppelin"), hides
    utf7 = b"Content-Type: text/plain; charset=UTF-7\n\n+AHoAZQBwAHAAZQBsAGkAbg-\n"
    assert has(utf7, "zeppelin", True)
