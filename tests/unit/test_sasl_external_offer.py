"""EXTERNAL in the sans-I/O cores: Courier appends it to the offered list (POP3's SASL
line, ESMTP's AUTH line, IMAP's AUTH=EXTERNAL) only under TLS with a certificate login,
also when the login comes after STLS/STARTTLS."""

from __future__ import annotations

from courier_pop3d import core as pop3
from courier_smtpd.core import SessionInfo

from libcourier.sasl import ExternalCredentials


def test_pop3_external_appended_under_tls_with_a_login() -> None:
    srv = pop3.Pop3Server(pop3.Options(tls=True, sasl_tls=("PLAIN",), external_identity="mrose"))
    assert srv.sasl_mechanisms() == ("PLAIN", "EXTERNAL")
    # In the clear a certificate cannot exist: never offered.
    srv = pop3.Pop3Server(pop3.Options(sasl=("CRAM-MD5",), external_identity="mrose"))
    assert srv.sasl_mechanisms() == ("CRAM-MD5",)


def test_pop3_external_after_stls() -> None:
    srv = pop3.Pop3Server(pop3.Options(stls=True, sasl_tls=("PLAIN",)))
    srv.receive_data(b"STLS\r\n")
    assert isinstance(srv.next_event(), pop3.StartTLS)
    srv.tls_started("mrose")
    assert srv.sasl_mechanisms() == ("PLAIN", "EXTERNAL")
    srv.data_to_send()
    srv.receive_data(b"AUTH EXTERNAL =\r\n")
    assert srv.next_event() == pop3.SaslAuth(ExternalCredentials("mrose"))
    # STLS without a certificate login: not offered.
    srv = pop3.Pop3Server(pop3.Options(stls=True, sasl_tls=("PLAIN",)))
    srv.receive_data(b"STLS\r\n")
    srv.next_event()
    srv.tls_started(None)
    assert srv.sasl_mechanisms() == ("PLAIN",)


def test_smtp_external_appended_under_tls_with_a_login() -> None:
    info = SessionInfo("foo.com", tls_active=True, auth_tls=("PLAIN",), external_identity="mrose")
    assert info.auth_offered() == ("PLAIN", "EXTERNAL")
    info = SessionInfo("foo.com", tls_active=True, auth_tls=("PLAIN",))
    assert info.auth_offered() == ("PLAIN",)
    info = SessionInfo("foo.com", tls_active=False, auth_plain=("LOGIN",), external_identity="x")
    assert info.auth_offered() == ("LOGIN",)
    # Even with no other mechanism configured the AUTH line gets EXTERNAL.
    info = SessionInfo("foo.com", tls_active=True, external_identity="mrose")
    assert info.auth_offered() == ("EXTERNAL",)
