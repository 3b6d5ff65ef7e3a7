"""SASL EXTERNAL from TLS client certificates (RFC 4422 appendix A) at the IMAP, POP3
and SMTP doors of a running instance, configured as Courier's: TLS_VERIFYPEER=PEER,
TLS_TRUSTCERTS (our test CA), TLS_EXTERNAL=emailaddress. The certificates are made
here with `cryptography`; the login is the verified subject's emailAddress, which
authd looks up with PRE (no password)."""

from __future__ import annotations

import base64
import datetime
import imaplib
import poplib
import smtplib
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "alice@example.com"
IO_TIMEOUT = 20.0      # a refused login waits before its answer


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(cn: str, email: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email is not None:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def _issue(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool):
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def _write(d: Path, stem: str, cert, key) -> Pem:
    c, k = d / f"{stem}.crt", d / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return Pem(c, k)


@dataclass
class Certs:
    ca: Path
    alice: Pem          # emailAddress=alice@example.com, from our CA
    stranger: Pem       # emailAddress=nobody@example.com (no such account), from our CA
    rogue: Pem          # emailAddress=alice@example.com, from another CA


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("courier-py test CA", None)
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    ca_path = d / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = _name("some other CA", None)

    def leaf(stem: str, email: str, issuer_name, issuer_key) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(email.split("@")[0], email), key, issuer_name, issuer_key, ca=False)
        return _write(d, stem, cert, key)

    return Certs(ca_path, leaf("alice", USER, ca_name, ca_key),
                 leaf("stranger", "nobody@example.com", ca_name, ca_key),
                 leaf("rogue", USER, other_name, other_key))


def client_ctx(pem: Pem | None) -> ssl.SSLContext:
    # The instance's server certificate is self-signed: the client checks nothing
    # about it; what is under test is the server's check of ours.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if pem is not None:
        ctx.load_cert_chain(str(pem.cert), str(pem.key))
    return ctx


def configure(inst, certs: Certs | None, verify: str = "PEER") -> None:
    """TLS_* as Courier's admin writes them: imapd-ssl/pop3d-ssl carry the keys of both
    their services, esmtpd those of esmtpd and esmtpd-ssl."""
    lines = "TLS_EXTERNAL=emailaddress\n"
    if certs is not None:
        lines += f"TLS_VERIFYPEER={verify}\nTLS_TRUSTCERTS={certs.ca}\n"
    for name in ("imapd-ssl", "pop3d-ssl", "esmtpd"):
        with open(inst.etc / name, "a") as f:
            f.write(lines)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def ext_instance(new_instance, certs):
    new_instance.adduser(USER, "alice-secret")
    configure(new_instance, certs)
    new_instance.start("authdaemond")
    new_instance.start("imapd", "imapd-ssl", "pop3d", "pop3d-ssl", "esmtpd", "esmtpd-ssl")
    return new_instance


# -- IMAP ---------------------------------------------------------------------------------

def imaps(inst, pem: Pem | None) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", inst.port("imaps"), ssl_context=client_ctx(pem),
                             timeout=IO_TIMEOUT)


def imap_external(m: imaplib.IMAP4, authzid: bytes = b"") -> tuple[str, list]:
    try:
        return m.authenticate("EXTERNAL", lambda _challenge: authzid)
    except imaplib.IMAP4.error as e:
        return "NO", [str(e).encode()]


def test_imap_external_logs_in_with_a_known_certificate(ext_instance, certs):
    m = imaps(ext_instance, certs.alice)
    try:
        assert "AUTH=EXTERNAL" in m.capabilities
        typ, _ = imap_external(m)
        assert typ == "OK"
        typ, data = m.select("INBOX")
        assert typ == "OK", data
    finally:
        m.logout()


def test_imap_external_after_starttls(ext_instance, certs):
    m = imaplib.IMAP4("127.0.0.1", ext_instance.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert "AUTH=EXTERNAL" not in m.capabilities      # no TLS, no certificate yet
        m.starttls(client_ctx(certs.alice))
        assert "AUTH=EXTERNAL" in m.capabilities
        typ, _ = imap_external(m)
        assert typ == "OK"
    finally:
        m.logout()


def test_imap_external_refused(ext_instance, certs):
    # Without a certificate: not offered, and AUTHENTICATE EXTERNAL is refused.
    m = imaps(ext_instance, None)
    try:
        assert "AUTH=EXTERNAL" not in m.capabilities
        typ, _ = imap_external(m)
        assert typ == "NO"
        assert m.state == "NONAUTH"
    finally:
        m.logout()
    # A verified certificate whose address has no account: offered, login refused.
    m = imaps(ext_instance, certs.stranger)
    try:
        assert "AUTH=EXTERNAL" in m.capabilities
        typ, data = imap_external(m)
        assert typ == "NO" and b"AUTHENTICATIONFAILED" in data[0], data
    finally:
        m.logout()
    # An authorization identity other than the certificate's is refused.
    m = imaps(ext_instance, certs.alice)
    try:
        typ, _ = imap_external(m, b"bob@example.net")
        assert typ == "NO"
        assert m.state == "NONAUTH"
    finally:
        m.logout()


def test_certificate_from_another_ca_fails_the_handshake(ext_instance, certs):
    # TLS_VERIFYPEER=PEER: a certificate is optional, but one that does not verify
    # against TLS_TRUSTCERTS ends the handshake (no unverified identity gets through).
    with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.abort)):
        m = imaps(ext_instance, certs.rogue)
        m.capability()       # TLS 1.3: the server's alert arrives with the first read


# -- POP3 ---------------------------------------------------------------------------------

def pop3s(inst, pem: Pem | None) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", inst.port("pop3s"), context=client_ctx(pem),
                           timeout=IO_TIMEOUT)


def pop3_sasl(p: poplib.POP3) -> list[str]:
    return p.capa().get("SASL", [])


def pop3_external(p: poplib.POP3, authzid: bytes = b"") -> bytes:
    arg = base64.b64encode(authzid).decode() if authzid else "="    # RFC 5034 §4
    try:
        return p._shortcmd(f"AUTH EXTERNAL {arg}")
    except poplib.error_proto as e:
        return e.args[0]


def test_pop3_external(ext_instance, certs):
    p = pop3s(ext_instance, certs.alice)
    try:
        assert "EXTERNAL" in pop3_sasl(p)
        assert pop3_external(p).startswith(b"+OK")
        assert p.stat()[0] == 0
    finally:
        p.quit()
    p = poplib.POP3("127.0.0.1", ext_instance.port("pop3"), timeout=IO_TIMEOUT)
    try:
        assert "EXTERNAL" not in pop3_sasl(p)
        p.stls(client_ctx(certs.alice))
        assert "EXTERNAL" in pop3_sasl(p)
        assert pop3_external(p).startswith(b"+OK")
    finally:
        p.quit()


def test_pop3_external_refused(ext_instance, certs):
    p = pop3s(ext_instance, None)
    try:
        assert "EXTERNAL" not in pop3_sasl(p)
        assert pop3_external(p).startswith(b"-ERR")
    finally:
        p.quit()
    p = pop3s(ext_instance, certs.stranger)
    try:
        assert "EXTERNAL" in pop3_sasl(p)
        assert pop3_external(p).startswith(b"-ERR")
    finally:
        p.quit()
    p = pop3s(ext_instance, certs.alice)
    try:
        assert pop3_external(p, b"bob@example.net").startswith(b"-ERR")
    finally:
        p.quit()


# -- SMTP ---------------------------------------------------------------------------------

def smtps(inst, pem: Pem | None) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL("127.0.0.1", inst.port("smtps"), context=client_ctx(pem),
                         timeout=IO_TIMEOUT)
    s.ehlo("client.test")
    return s


def smtp_mechs(s: smtplib.SMTP) -> list[str]:
    return s.esmtp_features.get("auth", "").split()


def test_smtp_external(ext_instance, certs):
    s = smtps(ext_instance, certs.alice)
    try:
        assert "EXTERNAL" in smtp_mechs(s)
        code, text = s.docmd("AUTH", "EXTERNAL =")
        assert code == 235, text
    finally:
        s.quit()
    s = smtplib.SMTP("127.0.0.1", ext_instance.port("smtp"), timeout=IO_TIMEOUT)
    try:
        s.ehlo("client.test")
        assert "EXTERNAL" not in smtp_mechs(s)
        s.starttls(context=client_ctx(certs.alice))
        s.ehlo("client.test")
        assert "EXTERNAL" in smtp_mechs(s)
        code, text = s.docmd("AUTH", "EXTERNAL =")
        assert code == 235, text
    finally:
        s.quit()


def test_smtp_external_refused(ext_instance, certs):
    s = smtps(ext_instance, None)
    try:
        assert "EXTERNAL" not in smtp_mechs(s)
        code, _ = s.docmd("AUTH", "EXTERNAL =")
        assert code == 504
    finally:
        s.quit()
    s = smtps(ext_instance, certs.stranger)
    try:
        assert "EXTERNAL" in smtp_mechs(s)
        code, _ = s.docmd("AUTH", "EXTERNAL =")
        assert code == 535
    finally:
        s.quit()
    s = smtps(ext_instance, certs.alice)
    try:
        code, _ = s.docmd("AUTH", "EXTERNAL " + base64.b64encode(b"bob@example.net").decode())
        assert 500 <= code < 600 and code != 235
    finally:
        s.quit()


# -- not offered without TLS_VERIFYPEER; REQUIREPEER ---------------------------------------

def test_not_offered_when_verifypeer_none(new_instance, certs):
    # TLS_EXTERNAL alone: the server asks for no certificate, so one the client
    # would send is never seen and EXTERNAL is never offered.
    new_instance.adduser(USER, "alice-secret")
    configure(new_instance, None)
    new_instance.start("authdaemond")
    new_instance.start("imapd-ssl", "pop3d-ssl", "esmtpd-ssl")
    m = imaps(new_instance, certs.alice)
    try:
        assert "AUTH=EXTERNAL" not in m.capabilities
        assert imap_external(m)[0] == "NO"
    finally:
        m.logout()
    p = pop3s(new_instance, certs.alice)
    try:
        assert "EXTERNAL" not in pop3_sasl(p)
        assert pop3_external(p).startswith(b"-ERR")
    finally:
        p.quit()
    s = smtps(new_instance, certs.alice)
    try:
        assert "EXTERNAL" not in smtp_mechs(s)
        assert s.docmd("AUTH", "EXTERNAL =")[0] == 504
    finally:
        s.quit()


def test_requirepeer_refuses_a_connection_without_certificate(new_instance, certs):
    new_instance.adduser(USER, "alice-secret")
    configure(new_instance, certs, verify="REQUIREPEER")
    new_instance.start("authdaemond")
    new_instance.start("imapd-ssl")
    with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.abort)):
        m = imaps(new_instance, None)
        m.capability()
    m = imaps(new_instance, certs.alice)
    try:
        assert imap_external(m)[0] == "OK"
    finally:
        m.logout()


def test_verifypeer_without_trustcerts_stops_the_daemon(new_instance):
    with open(new_instance.etc / "imapd-ssl", "a") as f:
        f.write("TLS_VERIFYPEER=PEER\n")
    r = new_instance.courier("start", "imapd-ssl", check=False)
    new_instance.record_pids()
    assert r.returncode != 0
    assert "TLS_TRUSTCERTS" in r.stdout + r.stderr + new_instance.logs()


def test_bad_verifypeer_value_is_a_config_error(new_instance):
    with open(new_instance.etc / "imapd-ssl", "a") as f:
        f.write("TLS_VERIFYPEER=SOMETIMES\n")
    r = new_instance.courier("start", "imapd-ssl", check=False)
    new_instance.record_pids()
    assert r.returncode != 0
    assert "TLS_VERIFYPEER" in r.stdout + r.stderr + new_instance.logs()
