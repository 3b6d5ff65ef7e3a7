"""swaks against the instance, the parts of issue 7's client matrix that
tests/clients/test_swaks.py (plain, STARTTLS, SMTPS, AUTH PLAIN/LOGIN) does not
cover: PIPELINING, AUTH CRAM-MD5 on submission over TLS, and SMTPUTF8; each
checked end to end in the Maildir.

swaks 20201014 (Debian 12's) sends neither BDAT nor the SMTPUTF8 parameter:
BDAT is driven from a raw socket in tests/integration/test_smtpd_bdat_dsn.py, and
the SMTPUTF8 transaction here is sent with smtplib; swaks shows that a UTF-8
address without SMTPUTF8 is refused (RFC 6531 §3.5).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import time

import pytest
from courier_authd.passwords import hash_password

from libcourier.userdb import compile_userdb, parse_userdb, set_user

DELIVERY_WAIT = 30.0
ALICE, ALICE_PW = "alice@example.com", "alice-secret"


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    assert exe, "swaks is required (apt-get install swaks; .ci/run installs it)"
    return subprocess.run([exe, "--timeout", "20", "--helo", "swaks.example.net", *args],
                          capture_output=True, text=True, timeout=90)


def delivered(maildir, n: int) -> list[bytes]:
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        files = sorted((maildir / "new").iterdir())
        if len(files) >= n:
            return [f.read_bytes() for f in files]
        time.sleep(0.05)
    return [f.read_bytes() for f in sorted((maildir / "new").iterdir())]


def test_swaks_pipelining_delivers(running_instance):
    """--pipeline: MAIL, RCPT, DATA go out as one batch (RFC 2920) before any reply."""
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('smtp')}", "--pipeline",
              "--from", "sender@example.net", "--to", f"{ALICE},bob@example.net",
              "--header", "Subject: pipelined", "--body", "sent in one batch")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    mail, rcpt, data = (out.index(" -> MAIL FROM:"), out.index(" -> RCPT TO:"),
                        out.index(" -> DATA"))
    first_reply = out.index("<- ", mail)          # the reply to MAIL comes after DATA went out
    assert mail < rcpt < data < first_reply, out
    for who in (ALICE, "bob@example.net"):
        [body] = delivered(inst.maildir(who), 1)
        assert b"Subject: pipelined" in body and b"sent in one batch" in body


@pytest.fixture
def cram_submission(new_instance):
    """alice with Courier's hmac-md5pw (what `userdbpw -hmac-md5` writes), and
    esmtpd-msa offering CRAM-MD5 under TLS."""
    inst = new_instance
    inst.adduser(ALICE, ALICE_PW)
    inst.adduser("bob@example.net", "bob-secret")
    src = inst.etc / "userdb"
    entry = next(e for e in parse_userdb(src) if e.name == ALICE)
    fields = dict(entry.fields)
    fields["hmac-md5pw"] = hash_password(ALICE_PW, "hmac-md5")
    set_user(entry.path, ALICE, fields)
    compile_userdb(src, inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")
    with open(inst.etc / "esmtpd-msa", "a") as f:
        f.write('ESMTPAUTH_TLS="PLAIN LOGIN CRAM-MD5"\n')
    # authd first: esmtpd reads what it can verify when it loads its config.
    inst.start("authdaemond")
    inst.start("courierd", "esmtpd", "esmtpd-msa")
    return inst


def test_swaks_cram_md5_on_submission_over_tls(cram_submission):
    inst = cram_submission
    base = ["--server", f"127.0.0.1:{inst.port('submission')}", "--tls",
            "--auth", "CRAM-MD5", "--auth-user", ALICE,
            "--from", ALICE, "--to", "bob@example.net"]
    bad = swaks(*base, "--auth-password", "wrong", "--body", "x")
    assert bad.returncode != 0 and "535 5.7.8" in bad.stdout, bad.stdout
    ok = swaks(*base, "--auth-password", ALICE_PW, "--header", "Subject: cram",
               "--body", "authenticated with CRAM-MD5")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "AUTH CRAM-MD5" in ok.stdout and "235 2.7.0" in ok.stdout
    [msg] = delivered(inst.maildir("bob@example.net"), 1)
    head = msg.split(b"\n\n", 1)[0]
    assert f"(AUTH: CRAM-MD5 {ALICE})".encode() in head
    assert b"with ESMTPSA;" in head            # RFC 3848: TLS and AUTH
    assert b"authenticated with CRAM-MD5" in msg
    # esmtpd-msa adds what swaks left out (RFC 6409 §8): swaks sends a Date, not
    # always a Message-ID, so exactly one of each is there.
    assert head.lower().count(b"\nmessage-id:") == 1 and head.lower().count(b"\ndate:") == 1


def test_cram_md5_not_offered_in_the_clear_on_submission(cram_submission):
    with smtplib.SMTP("127.0.0.1", cram_submission.port("submission"), timeout=20) as s:
        s.ehlo("client.test")
        assert "CRAM-MD5" not in (s.esmtp_features.get("auth") or "")
        s.starttls()
        s.ehlo("client.test")
        assert "CRAM-MD5" in s.esmtp_features["auth"].split()


def test_smtputf8_end_to_end(running_instance):
    inst = running_instance
    sender = "jörg@bücher.example"
    # swaks sends no SMTPUTF8 parameter: the UTF-8 address is refused, nothing stored.
    r = swaks("--server", f"127.0.0.1:{inst.port('smtp')}", "--from", sender, "--to", ALICE,
              "--body", "x")
    assert r.returncode != 0 and "553 5.6.7" in r.stdout, r.stdout
    msg = ("From: Jörg <jörg@bücher.example>\r\nTo: alice@example.com\r\n"
           "Subject: Grüße\r\n\r\nÜmlaute im Text.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=20) as s:
        s.ehlo("client.test")
        assert s.has_extn("smtputf8")
        assert s.sendmail(sender, [ALICE], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    [data] = delivered(inst.maildir(ALICE), 1)
    head, _, body = data.partition(b"\n\n")
    assert b" with UTF8SMTP;" in head          # RFC 6531 §3.7.3
    assert "Subject: Grüße".encode() in head
    assert head.startswith("Return-Path: <jörg@bücher.example>\n".encode()), head
    assert body == "Ümlaute im Text.\n".encode()
