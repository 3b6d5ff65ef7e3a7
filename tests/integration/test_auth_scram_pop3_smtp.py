"""SCRAM-SHA-256 / SCRAM-SHA-1 at the POP3 (RFC 5034) and SMTP (RFC 4954) doors of a
running instance: the daemon's core runs the exchange, its driver makes authd's two
SCRAM requests, authd holds the keys (a scram-sha-256pw field as `userdbpw
-scram-sha-256` makes it, or a {PLAIN} password). The client is written out here
from RFC 5802 §3, so a server that only pretends cannot pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import time

import pytest
from courier_authd.passwords import hash_password

from libcourier.authclient import verifiable_mechanisms
from libcourier.userdb import compile_userdb, parse_userdb, set_user

USER, PASSWORD = "alice@example.com", "alice-secret"
IO_TIMEOUT = 20.0      # a refused login waits 2 s before its answer


class ScramClient:
    """RFC 5802 client: first(), final(server_first), check(server_final)."""

    def __init__(self, hash_name: str, user: str, password: str) -> None:
        self.h, self.user, self.password = hash_name, user, password
        self.cnonce = secrets.token_urlsafe(18)

    def first(self) -> bytes:
        self.bare = f"n={self.user},r={self.cnonce}".encode()
        return b"n,," + self.bare

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        assert attrs["r"].startswith(self.cnonce) and len(attrs["r"]) > len(self.cnonce)
        salted = hashlib.pbkdf2_hmac(self.h, self.password.encode(),
                                     base64.b64decode(attrs["s"]), int(attrs["i"]))
        ck = hmac.new(salted, b"Client Key", self.h).digest()
        without_proof = b"c=biws,r=" + attrs["r"].encode()
        am = self.bare + b"," + server_first + b"," + without_proof
        sig = hmac.new(hashlib.new(self.h, ck).digest(), am, self.h).digest()
        sk = hmac.new(salted, b"Server Key", self.h).digest()
        self.expect = b"v=" + base64.b64encode(hmac.new(sk, am, self.h).digest())
        proof = bytes(a ^ b for a, b in zip(ck, sig, strict=True))
        return without_proof + b",p=" + base64.b64encode(proof)

    def check(self, server_final: bytes) -> None:
        assert server_final == self.expect, "the server does not know the key"


def with_scram_keys(inst, *, adduser: bool = True) -> None:
    if adduser:
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


def configure(inst) -> None:
    with open(inst.etc / "esmtpd", "a") as f:
        f.write('ESMTPAUTH="SCRAM-SHA-256 SCRAM-SHA-1 LOGIN"\n')
    with open(inst.etc / "pop3d", "a") as f:
        f.write('POP3AUTH="SCRAM-SHA-256 SCRAM-SHA-1"\n')
    # authd first: the daemons read what it can verify when they load their config.
    inst.start("authdaemond")
    inst.start("esmtpd", "pop3d")


@pytest.fixture
def scram_instance(new_instance):
    with_scram_keys(new_instance)
    configure(new_instance)
    return new_instance


class Line:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.f = self.s.makefile("rb")

    def send(self, data: bytes) -> None:
        self.s.sendall(data + b"\r\n")

    def line(self) -> bytes:
        line = self.f.readline(20000)
        assert line.endswith(b"\r\n"), line
        return line[:-2]

    def close(self) -> None:
        self.f.close()
        self.s.close()


def pop3(inst) -> Line:
    c = Line(inst.port("pop3"))
    assert c.line().startswith(b"+OK")
    return c


def pop3_capa(c: Line) -> list[bytes]:
    c.send(b"CAPA")
    assert c.line().startswith(b"+OK")
    out = []
    while (line := c.line()) != b".":
        out.append(line)
    return out


def pop3_scram(c: Line, mech: str, client: ScramClient, *, initial: bool) -> bytes:
    """Run AUTH; the server's last line (+OK / -ERR)."""
    b64 = base64.b64encode
    if initial:
        c.send(f"AUTH {mech} ".encode() + b64(client.first()))
    else:
        c.send(f"AUTH {mech}".encode())
        assert c.line() == b"+ "                 # RFC 5034 §4: empty challenge
        c.send(b64(client.first()))
    line = c.line()
    assert line.startswith(b"+ "), line
    c.send(b64(client.final(base64.b64decode(line[2:]))))
    line = c.line()
    if not line.startswith(b"+ "):
        return line
    client.check(base64.b64decode(line[2:]))
    c.send(b"")
    return c.line()


def test_pop3_scram_sha_256(scram_instance):
    assert "SCRAM-SHA-256" in verifiable_mechanisms(scram_instance.layout.authsocket)
    c = pop3(scram_instance)
    try:
        assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1" in pop3_capa(c)
        wrong = pop3_scram(c, "SCRAM-SHA-256", ScramClient("sha256", USER, "wrong"),
                           initial=False)
        assert wrong == b"-ERR [AUTH] Login failed."
        ok = pop3_scram(c, "SCRAM-SHA-256", ScramClient("sha256", USER, PASSWORD), initial=True)
        assert ok.startswith(b"+OK"), ok
        c.send(b"STAT")
        assert c.line() == b"+OK 0 0"
        c.send(b"QUIT")
        assert c.line().startswith(b"+OK")
    finally:
        c.close()


def test_pop3_scram_sha_1_from_plain_password_and_unknown_user(scram_instance):
    c = pop3(scram_instance)
    try:
        ghost = pop3_scram(c, "SCRAM-SHA-1", ScramClient("sha1", "ghost@example.com", "x"),
                           initial=True)
        assert ghost == b"-ERR [AUTH] Login failed."
        ok = pop3_scram(c, "SCRAM-SHA-1", ScramClient("sha1", "plainuser", "pencil"),
                        initial=False)
        assert ok.startswith(b"+OK"), ok
    finally:
        c.close()


def smtp(inst) -> tuple[Line, list[bytes]]:
    c = Line(inst.port("smtp"))
    assert c.line().startswith(b"220")
    c.send(b"EHLO client.example")
    ehlo = []
    while True:
        line = c.line()
        ehlo.append(line[4:])
        if line[3:4] == b" ":
            return c, ehlo


def smtp_scram(c: Line, mech: str, client: ScramClient, *, initial: bool) -> bytes:
    b64 = base64.b64encode
    if initial:
        c.send(f"AUTH {mech} ".encode() + b64(client.first()))
    else:
        c.send(f"AUTH {mech}".encode())
        assert c.line() == b"334 "              # RFC 4954 §4: empty challenge
        c.send(b64(client.first()))
    line = c.line()
    assert line.startswith(b"334 "), line
    c.send(b64(client.final(base64.b64decode(line[4:]))))
    line = c.line()
    if not line.startswith(b"334 "):
        return line
    client.check(base64.b64decode(line[4:]))
    c.send(b"")
    return c.line()


def test_smtp_scram_sha_256_then_relay(scram_instance):
    c, ehlo = smtp(scram_instance)
    try:
        assert b"AUTH SCRAM-SHA-256 SCRAM-SHA-1 LOGIN" in ehlo
        wrong = smtp_scram(c, "SCRAM-SHA-256", ScramClient("sha256", USER, "wrong"),
                           initial=True)
        assert wrong.startswith(b"535 5.7.8"), wrong
        ok = smtp_scram(c, "SCRAM-SHA-256", ScramClient("sha256", USER, PASSWORD),
                        initial=False)
        assert ok.startswith(b"235 2.7.0"), ok
        # Authenticated: a remote recipient is relayed (RFC 4954 §6's point).
        c.send(f"MAIL FROM:<{USER}>".encode())
        assert c.line().startswith(b"250")
        c.send(b"RCPT TO:<someone@remote.example>")
        assert c.line().startswith(b"250")
        c.send(b"QUIT")
        assert c.line().startswith(b"221")
    finally:
        c.close()


def test_smtp_scram_sha_1_plain_password_and_unknown_user(scram_instance):
    c, _ehlo = smtp(scram_instance)
    try:
        ghost = smtp_scram(c, "SCRAM-SHA-1", ScramClient("sha1", "ghost@example.com", "x"),
                           initial=False)
        assert ghost.startswith(b"535 5.7.8"), ghost
        ok = smtp_scram(c, "SCRAM-SHA-1", ScramClient("sha1", "plainuser", "pencil"),
                        initial=True)
        assert ok.startswith(b"235 2.7.0"), ok
    finally:
        c.close()


def test_scram_not_offered_when_authd_cannot_verify_it(new_instance):
    """Only crypt hashes (courier adduser): no SCRAM keys, no clear password."""
    new_instance.adduser(USER, PASSWORD)
    configure(new_instance)
    assert "SCRAM-SHA-256" not in verifiable_mechanisms(new_instance.layout.authsocket)
    c = pop3(new_instance)
    try:
        assert not any(line.startswith(b"SASL") and b"SCRAM" in line for line in pop3_capa(c))
        c.send(b"AUTH SCRAM-SHA-256")
        assert c.line().startswith(b"-ERR")
    finally:
        c.close()
    c, ehlo = smtp(new_instance)
    try:
        assert not any(b"SCRAM" in line for line in ehlo)
        assert b"AUTH LOGIN" in ehlo
        c.send(b"AUTH SCRAM-SHA-256")
        assert c.line().startswith(b"504 5.5.4")
    finally:
        c.close()


def test_scram_offered_once_makeuserdb_adds_keys_without_a_restart(new_instance):
    """authd re-publishes what it can verify after a makeuserdb; pop3d and esmtpd
    read that per connection, as imapd does per CAPABILITY."""
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    configure(inst)
    c, ehlo = smtp(inst)
    c.close()
    assert not any(b"SCRAM" in line for line in ehlo)
    sock = inst.layout.authsocket
    assert "SCRAM-SHA-256" not in verifiable_mechanisms(sock)
    with_scram_keys(inst, adduser=False)   # adds keys, compiles the userdb
    deadline = time.monotonic() + 60
    while "SCRAM-SHA-256" not in verifiable_mechanisms(sock):
        assert time.monotonic() < deadline, "authd did not publish SCRAM-SHA-256"
        time.sleep(0.2)
    c = pop3(inst)
    try:
        assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1" in pop3_capa(c)
        ok = pop3_scram(c, "SCRAM-SHA-256", ScramClient("sha256", USER, PASSWORD), initial=True)
        assert ok.startswith(b"+OK"), ok
    finally:
        c.close()
    c, ehlo = smtp(inst)
    try:
        assert b"AUTH SCRAM-SHA-256 SCRAM-SHA-1 LOGIN" in ehlo
        ok = smtp_scram(c, "SCRAM-SHA-1", ScramClient("sha1", "plainuser", "pencil"),
                        initial=True)
        assert ok.startswith(b"235 2.7.0"), ok
    finally:
        c.close()
