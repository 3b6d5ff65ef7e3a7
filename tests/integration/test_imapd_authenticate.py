"""IMAP AUTHENTICATE against the real imapd + authd of a fresh instance (shipped defaults)."""

from __future__ import annotations

import base64
import imaplib
import socket
import ssl

import pytest

USER, PASSWORD = "alice@example.com", "alice-secret"
IO_TIMEOUT = 10.0


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the instance's certificate is self-signed
    return ctx


@pytest.fixture
def imap(new_instance):
    new_instance.adduser(USER, PASSWORD)
    new_instance.start("authdaemond", "imapd", "imapd-ssl")
    return new_instance


def plain(user: str, password: str):
    return lambda _challenge: f"\0{user}\0{password}".encode()


def test_plain_after_starttls(imap) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        # RFC 3501 §11.1: no plain-text mechanism offered in the clear.
        assert "AUTH=PLAIN" not in c.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            c.authenticate("PLAIN", plain(USER, PASSWORD))
        assert c.starttls(ssl_context=unverified())[0] == "OK"
        assert "AUTH=PLAIN" in c.capabilities and "SASL-IR" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.authenticate("PLAIN", plain(USER, "wrong"))
        assert c.authenticate("PLAIN", plain(USER, PASSWORD))[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def test_sasl_ir_on_imaps(imap) -> None:
    """RFC 4959: the whole exchange in the command line, on port 993."""
    raw = socket.create_connection(("127.0.0.1", imap.port("imaps")), timeout=IO_TIMEOUT)
    s = unverified().wrap_socket(raw, server_hostname="mx.test")
    f = s.makefile("rb")
    try:
        assert b"SASL-IR" in f.readline()
        ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        s.sendall(b"a AUTHENTICATE PLAIN " + ir + b"\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
        lines = []
        for _ in range(40):
            line = f.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(b"c "):
                break
        assert lines[0].startswith(b"a OK")
        assert any(x.startswith(b"b OK [READ-WRITE]") for x in lines)
    finally:
        s.close()
