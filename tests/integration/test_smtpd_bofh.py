"""esmtpd with Courier's `bofh` file and the header rules, as real processes:
badfrom, spamtrap, maxrcpts hard, a Received loop, Message-ID/Date added on
submission only, and AUTH_SENDER_CHECK on the submission port."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from libcourier.spool import list_queue, open_data

USER = "alice@example.com"
MSG = b"From: alice@example.com\r\nTo: alice@example.com\r\nSubject: bofh\r\n\r\nbody\r\n"


@pytest.fixture
def smtpd(new_instance):
    inst = new_instance
    inst.adduser(USER, "alice-secret")
    inst.adduser("bob@example.com", "bob-secret")
    (inst.etc / "bofh").write_text(
        "badfrom @spam.example\nspamtrap bob@example.com\nmaxrcpts 2 hard\n")
    with open(inst.etc / "esmtpd-msa", "a") as f:
        f.write("AUTH_SENDER_CHECK=1\n")
    inst.start("authdaemond", "esmtpd", "esmtpd-msa")
    return inst


def _spooled(inst) -> list[bytes]:
    out = []
    for qid in list_queue(inst.layout.spooldir):
        with open_data(inst.layout.spooldir, qid) as fh:
            out.append(fh.read())
    return out


def test_bofh_rules_over_smtp(smtpd):
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        code, text = s.mail("x@spam.example")
        assert code == 550 and text.startswith(b"5.7.1 Sender rejected")
        s.rset()
        assert s.mail("ok@example.org")[0] == 250
        assert s.rcpt(USER)[0] == 250
        assert s.rcpt("postmaster@example.com")[0] == 250
        assert s.rcpt(USER)[0] == 552                      # maxrcpts 2 hard
        s.rset()
        # A message with a spamtrap recipient is refused whole, at the end of DATA.
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("ok@example.org", [USER, "bob@example.com"], MSG)
        assert e.value.smtp_code == 550 and b"Spam refused" in e.value.smtp_error
        # A routing loop: more than 100 Received: fields.
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("ok@example.org", [USER], b"Received: x\r\n" * 101 + MSG)
        assert (e.value.smtp_code, e.value.smtp_error[:5]) == (554, b"5.4.6")
        # Port 25 keeps the header as sent (esmtpd: NOADDMSGID=1 NOADDDATE=1).
        assert s.sendmail("ok@example.org", [USER], MSG) == {}
    [data] = _spooled(smtpd)
    assert b"Message-ID:" not in data and b"\nDate:" not in data
    assert data.endswith(MSG.replace(b"\r\n", b"\n"))


def test_submission_adds_fields_and_binds_sender(smtpd):
    ctx = ssl._create_unverified_context()
    with smtplib.SMTP("127.0.0.1", smtpd.port("submission"), timeout=10) as s:
        s.starttls(context=ctx)
        s.login(USER, "alice-secret")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("bob@example.com", [USER], MSG)
        assert e.value.smtp_code == 553
        assert s.sendmail("alice-lists@example.com", [USER], MSG) == {}
    [data] = _spooled(smtpd)
    head, _, body = data.partition(b"\n\n")
    lines = head.split(b"\n")
    # Added at the end of the header, after the client's own fields.
    assert lines[-2].startswith(b"Message-ID: <courier.") and lines[-2].endswith(b"@mx.test>")
    assert lines[-1].startswith(b"Date: ")
    assert body == b"body\n"
