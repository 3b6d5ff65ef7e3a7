"""A body no boundary can end (a single-part message, or what follows the last close
delimiter) is passed over in bulk: its size and line count are still exact."""

from __future__ import annotations

import io

from courier_imapd.fetch import split_header, to_crlf
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.mime import parse

_pieces = st.sampled_from([b"\n", b"\r\n", b"\r", b"-", b"--", b"--b", b"--b--", b"x" * 70,
                           b"-- \n", b"text", b" ", b"\n--b\n"])
bodies = st.lists(_pieces, max_size=60).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(bodies, st.sampled_from([b"", b"Content-Type: text/plain\n",
                                b"Content-Type: multipart/mixed\n"]))
def test_single_part_body_size_and_lines(body: bytes, ctype: bytes) -> None:
    # (multipart without a boundary parameter: nothing can end its body either)
    msg = b"Subject: s\n" + ctype + b"\n" + body
    root = parse(io.BytesIO(msg))
    crlf = to_crlf(msg)
    header, _ = split_header(crlf)
    assert root.body_start == len(header)
    assert root.body_end == len(crlf)
    assert root.lines == msg[msg.index(b"\n\n") + 2:].count(b"\n")


def test_epilogue_after_close_delimiter_is_passed_over() -> None:
    msg = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b--\n"
           + b"-- epilogue\n" * 5000)
    root = parse(io.BytesIO(msg))
    assert root.body_end == len(to_crlf(msg))
    assert len(root.children) == 1
