"""libcourier.proto.ReceiveBuffer: bounded lines, draining of over-long lines, take()."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer


def drain(buf: ReceiveBuffer) -> list[bytes | str]:
    out: list[bytes | str] = []
    while True:
        try:
            line = buf.next_line()
        except LineTooLong:
            out.append("TOO_LONG")
            continue
        if line is NEED_DATA:
            return out
        out.append(line)


def test_lines_whole_and_byte_by_byte():
    data = b"A1 NOOP\r\nA2 LOGIN a b\nrest"
    whole = ReceiveBuffer(100)
    whole.feed(data)
    expected = [b"A1 NOOP\r\n", b"A2 LOGIN a b\n"]
    assert drain(whole) == expected
    assert len(whole) == 4
    slow = ReceiveBuffer(100)
    got: list[bytes | str] = []
    for i in range(len(data)):
        slow.feed(data[i:i + 1])
        got += drain(slow)
    assert got == expected


def test_over_long_line_reported_once_and_session_goes_on():
    buf = ReceiveBuffer(10)
    buf.feed(b"x" * 25)
    assert drain(buf) == ["TOO_LONG"]
    # The rest of the long line arrives later and is dropped silently.
    buf.feed(b"y" * 1000)
    assert drain(buf) == []
    assert len(buf) == 0  # memory does not grow with the hostile line
    buf.feed(b"zz\r\nNOOP\r\n")
    assert drain(buf) == [b"NOOP\r\n"]


def test_over_long_complete_line():
    buf = ReceiveBuffer(8)
    buf.feed(b"0123456789\r\nOK\r\n")
    assert drain(buf) == ["TOO_LONG", b"OK\r\n"]


def test_limit_counts_line_end():
    buf = ReceiveBuffer(6)
    buf.feed(b"1234\r\n12345\r\n")
    assert drain(buf) == [b"1234\r\n", "TOO_LONG"]


def test_take_for_literals():
    buf = ReceiveBuffer(100)
    buf.feed(b"{5}\r\nhello world\r\n")
    assert buf.next_line() == b"{5}\r\n"
    assert buf.take(5) == b"hello"
    assert buf.take(0) == b""
    assert buf.next_line() == b" world\r\n"
    buf.feed(b"ab")
    assert buf.take(10) == b"ab"


def test_many_short_lines_from_a_long_buffer():
    buf = ReceiveBuffer(100)
    n = 20000
    buf.feed(b"NOOP\r\n" * n)
    assert len(drain(buf)) == n
    assert len(buf) == 0


@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=1, max_value=30))
def test_any_bytes_any_split(chunks, limit):
    """Invariant: lines handed out are within the limit and end in LF; nothing raises
    except LineTooLong; buffered bytes never exceed limit plus one chunk."""
    buf = ReceiveBuffer(limit)
    for c in chunks:
        buf.feed(c)
        for item in drain(buf):
            if item != "TOO_LONG":
                assert item.endswith(b"\n") and len(item) <= limit
        assert len(buf) <= limit + len(c)
