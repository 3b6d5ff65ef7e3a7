"""imapd settings: Courier's `imapd` and `imapd-ssl` keys, declared once (FORMATS.md §2.1).

Courier's imapd.rc sources imapd-ssl and then imapd (STARTTLS on port 143 needs
the TLS_* keys, which live in imapd-ssl), and imapd-ssl.rc sources imapd then
imapd-ssl. We read the same chains, so a Courier /etc/courier works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from courier_imapd.core import COMMANDS
from courier_imapd.thread import ALGORITHMS as THREAD_ALGORITHMS

from libcourier.authclient import verifiable_mechanisms_for
from libcourier.config.listener import (
    ListenerConfig,
    listener_settings,
    load_listener,
    merge_settings,
)
from libcourier.config.schema import Setting, non_negative_int, positive_int, to_bool, to_str
from libcourier.sasl import offered_mechanisms


def folder_word(v: str) -> str:
    """A folder name under INBOX: no hierarchy separator, not empty."""
    v = v.strip()
    if not v or "." in v or "/" in v or len(v) > 200:
        raise ValueError(f"not a top-level folder name: {v!r}")
    return v


def specialuse_spec(v: str) -> tuple[tuple[str, str], ...]:
    """"Drafts=Drafts,Sent=Sent Items" -> (("Drafts", "Drafts"), ("Sent", "Sent Items"))."""
    out: list[tuple[str, str]] = []
    for item in v.split(","):
        if not item.strip():
            continue
        use, sep, name = item.partition("=")
        use = use.strip().lstrip("\\").capitalize()
        if not sep or use not in SPECIAL_USES or use == "Trash":
            raise ValueError(f"expected USE=Folder with USE one of {', '.join(SPECIAL_USES[:-1])}"
                             f" (Trash is IMAP_TRASHFOLDERNAME): {item.strip()!r}")
        out.append((use, folder_word(name)))
    return tuple(out)


def emptytrash_spec(v: str) -> tuple[tuple[str, int], ...]:
    """Courier's IMAP_EMPTYTRASH: "7" (the Trash, 7 days) or "Trash:7,Sent:30"; the
    folder "" means IMAP_TRASHFOLDERNAME. A day count below 1 counts as 1 (Courier)."""
    v = v.strip()
    if not v:
        return ()
    if ":" not in v and "," not in v:
        return (("", max(1, int(v))),)
    out = []
    for item in v.split(","):
        if not item.strip():
            continue
        name, sep, days = item.partition(":")
        if not sep:
            continue            # Courier skips an entry without ":"
        out.append((folder_word(name), max(1, int(days))))
    return tuple(out)

# Our default IMAP_CAPABILITY: Courier's list plus the extensions we implement.
# capability_line() still drops any word whose command is not implemented, so the
# list is honest whatever an admin writes; ACL/ACL2 come from IMAP_ACL as in Courier,
# ID from IMAP_ID_FIELDS, ENABLE UTF8=ACCEPT always (Courier's step 8).
DEFAULT_CAPABILITY = ("IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
                      "THREAD=REFERENCES SORT SORT=DISPLAY QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE IDLE "
                      "LITERAL+ MOVE UNSELECT SPECIAL-USE CREATE-SPECIAL-USE CONDSTORE QRESYNC "
                      "LIST-EXTENDED LIST-STATUS")

# Capability words that are not a command name but name something we implement.
# Any other word is advertised only when core.COMMANDS has its command (SORT,
# THREAD=..., MOVE, UNSELECT, ENABLE, ID, IDLE, NAMESPACE).
_IMPLEMENTED_WORDS = frozenset({
    "IMAP4REV1", "UIDPLUS", "CHILDREN", "LITERAL+", "SASL-IR", "QUOTA", "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE", "SPECIAL-USE", "CREATE-SPECIAL-USE", "UTF8=ACCEPT", "STARTTLS",
    "LOGINDISABLED", "CONDSTORE", "QRESYNC", "LIST-EXTENDED", "LIST-STATUS",
    "XMAGICTRASH",
})


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
    Setting("IMAP_HIBERNATE_TIMEOUT", "hibernate_timeout", non_negative_int, "1",
            "seconds without a command before a session hands its connection to the "
            "listener and its process exits (courier_imapd.hibernate); 0: never"),
    Setting("IMAP_REUSE_TIMEOUT", "reuse_timeout", non_negative_int, "10",
            "seconds a finished plain-TCP session's process waits for the same "
            "account's next login (courier_imapd.warm); 0: never"),
    Setting("IMAP_KEYWORDS", "keywords", non_negative_int, "1",
            "custom keywords (courierimapkeywords/); 0: off as in Courier (none read, "
            "none stored, PERMANENTFLAGS without \\*)"),
    Setting("IMAP_ACL", "acl", non_negative_int, "0",
            "1: advertise ACL ACL2=UNION (RFC 4314; the commands and rights checks on "
            "courierimapacl work either way, as in Courier)"),
    Setting("IMAP_EMPTYTRASH", "emptytrash", emptytrash_spec, "",
            "days, or Folder:days,...: purge old messages at login and logout"),
    Setting("IMAP_MOVE_EXPUNGE_TO_TRASH", "move_expunge_to_trash", to_bool, "0",
            "EXPUNGE moves messages to the Trash folder"),
    Setting("IMAP_TRASHFOLDERNAME", "trashfoldername", folder_word, "Trash", "Trash folder"),
    Setting("IMAP_SPECIALUSE_FOLDERS", "specialuse_folders", specialuse_spec,
            "Drafts=Drafts,Sent=Sent,Junk=Junk",
            "USE=Folder,...: RFC 6154 folders besides the Trash (\\Trash)"),
    Setting("IMAP_SPECIALUSE_CREATE", "specialuse_create", to_bool, "1",
            "create the special-use folders at login when missing"),
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
    Setting("IMAP_ID_FIELDS", "id_fields", to_str, "1",
            "ID (RFC 2971): empty: off; bits 1 version, 2 os, 4 os-version"),
    Setting("SMAP_CAPABILITY", "smap_capability", to_str, "", "(not supported)"),
    Setting("OUTBOX", "outbox", to_str, "", "(not supported)"),
    Setting("OUTBOX_MULTIPLE_SEND", "outbox_multiple_send", to_str, "", "(accepted)"),
    Setting("MAILDIRPATH", "maildirpath", to_str, "Maildir", "Maildir relative to home"),
    Setting("DEFDOMAIN", "defdomain", to_str, "", "appended to a login without @"),
))

SERVICES = ("imapd", "imapd-ssl")

SPECIAL_USES = ("Drafts", "Sent", "Junk", "Archive", "All", "Flagged", "Trash")   # RFC 6154 §2


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
    hibernate_timeout: int = 0    # IMAP_HIBERNATE_TIMEOUT; 0: sessions never hibernate
    reuse_timeout: int = 0        # IMAP_REUSE_TIMEOUT; 0: a session's process never reused
    id_fields: int | None = 1     # None: ID not offered
    move_expunge_to_trash: bool = False
    emptytrash: tuple[tuple[str, int], ...] = ()
    trashfoldername: str = "Trash"
    specialuse: tuple[tuple[str, str], ...] = ()   # (use, folder) besides the Trash
    specialuse_create: bool = True
    acl: bool = False              # IMAP_ACL: advertise ACL ACL2=UNION
    keywords: bool = True          # IMAP_KEYWORDS: custom keywords (courier_imapd.keywordpolicy)


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
        hibernate_timeout=v["hibernate_timeout"],
        reuse_timeout=v["reuse_timeout"],
        id_fields=_id_fields(v["id_fields"]),
        move_expunge_to_trash=v["move_expunge_to_trash"],
        emptytrash=v["emptytrash"], trashfoldername=v["trashfoldername"],
        specialuse=v["specialuse_folders"], specialuse_create=v["specialuse_create"],
        acl=v["acl"] > 0,
        keywords=v["keywords"] > 0,
    )
    warnings = list(loaded.warnings)
    # Words of our default list are all implemented; anything else an admin lists
    # and we lack is worth a word.
    expected = set(DEFAULT_CAPABILITY.upper().split())
    dropped = dict.fromkeys(w for w in (cfg.capability + " " + cfg.capability_tls).split()
                            if not implemented(w) and w.upper() not in expected)
    if dropped:
        warnings.append("IMAP_CAPABILITY: not implemented, not advertised: "
                        + " ".join(dropped))
    return cfg, warnings


def _id_fields(v: str) -> int | None:
    # Courier offers ID whenever IMAP_ID_FIELDS is set; its value is a bit mask.
    v = v.strip()
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        return 0


def implemented(word: str) -> bool:
    """Whether a CAPABILITY word names something this imapd does (AUTH= is checked
    separately against the SASL mechanisms)."""
    w = word.upper()
    if w.startswith("AUTH="):
        return True
    if w in _IMPLEMENTED_WORDS:
        return True
    verb, _, arg = w.partition("=")
    if verb == "THREAD":
        return arg in THREAD_ALGORITHMS          # not just any THREAD=<word>
    if verb == "SORT":
        return arg in ("", "DISPLAY")            # RFC 5957 DISPLAYFROM/DISPLAYTO are done
    return verb in COMMANDS


# What authd can verify follows its modules (libcourier.authclient.verifiable_mechanisms:
# CRAM-* only when accounts have HMAC secrets or clear passwords). EXTERNAL needs no
# secret (authd's PRE finds the account): it is offered whenever the connection's
# verified client certificate gives a login (TLS_EXTERNAL), as Courier adds it.


def sasl_mechanisms(cfg: ImapdConfig, tls: bool, external: bool = False) -> tuple[str, ...]:
    """The AUTH=<mech> words of IMAP_CAPABILITY(_TLS) we offer (Courier's model: the
    admin lists them there), kept to what libcourier.sasl implements and authd can
    verify; none in the clear while LOGINDISABLED (RFC 3501 §6.2.3); EXTERNAL last
    when ``external`` (a client certificate gave a login)."""
    words = (cfg.capability_tls if tls else cfg.capability).split()
    configured = [w[5:] for w in words if w.upper().startswith("AUTH=")]
    disabled = not tls and cfg.starttls and cfg.tls_required
    verifiable = verifiable_mechanisms_for(cfg.etc) | {"EXTERNAL"}
    return tuple(m for m in offered_mechanisms([*configured, "EXTERNAL"], tls=tls,
                                               allow_plaintext=not disabled,
                                               external=external and tls, scram=True)
                 if m in verifiable)


def capability_line(cfg: ImapdConfig, tls: bool, external: bool = False) -> str:
    """Courier's imapcapability() order (FORMATS.md §2.1), for what we implement."""
    offered = sasl_mechanisms(cfg, tls, external)
    words = [w for w in (cfg.capability_tls if tls else cfg.capability).split()
             if implemented(w) and (not w.upper().startswith("AUTH=") or w[5:].upper() in offered)]
    words = [w for w in words if w.upper() != "AUTH=EXTERNAL"]   # placed at step 5 below
    if cfg.acl:
        words += ["ACL", "ACL2=UNION"]      # Courier's step 3 (FORMATS.md §2.1)
    if cfg.id_fields is not None:
        words.append("ID")
    if not tls and cfg.starttls:
        words.append("STARTTLS")
        if cfg.tls_required:
            words.append("LOGINDISABLED")
    elif "EXTERNAL" in offered:
        words.append("AUTH=EXTERNAL")   # step 5's "otherwise": a certificate gave a login
    if cfg.move_expunge_to_trash:
        words.append("XMAGICTRASH")
    words += ["ENABLE", "UTF8=ACCEPT"]
    seen: set[str] = set()
    out = []
    for w in words:     # an admin's list may name what we add: say each word once
        if w.upper() not in seen:
            seen.add(w.upper())
            out.append(w)
    return " ".join(out)
