"""The SMTP client core fed server transcripts: whole, byte by byte, pipelined."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from libcourier.smtp.client import (
    Finished,
    Rcpt,
    SmtpClient,
    StartTLS,
    State,
    TlsPolicy,
    Transaction,
    parse_reply_line,
)

MSG = b"Subject: hi\n\n.leading dot\nbody\n"
STUFFED = b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n"


def txn(*rcpts: str, **kw) -> Transaction:
    return Transaction("a@example.com", tuple(Rcpt(r) for r in rcpts or ("x@example.org",)),
                       MSG, **kw)


def run(client: SmtpClient, server: list[bytes], bytewise: bool = False):
    """Feed the server's replies one after the other; collect what the client sent."""
    sent = []
    events = []
    for chunk in server:
        pieces = [chunk[i:i + 1] for i in range(len(chunk))] if bytewise else [chunk]
        for p in pieces:
            events += client.receive(p)
        sent.append(client.data_to_send())
    return sent, events


@pytest.mark.parametrize("bytewise", [False, True])
def test_plain_session_without_pipelining(bytewise):
    c = SmtpClient("me.test", txn("x@example.org", "y@example.org"), tls=TlsPolicy.NONE)
    sent, events = run(c, [
        b"220-mx.example.org ESMTP\r\n220 welcome\r\n",
        b"250-mx.example.org\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
        b"250 2.1.0 ok\r\n",
        b"550 5.1.1 no such user\r\n",
        b"250 2.1.5 ok\r\n",
        b"354 go\r\n",
        b"250 2.0.0 queued as X\r\n",
        b"221 bye\r\n",
    ], bytewise)
    assert sent == [b"EHLO me.test\r\n", f"MAIL FROM:<a@example.com> SIZE={len(MSG)}\r\n".encode(),
                    b"RCPT TO:<x@example.org>\r\n", b"RCPT TO:<y@example.org>\r\n",
                    b"DATA\r\n", STUFFED, b"QUIT\r\n", b""]
    [fin] = events
    assert isinstance(fin, Finished)
    assert fin.results["x@example.org"].code == 550
    assert fin.results["x@example.org"].enhanced == "5.1.1"
    assert fin.results["y@example.org"].code == 250
    assert c.state is State.DONE


def test_pipelining_one_write_and_dsn_params():
    t = Transaction("a@example.com", (Rcpt("x@example.org", "rfc822;x+y@example.org", "NEVER"),
                                      Rcpt("y@example.org")), MSG, eightbit=True,
                    envid="id 1", ret="HDRS")
    c = SmtpClient("me.test", t, tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n")
    assert c.data_to_send() == b"EHLO me.test\r\n"
    c.receive(b"250-mx\r\n250-PIPELINING\r\n250-DSN\r\n250 8BITMIME\r\n")
    assert c.data_to_send() == (
        b"MAIL FROM:<a@example.com> BODY=8BITMIME RET=HDRS ENVID=id+201\r\n"
        b"RCPT TO:<x@example.org> NOTIFY=NEVER ORCPT=rfc822;x+2By@example.org\r\n"
        b"RCPT TO:<y@example.org>\r\nDATA\r\n")
    # All replies in one segment, as a pipelining server may send them.
    ev = c.receive(b"250 ok\r\n250 ok\r\n451 4.3.0 later\r\n354 go\r\n")
    assert ev == [] and c.data_to_send() == STUFFED
    [fin] = c.receive(b"250 done\r\n")
    assert fin.results["x@example.org"].code == 250
    assert fin.results["y@example.org"].code == 451
    assert c.data_to_send() == b"QUIT\r\n"


def test_pipelining_all_rcpts_refused_sends_empty_data():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n250-mx\r\n250 PIPELINING\r\n")
    c.data_to_send()
    c.receive(b"250 ok\r\n550 no\r\n354 go\r\n")
    assert c.data_to_send() == b".\r\n"
    [fin] = c.receive(b"554 no valid recipients\r\n")
    assert fin.results["x@example.org"].code == 550


def test_ehlo_refused_falls_back_to_helo():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.OPPORTUNISTIC)
    sent, events = run(c, [b"220 old\r\n", b"502 what\r\n", b"250 ok\r\n", b"250 ok\r\n",
                           b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"])
    assert sent[:3] == [b"EHLO me.test\r\n", b"HELO me.test\r\n",
                        b"MAIL FROM:<a@example.com>\r\n"]
    assert events[0].results["x@example.org"].code == 250


def test_starttls_then_ehlo_again():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.OPPORTUNISTIC)
    c.receive(b"220 hi\r\n")
    c.data_to_send()
    assert c.receive(b"250-mx\r\n250-STARTTLS\r\n250 SIZE\r\n") == []
    assert c.data_to_send() == b"STARTTLS\r\n"
    assert c.receive(b"220 go ahead\r\n") == [StartTLS()]
    c.tls_started()
    assert c.data_to_send() == b"EHLO me.test\r\n"
    c.receive(b"250-mx\r\n250 STARTTLS\r\n")
    assert c.data_to_send() == b"MAIL FROM:<a@example.com>\r\n"   # no second STARTTLS


def test_starttls_refused_opportunistic_goes_on_required_bounces_when_not_offered():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.OPPORTUNISTIC)
    c.receive(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n")
    c.data_to_send()
    c.receive(b"454 not now\r\n")
    assert c.data_to_send() == b"MAIL FROM:<a@example.com>\r\n"
    assert c.starttls_failed                 # for the driver's broken-STARTTLS list
    # esmtproutes /SECURITY=REQUIRED to a server that offers no STARTTLS: Courier
    # (libesmtp.c) fails the message for good; a refused STARTTLS only waits.
    r = SmtpClient("me.test", txn(), tls=TlsPolicy.REQUIRED)
    [fin] = r.receive(b"220 hi\r\n250 mx\r\n")
    assert (fin.results["x@example.org"].code, fin.results["x@example.org"].enhanced) == \
        (554, "5.7.10")
    assert not r.starttls_failed             # not offered is not broken
    assert r.data_to_send().endswith(b"QUIT\r\n")
    r = SmtpClient("me.test", txn(), tls=TlsPolicy.REQUIRED)
    r.receive(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n")
    [fin] = r.receive(b"454 4.7.0 not now\r\n")
    assert fin.results["x@example.org"].code == 454


def test_auth_plain_and_login():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE, auth=("u", "p"))
    c.receive(b"220 hi\r\n250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
    assert c.data_to_send().endswith(b"AUTH PLAIN AHUAcA==\r\n")
    c.receive(b"235 ok\r\n")
    assert c.data_to_send().startswith(b"MAIL FROM")
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE, auth=("u", "p"))
    c.receive(b"220 hi\r\n250-mx\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n")
    assert c.data_to_send().endswith(b"AUTH LOGIN\r\ndQ==\r\n")
    c.receive(b"334 UGFzc3dvcmQ6\r\n")
    assert c.data_to_send() == b"cA==\r\n"
    [fin] = c.receive(b"535 5.7.8 bad credentials\r\n")
    assert fin.results["x@example.org"].code == 421   # our config: keep the mail queued


def test_auth_cram_md5_preferred_rfc2195_example():
    # RFC 2195 §2's example exchange, on the SMTP wire (RFC 4954).
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE, auth=("tim", "tanstaaftanstaaf"))
    c.receive(b"220 hi\r\n250-mx\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n")
    assert c.data_to_send().endswith(b"AUTH CRAM-MD5\r\n")
    challenge = base64.b64encode(b"<1896.697170952@postoffice.reston.mci.net>")
    c.receive(b"334 " + challenge + b"\r\n")
    assert c.data_to_send() == b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"
    c.receive(b"235 2.7.0 ok\r\n")
    assert c.data_to_send().startswith(b"MAIL FROM")
    # The strongest offered wins; a refusal keeps the mail queued.
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE, auth=("u", "p"))
    c.receive(b"220 hi\r\n250-mx\r\n250 AUTH CRAM-MD5 CRAM-SHA256 CRAM-SHA1\r\n")
    assert c.data_to_send().endswith(b"AUTH CRAM-SHA256\r\n")
    c.receive(b"334 " + challenge + b"\r\n")
    want = hmac.new(b"p", base64.b64decode(challenge), hashlib.sha256).hexdigest()
    assert base64.b64decode(c.data_to_send()) == f"u {want}".encode()
    [fin] = c.receive(b"535 5.7.8 no\r\n")
    assert fin.results["x@example.org"].code == 421


def test_refusals_before_mail():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220 hi\r\n250-mx\r\n250 SIZE 10\r\n")
    assert fin.results["x@example.org"].enhanced == "5.3.4"
    c = SmtpClient("me.test", txn("j\u00f8ran@example.org", smtputf8=True), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220 hi\r\n250 mx\r\n")
    assert fin.results["j\u00f8ran@example.org"].code == 553
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"554 go away\r\n")
    assert fin.results["x@example.org"].code == 554


@pytest.mark.parametrize("bad", [b"hello\r\n", b"250-a\r\n251 b\r\n", b"2500 x\r\n",
                                 b"x" * 5000 + b"\r\n"])
def test_garbled_replies_defer(bad):
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n")
    [fin] = c.receive(bad)
    assert fin.results["x@example.org"].code == 421


def test_too_many_reply_lines_and_connection_loss():
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220-x\r\n" * 200)
    assert fin.results["x@example.org"].code == 421
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n")
    [fin] = c.connection_lost("timeout")
    assert fin.results["x@example.org"].lines == ("timeout",)
    c = SmtpClient("me.test", txn(), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"")
    assert fin.results["x@example.org"].code == 421


def test_parse_reply_line():
    assert parse_reply_line(b"250 ok\r\n") == (250, True, "ok")
    assert parse_reply_line(b"250-ok\n") == (250, False, "ok")
    assert parse_reply_line(b"250\r\n") == (250, True, "")
    with pytest.raises(ValueError):
        parse_reply_line(b"25 ok\r\n")
