"""imapd settings: Courier's `imapd` and `imapd-ssl` keys, declared once (FORMATS.md §2.1).

Courier's imapd.rc sources imapd-ssl and then imapd (STARTTLS on port 143 needs
the TLS_* keys, which live in imapd-ssl), and imapd-ssl.rc sources imapd then
imapd-ssl. We read the same chains, so a Courier /etc/courier works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.config import ConfigError, Setting, load_settings, read_rc_files
from libcourier.config.schema import (
    non_negative_int,
    to_address,
    to_bool,
    to_int,
    to_port_list,
    to_str,
)

# Our default IMAP_CAPABILITY lists only what we implement. Left out of Courier's
# default: THREAD=ORDEREDSUBJECT, THREAD=REFERENCES, SORT, QUOTA (commands not
# implemented yet); ACL/ACL2 (IMAP_ACL defaults to 0 here for the same reason).
DEFAULT_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE IDLE LITERAL+"


def _positive(v: str) -> int:
    n = to_int(v)
    if n <= 0:
        raise ValueError(f"must be positive, got {n}")
    return n


SETTINGS = (
    Setting("ADDRESS", "address", to_address, "0", "listen address; 0 = all"),
    Setting("PORT", "port", to_port_list, "143", "IMAP port(s)"),
    Setting("SSLADDRESS", "ssladdress", to_address, "0", "IMAPS listen address"),
    Setting("SSLPORT", "sslport", to_port_list, "993", "IMAPS port(s)"),
    Setting("MAXDAEMONS", "maxdaemons", _positive, "40", "most concurrent sessions"),
    Setting("MAXPERIP", "maxperip", _positive, "20", "most sessions from one IP"),
    Setting("IMAPDSTART", "imapdstart", to_bool, "NO", "start imapd"),
    Setting("IMAPDSSLSTART", "imapdsslstart", to_bool, "NO", "start imapd-ssl"),
    Setting("IMAPDSTARTTLS", "imapdstarttls", to_bool, "YES", "offer STARTTLS on imapd"),
    Setting("IMAP_CAPABILITY", "capability", to_str, DEFAULT_CAPABILITY, "CAPABILITY words"),
    Setting("IMAP_CAPABILITY_TLS", "capability_tls", to_str, "", "CAPABILITY words under TLS"),
    Setting("IMAP_CAPABILITY_ORIG", "capability_orig", to_str, "", "Courier's sysconftool copy"),
    Setting("IMAP_CAPABILITY_TLS_ORIG", "capability_tls_orig", to_str, "", "ditto"),
    Setting("IMAP_TLS_REQUIRED", "tls_required", to_bool, "0", "refuse LOGIN before STARTTLS"),
    Setting("IMAP_IDLE_TIMEOUT", "idle_timeout", _positive, "60", "IDLE re-check seconds"),
    Setting("IMAP_KEYWORDS", "keywords", non_negative_int, "1", "custom keywords (not yet)"),
    Setting("IMAP_ACL", "acl", non_negative_int, "0", "ACL extension (not yet)"),
    Setting("IMAP_EMPTYTRASH", "emptytrash", to_str, "", "Trash:days (not yet)"),
    Setting("IMAP_MOVE_EXPUNGE_TO_TRASH", "move_expunge_to_trash", to_bool, "0", "(not yet)"),
    Setting("IMAP_TRASHFOLDERNAME", "trashfoldername", to_str, "Trash", "Trash folder"),
    Setting("IMAP_PROXY", "proxy", to_str, "0", "(not supported)"),
    Setting("IMAP_PROXY_FOREIGN", "proxy_foreign", to_str, "0", "(not supported)"),
    Setting("IMAP_MAILBOX_SANITY_CHECK", "sanity_check", to_str, "1", "(accepted)"),
    Setting("IMAP_DISABLETHREADSORT", "disablethreadsort", to_str, "0", "(accepted)"),
    Setting("IMAP_CHECK_ALL_FOLDERS", "check_all_folders", to_str, "0", "(accepted)"),
    Setting("IMAP_OBSOLETE_CLIENT", "obsolete_client", to_str, "0", "(accepted)"),
    Setting("IMAP_UMASK", "umask", to_str, "022", "(accepted)"),
    Setting("IMAP_ULIMITD", "ulimitd", to_str, "131072", "(accepted)"),
    Setting("IMAP_USELOCKS", "uselocks", to_str, "1", "(accepted)"),
    Setting("IMAP_SHAREDINDEXFILE", "sharedindexfile", to_str, "", "(accepted)"),
    Setting("IMAP_ENHANCEDIDLE", "enhancedidle", to_str, "0", "(accepted)"),
    Setting("IMAP_LOG_DELETIONS", "log_deletions", to_str, "0", "(accepted)"),
    Setting("IMAP_ID_FIELDS", "id_fields", to_str, "", "(accepted)"),
    Setting("IMAP_MAILBOX_SANITY_CHECK", "sanity_check", to_str, "1", "(accepted)"),
    Setting("SMAP_CAPABILITY", "smap_capability", to_str, "", "(not supported)"),
    Setting("OUTBOX", "outbox", to_str, "", "(not supported)"),
    Setting("OUTBOX_MULTIPLE_SEND", "outbox_multiple_send", to_str, "", "(accepted)"),
    Setting("MAILDIRPATH", "maildirpath", to_str, "Maildir", "Maildir relative to home"),
    Setting("PIDFILE", "pidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("SSLPIDFILE", "sslpidfile_courier", to_str, "", "Courier's; we use RUNDIR"),
    Setting("TCPDOPTS", "tcpdopts", to_str, "", "(accepted)"),
    Setting("LOGGEROPTS", "loggeropts", to_str, "", "(accepted)"),
    Setting("SSLLOGGEROPTS", "sslloggeropts", to_str, "", "(accepted)"),
    Setting("DEFDOMAIN", "defdomain", to_str, "", "appended to a login without @"),
    Setting("COURIERTLS", "couriertls", to_str, "", "(not used: TLS is built in)"),
    Setting("TLS_CERTFILE", "tls_certfile", to_str, "", "PEM with key and certificate"),
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
    Setting("TLS_PRIVATE_KEYFILE", "tls_private_keyfile", to_str, "", "key, if not in CERTFILE"),
)
SETTINGS = tuple({s.key: s for s in SETTINGS}.values())

SERVICES = ("imapd", "imapd-ssl")


@dataclass(frozen=True, slots=True)
class ImapdConfig:
    service: str
    etc: Path
    tls_on_connect: bool
    addresses: tuple[tuple[str, int], ...]
    start: bool
    maxdaemons: int
    maxperip: int
    capability: str
    capability_tls: str
    tls_required: bool
    starttls: bool                 # offer STARTTLS (cert configured, not TLS on connect)
    tls_certfile: Path | None
    tls_keyfile: Path | None
    tls_protocol: str
    tls_cipher_list: str
    maildirpath: str
    defdomain: str
    idle_timeout: int
    autologout: int = 30 * 60     # RFC 3501 §5.4: at least 30 minutes


def _path(etc: Path, v: str) -> Path | None:
    if not v:
        return None
    p = Path(v)
    return p if p.is_absolute() else etc / p


def load_config(etc: Path, service: str) -> tuple[ImapdConfig, list[str]]:
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r} (imapd or imapd-ssl)")
    etc = Path(etc)
    files = [etc / "imapd-ssl", etc / "imapd"] if service == "imapd" else \
        [etc / "imapd", etc / "imapd-ssl"]
    if not (etc / "imapd").exists():
        raise ConfigError("no such file", str(etc / "imapd"))
    scope = read_rc_files(files, missing_ok=True)
    v, warnings = load_settings(SETTINGS, scope, str(etc / service))
    ssl = service == "imapd-ssl"
    cert = _path(etc, v["tls_certfile"])
    if ssl and cert is None:
        raise ConfigError("imapd-ssl needs TLS_CERTFILE", str(etc / "imapd-ssl"))
    if ssl:
        addr, ports, start = v["ssladdress"], v["sslport"], v["imapdsslstart"]
    else:
        addr, ports, start = v["address"], v["port"], v["imapdstart"]
    cap = v["capability"] or "IMAP4rev1"
    cfg = ImapdConfig(
        service=service, etc=etc, tls_on_connect=ssl,
        addresses=tuple((addr, p) for p in ports), start=start,
        maxdaemons=v["maxdaemons"], maxperip=v["maxperip"],
        capability=cap, capability_tls=v["capability_tls"] or cap,
        tls_required=v["tls_required"],
        starttls=(not ssl) and cert is not None and v["imapdstarttls"],
        tls_certfile=cert, tls_keyfile=_path(etc, v["tls_private_keyfile"]),
        tls_protocol=v["tls_protocol"], tls_cipher_list=v["tls_cipher_list"],
        maildirpath=v["maildirpath"] or "Maildir", defdomain=v["defdomain"],
        idle_timeout=v["idle_timeout"],
    )
    return cfg, warnings


def capability_line(cfg: ImapdConfig, tls: bool) -> str:
    """Courier's imapcapability() order (FORMATS.md §2.1), for what we implement."""
    words = (cfg.capability_tls if tls else cfg.capability).split()
    if not tls and cfg.starttls:
        words.append("STARTTLS")
        if cfg.tls_required:
            words.append("LOGINDISABLED")
    # ENABLE / UTF8=ACCEPT (Courier's step 8) are not implemented, so not advertised.
    return " ".join(words)
