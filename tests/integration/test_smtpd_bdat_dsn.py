"""esmtpd as real processes: DSN parameters (RFC 3461) reach the spool envelope,
and a message sent in BDAT chunks (RFC 3030) is delivered to a Maildir byte-exact.

swaks 20201014 (the installed one) has no CHUNKING support, so BDAT is driven
from a raw socket here.
"""

from __future__ import annotations

import smtplib
import socket

import pytest
from test_e2e import message, strip_trace, wait_for_messages

from libcourier.spool import list_queue, read_envelope

USER = "alice@example.com"


@pytest.fixture
def smtpd(new_instance):
    # No courierd: accepted messages stay in the spool to be looked at.
    new_instance.adduser(USER, "alice-secret")
    new_instance.start("authdaemond", "esmtpd")
    return new_instance


def test_smtplib_dsn_options_are_in_the_envelope(smtpd):
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn") and s.has_extn("chunking")
        assert not s.has_extn("binarymime")
        refused = s.sendmail("bob@example.net", [USER], b"Subject: dsn\r\n\r\nx\r\n",
                             mail_options=["RET=HDRS", "ENVID=QQ314159+2Bz"],
                             rcpt_options=["NOTIFY=SUCCESS,DELAY",
                                           "ORCPT=rfc822;Alice+2Bext@example.com"])
        assert refused == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("bob@example.net", [USER], b"x\r\n", rcpt_options=["NOTIFY=ALWAYS"])
        assert e.value.recipients[USER][0] == 555
    qid, = list_queue(smtpd.layout.spooldir)
    env = read_envelope(smtpd.layout.spooldir, qid)
    assert (env.ret, env.envid) == ("HDRS", "QQ314159+z")
    rcpt, = env.recipients
    assert (rcpt.address, rcpt.notify, rcpt.orcpt) == (
        USER, "SUCCESS,DELAY", "rfc822;Alice+ext@example.com")


def _replies(c: socket.socket, n: int) -> list[bytes]:
    """Read n final replies (multi-line ones counted once)."""
    f = c.makefile("rb")
    out: list[bytes] = []
    while len(out) < n:
        line = f.readline()
        assert line, out
        if line[3:4] != b"-":
            out.append(line.rstrip(b"\r\n"))
    return out


def test_bdat_pipelined_over_a_socket_is_delivered_byte_exact(running_instance):
    inst = running_instance
    sent = message("via BDAT", "bdat-1@example.net")
    # Chunk borders inside a CRLF, inside a line, and an empty chunk.
    cut = sent.index(b"\r\n.a line") + 1
    parts = [sent[:cut], sent[cut:cut + 5], b"", sent[cut + 5:]]
    chunks = b"".join(f"BDAT {len(p)}\r\n".encode() + p for p in parts[:-1])
    chunks += f"BDAT {len(parts[-1])} LAST\r\n".encode() + parts[-1]
    with socket.create_connection(("127.0.0.1", inst.port("smtp")), timeout=10) as c:
        # RFC 2920 + RFC 3030 §4.2: the whole transaction in one write.
        c.sendall(b"EHLO chunky.example.net\r\nMAIL FROM:<sender@example.net>\r\n"
                  b"RCPT TO:<alice@example.com>\r\n" + chunks + b"QUIT\r\n")
        replies = _replies(c, 1 + 1 + 2 + len(parts) + 1)
    codes = [r[:3] for r in replies]
    assert codes == [b"220", b"250", b"250", b"250"] + [b"250"] * len(parts) + [b"221"], replies
    assert replies[4 + len(parts) - 2] == f"250 2.0.0 {len(sent) - len(parts[-1])} octets received.".encode()
    file, = wait_for_messages(inst.maildir(USER), 1)
    disk = file.read_bytes()
    assert b"\r\n" not in disk
    assert strip_trace(disk.replace(b"\n", b"\r\n")) == sent


def test_bdat_refusals_over_a_socket_leave_nothing(smtpd):
    with socket.create_connection(("127.0.0.1", smtpd.port("smtp")), timeout=10) as c:
        c.sendall(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.com>\r\n"
                  b"BDAT 7\r\nbare\nLF"          # refused: bare LF
                  b"BDAT 4 LAST\r\nend\n"       # discarded
                  b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.com>\r\n"
                  b"DATA\r\nok\r\n.\r\n"        # a DATA message after it is fine
                  b"QUIT\r\n")
        replies = _replies(c, 11)
    assert [r[:9] for r in replies[4:]] == [b"550 5.6.2", b"503 5.5.1", b"250 2.1.0",
                                             b"250 2.1.5", b"354 Ok.", b"250 2.0.0",
                                             b"221 2.0.0"], replies
    assert len(list_queue(smtpd.layout.spooldir)) == 1
