"""esmtpd settings: Courier's `esmtpd`, `esmtpd-msa` and `esmtpd-ssl` keys, declared once.

Courier's esmtpd-msa start script sources esmtpd then esmtpd-msa; esmtpd-ssl
sources esmtpd then esmtpd-ssl (listening on SSLADDRESS/SSLPORT with TLS on
connect). We read the same chains so a Courier /etc/courier works unchanged.
The server name and size limit come from the control files `me` and
`sizelimit` (SIZELIMIT in the esmtpd file wins, as in Courier).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from libcourier.config import ConfigError, Setting, load_settings, read_rc_files
from libcourier.config.control import read_control_value
from libcourier.config.schema import (
    non_negative_int,
    to_address,
    to_bool,
    to_int,
    to_port_list,
    to_str,
)

DEFAULT_SIZELIMIT = 10 * 1024 * 1024      # Courier's sizelimit default (10485760)


def _positive(v: str) -> int:
    n = to_int(v)
    if n <= 0:
        raise ValueError(f"must be positive, got {n}")
    return n


def _optional_size(v: str) -> int | None:
    return None if v.strip() == "" else non_negative_int(v)


SETTINGS = (
    Setting("ADDRESS", "address", to_address, "0", "listen address; 0 = all"),
    Setting("PORT", "port", to_port_list, "smtp", "SMTP port(s); esmtpd-msa sets 587"),
    Setting("SSLADDRESS", "ssladdress", to_address, "0", "SMTPS listen address"),
    Setting("SSLPORT", "sslport", to_port_list, "smtps", "SMTPS port(s)"),
    Setting("MAXDAEMONS", "maxdaemons", _positive, "40", "most concurrent sessions"),
    Setting("MAXPERIP", "maxperip", _positive, "4", "most sessions from one IP"),
    Setting("MAXPERC", "maxperc", to_str, "", "(accepted; per C-block limit not implemented)"),
    Setting("ESMTPDSTART", "esmtpdstart", to_bool, "NO", "start esmtpd / esmtpd-msa"),
    Setting("ESMTPDSSLSTART", "esmtpdsslstart", to_bool, "NO", "start esmtpd-ssl"),
    Setting("SIZELIMIT", "sizelimit", _optional_size, "", "largest message; 0 = no limit; "
            "empty = the `sizelimit` control file or 10485760"),
    Setting("TLS_CERTFILE", "tls_certfile", to_str, "", "PEM with key and certificate; "
            "STARTTLS is offered when set"),
    Setting("TLS_PRIVATE_KEYFILE", "tls_private_keyfile", to_str, "", "key, if not in CERTFILE"),
    Setting("TLS_PROTOCOL", "tls_protocol", to_str, "", "minimum TLS version, e.g. TLSv1.2++"),
    Setting("TLS_STARTTLS_PROTOCOL", "tls_starttls_protocol", to_str, "", "(accepted)"),
    Setting("TLS_CIPHER_LIST", "tls_cipher_list", to_str, "", "OpenSSL cipher list"),
    Setting("TLS_PRIORITY", "tls_priority", to_str, "", "(GnuTLS; accepted)"),
    Setting("TLS_DHPARAMS", "tls_dhparams", to_str, "", "(accepted)"),
    Setting("TLS_TRUSTCERTS", "tls_trustcerts", to_str, "", "(accepted)"),
    Setting("TLS_VERIFYPEER", "tls_verifypeer", to_str, "NONE", "(accepted)"),
    Setting("TLS_EXTERNAL", "tls_external", to_str, "", "(accepted)"),
    Setting("TLS_CACHEFILE", "tls_cachefile", to_str, "", "(accepted)"),
    Setting("TLS_CACHESIZE", "tls_cachesize", to_str, "", "(accepted)"),
    Setting("COURIERTLS", "couriertls", to_str, "", "(not used: TLS is built in)"),
    Setting("ACCESSFILE", "accessfile", to_str, "", "text access file (couriertcpd -access)"),
    Setting("ESMTPAUTH", "esmtpauth", to_str, "", "AUTH mechanisms (later milestone; not advertised)"),
    Setting("ESMTPAUTH_TLS", "esmtpauth_tls", to_str, "", "AUTH mechanisms under TLS (later)"),
    Setting("ESMTPAUTH_WEBADMIN", "esmtpauth_webadmin", to_str, "", "(accepted)"),
    Setting("ESMTPAUTH_TLS_WEBADMIN", "esmtpauth_tls_webadmin", to_str, "", "(accepted)"),
    Setting("AUTH_REQUIRED", "auth_required", to_str, "0", "(accepted; AUTH comes later)"),
    Setting("ESMTP_TLS_REQUIRED", "esmtp_tls_required", to_str, "0", "(accepted)"),
    Setting("BOFHCHECKDNS", "bofhcheckdns", to_str, "", "(accepted)"),
    Setting("BOFHCHECKHELO", "bofhcheckhelo", to_str, "", "(accepted)"),
    Setting("BOFHNOEXPN", "bofhnoexpn", to_str, "", "(accepted; EXPN is not offered)"),
    Setting("BOFHNOVRFY", "bofhnovrfy", to_str, "", "(accepted; VRFY answers 252)"),
    Setting("TARPIT", "tarpit", to_str, "", "(accepted; later)"),
    Setting("NOADDMSGID", "noaddmsgid", to_str, "", "(accepted)"),
    Setting("NOADDDATE", "noadddate", to_str, "", "(accepted)"),
    Setting("NOADDRREWRITE", "noaddrrewrite", to_str, "", "(accepted)"),
    Setting("BLACKLISTS", "blacklists", to_str, "", "(accepted)"),
    Setting("ALLOW_EXCLUSIVE", "allow_exclusive", to_str, "", "(accepted)"),
    Setting("DROP", "drop", to_str, "", "(accepted)"),
    Setting("ESMTP_LOG_DIALOG", "esmtp_log_dialog", to_str, "", "(accepted)"),
    Setting("MAILUSER", "mailuser", to_str, "", "(courierd's MAILUSER is used)"),
    Setting("MAILGROUP", "mailgroup", to_str, "", "(courierd's MAILGROUP is used)"),
    Setting("PIDFILE", "pidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("SSLPIDFILE", "sslpidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("TCPDOPTS", "tcpdopts", to_str, "", "(accepted)"),
    Setting("LOGGEROPTS", "loggeropts", to_str, "", "(accepted)"),
    Setting("ULIMIT", "ulimit", to_str, "", "(accepted)"),
    Setting("ESMTP_CORK", "esmtp_cork", to_str, "", "(accepted)"),
)

SERVICES = ("esmtpd", "esmtpd-msa", "esmtpd-ssl")


@dataclass(frozen=True, slots=True)
class SmtpdConfig:
    service: str
    etc: Path
    hostname: str                  # `me`
    tls_on_connect: bool
    addresses: tuple[tuple[str, int], ...]
    start: bool
    maxdaemons: int
    maxperip: int
    sizelimit: int                 # 0 = none
    tls_certfile: Path | None
    tls_keyfile: Path | None
    tls_protocol: str
    tls_cipher_list: str
    accessfile: Path | None


def _path(etc: Path, v: str) -> Path | None:
    if not v:
        return None
    p = Path(v)
    return p if p.is_absolute() else etc / p


def config_files(etc: Path, service: str) -> list[Path]:
    if service == "esmtpd":
        return [etc / "esmtpd"]
    return [etc / "esmtpd", etc / service]


def load_config(etc: Path, service: str) -> tuple[SmtpdConfig, list[str]]:
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r} (esmtpd, esmtpd-msa or esmtpd-ssl)")
    etc = Path(etc)
    files = config_files(etc, service)
    if not files[0].exists():
        raise ConfigError("no such file", str(files[0]))
    scope = read_rc_files(files, missing_ok=True)
    v, warnings = load_settings(SETTINGS, scope, str(files[-1]))
    ssl = service == "esmtpd-ssl"
    cert = _path(etc, v["tls_certfile"])
    if ssl and cert is None:
        raise ConfigError("esmtpd-ssl needs TLS_CERTFILE", str(etc / "esmtpd-ssl"))
    if ssl:
        addr, ports, start = v["ssladdress"], v["sslport"], v["esmtpdsslstart"]
    else:
        addr, ports, start = v["address"], v["port"], v["esmtpdstart"]
    sizelimit = v["sizelimit"]
    if sizelimit is None:
        raw = read_control_value(etc / "sizelimit")
        try:
            sizelimit = DEFAULT_SIZELIMIT if raw is None else non_negative_int(raw)
        except ValueError as e:
            raise ConfigError(str(e), str(etc / "sizelimit"), 1) from None
    me = read_control_value(etc / "me") or socket.getfqdn()
    cfg = SmtpdConfig(
        service=service, etc=etc, hostname=me, tls_on_connect=ssl,
        addresses=tuple((addr, p) for p in ports), start=start,
        maxdaemons=v["maxdaemons"], maxperip=v["maxperip"], sizelimit=sizelimit,
        tls_certfile=cert, tls_keyfile=_path(etc, v["tls_private_keyfile"]),
        tls_protocol=v["tls_protocol"], tls_cipher_list=v["tls_cipher_list"],
        accessfile=_path(etc, v["accessfile"]),
    )
    return cfg, warnings
