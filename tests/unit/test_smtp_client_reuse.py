"""SmtpClient with keep_open: several transactions on one session (connection
reuse), RSET after a transaction left open, an idle session closed by the server."""

from __future__ import annotations

import pytest

from libcourier.smtp.client import Finished, Rcpt, SmtpClient, State, TlsPolicy, Transaction

MSG = b"Subject: hi\n\nbody\n"
GREET = b"220 mx ESMTP\r\n"
EHLO = b"250-mx\r\n250 PIPELINING\r\n"


def txn(rcpt: str) -> Transaction:
    return Transaction("a@example.com", (Rcpt(rcpt),), MSG)


def feed(c: SmtpClient, data: bytes, bytewise: bool) -> list:
    events = []
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        events += c.receive(piece)
    return events


@pytest.mark.parametrize("bytewise", [False, True])
def test_two_messages_on_one_session(bytewise):
    c = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE, keep_open=True)
    feed(c, GREET + EHLO, bytewise)
    assert c.data_to_send() == (b"EHLO me.test\r\nMAIL FROM:<a@example.com>\r\n"
                                b"RCPT TO:<x@example.org>\r\nDATA\r\n")
    feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n", bytewise)
    assert c.data_to_send().endswith(b"body\r\n.\r\n")
    [fin] = feed(c, b"250 2.0.0 queued\r\n", bytewise)
    assert isinstance(fin, Finished) and fin.results["x@example.org"].code == 250
    assert c.state is State.IDLE and c.data_to_send() == b""     # no QUIT yet
    assert c.next_transaction(txn("y@example.org")) == []
    assert c.data_to_send() == (b"MAIL FROM:<a@example.com>\r\nRCPT TO:<y@example.org>\r\n"
                                b"DATA\r\n")                       # no RSET after a clean end
    feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n", bytewise)
    c.data_to_send()
    [fin] = feed(c, b"550 5.7.1 rejected\r\n", bytewise)
    assert set(fin.results) == {"y@example.org"} and fin.results["y@example.org"].code == 550
    assert c.transactions == 2
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    feed(c, b"221 bye\r\n", bytewise)
    assert c.state is State.DONE


def test_rset_after_a_transaction_left_open():
    c = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE, keep_open=True)
    feed(c, GREET + EHLO, False)
    c.data_to_send()
    [fin] = feed(c, b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n", False)
    assert fin.results["x@example.org"].code == 550 and c.state is State.IDLE
    c.next_transaction(txn("y@example.org"))
    assert c.data_to_send() == b"RSET\r\n"
    feed(c, b"250 ok\r\n", False)
    assert c.data_to_send().startswith(b"MAIL FROM:<a@example.com>\r\n")


def test_idle_session_closed_by_the_server_is_not_reusable():
    c = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE, keep_open=True)
    feed(c, GREET + EHLO + b"250 ok\r\n250 ok\r\n354 go\r\n", False)
    feed(c, b"250 ok\r\n", False)
    assert feed(c, b"421 4.4.2 idle too long\r\n", False) == []
    assert c.state is State.DONE
    with pytest.raises(RuntimeError):
        c.next_transaction(txn("y@example.org"))
    c2 = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE, keep_open=True)
    feed(c2, GREET + EHLO + b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n", False)
    assert c2.receive(b"") == [] and c2.state is State.DONE        # EOF while idle


def test_session_refusal_is_marked():
    c = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"554 5.7.1 go away\r\n")
    assert fin.results["x@example.org"].code == 554 and c.session_refused
    c = SmtpClient("me.test", txn("x@example.org"), tls=TlsPolicy.NONE)
    [fin] = c.receive(b"220 hi\r\n250 mx\r\n550 5.1.8 bad sender\r\n")
    assert fin.results["x@example.org"].code == 550 and not c.session_refused
