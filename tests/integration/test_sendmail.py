"""sendmail and mailq as an admin or script runs them, through real courierd/authd."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from libcourier.spool import list_queue, read_envelope

WAIT = 15.0


def sendmail(inst, *args: str, data: bytes, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "courier_deliver.sendmail", "-C",
                           str(inst.etc), *args], input=data, capture_output=True,
                          timeout=30, env=env)


def mailq(inst, *args: str):
    return subprocess.run([sys.executable, "-m", "courier_deliver.mailq", "-C", str(inst.etc),
                           *args], capture_output=True, text=True, timeout=30)


def wait_files(d, n: int = 1) -> list:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        files = sorted(d.iterdir()) if d.is_dir() else []
        if len(files) >= n:
            return files
        time.sleep(0.05)
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    new_instance.adduser("bob@example.com", "pw")
    return new_instance


def test_mailq_lists_then_sendmail_t_delivers(inst):
    # Queue first with courierd stopped, so mailq has something to show.
    r = sendmail(inst, "-t", "-f", "root@mx.test", "-F", "The Admin",
                 data=b"To: alice@example.com\r\nBcc: bob@example.com\r\nSubject: cron\r\n"
                      b"\r\nline\r\n.\r\nnot sent\r\n")
    assert r.returncode == 0, r.stderr
    q = mailq(inst)
    assert q.returncode == 0, q.stderr
    assert "root@mx.test" in q.stdout and "alice@example.com" in q.stdout
    assert "bob@example.com" in q.stdout and "in 1 Request." in q.stdout
    b = mailq(inst, "--batch")
    assert b.stdout.count("\n") == 1 and "\troot@mx.test\t" in b.stdout
    inst.start("authdaemond", "courierd")
    files = wait_files(inst.maildir("alice@example.com") / "new")
    assert files, inst.logs()
    text = files[0].read_bytes()
    assert text.startswith(b"Return-Path: <root@mx.test>\nDelivered-To: alice@example.com\n"
                           b"Received: (from root@localhost")
    assert b"From: The Admin <root@mx.test>\n" in text
    assert b"Bcc" not in text and b"Message-ID: <courier-py." in text and b"\nDate: " in text
    assert text.endswith(b"\nline\n") and b"not sent" not in text
    bob = wait_files(inst.maildir("bob@example.com") / "new")
    assert bob and b"Bcc" not in bob[0].read_bytes()
    deadline = time.monotonic() + WAIT
    while "Mail queue is empty" not in mailq(inst).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mailq(inst).stdout == "Mail queue is empty\n"


def test_sendmail_arguments_and_errors(inst):
    inst.start("authdaemond", "courierd")
    r = sendmail(inst, "-oi", "alice@example.com", data=b"Subject: dots\n\n.\nend\n")
    assert r.returncode == 0, r.stderr
    files = wait_files(inst.maildir("alice@example.com") / "new")
    assert files and files[0].read_bytes().endswith(b"\n.\nend\n")
    assert sendmail(inst, data=b"Subject: x\n\nx\n").returncode == 65      # no recipient
    assert sendmail(inst, "-Q", "a", data=b"").returncode == 64
    r = sendmail(inst, "-bs", data=b"EHLO x\r\nQUIT\r\n")
    assert r.returncode == 0 and r.stdout.startswith(b"220 mx.test ESMTP")
    assert r.stdout.endswith(b"221 2.0.0 mx.test closing connection.\r\n")   # esmtpd's words
    r = sendmail(inst, "-f", "someone@else.example", "alice@example.com", data=b"x\n")
    assert r.returncode == 0, r.stderr      # root may use any envelope sender


def test_sendmail_bs_as_root_puts_verp_and_security_in_the_spool_entry(inst):
    """root's way in (straight into the spool, courierd not running so the entry stays):
    Courier's XVERP/XSECURITY and SMTPUTF8 offered, their flags in the envelope."""
    r = sendmail(inst, "-bs", data=b"EHLO x\r\n"
                                   b"MAIL FROM:<root@mx.test> VERP SECURITY=STARTTLS SMTPUTF8\r\n"
                                   b"RCPT TO:<alice@example.com>\r\n"
                                   b"DATA\r\nSubject: flags\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert r.returncode == 0, r.stderr
    assert b"250-XVERP=Courier\r\n" in r.stdout and b"250-XSECURITY=NONE,STARTTLS\r\n" in r.stdout
    assert b"250 2.0.0 Ok: queued as " in r.stdout, r.stdout
    spool = inst.layout.spooldir
    [qid] = list_queue(spool)
    env = read_envelope(spool, qid)
    assert (env.sender, env.verp, env.security, env.smtputf8) == (
        "root@mx.test", True, "STARTTLS", True)
    assert env.client.startswith(f"local uid={os.getuid()} user=") and "maildrop" not in env.client
