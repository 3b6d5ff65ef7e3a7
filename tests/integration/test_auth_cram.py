"""CRAM-MD5/SHA1/SHA256 end to end: accounts with Courier's hmac-*pw fields (as
`userdbpw -hmac-md5 | userdb ... set hmac-md5pw` makes them), authd verifying, and the
daemons offering CRAM only when authd says it can verify it. Clients: imaplib's
login_cram_md5, swaks --auth CRAM-MD5, a hand-driven POP3 AUTH."""

from __future__ import annotations

import base64
import hmac
import imaplib
import shutil
import socket
import subprocess

import pytest
from courier_authd.passwords import hash_password

from libcourier.authclient import verifiable_mechanisms
from libcourier.userdb import compile_userdb, parse_userdb, set_user

USER, PASSWORD = "alice@example.com", "alice-secret"
IO_TIMEOUT = 10.0


def configure(inst, *, hmac_fields: bool) -> None:
    inst.adduser(USER, PASSWORD)
    etc = inst.etc
    if hmac_fields:
        src = etc / "userdb"
        entry = next(e for e in parse_userdb(src) if e.name == USER)
        fields = dict(entry.fields)
        for h in ("md5", "sha1", "sha256"):
            fields[f"hmac-{h}pw"] = hash_password(PASSWORD, f"hmac-{h}")
        set_user(entry.path, USER, fields)
        compile_userdb(src, etc / "userdb.dat", etc / "userdbshadow.dat")
    with open(etc / "imapd", "a") as f:
        f.write('IMAP_CAPABILITY="IMAP4rev1 AUTH=CRAM-MD5 AUTH=CRAM-SHA256 IDLE"\n')
    with open(etc / "esmtpd", "a") as f:
        f.write('ESMTPAUTH="CRAM-MD5 CRAM-SHA1"\n')
    with open(etc / "pop3d", "a") as f:
        f.write('POP3AUTH="CRAM-MD5"\n')
    # authd first: the daemons read what it can verify when they load their config.
    inst.start("authdaemond")
    inst.start("imapd", "esmtpd", "pop3d")


@pytest.fixture
def cram_instance(new_instance):
    configure(new_instance, hmac_fields=True)
    return new_instance


def test_authd_publishes_cram(cram_instance):
    mechs = verifiable_mechanisms(cram_instance.layout.authsocket)
    assert {"CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", "PLAIN", "LOGIN"} <= mechs


def test_imaplib_login_cram_md5(cram_instance):
    c = imaplib.IMAP4("127.0.0.1", cram_instance.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert "AUTH=CRAM-MD5" in c.capabilities and "AUTH=CRAM-SHA256" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            c.login_cram_md5(USER, "wrong")
        assert c.login_cram_md5(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def test_imap_cram_sha256_by_hand(cram_instance):
    c = imaplib.IMAP4("127.0.0.1", cram_instance.port("imap"), timeout=IO_TIMEOUT)
    try:
        resp = lambda ch: f"{USER} {hmac.new(PASSWORD.encode(), ch, 'sha256').hexdigest()}"  # noqa: E731
        assert c.authenticate("CRAM-SHA256", resp)[0] == "OK"
    finally:
        c.logout()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_auth_cram_md5(cram_instance):
    def swaks(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{cram_instance.port('smtp')}", "--auth", "CRAM-MD5",
             "--auth-user", USER, "--auth-password", password, "--from", USER,
             "--to", "bob@example.net", "--quit-after", "AUTH", "--timeout", "20"],
            capture_output=True, text=True, timeout=60)
    ok = swaks(PASSWORD)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "235 " in ok.stdout
    bad = swaks("wrong")
    assert bad.returncode != 0 and "535 " in bad.stdout


def test_pop3_auth_cram_md5(cram_instance):
    s = socket.create_connection(("127.0.0.1", cram_instance.port("pop3")), timeout=IO_TIMEOUT)
    f = s.makefile("rb")
    try:
        assert f.readline().startswith(b"+OK")
        s.sendall(b"CAPA\r\n")
        capa = []
        while (line := f.readline()) != b".\r\n":
            capa.append(line)
        assert b"SASL CRAM-MD5\r\n" in capa
        s.sendall(b"AUTH CRAM-MD5\r\n")
        line = f.readline()
        assert line.startswith(b"+ ")
        ch = base64.b64decode(line[2:].strip())
        digest = hmac.new(PASSWORD.encode(), ch, "md5").hexdigest()
        s.sendall(base64.b64encode(f"{USER} {digest}".encode()) + b"\r\n")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"STAT\r\n")
        assert f.readline().startswith(b"+OK 0 0")
    finally:
        s.close()


def test_cram_not_offered_without_secrets(new_instance):
    """Only crypt hashes: authd cannot verify CRAM, so nobody offers it."""
    configure(new_instance, hmac_fields=False)
    assert "CRAM-MD5" not in verifiable_mechanisms(new_instance.layout.authsocket)
    c = imaplib.IMAP4("127.0.0.1", new_instance.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert "AUTH=CRAM-MD5" not in c.capabilities
    finally:
        c.logout()
    s = socket.create_connection(("127.0.0.1", new_instance.port("smtp")), timeout=IO_TIMEOUT)
    f = s.makefile("rb")
    try:
        f.readline()
        s.sendall(b"EHLO client.test\r\n")
        lines = []
        while not (line := f.readline()).startswith(b"250 "):
            lines.append(line)
        assert not any(b"CRAM" in x for x in lines + [line])
    finally:
        s.close()
