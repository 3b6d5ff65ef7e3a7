"""pop3d settings: Courier's `pop3d` and `pop3d-ssl` keys, declared once.

Courier's pop3d.rc sources pop3d-ssl then pop3d (STLS on port 110 needs the
TLS_* keys, which live in pop3d-ssl), and pop3d-ssl.rc sources pop3d then
pop3d-ssl. We read the same chains, so a Courier /etc/courier works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.authclient import verifiable_mechanisms_for
from libcourier.config.listener import (
    ListenerConfig,
    listener_settings,
    load_listener,
    merge_settings,
)
from libcourier.config.schema import Setting, positive_int, to_bool, to_str
from libcourier.sasl import IMPLEMENTED

SETTINGS = merge_settings(listener_settings(
    proto="POP3", port="110", sslport="995", maxperip="4",
    start_key="POP3DSTART", sslstart_key="POP3DSSLSTART"), (
    Setting("POP3DSTARTTLS", "pop3dstarttls", to_bool, "YES", "offer STLS on pop3d"),
    Setting("POP3_STARTTLS", "pop3_starttls", to_bool, "YES", "Courier's other name for it"),
    Setting("POP3_TLS_REQUIRED", "tls_required", to_bool, "0", "refuse USER/PASS before STLS"),
    Setting("POP3AUTH", "pop3auth", to_str, "", "SASL mechanisms offered in the clear"),
    Setting("POP3AUTH_ORIG", "pop3auth_orig", to_str, "", "(accepted)"),
    Setting("POP3AUTH_TLS", "pop3auth_tls", to_str, "", "SASL mechanisms offered under TLS"),
    Setting("POP3AUTH_TLS_ORIG", "pop3auth_tls_orig", to_str, "", "(accepted)"),
    Setting("POP3_PROXY", "proxy", to_str, "0", "(not supported)"),
    Setting("POP3_PROXY_FOREIGN", "proxy_foreign", to_str, "0", "(not supported)"),
    Setting("POP3_LOG_DELETIONS", "log_deletions", to_bool, "0", "log each deleted message"),
    Setting("MAILDIRPATH", "maildirpath", to_str, "Maildir", "Maildir relative to home"),
    Setting("DEFDOMAIN", "defdomain", to_str, "", "appended to a login without @"),
    Setting("POP3_UTF8", "utf8", to_str, "", "(accepted)"),
    # Not Courier keys (its pop3d has no such limit): ours, named like its POP3_ keys.
    Setting("POP3_MAX_BAD_COMMANDS", "max_bad_commands", positive_int, "10",
            "close the connection after this many bad commands"),
    Setting("POP3_MAX_FAILED_LOGINS", "max_failed_logins", positive_int, "3",
            "close the connection after this many failed logins"),
))

SERVICES = ("pop3d", "pop3d-ssl")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pop3dConfig(ListenerConfig):
    stls: bool                     # offer STLS (cert configured, plain port, enabled)
    tls_required: bool
    maildirpath: str
    defdomain: str
    log_deletions: bool
    pop3auth: tuple[str, ...] = ()        # SASL mechanisms (RFC 5034) in the clear
    pop3auth_tls: tuple[str, ...] = ()    # and under TLS (STLS or pop3d-ssl)
    timeout: float = 600.0         # RFC 1939 §3: an autologout timer of at least 10 minutes
    max_bad_commands: int = 10     # POP3_MAX_BAD_COMMANDS
    max_failed_logins: int = 3     # POP3_MAX_FAILED_LOGINS


def load_config(etc: Path, service: str) -> tuple[Pop3dConfig, list[str]]:
    """The typed settings of one service, and warnings (unknown keys); ConfigError if bad."""
    # pop3d reads pop3d-ssl then pop3d (STLS uses the TLS_* keys of pop3d-ssl).
    loaded = load_listener(etc, service, base="pop3d", services=SERVICES, schema=SETTINGS,
                           ssl_keys_for_plain=True)
    v, warnings, ssl = loaded.values, loaded.warnings, loaded.ssl
    cfg = Pop3dConfig(
        **loaded.common,
        stls=(not ssl) and loaded.common["tls_certfile"] is not None
        and v["pop3dstarttls"] and v["pop3_starttls"],
        tls_required=v["tls_required"],
        maildirpath=v["maildirpath"] or "Maildir", defdomain=v["defdomain"],
        log_deletions=v["log_deletions"],
        pop3auth=sasl_list(v["pop3auth"], "POP3AUTH", warnings, verifiable_mechanisms_for(etc)),
        pop3auth_tls=sasl_list(v["pop3auth_tls"], "POP3AUTH_TLS", warnings,
                               verifiable_mechanisms_for(etc)),
        max_bad_commands=v["max_bad_commands"], max_failed_logins=v["max_failed_logins"],
    )
    if cfg.tls_required and not cfg.stls and not ssl:
        warnings.append(f"{Path(etc) / 'pop3d'}: POP3_TLS_REQUIRED is set but STLS is not "
                        "available: nobody can log in on pop3d")
    return cfg, warnings


# What authd can verify follows its modules (libcourier.authclient.verifiable_mechanisms:
# CRAM-* and SCRAM-* only when accounts have HMAC/SCRAM secrets or clear passwords) and
# changes when makeuserdb adds them, so each connection offers the configured
# mechanisms authd names at that moment (main.offered); the listener asks for no
# client certificate (EXTERNAL). Offering more would only produce failures.
SASL_VERIFIABLE = frozenset({"PLAIN", "LOGIN"})


def sasl_list(value: str, key: str, warnings: list[str],
              verifiable: frozenset[str] = SASL_VERIFIABLE) -> tuple[str, ...]:
    """Courier's POP3AUTH / POP3AUTH_TLS: mechanism names separated by spaces, kept when
    libcourier.sasl implements them (a warning when authd cannot verify one yet)."""
    out: list[str] = []
    for name in value.split():
        mech = name.upper()
        if mech == "EXTERNAL":
            warnings.append(f"{key}: {name} is offered from TLS_EXTERNAL (a client "
                            "certificate), not from this list")
        elif mech not in IMPLEMENTED:
            warnings.append(f"{key}: {name} is not offered (not implemented)")
        elif mech in out:
            continue
        else:
            if mech not in verifiable:
                warnings.append(f"{key}: {name} is offered only once authd can verify it "
                                f"(now: {', '.join(sorted(verifiable))})")
            out.append(mech)
    return tuple(out)
