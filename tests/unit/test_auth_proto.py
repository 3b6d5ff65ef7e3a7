"""authdaemon protocol core (FORMATS.md §3.1): requests and replies whole, byte by byte, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.authproto import (
    MAX_REQUEST,
    AuthProtocolError,
    AuthReply,
    AuthRequest,
    EnumEntry,
    EnumerateParser,
    EnumerateRequest,
    Failed,
    PasswdRequest,
    PreRequest,
    ReplyParser,
    RequestParser,
    format_auth_reply,
    format_enumerate,
    format_request,
    login_authdata,
)
from libcourier.proto import NEED_DATA


def parse_whole(data: bytes):
    p = RequestParser()
    p.feed(data)
    return p.next_request()


def parse_bytewise(data: bytes):
    p = RequestParser()
    res = NEED_DATA
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        res = p.next_request()
        if res is not NEED_DATA:
            return res
    return res


REQUESTS = {
    b"PRE . imap bob\n": PreRequest(".", "imap", "bob"),
    b"PRE authuserdb courier bob@example.com\n": PreRequest("authuserdb", "courier", "bob@example.com"),
    b"AUTH 25\nimap\nlogin\nbob\nsecret pw\n": AuthRequest("imap", "login", b"bob\nsecret pw\n"),
    b"TCPREMOTEIP=192.0.2.7\nAUTH 25\nimap\nlogin\nbob\nsecret pw\n":
        AuthRequest("imap", "login", b"bob\nsecret pw\n", {"TCPREMOTEIP": "192.0.2.7"}),
    b"PASSWD imap\tbob\told\tnew\t\n": PasswdRequest("imap", "bob", "old", "new"),
    # What Courier's authtest really sends (captured from /usr/sbin/authtest):
    b"PASSWD imap\talice@example.com\talice-secret\tnewpw\n":
        PasswdRequest("imap", "alice@example.com", "alice-secret", "newpw"),
    b"ENUMERATE\n": EnumerateRequest(),
    b"OTHER=x\nTCPREMOTEIP=::1\nENUMERATE\n": EnumerateRequest({"TCPREMOTEIP": "::1"}),
}


@pytest.mark.parametrize("data", list(REQUESTS), ids=lambda d: d[:20].decode())
def test_request_whole_bytewise_trailing(data):
    want = REQUESTS[data]
    assert parse_whole(data) == want
    assert parse_bytewise(data) == want
    # one request per connection: trailing bytes are ignored
    assert parse_whole(data + b"PRE . imap mallory\n") == want


@pytest.mark.parametrize("req", list(REQUESTS.values()), ids=repr)
def test_format_then_parse(req):
    assert parse_whole(format_request(req)) == req


def test_format_exact_bytes():
    assert format_request(AuthRequest("imap", "login", login_authdata("bob", "pw"), {"TCPREMOTEIP": "1.2.3.4"})) \
        == b"TCPREMOTEIP=1.2.3.4\nAUTH 18\nimap\nlogin\nbob\npw\n"
    assert format_request(PreRequest(".", "courier", "bob")) == b"PRE . courier bob\n"
    assert format_request(PasswdRequest("imap", "bob", "a", "b")) == b"PASSWD imap\tbob\ta\tb\n"


@pytest.mark.parametrize("bad", [
    PreRequest(".", "imap", "bo b"), PreRequest(".", "imap", "bob\n"), PreRequest(".", "", "bob"),
    PasswdRequest("imap", "bob", "a\nb", "c"), AuthRequest("imap", "lo gin", b""),
])
def test_format_refuses(bad):
    with pytest.raises(ValueError):
        format_request(bad)
    with pytest.raises(ValueError):
        login_authdata("bob", "pass\nword")


@pytest.mark.parametrize("data", [
    b"HELO there\n", b"PRE . imap\n", b"PRE . imap bob extra\n", b"AUTH x\n", b"AUTH 999999\n",
    b"AUTH 2\nab", b"PASSWD imap\tbob\told\n", b"ENUMERATE now\n", b"\xff\xfe x\n",
    b"AUTH 8\nimaplogin", b"AUTH 6\n\n\nxyzw",
])
def test_garbage(data):
    with pytest.raises(AuthProtocolError):
        parse_whole(data)


def test_auth_length_short_waits_for_more():
    p = RequestParser()
    p.feed(b"AUTH 25\nimap\nlogin\nbob\n")
    assert p.next_request() is NEED_DATA
    p.feed(b"secret pw\n")
    assert p.next_request() == AuthRequest("imap", "login", b"bob\nsecret pw\n")


def test_auth_length_counts_bytes_exactly():
    # a length one short cuts the password's final LF off: what we parse is what was counted
    req = parse_whole(b"AUTH 24\nimap\nlogin\nbob\nsecret pw\n")
    assert req.authdata == b"bob\nsecret pw"
    assert req.fields() == [b"bob", b"secret pw"]


def test_over_long_line_and_request():
    with pytest.raises(AuthProtocolError):
        parse_whole(b"PRE . imap " + b"a" * (MAX_REQUEST + 10) + b"\n")
    p = RequestParser()
    with pytest.raises(AuthProtocolError):
        for _ in range(MAX_REQUEST + 2):
            p.feed(b"A")
            p.next_request()
    with pytest.raises(AuthProtocolError):
        parse_whole(b"X=1\n" * 40 + b"ENUMERATE\n")


@given(st.binary(max_size=300))
def test_fuzz_request_parser(data):
    p = RequestParser()
    p.feed(data)
    try:
        r = p.next_request()
    except AuthProtocolError:
        return
    assert r is NEED_DATA or isinstance(r, PreRequest | AuthRequest | PasswdRequest | EnumerateRequest)


FIELDS = {"OPTIONS": "disableimap=0", "UID": 1000, "USERNAME": "vmail", "GID": 1000,
          "HOME": "/home/bob", "ADDRESS": "bob@example.com", "MAILDIR": "./Maildir"}
REPLY = (b"USERNAME=vmail\nUID=1000\nGID=1000\nHOME=/home/bob\nADDRESS=bob@example.com\n"
         b"MAILDIR=./Maildir\nOPTIONS=disableimap=0\n.\n")


def test_reply_order_is_printauths():
    assert format_auth_reply(FIELDS) == REPLY


def test_reply_mandatory():
    for k in ("GID", "HOME", "ADDRESS"):
        with pytest.raises(ValueError):
            format_auth_reply({x: v for x, v in FIELDS.items() if x != k})
    with pytest.raises(ValueError):
        format_auth_reply({x: v for x, v in FIELDS.items() if x not in ("UID", "USERNAME")})
    with pytest.raises(ValueError):
        format_auth_reply({**FIELDS, "NAME": "Bob\nEvil=1"})


@pytest.mark.parametrize("split", [None, 1])
def test_reply_parse(split):
    p = ReplyParser()
    data = REPLY + b"junk after"
    if split:
        res = NEED_DATA
        for i in range(len(data)):
            p.feed(data[i:i + 1])
            res = p.result()
            if res is not NEED_DATA:
                break
    else:
        p.feed(data)
        res = p.result()
    assert isinstance(res, AuthReply)
    assert res.fields["HOME"] == "/home/bob" and res.fields["UID"] == "1000"
    assert list(res.fields)[0] == "USERNAME"


def test_reply_fail_ok_and_tolerance():
    p = ReplyParser()
    p.feed(b"FAIL\n")
    assert p.result() is Failed.FAIL
    p = ReplyParser(passwd=True)
    p.feed(b"OK\n")
    assert p.result() is True
    p = ReplyParser()
    p.feed(b"no equals here\nFOO=bar\nGID=1\n")
    assert p.result() is NEED_DATA
    p.feed(b".\n")
    assert p.result().fields == {"FOO": "bar", "GID": "1"}
    p = ReplyParser()
    p.feed(b"A=" + b"x" * 70000)
    with pytest.raises(AuthProtocolError):
        p.result()


def test_enumerate_roundtrip():
    entries = [EnumEntry("bob", 1000, 1000, "/h/bob", "./Maildir", "a=1"),
               EnumEntry("root", 0, 0, "/root", "", "")]
    data = format_enumerate([("authuserdb", entries)])
    assert data.startswith(b"# authuserdb\n\nbob\t1000\t1000\t/h/bob\t./Maildir\ta=1\n")
    assert data.endswith(b".\n")
    p = EnumerateParser()
    for i in range(len(data)):
        p.feed(data[i:i + 1])
    assert p.result() == entries[:1]  # uid 0 refused as Courier's client does
