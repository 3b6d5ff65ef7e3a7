"""esmtpd as real processes (`courier start authdaemond esmtpd ...`), driven by smtplib and raw sockets."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest
from courier_smtpd.main import main as smtpd_main

from libcourier.spool import list_queue, open_data, read_envelope

USER = "alice@example.com"
MESSAGE = (b"From: Bob <bob@example.net>\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\n"
           b"Body line 1\r\n.leading dot\r\n\xc3\xa4 8-bit\r\n\r\nlast\r\n")


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def spool_files(spooldir: Path) -> list[str]:
    return sorted(p.relative_to(spooldir).as_posix() for p in spooldir.rglob("*") if p.is_file())


@pytest.fixture
def smtpd(new_instance):
    inst = new_instance
    inst.adduser(USER, "alice-secret")
    inst.start("authdaemond", "esmtpd", "esmtpd-ssl")
    return inst


def split_received(data: bytes) -> tuple[bytes, bytes]:
    first, second, rest = data.split(b"\n", 2)
    assert first.startswith(b"Received: from ") and second.startswith(b"  by mx.test with ")
    return first + b"\n" + second + b"\n", rest


def test_smtplib_message_lands_in_spool_byte_exact(smtpd):
    spooldir = smtpd.layout.spooldir
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        code, text = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("starttls")
        assert s.has_extn("enhancedstatuscodes") and s.has_extn("smtputf8")
        refused = s.sendmail("bob@example.net", [USER, "postmaster@example.com"], MESSAGE,
                             mail_options=["BODY=8BITMIME"])
        assert refused == {}
    qids = list_queue(spooldir)
    assert len(qids) == 1
    qid = qids[0]
    assert spool_files(spooldir) == [f"msgs/{qid}"]
    env = read_envelope(spooldir, qid)
    assert env.sender == "bob@example.net" and env.body == "8BITMIME"
    assert [r.address for r in env.recipients] == [USER, "postmaster@example.com"]
    assert "[127.0.0.1]" in env.client and "helo=client.test" in env.client
    with open_data(spooldir, qid) as fh:
        data = fh.read()
    received, body = split_received(data)
    assert b"from client.test (" in received and b"[127.0.0.1])" in received
    assert b" with ESMTP; " in received
    # Stored with LF line ends (lossless: bare CR/LF are refused), else byte-exact.
    assert body.replace(b"\n", b"\r\n") == MESSAGE
    assert wait_for(lambda: f"newmsg,id={qid},from=<bob@example.net>,rcpts=2" in smtpd.logs())


def test_recipient_policy(smtpd):
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("<>") == (250, b"2.1.0 Ok.")
        code, text = s.rcpt("nobody@example.com")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = s.rcpt("someone@elsewhere.example")
        # 127.0.0.1 has no RELAYCLIENT in this instance: no open relay.
        assert (code, text[:5]) == (550, b"5.7.1")
        assert s.rcpt("<postmaster>")[0] == 250
        assert s.rcpt("POSTMASTER@example.com")[0] == 250
        assert s.rcpt(USER.upper())[0] == 250
        assert s.rset()[0] == 250
    assert list_queue(smtpd.layout.spooldir) == []
    assert wait_for(lambda: "error,relay=[127.0.0.1],from=<>,to=<nobody@example.com>: 550 User "
                    "unknown." in smtpd.logs()), smtpd.logs()


def test_disconnect_mid_data_leaves_nothing(smtpd):
    spooldir = smtpd.layout.spooldir
    with socket.create_connection(("127.0.0.1", smtpd.port("smtp")), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        c.sendall(f"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
        lines = []
        while not lines or not lines[-1].startswith(b"354"):
            lines.append(f.readline())
        c.sendall(b"Subject: partial\r\n\r\n" + b"x" * 100_000 + b"\r\n")
        assert wait_for(lambda: any((spooldir / "tmp").iterdir()))
        f.close()   # the makefile holds the socket open otherwise
    # The child sees EOF and removes its tmp file; nothing was committed.
    assert wait_for(lambda: spool_files(spooldir) == []), (spool_files(spooldir), smtpd.logs())


def test_smuggling_and_size_over_the_wire(smtpd):
    spooldir = smtpd.layout.spooldir
    with socket.create_connection(("127.0.0.1", smtpd.port("smtp")), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        c.sendall(f"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode()
                  + b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<"
                  + USER.encode() + b">\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n")
        replies = f.read().decode()
    codes = [line[:3] for line in replies.splitlines()]
    ehlo = replies.count("250-") + 1          # the EHLO reply, however many keywords
    assert codes == ["250"] * ehlo + ["250", "250", "354", "550", "221"], replies
    assert spool_files(spooldir) == []


def test_starttls_then_send(smtpd):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        s.ehlo("tls.test")
        assert s.starttls(context=ctx)[0] == 220
        s.ehlo("tls.test")
        assert not s.has_extn("starttls")
        s.sendmail("a@b.example", [USER], b"Subject: tls\r\n\r\nsecret\r\n")
    qid, = list_queue(smtpd.layout.spooldir)
    with open_data(smtpd.layout.spooldir, qid) as fh:
        received, body = split_received(fh.read())
    assert b" with ESMTPS; " in received and body == b"Subject: tls\n\nsecret\n"


def test_smtps_tls_on_connect(smtpd):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", smtpd.port("smtps"), timeout=10, context=ctx) as s:
        s.ehlo("ssl.test")
        assert not s.has_extn("starttls")
        s.sendmail("a@b.example", [USER], b"Subject: smtps\r\n\r\nx\r\n")
    assert len(list_queue(smtpd.layout.spooldir)) == 1


def test_bad_config_value_exits_1_with_file_line(new_instance, capsys):
    esmtpd = new_instance.etc / "esmtpd"
    lines = esmtpd.read_text().splitlines()
    lines.append("SIZELIMIT=lots")
    esmtpd.write_text("\n".join(lines) + "\n")
    assert smtpd_main(["-C", str(new_instance.etc), "--service", "esmtpd"]) == 1
    err = capsys.readouterr().err
    assert f"{esmtpd}:{len(lines)}: SIZELIMIT" in err


def test_new_hosted_domain_seen_after_reload(smtpd):
    """`courier adduser` adds the domain to hosteddomains and SIGHUPs esmtpd."""
    with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        s.mail("<a@b.example>")
        assert s.rcpt("carol@newdomain.example")[0] == 550
    smtpd.adduser("carol@newdomain.example", "carol-secret")

    def accepted() -> bool:
        with smtplib.SMTP("127.0.0.1", smtpd.port("smtp"), timeout=10) as s:
            s.ehlo("client.test")
            s.mail("<a@b.example>")
            return s.rcpt("carol@newdomain.example")[0] == 250
    assert wait_for(accepted, 10), smtpd.logs()


def test_submission_port(new_instance):
    new_instance.adduser(USER, "alice-secret")
    new_instance.start("authdaemond", "esmtpd-msa")
    with smtplib.SMTP("127.0.0.1", new_instance.port("submission"), timeout=10) as s:
        # The shipped esmtpd-msa has AUTH_REQUIRED=1 and offers AUTH only under TLS.
        with pytest.raises(smtplib.SMTPSenderRefused, match="Authentication required"):
            s.sendmail("a@b.example", [USER], b"Subject: msa\r\n\r\nx\r\n")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        s.starttls(context=ctx)
        s.login(USER, "alice-secret")
        s.sendmail("a@b.example", [USER], b"Subject: msa\r\n\r\nx\r\n")
    assert len(list_queue(new_instance.layout.spooldir)) == 1


def test_early_talker_is_served_in_order(smtpd):
    """A client that talks before the 220 (Courier's courieresmtpd reads it like any
    pipelined input, and so do we): it gets the greeting first, then its answers."""
    with socket.create_connection(("127.0.0.1", smtpd.port("smtp")), timeout=10) as sock:
        sock.sendall(b"EHLO early.test\r\nQUIT\r\n")
        data = b""
        while not data.endswith(b"\r\n") or b"221 " not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"220 ")
    assert lines[1].startswith(b"250-") and b"221 " in data
