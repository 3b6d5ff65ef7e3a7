"""courier_deliver.localproto: the courierlocal request/reply lines, sans I/O."""

from __future__ import annotations

import pytest
from courier_deliver.localproto import (
    MAX_ADDRESS,
    DeliverRequest,
    Reply,
    ReplyReader,
    RequestReader,
    Status,
    format_reply,
    format_request,
    parse_request_line,
    xtext_decode,
    xtext_encode,
)
from hypothesis import given
from hypothesis import strategies as st

from libcourier.proto import ClientError


def feed_all(reader, data: bytes, step: int | None):
    """Feed whole or in `step`-byte pieces; return the first event."""
    get = reader.next_request if isinstance(reader, RequestReader) else reader.next_reply
    if step is None:
        reader.feed(data)
        return get()
    for i in range(0, len(data), step):
        reader.feed(data[i:i + step])
        ev = get()
        if ev is not None:
            return ev
    return None


CASES = [
    (DeliverRequest("bob@example.net", "alice@example.com"),
     b"DELIVER bob@example.net alice@example.com\n"),
    (DeliverRequest("", "alice@example.com"), b"DELIVER <> alice@example.com\n"),
    (DeliverRequest("a+b=c@x", "alice@mx.test", "alice"),
     b"DELIVER a+2Bb+3Dc@x alice@mx.test alice\n"),
    (DeliverRequest("<>@x", "\u00fcser one@ex\u00e4mple.org"),
     b"DELIVER +3C+3E@x +C3+BCser+20one@ex+C3+A4mple.org\n"),
]


@pytest.mark.parametrize("req,wire", CASES)
@pytest.mark.parametrize("step", [None, 1, 7])
def test_request_transcripts(req, wire, step):
    assert format_request(req) == wire
    assert feed_all(RequestReader(), wire, step) == req


def test_request_pipelined_trailing_bytes_are_kept():
    r = RequestReader()
    r.feed(b"DELIVER <> a@b\nDELIVER <> c@d\n")
    assert r.next_request() == DeliverRequest("", "a@b")
    assert r.trailing == b"DELIVER <> c@d\n"


def test_user_equal_to_recipient_is_not_sent():
    assert format_request(DeliverRequest("", "a@b", "a@b")) == b"DELIVER <> a@b\n"


@pytest.mark.parametrize("line", [
    b"DELIVER a@b\n", b"deliver <> a@b\n", b"DELIVER  a@b c@d\n", b"DELIVER <> \n",
    b"DELIVER <> a+ZZ@b\n", b"DELIVER <> a+4@b\n", b"DELIVER <> a=b\n",
    b"DELIVER <> a@b c d\n", b"DELIVER <> \xff@b\n", b"DELIVER <> +FF@b\n",
    b"HELO x\n",
])
def test_bad_requests(line):
    with pytest.raises(ClientError):
        parse_request_line(line)


def test_overlong_request_is_refused_not_buffered():
    r = RequestReader()
    with pytest.raises(ClientError):
        for _ in range(1000):
            r.feed(b"x" * 1000)
            r.next_request()
    assert len(r._buf) < 20_000


def test_address_limits():
    with pytest.raises(ValueError):
        format_request(DeliverRequest("", "a" * (MAX_ADDRESS + 1)))
    with pytest.raises(ClientError):
        xtext_decode("a" * (MAX_ADDRESS + 1))
    long_ok = DeliverRequest("+" * MAX_ADDRESS, "\u00e4" * (MAX_ADDRESS // 2), "=" * MAX_ADDRESS)
    assert parse_request_line(format_request(long_ok)) == long_ok


@given(st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s),
       st.text(max_size=200))
def test_request_round_trip(recipient, sender):
    req = DeliverRequest(sender, recipient)
    assert parse_request_line(format_request(req)) == req


@given(st.text(max_size=300))
def test_xtext_round_trip(text):
    enc = xtext_encode(text)
    assert all("!" <= c <= "~" for c in enc) and "<" not in enc and "=" not in enc
    assert xtext_decode(enc) == text


@given(st.binary(max_size=200))
def test_any_bytes_give_a_request_or_client_error(data):
    r = RequestReader()
    r.feed(data)
    try:
        r.next_request()
    except ClientError:
        pass


@pytest.mark.parametrize("reply,wire", [
    (Reply(Status.OK, "1.M1P1.h,S=3"), b"OK 1.M1P1.h,S=3\n"),
    (Reply(Status.TEMP, "4.4.3 authd down"), b"TEMP 4.4.3 authd down\n"),
    (Reply(Status.PERM, "5.1.1 no such user"), b"PERM 5.1.1 no such user\n"),
    (Reply(Status.OK, ""), b"OK\n"),
])
@pytest.mark.parametrize("step", [None, 1, 3])
def test_reply_transcripts(reply, wire, step):
    assert format_reply(reply) == wire
    assert feed_all(ReplyReader(), wire, step) == reply


def test_reply_text_is_sanitised_and_bounded():
    wire = format_reply(Reply(Status.TEMP, "bad\r\nline\x00" + "\u00e9" * 1000))
    assert wire.count(b"\n") == 1 and b"\r" not in wire and len(wire) <= 520
    got = feed_all(ReplyReader(), wire, None)
    assert got.status is Status.TEMP and got.text.startswith("bad  line")


def test_bad_reply():
    r = ReplyReader()
    r.feed(b"MAYBE later\n")
    with pytest.raises(ClientError):
        r.next_reply()
