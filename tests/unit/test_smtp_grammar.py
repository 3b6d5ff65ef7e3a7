"""libcourier.smtp: command and path grammar (RFC 5321 §4.1), replies, dot-stuffing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.proto import ClientError
from libcourier.smtp import (
    Reply,
    dot_stuff,
    format_reply,
    parse_command,
    parse_mail_from,
    parse_mailbox,
    parse_rcpt_to,
    unstuff_line,
    xtext_decode,
    xtext_encode,
)


def test_parse_command():
    assert parse_command(b"mail FROM:<a@b>\r\n").verb == "MAIL"
    assert parse_command(b"NOOP\n").arg == ""
    assert parse_command(b"EHLO  x\r\n").arg == " x"
    for bad in (b"\x00NOOP\r\n", b"NO\x01OP\r\n", b"\xff\xfe\r\n", b"\r\n", b" NOOP\r\n",
                b"1NOOP\r\n"):
        with pytest.raises(ClientError):
            parse_command(bad)


@pytest.mark.parametrize("text,local,domain", [
    ("a@example.com", "a", "example.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag", "sub.example.co.uk"),
    ('"john doe"@example.com', '"john doe"', "example.com"),
    ('"a\\"b@c"@example.com', '"a\\"b@c"', "example.com"),
    ("x@[192.0.2.1]", "x", "[192.0.2.1]"),
    ("x@[IPv6:2001:db8::1]", "x", "[IPv6:2001:db8::1]"),
    ("jöran@bär.de", "jöran", "bär.de"),
])
def test_valid_mailboxes(text, local, domain):
    m = parse_mailbox(text)
    assert (m.local, m.domain) == (local, domain)
    assert m.address == text


@pytest.mark.parametrize("text", [
    "a", "a@", "@b.c", "a..b@c.d", ".a@b.c", "a.@b.c", "a@b..c", "a@-b.c", "a@b-.c",
    "a@[300.1.1.1]", "a@[IPv6:zz::1]", "a b@c.d", '"unterminated@b.c', "a@b_c.d",
    "x" * 65 + "@b.c", "a@" + "b" * 64 + ".c", 'a"b@c.d',
])
def test_invalid_mailboxes(text):
    with pytest.raises(ClientError) as e:
        parse_mailbox(text)
    assert e.value.code.startswith("501 ")


def test_paths_and_params():
    p = parse_mail_from("FROM:<a@b.c> SIZE=1000 body=8BITMIME SMTPUTF8")
    assert p.address == "a@b.c"
    assert p.params == {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None}
    assert parse_mail_from("FROM: <>").mailbox is None          # lenient space
    assert parse_mail_from("from:<@relay.example:a@b.c>").address == "a@b.c"
    assert parse_rcpt_to("TO:<Postmaster>").address == "Postmaster"
    assert parse_rcpt_to('TO:<"a>b"@c.d>').address == '"a>b"@c.d'
    for bad in ("FROM:a@b.c", "FROM:<a@b.c", "FROM:<a@b.c>x", "TO:<a@b.c>",
                "FROM:<a@b.c> SIZE=1 SIZE=2", "FROM:<a@b.c> =x", "FROM:<a@b.c> K=",
                "FROM:<" + "a" * 250 + "@b.c>"):
        with pytest.raises(ClientError):
            parse_mail_from(bad)
    with pytest.raises(ClientError):
        parse_rcpt_to("TO:<>")


def test_reply_format():
    assert format_reply(250, None, ["mx Ok.", "PIPELINING"]) == b"250-mx Ok.\r\n250 PIPELINING\r\n"
    assert Reply.make(550, "5.1.1", "User unknown.").to_bytes() == b"550 5.1.1 User unknown.\r\n"
    # No reply injection through text, no line over 512 octets.
    assert format_reply(550, "5.1.1", ["a\r\n250 ok"]) == b"550 5.1.1 a  250 ok\r\n"
    assert len(format_reply(500, "5.5.2", ["x" * 1000])) == 512
    with pytest.raises(ValueError):
        format_reply(99, None, ["x"])


def test_dot_stuff():
    assert dot_stuff(b".a\n..b\nc") == b"..a\r\n...b\r\nc\r\n"
    assert dot_stuff(b"x\r\n.\r\n") == b"x\r\n..\r\n"
    assert dot_stuff(b"") == b""
    assert unstuff_line(b"..x\r\n") == b".x\r\n"


@given(st.binary(max_size=200))
def test_dot_stuff_never_contains_end_of_data_and_unstuffs_back(msg):
    stuffed = dot_stuff(msg)
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed
    lines = [unstuff_line(line + b"\r\n") for line in stuffed.split(b"\r\n")[:-1]]
    expected = msg.replace(b"\r\n", b"\n").split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert [line[:-2] for line in lines] == [e[:-1] if e.endswith(b"\r") else e for e in expected]


@given(st.text(max_size=50))
def test_xtext_round_trip(s):
    assert xtext_decode(xtext_encode(s).encode().decode("latin-1")) == "".join(
        chr(b) for b in s.encode()) or not s.isascii()


@given(st.text(max_size=120))
def test_grammar_fuzz_only_clienterror(s):
    for fn in (parse_mail_from, parse_rcpt_to, parse_mailbox):
        try:
            fn(s)
        except ClientError:
            pass
