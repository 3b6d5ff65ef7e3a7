"""The SMTP client core with Courier's extensions: VERP, SECURITY=STARTTLS, EXDATA."""

from __future__ import annotations

import pytest

from libcourier.smtp.client import (
    Finished,
    Rcpt,
    SmtpClient,
    StartTLS,
    State,
    TlsPolicy,
    Transaction,
)

MSG = b"Subject: hi\n\nbody\n"
STUFFED = b"Subject: hi\r\n\r\nbody\r\n.\r\n"
RCPTS = ("x@example.org", "node42!y@example.org")


def txn(*rcpts: str, **kw) -> Transaction:
    return Transaction("list-out@example.com", tuple(Rcpt(r) for r in rcpts or RCPTS), MSG, **kw)


def ehlo(*exts: str) -> bytes:
    lines = ["mx.example.org", *exts]
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}\r\n"
                   for i, t in enumerate(lines)).encode()


def test_verp_to_a_courier_server_is_one_transaction_with_the_keyword():
    c = SmtpClient("me.test", txn(verp=True), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo("PIPELINING", "XVERP=Courier"))
    assert c.data_to_send() == (b"EHLO me.test\r\nMAIL FROM:<list-out@example.com> VERP\r\n"
                                b"RCPT TO:<x@example.org>\r\nRCPT TO:<node42!y@example.org>\r\n"
                                b"DATA\r\n")
    c.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.data_to_send() == STUFFED
    [fin] = c.receive(b"250 queued\r\n")
    assert {a: r.code for a, r in fin.results.items()} == {a: 250 for a in RCPTS}


@pytest.mark.parametrize("exts", [("PIPELINING",), ("PIPELINING", "XVERP=Other"), ()])
def test_verp_to_another_server_is_one_transaction_per_recipient(exts):
    c = SmtpClient("me.test", txn(verp=True), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo(*exts))
    wire = c.data_to_send()
    replies = [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 one\r\n",
               b"250 ok\r\n", b"550 5.1.1 no such user\r\n"]
    events = []
    for r in replies:
        events += c.receive(r)
        wire += c.data_to_send()
    text = wire.decode()
    assert "MAIL FROM:<list-out-x=example.org@example.com>\r\nRCPT TO:<x@example.org>\r\n" in text
    assert ("MAIL FROM:<list-out-node42+21y=example.org@example.com>\r\n"
            "RCPT TO:<node42!y@example.org>\r\n") in text
    assert " VERP" not in text
    if "PIPELINING" in exts:
        # The second RCPT failed with DATA in flight: the empty message is sent
        # (RFC 2920 §3.1), so no RSET is needed.
        events += c.receive(b"354 go\r\n")
        events += c.receive(b"554 no recipients\r\n")
        wire += c.data_to_send()
    [fin] = [e for e in events if isinstance(e, Finished)]
    assert fin.results["x@example.org"].code == 250
    assert fin.results["node42!y@example.org"].code == 550
    assert wire.endswith(b"QUIT\r\n")


def test_verp_batch_refused_at_mail_is_followed_by_rset_and_the_next_one():
    c = SmtpClient("me.test", txn(verp=True), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo())
    c.data_to_send()
    c.receive(b"451 4.3.0 not now\r\n")          # MAIL for the first recipient
    assert c.data_to_send() == b"RSET\r\n"
    c.receive(b"250 ok\r\n")
    assert c.data_to_send() == b"MAIL FROM:<list-out-node42+21y=example.org@example.com>\r\n"
    c.receive(b"250 ok\r\n")
    c.receive(b"250 ok\r\n")
    c.receive(b"354 go\r\n")
    [fin] = c.receive(b"250 ok\r\n")
    assert fin.results["x@example.org"].code == 451
    assert fin.results["node42!y@example.org"].code == 250


def test_verp_null_sender_needs_no_splitting():
    t = Transaction("", (Rcpt("a@x.test"), Rcpt("b@x.test")), MSG, verp=True)
    c = SmtpClient("me.test", t, tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo("PIPELINING"))
    assert c.data_to_send().count(b"MAIL FROM:<>") == 1


def test_verp_kept_open_then_next_transaction():
    c = SmtpClient("me.test", txn("a@x.test", verp=True), tls=TlsPolicy.NONE, keep_open=True)
    c.receive(b"220 hi\r\n" + ehlo("PIPELINING"))
    c.data_to_send()
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    [fin] = c.receive(b"250 ok\r\n")
    assert c.state is State.IDLE and list(fin.results) == ["a@x.test"]
    c.data_to_send()
    c.next_transaction(txn("b@x.test", verp=True))
    assert c.data_to_send() == (b"MAIL FROM:<list-out-b=x.test@example.com>\r\n"
                                b"RCPT TO:<b@x.test>\r\nDATA\r\n")


# --- SECURITY=STARTTLS -----------------------------------------------------

def secure(policy=TlsPolicy.OPPORTUNISTIC) -> SmtpClient:
    return SmtpClient("me.test", txn(security="STARTTLS"), tls=policy)


def test_security_starttls_over_tls_to_a_server_that_takes_the_level_on():
    # Courier's esmtp_helo looks for XSECURITY=...,STARTTLS in the EHLO in clear
    # (a Courier server offers it there) and does not ask again after STARTTLS.
    c = secure()
    c.receive(b"220 hi\r\n" + ehlo("XSECURITY=NONE,STARTTLS", "STARTTLS", "PIPELINING"))
    assert c.data_to_send() == b"EHLO me.test\r\nSTARTTLS\r\n"
    assert c.receive(b"220 go\r\n") == [StartTLS()]
    c.tls_started()
    assert c.data_to_send() == b"EHLO me.test\r\n"
    c.receive(ehlo("PIPELINING", "XEXDATA"))
    first = c.data_to_send().split(b"\r\n")[0]
    assert first == b"MAIL FROM:<list-out@example.com> EXDATA SECURITY=STARTTLS"


@pytest.mark.parametrize("exts,policy", [
    (("PIPELINING",), TlsPolicy.OPPORTUNISTIC),               # no STARTTLS offered
    (("STARTTLS", "PIPELINING"), TlsPolicy.NONE),            # ESMTP_USE_STARTTLS=0
])
def test_security_without_starttls_is_permanent(exts, policy):
    c = secure(policy)
    [fin] = c.receive(b"220 hi\r\n" + ehlo(*exts))
    assert {r.code for r in fin.results.values()} == {554}
    assert {r.enhanced for r in fin.results.values()} == {"5.7.10"}
    assert c.data_to_send() == b"EHLO me.test\r\nQUIT\r\n"


@pytest.mark.parametrize("exts", [("STARTTLS", "PIPELINING", "XSECURITY=NONE"),
                                  ("STARTTLS", "PIPELINING")])
def test_security_to_a_server_without_xsecurity_is_permanent_before_starttls(exts):
    c = secure()
    [fin] = c.receive(b"220 hi\r\n" + ehlo(*exts))
    assert {r.enhanced for r in fin.results.values()} == {"5.7.10"}
    assert "XSECURITY=STARTTLS is not available" in fin.results[RCPTS[0]].text
    assert c.data_to_send() == b"EHLO me.test\r\nQUIT\r\n"      # no STARTTLS, no MAIL


def test_security_starttls_refused_is_temporary_even_when_opportunistic():
    c = secure()
    c.receive(b"220 hi\r\n" + ehlo("STARTTLS", "XSECURITY=NONE,STARTTLS"))
    [fin] = c.receive(b"454 4.7.0 TLS not available now\r\n")
    assert {r.code for r in fin.results.values()} == {454}
    assert b"MAIL" not in c.data_to_send()


def test_tls_handshake_failure_bounces_only_secure_messages():
    for t, code in ((txn(security="STARTTLS"), 554), (txn(), 421)):
        c = SmtpClient("me.test", t, tls=TlsPolicy.REQUIRED)
        c.receive(b"220 hi\r\n" + ehlo("STARTTLS", "XSECURITY=NONE,STARTTLS"))
        c.receive(b"220 go\r\n")
        [fin] = c.tls_failed("certificate verify failed")
        assert {r.code for r in fin.results.values()} == {code}
        assert c.starttls_failed
        assert c.state is State.DONE


def test_smtps_session_checks_xsecurity_at_once():
    c = SmtpClient("me.test", txn(security="STARTTLS"), tls=TlsPolicy.SMTPS)
    c.receive(b"220 hi\r\n" + ehlo("XSECURITY=NONE,STARTTLS"))
    assert c.data_to_send().endswith(b"MAIL FROM:<list-out@example.com> SECURITY=STARTTLS\r\n")


# --- XEXDATA ---------------------------------------------------------------

def exdata_session(*rcpts: str) -> SmtpClient:
    c = SmtpClient("me.test", txn(*rcpts), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo("PIPELINING", "XEXDATA"))
    assert b"\r\nMAIL FROM:<list-out@example.com> EXDATA\r\n" in c.data_to_send()
    return c


def test_exdata_558_reply_gives_each_recipient_its_own_reply():
    c = exdata_session("a@x.test", "b@x.test", "c@x.test", "d@x.test")
    # MAIL, a, b, c (refused), d, DATA
    c.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    # draft-varshavchik-exdata-smtpext §7 (c@ was refused at RCPT: no sub-reply)
    [fin] = c.receive(b"558-250 Message accepted\r\n"
                      b"558-550-5.7.1 Access denied:\r\n558-550 5.7.1 Insufficient permission\r\n"
                      b"558 450 4.2.0 Mailbox busy\r\n")
    r = fin.results
    assert (r["a@x.test"].code, r["a@x.test"].lines) == (250, ("Message accepted",))
    assert r["b@x.test"].code == 550 and r["b@x.test"].enhanced == "5.7.1"
    assert r["b@x.test"].lines == ("Access denied:", "Insufficient permission")
    assert r["c@x.test"].code == 550 and r["c@x.test"].lines == ("no",)
    assert r["d@x.test"].code == 450 and r["d@x.test"].enhanced == "4.2.0"


def test_exdata_incomplete_558_reply_leaves_the_rest_temporary():
    c = exdata_session("a@x.test", "b@x.test")
    c.receive(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    [fin] = c.receive(b"558-garbage line\r\n558 550 5.7.1 filtered\r\n")
    assert fin.results["a@x.test"].code == 550
    assert fin.results["b@x.test"].code == 451


def test_558_without_xexdata_is_an_ordinary_failure():
    c = SmtpClient("me.test", txn("a@x.test"), tls=TlsPolicy.NONE)
    c.receive(b"220 hi\r\n" + ehlo("PIPELINING"))
    assert b"EXDATA" not in c.data_to_send()
    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n")
    [fin] = c.receive(b"558 250 ok\r\n")
    assert fin.results["a@x.test"].code == 558


@pytest.mark.parametrize("bytewise", [False, True])
def test_verp_split_fed_whole_and_byte_by_byte(bytewise):
    """Without PIPELINING: MAIL, RCPT, DATA, text, then the next recipient's MAIL."""
    c = SmtpClient("me.test", txn("a@x.test", "b@x.test", verp=True), tls=TlsPolicy.NONE)
    server = [b"220 hi\r\n", ehlo(), b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n",
              b"250 one\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 two\r\n",
              b"221 bye\r\n"]
    sent, events = [], []
    for chunk in server:
        for piece in ([chunk[i:i + 1] for i in range(len(chunk))] if bytewise else [chunk]):
            events += c.receive(piece)
        sent.append(c.data_to_send())
    assert sent == [b"EHLO me.test\r\n", b"MAIL FROM:<list-out-a=x.test@example.com>\r\n",
                    b"RCPT TO:<a@x.test>\r\n", b"DATA\r\n", STUFFED,
                    b"MAIL FROM:<list-out-b=x.test@example.com>\r\n", b"RCPT TO:<b@x.test>\r\n",
                    b"DATA\r\n", STUFFED, b"QUIT\r\n", b""]
    [fin] = events
    assert fin.results["a@x.test"].lines == ("one",) and fin.results["b@x.test"].lines == ("two",)
    assert c.state is State.DONE and c.transactions == 1
