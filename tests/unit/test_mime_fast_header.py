"""The one-block header path of libcourier.mime (a regular expression over the whole
header) keeps exactly the fields the line-by-line path keeps, on headers made of the
odd lines that tell them apart."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import libcourier.mime as mime

LINES = [
    b"Subject: plain\n", b"SUBJECT : spaced name\n", b"subject\t:tab\r\n", b"Subjects: not kept\n",
    b"X-Subject: not kept\n", b"To: a@b\n", b"to: c@d\n", b"TO :e@f\r\n", b"To-Be: x\n",
    b"Cc:\n", b" folded@g\n", b"\tfolded2\r\n", b"  \n", b"no colon line\n", b":colon first\n",
    b"From: \"A, B\" <a@b>\n", b"Content-Type: text/plain;\n", b" charset=utf-8\n",
    b"Content-Type: text/html\n", b"content-transfer-encoding: base64\n", b"Date: x\r\n",
    b"Message-ID: <1@x>\n", b"References: <1@x>\n", b"\t<2@y>\n", b"Sender\r: odd\n",
    b"Bcc: \xff\xfe@h\n", b"Reply-To: r@s\n", b"In-Reply-To: <9@z>\n", b"Content-ID:\n",
    b"x: y\r", b"content-md5: q\n",
]


def _fields(data: bytes, fast: bool) -> dict[bytes, bytes]:
    saved = mime._fast_header
    if not fast:
        mime._fast_header = lambda *a: False
    try:
        part = mime.parse(io.BytesIO(data))
    finally:
        mime._fast_header = saved
    return part.fields


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=30), st.sampled_from([b"\n", b"\r\n"]))
def test_block_and_line_paths_keep_the_same_fields(lines: list[bytes], blank: bytes) -> None:
    data = b"".join(lines) + blank + b"body\n"
    if data.startswith((b" ", b"\t", b"\n", b"\r\n")):
        return
    assert _fields(data, True) == _fields(data, False)


@pytest.mark.parametrize("header,name,value", [
    (b"SUBJECT \t: hi\n there\n", b"subject", b" hi\n there\n"),
    (b"no colon\n folded: not a field\nTo: a@b\n", b"to", b" a@b\n"),
    (b"To: a@b\nX: y\nto: c@d\n", b"to", b" a@b\n, c@d\n"),
])
def test_block_path_values(header: bytes, name: bytes, value: bytes) -> None:
    fields = _fields(header + b"\nbody\n", True)
    assert fields[name] == value
    assert b"folded" not in fields
