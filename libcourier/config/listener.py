"""The settings every listener (esmtpd, imapd, pop3d) shares, and the order it reads its files.

Courier's esmtpd, imapd and pop3d start scripts all hand couriertcpd the same
knobs: ADDRESS/PORT (or SSLADDRESS/SSLPORT for the -ssl service), MAXDAEMONS,
MAXPERIP, the TLS_* keys, a *START switch per service. Each daemon declares its
own keys and adds `listener_settings(...)`; `load_listener` reads the rc chain,
converts everything in one pass (so file:line errors come from one place) and
returns the common values as keyword arguments for the daemon's config class,
which subclasses `ListenerConfig`.

File order (what Courier's start scripts source, later files win):
- `<base>-ssl` service: `<base>` then `<base>-ssl` (imapd-ssl.rc, pop3d-ssl.rc, esmtpd-ssl).
- other variants (esmtpd-msa): `<base>` then the variant.
- the plain service: imapd.rc and pop3d.rc source `<base>-ssl` first and then
  `<base>` (STARTTLS on the plain port uses the TLS_* keys of the -ssl file);
  Courier's esmtpd keeps its STARTTLS TLS_* keys in `esmtpd` itself, so esmtpd
  reads only `esmtpd`. `ssl_keys_for_plain` says which kind a daemon is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libcourier.config.errors import ConfigError
from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import (
    Setting,
    load_settings,
    positive_int,
    to_address,
    to_bool,
    to_port_list,
    to_str,
)


def to_verifypeer(v: str) -> str:
    word = v.strip().upper() or "NONE"
    if word not in ("NONE", "PEER", "REQUIREPEER"):
        raise ValueError(f"expected NONE, PEER or REQUIREPEER, got {v!r}")
    return word


def listener_settings(*, proto: str, port: str, sslport: str, maxperip: str,
                      start_key: str, sslstart_key: str) -> tuple[Setting, ...]:
    """The common keys, with the defaults that differ per protocol (Courier's shipped values)."""
    return (
        Setting("ADDRESS", "address", to_address, "0", "listen address; 0 = all"),
        Setting("PORT", "port", to_port_list, port, f"{proto} port(s)"),
        Setting("SSLADDRESS", "ssladdress", to_address, "0", f"{proto} over TLS listen address"),
        Setting("SSLPORT", "sslport", to_port_list, sslport, f"{proto} over TLS port(s)"),
        Setting("MAXDAEMONS", "maxdaemons", positive_int, "40", "most concurrent sessions"),
        Setting("MAXPERIP", "maxperip", positive_int, maxperip, "most sessions from one IP"),
        Setting(start_key, "start", to_bool, "NO", "start the plain service"),
        Setting(sslstart_key, "sslstart", to_bool, "NO", "start the -ssl service"),
        Setting("PIDFILE", "pidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
        Setting("SSLPIDFILE", "sslpidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
        Setting("TCPDOPTS", "tcpdopts", to_str, "", "(accepted)"),
        Setting("LOGGEROPTS", "loggeropts", to_str, "", "(accepted)"),
        Setting("SSLLOGGEROPTS", "sslloggeropts", to_str, "", "(accepted)"),
        Setting("COURIERTLS", "couriertls", to_str, "", "(not used: TLS is built in)"),
        Setting("TLS_CERTFILE", "tls_certfile", to_str, "", "PEM with key and certificate; "
                "STARTTLS is offered when set"),
        Setting("TLS_PRIVATE_KEYFILE", "tls_private_keyfile", to_str, "", "key, if not in CERTFILE"),
        Setting("TLS_PROTOCOL", "tls_protocol", to_str, "", "minimum TLS version, e.g. TLSv1.2++"),
        Setting("TLS_STARTTLS_PROTOCOL", "tls_starttls_protocol", to_str, "", "(accepted)"),
        Setting("TLS_CIPHER_LIST", "tls_cipher_list", to_str, "", "OpenSSL cipher list"),
        Setting("TLS_PRIORITY", "tls_priority", to_str, "", "(GnuTLS; accepted)"),
        Setting("TLS_MIN_DH_BITS", "tls_min_dh_bits", to_str, "", "(accepted)"),
        Setting("TLS_TIMEOUT", "tls_timeout", to_str, "", "(accepted)"),
        Setting("TLS_DHPARAMS", "tls_dhparams", to_str, "", "(accepted)"),
        Setting("TLS_TRUSTCERTS", "tls_trustcerts", to_str, "", "CA file or directory that "
                "verifies client certificates"),
        Setting("TLS_VERIFYPEER", "tls_verifypeer", to_verifypeer, "NONE",
                "NONE, PEER (verify a client certificate if sent) or REQUIREPEER"),
        Setting("TLS_CACHEFILE", "tls_cachefile", to_str, "", "(accepted)"),
        Setting("TLS_CACHESIZE", "tls_cachesize", to_str, "", "(accepted)"),
        Setting("TLS_ALPN", "tls_alpn", to_str, "", "(accepted)"),
        Setting("TLS_EXTERNAL", "tls_external", to_str, "", "subject field of a verified "
                "client certificate that is the login for SASL EXTERNAL (e.g. emailaddress; "
                "1 = emailaddress, else CN); empty = no EXTERNAL"),
    )


def merge_settings(*groups: Iterable[Setting]) -> tuple[Setting, ...]:
    """One Setting per key; a later group's declaration of a key wins."""
    merged: dict[str, Setting] = {}
    for group in groups:
        for s in group:
            merged[s.key] = s
    return tuple(merged.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """What tcpd needs; each daemon's config class subclasses this and adds its own fields."""
    service: str
    etc: Path
    tls_on_connect: bool           # the -ssl service: TLS before the greeting
    addresses: tuple[tuple[str, int], ...]
    start: bool                    # the service's *START key
    maxdaemons: int
    maxperip: int
    tls_certfile: Path | None
    tls_keyfile: Path | None
    tls_protocol: str
    tls_cipher_list: str
    accessfile: Path | None = None
    tls_verifypeer: str = "NONE"          # NONE / PEER / REQUIREPEER
    tls_trustcerts: Path | None = None    # CA file or directory for client certificates
    tls_external: str = ""                # subject field that is the EXTERNAL login; "" = off


@dataclass(frozen=True, slots=True)
class LoadedListener:
    common: dict[str, Any]         # keyword arguments for the ListenerConfig fields
    values: dict[str, Any]         # every setting by attribute name (the daemon's own keys too)
    warnings: list[str]

    @property
    def ssl(self) -> bool:
        return bool(self.common["tls_on_connect"])


def resolve_path(etc: Path, value: str) -> Path | None:
    """A file setting: empty = none; relative = relative to the config directory."""
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else etc / p


def config_files(etc: Path, service: str, base: str, *, ssl_keys_for_plain: bool) -> list[Path]:
    """The rc files `service` reads, in order (see the module docstring)."""
    etc = Path(etc)
    if service != base:
        return [etc / base, etc / service]
    if ssl_keys_for_plain:
        return [etc / f"{base}-ssl", etc / base]
    return [etc / base]


def load_listener(etc: Path, service: str, *, base: str, services: tuple[str, ...],
                  schema: Iterable[Setting], ssl_keys_for_plain: bool) -> LoadedListener:
    """Read and convert one service's settings; ConfigError (with file:line) when bad.

    `schema` must include `listener_settings(...)`. The base file must exist (it is
    the one Courier ships for every variant); the others are optional.
    """
    if service not in services:
        raise ConfigError(f"unknown service {service!r} ({', '.join(services)})")
    etc = Path(etc)
    if not (etc / base).exists():
        raise ConfigError("no such file", str(etc / base))
    files = config_files(etc, service, base, ssl_keys_for_plain=ssl_keys_for_plain)
    scope = read_rc_files(files, missing_ok=True)
    v, warnings = load_settings(schema, scope, str(etc / service))
    ssl = service == f"{base}-ssl"
    cert = resolve_path(etc, v["tls_certfile"])
    if ssl and cert is None:
        raise ConfigError(f"{service} needs TLS_CERTFILE", str(etc / service))
    if ssl:
        addr, ports, start = v["ssladdress"], v["sslport"], v["sslstart"]
    else:
        addr, ports, start = v["address"], v["port"], v["start"]
    common = dict(
        service=service, etc=etc, tls_on_connect=ssl,
        addresses=tuple((addr, p) for p in ports), start=start,
        maxdaemons=v["maxdaemons"], maxperip=v["maxperip"],
        tls_certfile=cert, tls_keyfile=resolve_path(etc, v["tls_private_keyfile"]),
        tls_protocol=v["tls_protocol"], tls_cipher_list=v["tls_cipher_list"],
        accessfile=resolve_path(etc, v.get("accessfile", "")),
        tls_verifypeer=v["tls_verifypeer"], tls_trustcerts=resolve_path(etc, v["tls_trustcerts"]),
        tls_external=v["tls_external"].strip(),
    )
    if v["tls_verifypeer"] != "NONE" and cert is not None and common["tls_trustcerts"] is None:
        raise ConfigError(f"TLS_VERIFYPEER={v['tls_verifypeer']} needs TLS_TRUSTCERTS",
                          str(etc / service))
    if common["tls_external"] and v["tls_verifypeer"] == "NONE":
        warnings.append(f"{service}: TLS_EXTERNAL is set but TLS_VERIFYPEER=NONE asks for no "
                        "client certificate: EXTERNAL is never offered")
    return LoadedListener(common, v, warnings)
