"""pop3d settings: Courier's `pop3d` and `pop3d-ssl` keys, declared once.

Courier's pop3d.rc sources pop3d-ssl then pop3d (STLS on port 110 needs the
TLS_* keys, which live in pop3d-ssl), and pop3d-ssl.rc sources pop3d then
pop3d-ssl. We read the same chains, so a Courier /etc/courier works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.config import ConfigError, Setting, load_settings, read_rc_files
from libcourier.config.schema import to_address, to_bool, to_int, to_port_list, to_str


def _positive(v: str) -> int:
    n = to_int(v)
    if n <= 0:
        raise ValueError(f"must be positive, got {n}")
    return n


SETTINGS = tuple({s.key: s for s in (
    Setting("ADDRESS", "address", to_address, "0", "listen address; 0 = all"),
    Setting("PORT", "port", to_port_list, "110", "POP3 port(s)"),
    Setting("SSLADDRESS", "ssladdress", to_address, "0", "POP3S listen address"),
    Setting("SSLPORT", "sslport", to_port_list, "995", "POP3S port(s)"),
    Setting("MAXDAEMONS", "maxdaemons", _positive, "40", "most concurrent sessions"),
    Setting("MAXPERIP", "maxperip", _positive, "4", "most sessions from one IP"),
    Setting("POP3DSTART", "pop3dstart", to_bool, "NO", "start pop3d"),
    Setting("POP3DSSLSTART", "pop3dsslstart", to_bool, "NO", "start pop3d-ssl"),
    Setting("POP3DSTARTTLS", "pop3dstarttls", to_bool, "YES", "offer STLS on pop3d"),
    Setting("POP3_STARTTLS", "pop3_starttls", to_bool, "YES", "Courier's other name for it"),
    Setting("POP3_TLS_REQUIRED", "tls_required", to_bool, "0", "refuse USER/PASS before STLS"),
    Setting("POP3AUTH", "pop3auth", to_str, "", "SASL mechanisms (not yet)"),
    Setting("POP3AUTH_ORIG", "pop3auth_orig", to_str, "", "(accepted)"),
    Setting("POP3AUTH_TLS", "pop3auth_tls", to_str, "", "SASL mechanisms under TLS (not yet)"),
    Setting("POP3AUTH_TLS_ORIG", "pop3auth_tls_orig", to_str, "", "(accepted)"),
    Setting("POP3_PROXY", "proxy", to_str, "0", "(not supported)"),
    Setting("POP3_PROXY_FOREIGN", "proxy_foreign", to_str, "0", "(not supported)"),
    Setting("POP3_LOG_DELETIONS", "log_deletions", to_bool, "0", "log each deleted message"),
    Setting("MAILDIRPATH", "maildirpath", to_str, "Maildir", "Maildir relative to home"),
    Setting("DEFDOMAIN", "defdomain", to_str, "", "appended to a login without @"),
    Setting("PIDFILE", "pidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("SSLPIDFILE", "sslpidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("TCPDOPTS", "tcpdopts", to_str, "", "(accepted)"),
    Setting("LOGGEROPTS", "loggeropts", to_str, "", "(accepted)"),
    Setting("SSLLOGGEROPTS", "sslloggeropts", to_str, "", "(accepted)"),
    Setting("POP3_UTF8", "utf8", to_str, "", "(accepted)"),
    Setting("COURIERTLS", "couriertls", to_str, "", "(not used: TLS is built in)"),
    Setting("TLS_CERTFILE", "tls_certfile", to_str, "", "PEM with key and certificate"),
    Setting("TLS_PRIVATE_KEYFILE", "tls_private_keyfile", to_str, "", "key, if not in CERTFILE"),
    Setting("TLS_PROTOCOL", "tls_protocol", to_str, "", "minimum TLS version, e.g. TLSv1.2++"),
    Setting("TLS_STARTTLS_PROTOCOL", "tls_starttls_protocol", to_str, "", "(accepted)"),
    Setting("TLS_CIPHER_LIST", "tls_cipher_list", to_str, "", "OpenSSL cipher list"),
    Setting("TLS_PRIORITY", "tls_priority", to_str, "", "(GnuTLS; accepted)"),
    Setting("TLS_MIN_DH_BITS", "tls_min_dh_bits", to_str, "", "(accepted)"),
    Setting("TLS_TIMEOUT", "tls_timeout", to_str, "", "(accepted)"),
    Setting("TLS_DHPARAMS", "tls_dhparams", to_str, "", "(accepted)"),
    Setting("TLS_TRUSTCERTS", "tls_trustcerts", to_str, "", "(accepted)"),
    Setting("TLS_VERIFYPEER", "tls_verifypeer", to_str, "NONE", "(accepted)"),
    Setting("TLS_CACHEFILE", "tls_cachefile", to_str, "", "(accepted)"),
    Setting("TLS_CACHESIZE", "tls_cachesize", to_str, "", "(accepted)"),
    Setting("TLS_ALPN", "tls_alpn", to_str, "", "(accepted)"),
    Setting("TLS_EXTERNAL", "tls_external", to_str, "", "(accepted)"),
)}.values())

SERVICES = ("pop3d", "pop3d-ssl")


@dataclass(frozen=True, slots=True)
class Pop3dConfig:
    service: str
    etc: Path
    tls_on_connect: bool
    addresses: tuple[tuple[str, int], ...]
    start: bool
    maxdaemons: int
    maxperip: int
    stls: bool                     # offer STLS (cert configured, plain port, enabled)
    tls_required: bool
    tls_certfile: Path | None
    tls_keyfile: Path | None
    tls_protocol: str
    tls_cipher_list: str
    maildirpath: str
    defdomain: str
    log_deletions: bool
    timeout: float = 600.0         # RFC 1939 §3: an autologout timer of at least 10 minutes


def _path(etc: Path, v: str) -> Path | None:
    if not v:
        return None
    p = Path(v)
    return p if p.is_absolute() else etc / p


def load_config(etc: Path, service: str) -> tuple[Pop3dConfig, list[str]]:
    """The typed settings of one service, and warnings (unknown keys); ConfigError if bad."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r} (pop3d or pop3d-ssl)")
    etc = Path(etc)
    if not (etc / "pop3d").exists():
        raise ConfigError("no such file", str(etc / "pop3d"))
    files = [etc / "pop3d-ssl", etc / "pop3d"] if service == "pop3d" else \
        [etc / "pop3d", etc / "pop3d-ssl"]
    scope = read_rc_files(files, missing_ok=True)
    v, warnings = load_settings(SETTINGS, scope, str(etc / service))
    ssl = service == "pop3d-ssl"
    cert = _path(etc, v["tls_certfile"])
    if ssl and cert is None:
        raise ConfigError("pop3d-ssl needs TLS_CERTFILE", str(etc / "pop3d-ssl"))
    if ssl:
        addr, ports, start = v["ssladdress"], v["sslport"], v["pop3dsslstart"]
    else:
        addr, ports, start = v["address"], v["port"], v["pop3dstart"]
    cfg = Pop3dConfig(
        service=service, etc=etc, tls_on_connect=ssl,
        addresses=tuple((addr, p) for p in ports), start=start,
        maxdaemons=v["maxdaemons"], maxperip=v["maxperip"],
        stls=(not ssl) and cert is not None and v["pop3dstarttls"] and v["pop3_starttls"],
        tls_required=v["tls_required"],
        tls_certfile=cert, tls_keyfile=_path(etc, v["tls_private_keyfile"]),
        tls_protocol=v["tls_protocol"], tls_cipher_list=v["tls_cipher_list"],
        maildirpath=v["maildirpath"] or "Maildir", defdomain=v["defdomain"],
        log_deletions=v["log_deletions"],
    )
    if cfg.tls_required and not cfg.stls and not ssl:
        warnings.append(f"{etc / 'pop3d'}: POP3_TLS_REQUIRED is set but STLS is not "
                        "available: nobody can log in on pop3d")
    return cfg, warnings
