"""TLS for the listener: Courier's TLS_CERTFILE / TLS_PROTOCOL / TLS_CIPHER_LIST, and self-signed certs.

The root listener loads the key before any fork (STYLE.md principle 5), so a
child that dropped privileges never needs to read it.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from libcourier.config.errors import ConfigError
from libcourier.durable import write_atomic

# TLS_PROTOCOL: Courier (OpenSSL build) names like "TLSv1.2", "TLSv1.2++" (that or
# newer); the GnuTLS build's "TLS1_2"; several joined by ':'. We take the lowest
# named version as the minimum: both builds mean "at least" in practice.
_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
    "tls1_0": ssl.TLSVersion.TLSv1,
    "tls1_1": ssl.TLSVersion.TLSv1_1,
    "tls1_2": ssl.TLSVersion.TLSv1_2,
    "tls1_3": ssl.TLSVersion.TLSv1_3,
}
_ANY = {"sslv23", "ssl23", "tls", "tlsv1+", "normal", ""}


def minimum_version(protocol: str) -> ssl.TLSVersion | None:
    """The minimum TLS version a TLS_PROTOCOL value names; None = library default."""
    found: list[ssl.TLSVersion] = []
    for word in protocol.replace(",", ":").split(":"):
        key = word.strip().lower().removeprefix("+vers-").rstrip("+")
        if key in _ANY:
            continue
        if key not in _VERSIONS:
            raise ConfigError(f"TLS_PROTOCOL: unknown protocol {word.strip()!r}")
        found.append(_VERSIONS[key])
    return min(found) if found else None


def server_context(certfile: str | Path, keyfile: str | Path | None = None, *,
                   protocol: str | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    """A server context; certfile may hold key and certificate in one PEM, as Courier's do."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Default floor TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1); TLS_PROTOCOL may lower it.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if protocol:
        wanted = minimum_version(protocol)
        if wanted is not None:
            try:
                ctx.minimum_version = wanted
            except (ValueError, ssl.SSLError) as exc:
                raise ConfigError(f"TLS_PROTOCOL: {exc}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(f"TLS_CIPHER_LIST: no usable cipher in {ciphers!r}") from None
    try:
        ctx.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    except FileNotFoundError:
        raise ConfigError("TLS certificate file not found", str(certfile)) from None
    except PermissionError:
        raise ConfigError("TLS certificate file not readable", str(certfile)) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"bad TLS certificate or key: {exc}", str(certfile)) from None
    return ctx


def make_self_signed(certfile: Path, hostname: str) -> None:
    """Write a new key and self-signed certificate (one PEM, mode 0600), valid 10 years."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    certfile = Path(certfile)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        san = x509.DNSName(hostname)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    pem += cert.public_bytes(serialization.Encoding.PEM)
    write_atomic(certfile, pem, mode=0o600)   # never a half-written key
