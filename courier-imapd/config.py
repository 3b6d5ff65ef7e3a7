"""imapd settings: Courier's `imapd` and `imapd-ssl` keys, declared once (FORMATS.md §2.1).

Courier's imapd.rc sources imapd-ssl and then imapd (STARTTLS on port 143 needs
the TLS_* keys, which live in imapd-ssl), and imapd-ssl.rc sources imapd then
imapd-ssl. We read the same chains, so a Courier /etc/courier works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.config.listener import (
    ListenerConfig,
    listener_settings,
    load_listener,
    merge_settings,
)
from libcourier.config.schema import Setting, non_negative_int, positive_int, to_bool, to_str
from libcourier.sasl import offered_mechanisms

# Our default IMAP_CAPABILITY lists only what we implement. Left out of Courier's
# default: THREAD=ORDEREDSUBJECT, THREAD=REFERENCES, SORT, QUOTA (commands not
# implemented yet); ACL/ACL2 (IMAP_ACL defaults to 0 here for the same reason).
DEFAULT_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE IDLE LITERAL+ MOVE"


SETTINGS = merge_settings(listener_settings(
    proto="IMAP", port="143", sslport="993", maxperip="20",
    start_key="IMAPDSTART", sslstart_key="IMAPDSSLSTART"), (
    Setting("IMAPDSTARTTLS", "imapdstarttls", to_bool, "YES", "offer STARTTLS on imapd"),
    Setting("IMAP_CAPABILITY", "capability", to_str, DEFAULT_CAPABILITY, "CAPABILITY words"),
    Setting("IMAP_CAPABILITY_TLS", "capability_tls", to_str, "", "CAPABILITY words under TLS"),
    Setting("IMAP_CAPABILITY_ORIG", "capability_orig", to_str, "", "Courier's sysconftool copy"),
    Setting("IMAP_CAPABILITY_TLS_ORIG", "capability_tls_orig", to_str, "", "ditto"),
    Setting("IMAP_TLS_REQUIRED", "tls_required", to_bool, "0", "refuse LOGIN before STARTTLS"),
    Setting("IMAP_IDLE_TIMEOUT", "idle_timeout", positive_int, "60", "IDLE re-check seconds"),
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
    Setting("SMAP_CAPABILITY", "smap_capability", to_str, "", "(not supported)"),
    Setting("OUTBOX", "outbox", to_str, "", "(not supported)"),
    Setting("OUTBOX_MULTIPLE_SEND", "outbox_multiple_send", to_str, "", "(accepted)"),
    Setting("MAILDIRPATH", "maildirpath", to_str, "Maildir", "Maildir relative to home"),
    Setting("DEFDOMAIN", "defdomain", to_str, "", "appended to a login without @"),
))

SERVICES = ("imapd", "imapd-ssl")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImapdConfig(ListenerConfig):
    capability: str
    capability_tls: str
    tls_required: bool
    starttls: bool                 # offer STARTTLS (cert configured, not TLS on connect)
    maildirpath: str
    defdomain: str
    idle_timeout: int
    autologout: int = 30 * 60     # RFC 3501 §5.4: at least 30 minutes


def load_config(etc: Path, service: str) -> tuple[ImapdConfig, list[str]]:
    # imapd reads imapd-ssl then imapd (STARTTLS uses the TLS_* keys of imapd-ssl).
    loaded = load_listener(etc, service, base="imapd", services=SERVICES, schema=SETTINGS,
                           ssl_keys_for_plain=True)
    v = loaded.values
    cap = v["capability"] or "IMAP4rev1"
    cfg = ImapdConfig(
        **loaded.common,
        capability=cap, capability_tls=v["capability_tls"] or cap,
        tls_required=v["tls_required"],
        starttls=(not loaded.ssl) and loaded.common["tls_certfile"] is not None
        and v["imapdstarttls"],
        maildirpath=v["maildirpath"] or "Maildir", defdomain=v["defdomain"],
        idle_timeout=v["idle_timeout"],
    )
    return cfg, loaded.warnings


# SASL mechanisms authd can verify today: it checks a password (PLAIN, LOGIN) but
# answers FAIL to CRAM (Courier's stored HMAC states are not supported yet), and
# the listener asks for no client certificate (EXTERNAL).
SASL_VERIFIABLE = frozenset({"PLAIN", "LOGIN"})


def sasl_mechanisms(cfg: ImapdConfig, tls: bool) -> tuple[str, ...]:
    """The AUTH=<mech> words of IMAP_CAPABILITY(_TLS) we offer (Courier's model: the
    admin lists them there), kept to what libcourier.sasl implements and authd can
    verify; none in the clear while LOGINDISABLED (RFC 3501 §6.2.3)."""
    words = (cfg.capability_tls if tls else cfg.capability).split()
    configured = [w[5:] for w in words if w.upper().startswith("AUTH=")]
    disabled = not tls and cfg.starttls and cfg.tls_required
    return tuple(m for m in offered_mechanisms(configured, tls=tls, allow_plaintext=not disabled)
                 if m in SASL_VERIFIABLE)


def capability_line(cfg: ImapdConfig, tls: bool) -> str:
    """Courier's imapcapability() order (FORMATS.md §2.1), for what we implement."""
    offered = sasl_mechanisms(cfg, tls)
    words = [w for w in (cfg.capability_tls if tls else cfg.capability).split()
             if not w.upper().startswith("AUTH=") or w[5:].upper() in offered]
    if not tls and cfg.starttls:
        words.append("STARTTLS")
        if cfg.tls_required:
            words.append("LOGINDISABLED")
    # ENABLE / UTF8=ACCEPT (Courier's step 8) are not implemented, so not advertised.
    return " ".join(words)
