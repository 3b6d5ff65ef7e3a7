"""Courier's private ESMTP extensions end to end: a message submitted with
MAIL FROM ... VERP or SECURITY=STARTTLS to courier-py's submission port goes
through the spool and courierd to a second courier-py instance (which offers
XVERP=Courier and XSECURITY) and to a plain SMTP sink (which offers neither),
found through the loopback DNS of test_remote_delivery.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl

import test_remote_delivery as rd
from smtp_sink import Sink
from test_remote_delivery import log, maildir_new, queue_empty, wait_until

# The loopback DNS zone and the receiving courier-py instance of the remote
# delivery tests (fixtures), and their skip when dnsmasq is missing.
dns_port = rd.dns_port
receiver = rd.receiver
pytestmark = rd.pytestmark

BODY = b"From: carol@sender.test\r\nTo: list\r\nSubject: ext test\r\n\r\nhello\r\n"


def start(inst, dns_port: int, smtp_port: int, extra: str = "") -> None:
    with open(inst.etc / "courierd", "a") as fh:
        fh.write(f"RETRYFIRST=1\nRETRYMAX=2\nESMTP_RESOLVER=127.0.0.1:{dns_port}\n"
                 f"ESMTPPORT={smtp_port}\n{extra}")
    inst.adduser("carol@sender.test", "carol-secret")
    inst.start("authdaemond", "courierd", "esmtpd-msa")


def submit(inst, rcpts: list[str], *options: str) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", inst.port("submission"), timeout=30) as s:
        s.starttls(context=ctx)
        s.login("carol@sender.test", "carol-secret")
        assert s.has_extn("xverp") and s.has_extn("xsecurity") and s.has_extn("xexdata")
        refused = s.sendmail("carol@sender.test", rcpts, BODY, mail_options=list(options))
        assert not refused


def return_path(path) -> str:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return msg["Return-Path"]


def test_verp_keyword_to_courier_and_one_return_path_per_recipient_elsewhere(
        new_instance, receiver, dns_port):
    port = receiver.port("smtp")           # many.test's sink listens on the same port
    with Sink("127.0.0.8", port) as sink:
        start(new_instance, dns_port, port)
        submit(new_instance, ["alice@example.com", "m1@many.test", "m-2@many.test",
                              "carol@sender.test"], "VERP")
        assert wait_until(lambda: len(sink.state.messages) == 2
                          and maildir_new(receiver, "alice@example.com")
                          and maildir_new(new_instance, "carol@sender.test")
                          and queue_empty(new_instance)), log(new_instance) + receiver.logs()
    # The sink offers no XVERP: a transaction per recipient, each with its own
    # return path and without the keyword.
    mails = sorted((t.mail, tuple(t.rcpts)) for t in sink.state.messages)
    assert mails == [
        ("MAIL FROM:<carol-m+2D2=many.test@sender.test> SIZE=" + mails[0][0].split("SIZE=")[1],
         ("RCPT TO:<m-2@many.test>",)),
        ("MAIL FROM:<carol-m1=many.test@sender.test> SIZE=" + mails[1][0].split("SIZE=")[1],
         ("RCPT TO:<m1@many.test>",)),
    ]
    # The receiver (courier-py) offers XVERP=Courier: it got the plain sender
    # with VERP, kept the flag, and its local delivery wrote the VERP return path.
    [f] = maildir_new(receiver, "alice@example.com")
    assert return_path(f) == "<carol-alice=example.com@sender.test>"
    # The sender's own local delivery does the same.
    [f] = maildir_new(new_instance, "carol@sender.test")
    assert return_path(f) == "<carol-carol=sender.test@sender.test>"


def test_security_starttls_needs_verified_tls_and_xsecurity_else_it_bounces(
        new_instance, receiver, dns_port):
    port = receiver.port("smtp")
    # example.com by the certificate's name (rx.test); example.net by another
    # name of the same host (the certificate does not match); notls.test's
    # exchanger (a sink) offers no STARTTLS at all.
    (new_instance.etc / "esmtproutes").write_text(
        f"example.com: rx.test,{port}\nexample.net: mx2.example.com,{port}\n")
    with Sink("127.0.0.9", port) as sink:
        start(new_instance, dns_port, port,
              f"TLS_TRUSTSECURITYCERTS={receiver.etc / 'esmtpd.pem'}\n")
        submit(new_instance, ["alice@example.com", "bob@example.net", "x@notls.test"],
               "SECURITY=STARTTLS")
        assert wait_until(lambda: maildir_new(receiver, "alice@example.com")
                          and maildir_new(new_instance, "carol@sender.test")
                          and queue_empty(new_instance)), log(new_instance) + receiver.logs()
    assert b"with ESMTPS" in maildir_new(receiver, "alice@example.com")[0].read_bytes()
    assert not sink.state.messages and not any(line.upper().startswith("MAIL")
                                               for line in sink.state.lines)
    [f] = maildir_new(new_instance, "carol@sender.test")
    msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    blocks = {b["Final-Recipient"]: b for b in msg.get_payload()[1].get_payload()[1:]}
    assert set(blocks) == {"rfc822; bob@example.net", "rfc822; x@notls.test"}
    for b in blocks.values():
        assert b["Action"] == "failed" and b["Status"] == "5.7.10"
    assert "Unable to set minimum security level" in blocks["rfc822; x@notls.test"][
        "Diagnostic-Code"]


def test_security_starttls_without_trustsecuritycerts_bounces_at_once(
        new_instance, receiver, dns_port):
    port = receiver.port("smtp")
    start(new_instance, dns_port, port)
    submit(new_instance, ["alice@example.com"], "SECURITY=STARTTLS")
    assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")
                      and queue_empty(new_instance)), log(new_instance)
    assert not maildir_new(receiver, "alice@example.com")
    assert "TLS_TRUSTSECURITYCERTS is not set" in log(new_instance)
