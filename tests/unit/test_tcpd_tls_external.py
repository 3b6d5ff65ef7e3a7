"""TLS_VERIFYPEER / TLS_TRUSTCERTS / TLS_EXTERNAL: the server context asks for and
verifies client certificates, and certificate_identity picks the login from the
verified subject as Courier's TLS_EXTERNAL names it."""

from __future__ import annotations

import ssl

import pytest

from libcourier.config.errors import ConfigError
from libcourier.config.listener import listener_settings, load_listener
from libcourier.tcpd.tls import certificate_identity, make_self_signed, server_context, verify_mode

# getpeercert()'s shape: a tuple of RDNs, each a tuple of (name, value).
ALICE = {"subject": ((("countryName", "XX"),), (("commonName", "Alice Example"),),
                     (("emailAddress", "alice@example.com"),))}
CN_ONLY = {"subject": ((("commonName", "bob@example.net"),),)}


def test_field_named_as_courier_writes_it():
    assert certificate_identity(ALICE, "emailaddress") == "alice@example.com"
    assert certificate_identity(ALICE, "EMAILADDRESS") == "alice@example.com"
    assert certificate_identity(CN_ONLY, "CN") == "bob@example.net"
    assert certificate_identity(CN_ONLY, "emailaddress") is None


def test_one_means_email_else_cn():
    assert certificate_identity(ALICE, "1") == "alice@example.com"
    assert certificate_identity(CN_ONLY, "1") == "bob@example.net"


def test_nothing_without_a_verified_certificate_or_setting():
    assert certificate_identity({}, "emailaddress") is None      # getpeercert() unverified
    assert certificate_identity(None, "emailaddress") is None
    assert certificate_identity(ALICE, "") is None


def test_unusable_values_give_no_login():
    # A space (a display name) or control characters cannot be a login; two values
    # of the field are ambiguous.
    assert certificate_identity(ALICE, "cn") is None
    bad = {"subject": ((("emailAddress", "a\nb@example.com"),),)}
    assert certificate_identity(bad, "emailaddress") is None
    two = {"subject": ((("emailAddress", "a@example.com"),), (("emailAddress", "b@example.com"),))}
    assert certificate_identity(two, "emailaddress") is None
    long = {"subject": ((("emailAddress", "a" * 300 + "@example.com"),),)}
    assert certificate_identity(long, "emailaddress") is None


def test_verify_modes():
    assert verify_mode("NONE") == ssl.CERT_NONE
    assert verify_mode("") == ssl.CERT_NONE
    assert verify_mode("peer") == ssl.CERT_OPTIONAL
    assert verify_mode("REQUIREPEER") == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="TLS_VERIFYPEER"):
        verify_mode("SOMETIMES")


def test_server_context_loads_trust(tmp_path):
    cert = tmp_path / "server.pem"
    make_self_signed(cert, "localhost")
    ca = tmp_path / "ca.pem"
    make_self_signed(ca, "ca.test")
    assert server_context(cert).verify_mode == ssl.CERT_NONE
    ctx = server_context(cert, verifypeer="PEER", trustcerts=ca)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert ctx.cert_store_stats()["x509"] == 1
    d = tmp_path / "cas"
    d.mkdir()
    (d / "one.pem").write_bytes(ca.read_bytes())
    (d / "README").write_text("not a certificate\n")
    ctx = server_context(cert, verifypeer="REQUIREPEER", trustcerts=d)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509"] == 1


def test_server_context_errors(tmp_path):
    cert = tmp_path / "server.pem"
    make_self_signed(cert, "localhost")
    with pytest.raises(ConfigError, match="needs TLS_TRUSTCERTS"):
        server_context(cert, verifypeer="PEER")
    with pytest.raises(ConfigError, match="TLS_TRUSTCERTS not found"):
        server_context(cert, verifypeer="PEER", trustcerts=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match="no usable CA"):
        server_context(cert, verifypeer="PEER", trustcerts=junk)


def test_listener_keys(tmp_path):
    schema = listener_settings(proto="X", port="1100", sslport="1101", maxperip="7",
                               start_key="XDSTART", sslstart_key="XDSSLSTART")
    etc = tmp_path / "etc"
    etc.mkdir()
    cert = etc / "x.pem"
    make_self_signed(cert, "localhost")

    def load(text: str):
        (etc / "xd").write_text(f"TLS_CERTFILE={cert}\n" + text)
        return load_listener(etc, "xd", base="xd", services=("xd",), schema=schema,
                             ssl_keys_for_plain=False)

    got = load("TLS_VERIFYPEER=peer\nTLS_TRUSTCERTS=ca.pem\nTLS_EXTERNAL=emailaddress\n")
    assert got.common["tls_verifypeer"] == "PEER"
    assert got.common["tls_trustcerts"] == etc / "ca.pem"      # relative to the config dir
    assert got.common["tls_external"] == "emailaddress"
    assert not got.warnings
    assert load("").common["tls_verifypeer"] == "NONE"
    with pytest.raises(ConfigError, match=r"xd:2: .*TLS_VERIFYPEER|TLS_VERIFYPEER.*xd:2"):
        load("TLS_VERIFYPEER=SOMETIMES\n")
    with pytest.raises(ConfigError, match="needs TLS_TRUSTCERTS"):
        load("TLS_VERIFYPEER=REQUIREPEER\n")
    assert any("EXTERNAL is never offered" in w for w in load("TLS_EXTERNAL=1\n").warnings)
