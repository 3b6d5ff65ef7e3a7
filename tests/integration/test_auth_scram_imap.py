"""SCRAM-SHA-256 / SCRAM-SHA-1 at the IMAP door: imapd runs the exchange
(libcourier.sasl), authd holds the keys (a scram-sha-256pw field made by
`userdbpw -scram-sha-256`, or a {PLAIN} password). Clients: a hand-written RFC 5802
client over imaplib, and mbsync through cyrus-sasl's SCRAM plugin."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from courier_authd.passwords import hash_password

from libcourier.authclient import verifiable_mechanisms
from libcourier.userdb import compile_userdb, parse_userdb, set_user

USER, PASSWORD = "alice@example.com", "alice-secret"
IO_TIMEOUT = 10.0


class ScramClient:
    """RFC 5802 client side, as imaplib's authenticate() callback."""

    def __init__(self, hash_name: str, user: str, password: str) -> None:
        self.h, self.user, self.password = hash_name, user, password
        self.cnonce = secrets.token_urlsafe(18)
        self.step = 0
        self.verified = False

    def __call__(self, challenge: bytes) -> bytes:
        self.step += 1
        if self.step == 1:
            self.bare = f"n={self.user},r={self.cnonce}".encode()
            return b"n,," + self.bare
        if self.step == 2:
            attrs = dict(a.split("=", 1) for a in challenge.decode().split(","))
            assert attrs["r"].startswith(self.cnonce)
            salted = hashlib.pbkdf2_hmac(self.h, self.password.encode(),
                                         base64.b64decode(attrs["s"]), int(attrs["i"]))
            ck = hmac.new(salted, b"Client Key", self.h).digest()
            wo = b"c=biws,r=" + attrs["r"].encode()
            am = self.bare + b"," + challenge + b"," + wo
            sig = hmac.new(hashlib.new(self.h, ck).digest(), am, self.h).digest()
            sk = hmac.new(salted, b"Server Key", self.h).digest()
            self.expect = b"v=" + base64.b64encode(hmac.new(sk, am, self.h).digest())
            return wo + b",p=" + base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig,
                                                                             strict=True)))
        assert challenge == self.expect, "server signature does not match"
        self.verified = True
        return b""


@pytest.fixture
def scram_imap(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    src = inst.etc / "userdb"
    entry = next(e for e in parse_userdb(src) if e.name == USER)
    fields = dict(entry.fields)
    fields["scram-sha-256pw"] = hash_password(PASSWORD, "scram-sha-256")
    set_user(entry.path, USER, fields)
    set_user(src, "plainuser", {"uid": fields["uid"], "gid": fields["gid"],
                                "home": fields["home"], "mail": fields["mail"],
                                "systempw": "{PLAIN}pencil"})
    compile_userdb(src, inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")
    with open(inst.etc / "imapd", "a") as f:
        f.write('IMAP_CAPABILITY="IMAP4rev1 AUTH=SCRAM-SHA-256 AUTH=SCRAM-SHA-1 IDLE"\n')
    inst.start("authdaemond")
    inst.start("imapd")
    return inst


def test_imap_scram_sha_256(scram_imap):
    assert "SCRAM-SHA-256" in verifiable_mechanisms(scram_imap.layout.authsocket)
    c = imaplib.IMAP4("127.0.0.1", scram_imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert "AUTH=SCRAM-SHA-256" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.authenticate("SCRAM-SHA-256", ScramClient("sha256", USER, "wrong"))
        client = ScramClient("sha256", USER, PASSWORD)
        assert c.authenticate("SCRAM-SHA-256", client)[0] == "OK"
        assert client.verified          # the server proved it knows the key too
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def test_imap_scram_sha_1_from_plain_password(scram_imap):
    c = imaplib.IMAP4("127.0.0.1", scram_imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        client = ScramClient("sha1", "plainuser", "pencil")
        assert c.authenticate("SCRAM-SHA-1", client)[0] == "OK" and client.verified
    finally:
        c.logout()


def test_imap_scram_unknown_user_fails_like_a_wrong_password(scram_imap):
    c = imaplib.IMAP4("127.0.0.1", scram_imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.authenticate("SCRAM-SHA-256", ScramClient("sha256", "ghost@example.com", "x"))
    finally:
        c.logout()


SASL_SCRAM = Path("/usr/lib/x86_64-linux-gnu/sasl2/libscram.so")


@pytest.mark.skipif(shutil.which("mbsync") is None or not SASL_SCRAM.exists(),
                    reason="mbsync or cyrus-sasl's SCRAM plugin (libsasl2-modules) missing")
def test_mbsync_scram_sha_256(scram_imap, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount t
Host 127.0.0.1
Port {scram_imap.port('imap')}
User {USER}
Pass {PASSWORD}
AuthMechs SCRAM-SHA-256
SSLType None

IMAPStore remote
Account t

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel c
Far :remote:
Near :local:
Patterns INBOX
Create Near
SyncState *
""")
    r = subprocess.run(["mbsync", "-c", str(rc), "-V", "c"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SCRAM-SHA-256" in r.stdout + r.stderr
    assert (local / "INBOX").is_dir()
