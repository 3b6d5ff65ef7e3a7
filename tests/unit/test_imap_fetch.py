"""FETCH content from Maildir files: the streamed CRLF form equals the in-memory one at
every chunk size, windows and sections match slicing, and a large BODY[] is sent
without being held whole."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from courier_imapd import core as c
from courier_imapd import fetch as f
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir.folder import MessageRef

# Line ends, CRs and the header/body boundary are where the edges are.
_pieces = st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"Subject: x", b": ", b" ", b"\n\n"])
messages = st.lists(_pieces, max_size=40).map(b"".join) | st.binary(max_size=200)


def send(parts: list[c.FetchPart]) -> bytes:
    return b"".join(c.fetch_response_pieces(1, parts))


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(1, 7))
def test_stream_equals_whole(data: bytes, chunk: int) -> None:
    fh = io.BytesIO(data)
    crlf = f.to_crlf(data)
    assert b"".join(f.crlf_stream(fh, chunk)) == crlf
    assert f.crlf_size(fh) == len(crlf)
    assert f.header_length(fh) == len(f.split_header(crlf)[0])


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(0, 60), st.integers(0, 60), st.integers(1, 5))
def test_window_is_a_slice(data: bytes, a: int, b: int, chunk: int) -> None:
    crlf = f.to_crlf(data)
    got = b"".join(f.window(f.crlf_stream(io.BytesIO(data), chunk), a, b))
    assert got == crlf[a:b]


ITEMS = [
    c.FetchItem("RFC822"), c.FetchItem("RFC822.HEADER"), c.FetchItem("RFC822.TEXT"),
    c.FetchItem("BODY"), c.FetchItem("BODY", "HEADER"), c.FetchItem("BODY", "TEXT"),
    c.FetchItem("BODY", "", peek=True, partial=(3, 10)),
    c.FetchItem("BODY", "TEXT", partial=(2, 1000)),
    c.FetchItem("BODY", "HEADER", partial=(500, 10)),
    c.FetchItem("BODY", "HEADER.FIELDS", ("subject",)),
    c.FetchItem("BODY", "HEADER.FIELDS.NOT", ("subject",), partial=(1, 5)),
]


def expected(item: c.FetchItem, crlf: bytes) -> bytes:
    """The section the old in-memory code produced (RFC 3501 §6.4.5)."""
    header, text = f.split_header(crlf)
    if item.section == "" and item.name in ("BODY", "RFC822"):
        data = crlf
    elif item.section == "HEADER" or item.name == "RFC822.HEADER":
        data = header
    elif item.section == "TEXT" or item.name == "RFC822.TEXT":
        data = text
    else:
        data = f.header_fields(header, item.fields, item.section == "HEADER.FIELDS.NOT")
    if item.partial:
        data = data[item.partial[0]:item.partial[0] + item.partial[1]]
    return f.section_name(item) + b" {%d}\r\n" % len(data) + data


@settings(max_examples=150, deadline=None)
@given(messages)
def test_every_section(data: bytes) -> None:
    crlf = f.to_crlf(data)
    msg = MessageRef(7, "b", "b:2,", "", len(data), 0.0)
    items = (c.FetchItem("UID"), c.FetchItem("RFC822.SIZE"), *ITEMS)
    parts, size = f.message_parts(items, msg, io.BytesIO(data), "()", None)
    assert size == len(crlf)
    want = [b"UID 7", b"RFC822.SIZE %d" % len(crlf)] + [expected(i, crlf) for i in ITEMS]
    assert send(parts) == b"* 1 FETCH (" + b" ".join(want) + b")\r\n"


def test_literal_cut_and_short() -> None:
    long = c.StreamedLiteral(b"BODY[]", 3, iter([b"ab", b"cdef"]))
    assert send([long, b"UID 1"]) == b"* 1 FETCH (BODY[] {3}\r\nabc UID 1)\r\n"
    short = c.StreamedLiteral(b"BODY[]", 5, iter([b"ab"]))
    with pytest.raises(c.LiteralShort):
        send([short])


def test_large_body_is_streamed(tmp_path: Path) -> None:
    line = b"x" * 76 + b"\n"
    body = b"Subject: big\n\n" + line * (8 * 1024 * 1024 // len(line))
    path = tmp_path / "big"
    path.write_bytes(body)
    msg = MessageRef(1, "big", "big:2,", "", len(body), 0.0)
    items = (c.FetchItem("BODY", peek=True), c.FetchItem("RFC822.SIZE"))
    tracemalloc.start()
    try:
        with open(path, "rb") as fh:
            parts, size = f.message_parts(items, msg, fh, "()", None)
            sent = 0
            tail = b""
            for piece in c.fetch_response_pieces(1, parts):
                sent += len(piece)
                tail = (tail + piece)[-64:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    crlf_len = len(body) + body.count(b"\n")
    assert size == crlf_len
    assert tail.endswith(b"x\r\n RFC822.SIZE %d)\r\n" % crlf_len)
    assert sent == len(b"* 1 FETCH (BODY[] {%d}\r\n" % crlf_len) + crlf_len + len(
        b" RFC822.SIZE %d)\r\n" % crlf_len)
    assert peak < 1024 * 1024, f"peak {peak} bytes for an 8 MB message"
