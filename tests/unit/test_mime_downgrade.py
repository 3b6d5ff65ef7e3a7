"""8-bit to 7-bit conversion for servers without 8BITMIME (RFC 6152 §3, Courier's
rfc2045 7-bit rewrite), alone and inside the SMTP client core."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.mime.downgrade import MAX_LINE, header_needs_utf8, is_7bit, to_7bit
from libcourier.smtp.client import Rcpt, SmtpClient, TlsPolicy, Transaction

MULTI = ("Subject: hi\nMIME-Version: 1.0\n"
         "Content-Type: multipart/mixed; boundary=\"b1\"\n\n"
         "preamble\n--b1\nContent-Type: text/plain; charset=utf-8\n"
         "Content-Transfer-Encoding: 8bit\n\nGr\u00fc\u00dfe\nFrom me\n"
         "--b1\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 8bit\n\n"
         "plain ascii\n"
         "--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
         "AAEC\n"
         "--b1\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner h\u00e9llo\n"
         "--b1--\nepilogue\n").encode()


def leaves(raw: bytes) -> list:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return [p for p in msg.walk() if not p.is_multipart()]


def test_multipart_parts_converted_one_by_one():
    out = to_7bit(MULTI)
    assert is_7bit(out)
    parts = leaves(out)
    # walk() goes into the message/rfc822 part: its text is the fourth leaf.
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "text/plain", "application/octet-stream", "text/plain"]
    first, second, third, fourth = parts
    assert first["Content-Transfer-Encoding"] == "quoted-printable"
    assert first.get_content() == "Gr\u00fc\u00dfe\nFrom me"   # the LF before "--b1" is the delimiter's
    assert b"\n=46rom me" in out                  # mbox readers leave it alone
    assert second["Content-Transfer-Encoding"] == "7bit"   # mislabelled 8bit: relabelled
    assert third.get_content() == b"\x00\x01\x02"          # base64 untouched
    assert fourth.get_content() == "inner h\u00e9llo"
    assert fourth["Content-Transfer-Encoding"] == "quoted-printable"
    assert b"preamble\n--b1\n" in out and out.endswith(b"--b1--\nepilogue\n")


def test_non_mime_message_becomes_text_plain():
    out = to_7bit("Subject: x\n\nh\u00e9llo\n".encode())
    [p] = leaves(out)
    assert p["MIME-Version"] == "1.0"
    assert p.get_content_charset() == "utf-8"
    assert p.get_content() == "h\u00e9llo\n"
    out = to_7bit(b"Subject: x\n\nlatin \xe9\n")
    assert b"charset=unknown-8bit" in out and is_7bit(out)


def test_7bit_message_unchanged_and_crlf_input():
    m = b"Subject: a\n\nabc\n"
    assert to_7bit(m) == m
    assert to_7bit(b"Subject: a\r\n\r\nd\xc3\xa9j\xc3\xa0\r\n") == to_7bit(
        b"Subject: a\n\nd\xc3\xa9j\xc3\xa0\n")


def test_long_lines_are_encoded():
    body = b"x" * (MAX_LINE + 50) + b"\n\xe9\n"
    out = to_7bit(b"MIME-Version: 1.0\nContent-Type: text/plain\n\n" + body)
    assert is_7bit(out)
    assert max(len(line) for line in out.split(b"\n")) <= 76


def test_header_bytes_need_smtputf8():
    assert header_needs_utf8("Subject: caf\u00e9\n\nx\n".encode())
    assert not header_needs_utf8("Subject: cafe\n\ncaf\u00e9\n".encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([b"", b"MIME-Version: 1.0\n"]))
def test_any_body_comes_out_7bit_and_decodes_back(body, mime):
    head = b"Subject: t\n" + mime + (b"Content-Type: application/octet-stream\n" if mime else b"")
    out = to_7bit(head + b"\n" + body)
    assert is_7bit(out)
    [p] = leaves(out)
    got = p.get_payload(decode=True)
    want = body.replace(b"\r\n", b"\n")
    if not want.isascii() or not is_7bit(want):
        assert got.rstrip(b"\n") == want.rstrip(b"\n")


def session(ext: bytes, txn: Transaction) -> bytes:
    c = SmtpClient("me.test", txn, tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n250-mx\r\n250-PIPELINING\r\n" + ext)
    first = c.data_to_send()
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    return first + c.data_to_send()


def test_client_converts_for_a_server_without_8bitmime():
    msg = "Subject: s\n\ncaf\u00e9\n".encode()
    t = Transaction("a@example.com", (Rcpt("x@example.org"),), msg, eightbit=True)
    sent = session(b"250 SIZE\r\n", t)
    assert b"BODY=8BITMIME" not in sent and sent.isascii()
    assert b"caf=C3=A9\r\n" in sent
    sent = session(b"250 8BITMIME\r\n", t)
    assert b"BODY=8BITMIME" in sent and "caf\u00e9".encode() in sent


def test_client_smtputf8_only_when_needed():
    msg = b"Subject: s\n\nplain\n"
    t = Transaction("a@example.com", (Rcpt("x@example.org"),), msg, smtputf8=True)
    sent = session(b"250 SIZE\r\n", t)         # all ASCII after all: sent without it
    assert b"MAIL FROM:<a@example.com> SIZE=" in sent and b"SMTPUTF8" not in sent
    t = Transaction("a@example.com", (Rcpt("x@example.org"),),
                    "Subject: caf\u00e9\n\nx\n".encode(), smtputf8=True)
    c = SmtpClient("me.test", t, tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220 hi\r\n250-mx\r\n250 8BITMIME\r\n")
    assert (fin.results["x@example.org"].code, fin.results["x@example.org"].enhanced) == (
        553, "5.6.7")


def test_idn_domains_go_as_a_labels_to_a_server_without_smtputf8():
    t = Transaction("carol@b\u00fccher.example", (Rcpt("x@m\u00fcller.example",
                                                       "rfc822;x@m\u00fcller.example"),),
                    b"Subject: s\n\nx\n")
    sent = session(b"250-DSN\r\n250 SIZE\r\n", t)
    assert b"MAIL FROM:<carol@xn--bcher-kva.example>" in sent
    assert b"RCPT TO:<x@xn--mller-kva.example> ORCPT=rfc822;x@xn--mller-kva.example" in sent
    sent = session(b"250-SMTPUTF8\r\n250 8BITMIME\r\n", t)      # as they are
    assert "RCPT TO:<x@m\u00fcller.example>".encode() in sent
    # A UTF-8 local part has no ASCII form: 553 5.6.7.
    t = Transaction("a@example.com", (Rcpt("j\u00f8ran@m\u00fcller.example"),), b"x\n")
    c = SmtpClient("me.test", t, tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220 hi\r\n250 mx\r\n")
    assert fin.results["j\u00f8ran@m\u00fcller.example"].enhanced == "5.6.7"


_leaf_body = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"-", b"_"))


@st.composite
def _entity(draw, depth=0):
    if depth < 3 and draw(st.booleans()):
        n = draw(st.integers(1, 3))
        b = f"b{depth}x{draw(st.integers(0, 999))}"
        parts = [draw(_entity(depth + 1)) for _ in range(n)]
        body = b"".join(f"--{b}\n".encode() + p + b"\n" for p in parts) + f"--{b}--\n".encode()
        return (f"Content-Type: multipart/mixed; boundary=\"{b}\"\n"
                f"Content-Transfer-Encoding: 8bit\n\n").encode() + body
    return b"Content-Type: application/octet-stream\n\n" + draw(_leaf_body)


def _leaf_payloads(raw: bytes) -> list[bytes]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [p.get_payload(decode=True) for p in msg.walk() if not p.is_multipart()]


@settings(max_examples=150, deadline=None)
@given(_entity())
def test_nested_multiparts_come_out_7bit_with_the_same_parts(entity):
    msg = b"Subject: t\nMIME-Version: 1.0\n" + entity
    out = to_7bit(msg)
    assert is_7bit(out)
    before = [p.replace(b"\r\n", b"\n") for p in _leaf_payloads(msg)]
    after = [p.replace(b"\r\n", b"\n") for p in _leaf_payloads(out)]
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.rstrip(b"\n") == b.rstrip(b"\n")
