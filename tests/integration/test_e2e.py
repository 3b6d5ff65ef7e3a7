"""End to end: SMTP in (smtplib and swaks), local delivery, IMAP and POP3 out,
on a real instance; the message comes back byte for byte after the trace
headers the path adds (Received:, Return-Path:, Delivered-To:)."""

from __future__ import annotations

import imaplib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

DELIVERY_WAIT = 20.0  # seconds: spool -> courierd -> courierlocal -> Maildir
TRACE_HEADERS = (b"received:", b"return-path:", b"delivered-to:")


def message(subject: str, msgid: str) -> bytes:
    # A line that starts with a dot and one that is only a dot-dot test the
    # transparency of SMTP (RFC 5321 §4.5.2) and POP3 (RFC 1939 §3) both ways.
    return (b"From: Sender <sender@example.net>\r\n"
            b"To: Alice <alice@example.com>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
            b"Message-ID: <" + msgid.encode() + b">\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"\r\n"
            b"Hello Alice,\r\n"
            b".a line that starts with a dot\r\n"
            b"..\r\n"
            b"\tindented line with trailing space \r\n"
            b"\r\n"
            b"-- \r\n"
            b"sender\r\n")


def strip_trace(data: bytes) -> bytes:
    """Drop the trace header fields at the top (with their folded lines)."""
    lines = data.split(b"\r\n")
    i = 0
    in_trace = False
    while i < len(lines):
        line = lines[i]
        if line[:1] in (b" ", b"\t") and in_trace:
            i += 1
            continue
        if line.lower().startswith(TRACE_HEADERS):
            in_trace = True
            i += 1
            continue
        break
    return b"\r\n".join(lines[i:])


def wait_for_messages(maildir, n: int) -> list:
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        files = sorted(p for sub in ("new", "cur") for p in (maildir / sub).iterdir())
        if len(files) >= n:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{n} message(s) not delivered to {maildir} in {DELIVERY_WAIT} s")


def test_smtp_swaks_imap_pop3_round_trip(running_instance, tmp_path):
    inst = running_instance
    smtp_port = inst.port("smtp")
    sent = {
        "smtplib": message("via smtplib", "e2e-1@example.net"),
        "swaks": message("via swaks", "e2e-2@example.net"),
    }
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
        s.ehlo("client.example.net")
        refused = s.sendmail("sender@example.net", ["alice@example.com"], sent["smtplib"])
        assert refused == {}

    swaks = shutil.which("swaks")
    assert swaks, "swaks is required (apt-get install swaks; .ci/run installs it)"
    data_file = tmp_path / "swaks.eml"
    # swaks puts CRLF before the final "." itself, so the file has no last line end.
    data_file.write_bytes(sent["swaks"].removesuffix(b"\r\n"))
    r = subprocess.run([swaks, "--server", f"127.0.0.1:{smtp_port}", "--helo", "swaks.example.net",
                        "--from", "sender@example.net", "--to", "alice@example.com",
                        "--data", str(data_file), "--timeout", "10"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # swaks marks the server's lines "<-" (no TLS here); the DATA reply says queued.
    assert "<-  250" in r.stdout

    files = wait_for_messages(inst.maildir("alice@example.com"), 2)
    assert len(files) == 2
    # On disk: LF line ends, Delivered-To/Return-Path prepended by delivery.
    disk = files[0].read_bytes()
    assert disk.lower().startswith((b"return-path:", b"delivered-to:"))
    assert b"\r\n" not in disk

    # IMAP (RFC 3501): LOGIN, SELECT, FETCH BODY[].
    imap = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=10)
    try:
        typ, _ = imap.login("alice@example.com", "alice-secret")
        assert typ == "OK"
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data[0] == b"2"
        typ, data = imap.fetch("1:2", "(BODY.PEEK[])")
        assert typ == "OK"
        fetched = [part[1] for part in data if isinstance(part, tuple)]
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    assert sorted(strip_trace(b) for b in fetched) == sorted(sent.values())

    # POP3 (RFC 1939): USER/PASS, STAT, RETR.
    pop = poplib.POP3("127.0.0.1", inst.port("pop3"), timeout=10)
    try:
        pop.user("alice@example.com")
        pop.pass_("alice-secret")
        count, _size = pop.stat()
        assert count == 2
        retrieved = []
        for i in (1, 2):
            _resp, lines, _octets = pop.retr(i)
            retrieved.append(b"\r\n".join(lines) + b"\r\n")
    finally:
        pop.quit()
    assert sorted(strip_trace(b) for b in retrieved) == sorted(sent.values())

    # The other user got nothing and cannot read alice's mail with a wrong password.
    assert not list((inst.maildir("bob@example.net") / "new").iterdir())
    imap = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice@example.com", "wrong")
    imap.logout()

    # `courier stop` leaves no process behind.
    inst.courier("stop")
    inst.assert_no_process_left()


def test_submission_port_takes_mail_over_starttls(running_instance):
    """Port 587 (esmtpd-msa) with STARTTLS and SMTP AUTH (AUTH_REQUIRED=1 there)."""
    inst = running_instance
    msg = message("via submission", "e2e-3@example.net")
    with smtplib.SMTP("127.0.0.1", inst.port("submission"), timeout=10) as s:
        s.ehlo("client.example.net")
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo("client.example.net")
        s.login("bob@example.net", "bob-secret")
        assert s.sendmail("bob@example.net", ["alice@example.com"], msg) == {}
    files = wait_for_messages(inst.maildir("alice@example.com"), 1)
    assert b"with ESMTPSA" in files[0].read_bytes()


def test_disconnect_mid_data_leaves_nothing_in_the_spool(running_instance):
    inst = running_instance
    spool = inst.layout.spooldir
    with socket.create_connection(("127.0.0.1", inst.port("smtp")), timeout=10) as sock:
        f = sock.makefile("rwb")

        def reply() -> bytes:
            # Read one (possibly multi-line) reply; return its last line.
            while True:
                line = f.readline(1024)
                assert line, "server closed early"
                if line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        for cmd, code in ((b"EHLO client.example.net", b"250"),
                          (b"MAIL FROM:<sender@example.net>", b"250"),
                          (b"RCPT TO:<alice@example.com>", b"250"),
                          (b"DATA", b"354")):
            f.write(cmd + b"\r\n")
            f.flush()
            assert reply().startswith(code), cmd
        f.write(b"Subject: cut short\r\n\r\n" + b"x" * 10000 + b"\r\nno end")
        f.flush()
        f.close()  # the file object holds its own reference to the socket
    # The session child must notice the disconnect and clean up; wait (bounded)
    # until the SMTP listener has no child in a session left (a reusable child
    # that went back to waiting for the next client is titled "esmtpd: idle").
    import psutil
    listener = psutil.Process(inst.pid("esmtpd"))

    def in_session() -> list[psutil.Process]:
        out = []
        for child in listener.children():
            try:
                if not child.name().endswith(": idle"):
                    out.append(child)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 10
    while in_session() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not in_session(), "SMTP session did not end after the client left"
    leftovers = [p for sub in ("tmp", "msgs") for p in (spool / sub).iterdir()]
    assert leftovers == []
    assert not list((inst.maildir("alice@example.com") / "new").iterdir())
    # ... and the server still works.
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=10) as s:
        assert s.noop()[0] == 250
