"""sendmail's command line and message preparation (courier_deliver.submit)."""

from __future__ import annotations

import pytest
from courier_deliver.submit import (
    MAX_HEADER_BYTES,
    DataError,
    MessageInput,
    Mode,
    UsageError,
    parse_args,
    prepare,
)

MSG = (b"From: Alice <alice@example.com>\r\nTo: bob@example.com,\r\n  carol\r\n"
       b"Bcc: dave@example.org\r\nSubject: hi\r\n\r\nbody\r\n.\r\nafter\r\n")


def test_parse_args_common_forms():
    o = parse_args(["-t", "-oi", "-f", "bounce@example.com", "-Fname", "--", "-x@y"])
    assert o.read_recipients and o.ignore_dots
    assert o.sender == "bounce@example.com" and o.fullname == "name"
    assert o.recipients == ("-x@y",)
    assert parse_args(["-f<>", "a"]).sender == ""
    assert parse_args(["-bp"]).mode is Mode.LIST
    assert parse_args(["-I"]).mode is Mode.ALIASES
    assert parse_args(["-N", "success,failure", "-R", "hdrs", "a"]).notify == "SUCCESS,FAILURE"
    assert parse_args(["-odi", "-oem", "-v", "a"]).recipients == ("a",)
    assert parse_args(["-C", "/x", "a"]).config == "/x"


@pytest.mark.parametrize("argv", [["-f"], ["-Z"], ["-N", "bogus"], ["-R", "x"], ["-bz"],
                                  ["-N", "never,success"]])
def test_parse_args_errors(argv):
    with pytest.raises(UsageError):
        parse_args(argv)


def run(data: bytes, *, ignore_dots: bool, bytewise: bool = False) -> tuple[MessageInput, bytes]:
    mi = MessageInput(ignore_dots=ignore_dots)
    out = b""
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for p in pieces:
        out += mi.feed(p)
    out += mi.eof()
    return mi, out


@pytest.mark.parametrize("bytewise", [False, True])
def test_dot_ends_the_message_without_i(bytewise):
    mi, body = run(MSG, ignore_dots=False, bytewise=bytewise)
    assert [h.key for h in mi.headers] == ["from", "to", "bcc", "subject"]
    assert mi.headers[1].raw == b"To: bob@example.com,\n  carol\n"
    assert body == b"\nbody\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_dot_is_data_with_i(bytewise):
    _, body = run(MSG, ignore_dots=True, bytewise=bytewise)
    assert body == b"\nbody\n.\nafter\n"


def test_from_line_dropped_and_headerless_message():
    mi, body = run(b"From alice Mon Jan 1\nSubject: x\n\nb", ignore_dots=True)
    assert [h.key for h in mi.headers] == ["subject"] and body == b"\nb\n"
    mi, body = run(b"just text\nmore\n", ignore_dots=True)
    assert mi.headers == [] and body == b"\njust text\nmore\n"


def test_long_body_lines_pass_through_and_header_limit():
    line = b"x" * 200000 + b"\r\n"
    _, body = run(b"S: a\n\n" + line, ignore_dots=False)
    assert body == b"\n" + b"x" * 200000 + b"\n"
    with pytest.raises(DataError):
        run(b"".join(b"X-A: %d\n" % i for i in range(MAX_HEADER_BYTES // 8)), ignore_dots=True)


def _prep(data: bytes, argv: list[str], **kw):
    mi, _ = run(data, ignore_dots=False)
    args = dict(sender="root@mx.test", fullname=None, domain="mx.test",
                date="Mon, 01 Jan 2024 00:00:00 +0000", message_id="<id@mx.test>",
                received=b"Received: x\n")
    args.update(kw)
    return prepare(mi.headers, parse_args(argv), **args)


def test_t_takes_to_cc_bcc_and_removes_bcc():
    p = _prep(MSG, ["-t", "extra"])
    assert p.recipients == ("extra@mx.test", "bob@example.com", "carol@mx.test",
                            "dave@example.org")
    assert b"Bcc" not in p.header_bytes
    assert p.header_bytes.startswith(b"Received: x\nFrom: Alice")
    assert b"Date: Mon, 01 Jan 2024" in p.header_bytes
    assert b"Message-ID: <id@mx.test>" in p.header_bytes


def test_from_added_and_existing_date_kept():
    p = _prep(b"Date: Tue, 2 Jan 2024 00:00:00 +0000\nMessage-ID: <a@b>\n\nx\n", ["bob"],
              fullname="Root User, Esq.")
    assert p.recipients == ("bob@mx.test",)
    assert b'From: "Root User, Esq." <root@mx.test>\n' in p.header_bytes
    assert p.header_bytes.count(b"Date:") == 1 and p.header_bytes.count(b"Message-ID") == 1
    p = _prep(b"\nx\n", ["bob"], add_date=False, add_msgid=False)
    assert b"Date:" not in p.header_bytes and b"Message-ID" not in p.header_bytes


def test_no_or_bad_recipients():
    with pytest.raises(DataError):
        _prep(b"\nx\n", [])
    with pytest.raises(DataError):
        _prep(b"\nx\n", ["a b@c"])
    assert _prep(b"\nx\n", ["a@x,b@y", "A@X"]).recipients == ("a@x", "b@y")
