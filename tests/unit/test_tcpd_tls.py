"""TLS contexts from Courier settings, and self-signed certificates."""

from __future__ import annotations

import ssl
import stat

import pytest
from cryptography import x509

from libcourier.config.errors import ConfigError
from libcourier.tcpd.tls import make_self_signed, minimum_version, server_context


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "imapd.pem"
    make_self_signed(path, "mail.example.com")
    return path


def test_self_signed_is_private_one_pem_with_san(pem):
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    data = pem.read_bytes()
    assert b"PRIVATE KEY" in data and b"BEGIN CERTIFICATE" in data
    cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE"):])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.com"]
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    assert not list(pem.parent.glob(".*tmp"))


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """A full handshake in memory: no sockets, no threads."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="mail.example.com")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return server
    raise AssertionError("handshake did not finish")


def _client(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def test_server_context_handshakes(pem):
    server = _handshake(server_context(pem), _client())
    assert server.version() == "TLSv1.3"


def test_tls_protocol_is_a_minimum(pem):
    ctx = server_context(pem, protocol="TLSv1.3")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ssl.SSLError):
        _handshake(ctx, _client(maximum=ssl.TLSVersion.TLSv1_2))
    assert _handshake(server_context(pem, protocol="TLSv1.2++"),
                      _client(maximum=ssl.TLSVersion.TLSv1_2)).version() == "TLSv1.2"


@pytest.mark.parametrize("value, expected", [
    ("TLSv1.2++", ssl.TLSVersion.TLSv1_2),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3),
    ("TLS1_3:TLS1_2", ssl.TLSVersion.TLSv1_2),
    ("SSL23", None),
])
def test_minimum_version(value, expected):
    assert minimum_version(value) == expected


def test_bad_settings_are_config_errors(pem, tmp_path):
    with pytest.raises(ConfigError, match="unknown protocol"):
        server_context(pem, protocol="SSLv2")
    with pytest.raises(ConfigError, match="TLS_CIPHER_LIST"):
        server_context(pem, ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ConfigError, match="not found"):
        server_context(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=str(junk)):
        server_context(junk)


def test_ip_literal_gets_ip_san(tmp_path):
    path = tmp_path / "c.pem"
    make_self_signed(path, "127.0.0.1")
    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE"):])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
