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

from courier_smtpd.bofh import Bofh, load_bofh
from courier_smtpd.headers import MAX_HEADER_OCTETS

from libcourier.config import ConfigError
from libcourier.config.control import read_control_file, read_control_value
from libcourier.config.listener import (
    ListenerConfig,
    listener_settings,
    load_listener,
    merge_settings,
)
from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import Setting, load_settings, non_negative_int, to_bool, to_str
from libcourier.mx import RESOLVER_SETTING
from libcourier.sasl import offered_mechanisms

DEFAULT_SIZELIMIT = 10 * 1024 * 1024      # Courier's sizelimit default (10485760)
MAX_GREETING_LINES = 10
MAX_GREETING_LINE = 200


def courier_flag(v: str) -> bool:
    """Courier's test for BOFHCHECKDNS and friends: set, and not starting with 0."""
    return bool(v.strip()) and not v.strip().startswith("0")


def helo_level(v: str) -> int:
    """Courier's atoi(BOFHCHECKHELO): 0 off, 1 refuse, 2 defer."""
    v = v.strip()
    digits = v[:len(v) - len(v.lstrip("0123456789"))] if v else ""
    n = int(digits) if digits else 0
    return n if n in (0, 1, 2) else 1


def _optional_size(v: str) -> int | None:
    return None if v.strip() == "" else non_negative_int(v)


SETTINGS = merge_settings(listener_settings(
    proto="SMTP", port="smtp", sslport="smtps", maxperip="4",
    start_key="ESMTPDSTART", sslstart_key="ESMTPDSSLSTART"), (
    Setting("MAXPERC", "maxperc", to_str, "", "(accepted; per C-block limit not implemented)"),
    Setting("SIZELIMIT", "sizelimit", _optional_size, "", "largest message; 0 = no limit; "
            "empty = the `sizelimit` control file or 10485760"),
    Setting("ACCESSFILE", "accessfile", to_str, "", "text access file (couriertcpd -access)"),
    Setting("ESMTPAUTH", "esmtpauth", to_str, "", "AUTH mechanisms offered in the clear"),
    Setting("ESMTPAUTH_TLS", "esmtpauth_tls", to_str, "", "AUTH mechanisms under TLS "
            "(empty: those of ESMTPAUTH, as in Courier)"),
    Setting("ESMTPAUTH_WEBADMIN", "esmtpauth_webadmin", to_str, "", "(accepted)"),
    Setting("ESMTPAUTH_TLS_WEBADMIN", "esmtpauth_tls_webadmin", to_str, "", "(accepted)"),
    Setting("AUTH_REQUIRED", "auth_required", to_bool, "0", "MAIL needs AUTH first (530)"),
    Setting("ESMTP_TLS_REQUIRED", "esmtp_tls_required", to_str, "0", "(accepted)"),
    Setting("BOFHCHECKDNS", "bofhcheckdns", courier_flag, "0",
            "1 = refuse a return address whose domain cannot receive mail (DNS)"),
    Setting("BOFHCHECKHELO", "bofhcheckhelo", helo_level, "0",
            "1 = refuse (5xx), 2 = defer (4xx) a client whose HELO name does not lead "
            "back to its address by MX or A/AAAA; never for relay clients"),
    Setting("BOFHNOEXPN", "bofhnoexpn", to_str, "", "(accepted; EXPN is not offered)"),
    Setting("BOFHNOVRFY", "bofhnovrfy", to_str, "", "(accepted; VRFY answers 252)"),
    Setting("ESMTPD_TIMEOUT", "esmtpd_timeout", non_negative_int, "300",
            "(ours) seconds a client may stay silent before 421 and close, at a command "
            "or inside DATA/BDAT (RFC 5321 §4.5.3.2.7: at least 5 minutes; 0 = 300)"),
    Setting("ESMTPD_DATA_TIMEOUT", "esmtpd_data_timeout", non_negative_int, "1800",
            "(ours) seconds one message may take to arrive (DATA, or all its BDAT "
            "chunks), however steadily it trickles; then 421; 0 = no limit"),
    Setting("TARPIT", "tarpit", to_bool, "0", "1 = after each 5xx reply wait 8 s, doubling "
            "to 128 s, before reading on (Courier's teergrube); never for relay clients"),
    # Courier's submit adds both unless set to non-zero; its esmtpd file sets 1,
    # esmtpd-msa 0 (RFC 6409 §8: the submission server adds them).
    Setting("NOADDMSGID", "noaddmsgid", to_bool, "0", "1 = never add a missing Message-ID:"),
    Setting("NOADDDATE", "noadddate", to_bool, "0", "1 = never add a missing Date:"),
    Setting("BOFHHEADERLIMIT", "bofhheaderlimit", _optional_size, "",
            "largest header section in octets (at least 1000; default 100000, "
            "or `opt BOFHHEADERLIMIT=` in bofh)"),
    Setting("AUTH_SENDER_CHECK", "auth_sender_check", to_bool, "0",
            "1 = an authenticated client's MAIL FROM must be its login address "
            "(or login-ext@ the same domain) or <>"),
    Setting("NOADDRREWRITE", "noaddrrewrite", to_str, "", "(accepted)"),
    Setting("BLACKLISTS", "blacklists", to_str, "", "(accepted)"),
    Setting("ALLOW_EXCLUSIVE", "allow_exclusive", to_str, "", "(accepted)"),
    Setting("DROP", "drop", to_str, "", "(accepted)"),
    Setting("ESMTP_LOG_DIALOG", "esmtp_log_dialog", to_str, "", "(accepted)"),
    Setting("MAILUSER", "mailuser", to_str, "", "(courierd's MAILUSER is used)"),
    Setting("MAILGROUP", "mailgroup", to_str, "", "(courierd's MAILGROUP is used)"),
    Setting("ULIMIT", "ulimit", to_str, "", "(accepted)"),
    Setting("ESMTP_CORK", "esmtp_cork", to_str, "", "(accepted)"),
))

SERVICES = ("esmtpd", "esmtpd-msa", "esmtpd-ssl")


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpdConfig(ListenerConfig):
    hostname: str                  # `me`
    sizelimit: int                 # 0 = none
    auth_plain: tuple[str, ...] = ()   # SASL mechanisms offered in the clear (ESMTPAUTH)
    auth_tls: tuple[str, ...] = ()     # ... under TLS (ESMTPAUTH_TLS)
    auth_required: bool = False
    add_message_id: bool = False
    add_date: bool = False
    header_limit: int = MAX_HEADER_OCTETS  # BOFHHEADERLIMIT (esmtpd files, else bofh opt)
    auth_sender_check: bool = False
    bofh: Bofh = Bofh()                # the `bofh` control file
    greeting: tuple[str, ...] = ()     # the `esmtpgreeting` control file, as written
    tarpit: bool = False
    check_dns: bool = False            # BOFHCHECKDNS
    check_helo: int = 0                # BOFHCHECKHELO: 0 off, 1 refuse, 2 defer
    resolver: tuple[tuple[str, int], ...] = ()   # courierd's ESMTP_RESOLVER
    timeout: float = 300.0             # ESMTPD_TIMEOUT: idle seconds before 421
    data_timeout: float = 1800.0       # ESMTPD_DATA_TIMEOUT: one message's seconds; 0 = none


def _mechanisms(text: str, *, tls: bool) -> tuple[str, ...]:
    # Courier's ESMTPAUTH lists are the admin's choice, so a plain-text mechanism
    # listed in ESMTPAUTH is offered in the clear (allow_plaintext). SCRAM-* too: the
    # session answers the exchange's authd requests (AuthScramKeys/Proof). What authd
    # can verify (libcourier.authclient.verifiable_mechanisms: CRAM-*/SCRAM-* only with
    # HMAC/SCRAM secrets or clear passwords) changes when makeuserdb adds them, so each
    # session keeps only those at its start (main, Session's `verifiable`); the
    # listener asks for no client certificate (EXTERNAL), so that is never offered.
    return offered_mechanisms(text.split(), tls=tls, allow_plaintext=True, scram=True)


def load_config(etc: Path, service: str) -> tuple[SmtpdConfig, list[str]]:
    # Courier's esmtpd keeps its STARTTLS TLS_* keys in esmtpd itself: plain esmtpd
    # reads only esmtpd; esmtpd-msa and esmtpd-ssl read esmtpd and then their own file.
    loaded = load_listener(etc, service, base="esmtpd", services=SERVICES, schema=SETTINGS,
                           ssl_keys_for_plain=False)
    etc = Path(etc)
    sizelimit = loaded.values["sizelimit"]
    if sizelimit is None:
        raw = read_control_value(etc / "sizelimit")
        try:
            sizelimit = DEFAULT_SIZELIMIT if raw is None else non_negative_int(raw)
        except ValueError as e:
            raise ConfigError(str(e), str(etc / "sizelimit"), 1) from None
    me = read_control_value(etc / "me") or socket.getfqdn()
    v = loaded.values
    courierd = read_rc_files([etc / "courierd"], missing_ok=True)
    resolver = load_settings((RESOLVER_SETTING,), courierd, str(etc / "courierd"))[0][
        "esmtp_resolver"]
    try:
        bofh = load_bofh(etc)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e), str(etc / "bofh"), 1) from None
    header_limit = v["bofhheaderlimit"]
    if header_limit is None:
        opt = bofh.opts.get("BOFHHEADERLIMIT", "")
        header_limit = int(opt) if opt.isdigit() else MAX_HEADER_OCTETS
    header_limit = max(header_limit, 1000)     # Courier's floor
    # Courier's esmtpgreeting: the 220 text, one reply line per file line (printable
    # ASCII kept, each line and the count bounded so a stray file cannot flood a client).
    greeting = tuple("".join(c for c in line if " " <= c < "\x7f")[:MAX_GREETING_LINE]
                     for line in read_control_file(etc / "esmtpgreeting")[:MAX_GREETING_LINES])
    return SmtpdConfig(
        **loaded.common, hostname=me, sizelimit=sizelimit,
        auth_plain=_mechanisms(v["esmtpauth"], tls=False),
        auth_tls=_mechanisms(v["esmtpauth_tls"] or v["esmtpauth"], tls=True),
        auth_required=v["auth_required"],
        add_message_id=not v["noaddmsgid"], add_date=not v["noadddate"],
        header_limit=header_limit, auth_sender_check=v["auth_sender_check"],
        bofh=bofh, greeting=greeting, tarpit=v["tarpit"], check_dns=v["bofhcheckdns"],
        check_helo=v["bofhcheckhelo"],
        resolver=resolver,
        timeout=float(v["esmtpd_timeout"] or 300),
        data_timeout=float(v["esmtpd_data_timeout"])), loaded.warnings
