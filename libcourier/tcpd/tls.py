"""TLS for the listener: Courier's TLS_CERTFILE / TLS_PROTOCOL / TLS_CIPHER_LIST, and self-signed certs.

The root listener loads the key before any fork (STYLE.md principle 5), so a
child that dropped privileges never needs to read it.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
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


# TLS_VERIFYPEER: Courier's couriertls values. NONE asks for no client certificate;
# PEER asks and verifies one if sent (a bad one fails the handshake); REQUIREPEER
# refuses a connection without a valid one.
_VERIFY = {
    "NONE": ssl.CERT_NONE,
    "PEER": ssl.CERT_OPTIONAL,
    "REQUIREPEER": ssl.CERT_REQUIRED,
}


def verify_mode(verifypeer: str) -> ssl.VerifyMode:
    """The ssl verify mode a TLS_VERIFYPEER value names; ConfigError for another word."""
    key = verifypeer.strip().upper() or "NONE"
    if key not in _VERIFY:
        raise ConfigError(f"TLS_VERIFYPEER: {verifypeer.strip()!r} is not NONE, PEER or REQUIREPEER")
    return _VERIFY[key]


def server_context(certfile: str | Path, keyfile: str | Path | None = None, *,
                   protocol: str | None = None, ciphers: str | None = None,
                   verifypeer: str = "NONE",
                   trustcerts: str | Path | None = None) -> ssl.SSLContext:
    """A server context; certfile may hold key and certificate in one PEM, as Courier's do.

    verifypeer/trustcerts are TLS_VERIFYPEER and TLS_TRUSTCERTS (a PEM file of CA
    certificates, or a directory of them with OpenSSL's hash links, as Courier takes).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mode = verify_mode(verifypeer)
    if mode != ssl.CERT_NONE:
        if not trustcerts:
            raise ConfigError(f"TLS_VERIFYPEER={verifypeer.strip()} needs TLS_TRUSTCERTS")
        _load_trust(ctx, Path(trustcerts))
        ctx.verify_mode = mode
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
    with _config_errors("TLS certificate file", "bad TLS certificate or key", certfile):
        ctx.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    return ctx


@contextmanager
def _config_errors(what: str, bad: str, path: str | Path) -> Iterator[None]:
    """A file the configuration names, read in the with-block: its failures as
    ConfigError with the path (missing, unreadable, or no good content)."""
    try:
        yield
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", str(path)) from None
    except PermissionError:
        raise ConfigError(f"{what} not readable", str(path)) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{bad}: {exc}", str(path)) from None


def _load_trust(ctx: ssl.SSLContext, trust: Path) -> None:
    with _config_errors("TLS_TRUSTCERTS", "TLS_TRUSTCERTS: no usable CA certificate", trust):
        if trust.is_dir():
            # A directory: every PEM in it, so the admin needs no c_rehash links.
            found = sorted(p for p in trust.iterdir() if p.is_file())
            for p in found[:MAX_TRUST_FILES]:
                try:
                    ctx.load_verify_locations(cafile=str(p))
                except ssl.SSLError:
                    continue     # not a certificate (a README, a CRL): Courier skips it too
            ctx.load_verify_locations(capath=str(trust))
        else:
            ctx.load_verify_locations(cafile=str(trust))


MAX_TRUST_FILES = 1000     # files read from a TLS_TRUSTCERTS directory
MAX_IDENTITY = 255         # longest identity we take from a certificate (a login name)

# Subject attribute names as Courier's TLS_EXTERNAL writes them (OpenSSL's short
# and long names, any case) -> the names Python's getpeercert() gives.
_SUBJECT_NAMES = {
    "emailaddress": "emailAddress", "email": "emailAddress",
    "cn": "commonName", "commonname": "commonName",
    "uid": "userId", "userid": "userId",
    "o": "organizationName", "ou": "organizationalUnitName",
}


def certificate_identity(cert: dict | None, field: str) -> str | None:
    """The login a verified peer certificate gives for TLS_EXTERNAL, or None.

    ``cert`` is ``SSLSocket.getpeercert()`` (empty unless the chain verified).
    ``field`` names the subject attribute (Courier's imapd-ssl: ``emailaddress``);
    ``1`` (or ``YES``) takes the subject's emailAddress, else its CN. A subject with
    the attribute twice gives None: which one would be the login is ambiguous.
    """
    if not cert or not field.strip():
        return None
    key = field.strip().lower()
    wanted = ("emailAddress", "commonName") if key in ("1", "yes", "y", "true") else \
        (_SUBJECT_NAMES.get(key, field.strip()),)
    attrs = [(name, value) for rdn in cert.get("subject", ()) for name, value in rdn]
    for name in wanted:
        values = [v for n, v in attrs if n.lower() == name.lower()]
        if len(values) > 1:
            return None
        if values:
            value = values[0].strip()
            ok = 0 < len(value) <= MAX_IDENTITY and value.isprintable() and " " not in value
            return value if ok else None
    return None


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
