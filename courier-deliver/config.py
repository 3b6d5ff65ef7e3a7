"""courierd's settings: the layout keys plus the queue's timing, from ETC/courierd,
and the domain lists that decide which recipients are local.

Retries follow Courier's two-level schedule from the control files
retryalpha, retrybeta, retrygamma and retrymaxdelta (man courier(8)): retrybeta
attempts retryalpha apart, then a wait of retrygamma, doubled after each group
up to retrygamma*2^retrymaxdelta; defaults 5m/3/15m/3 give waits of
5,5,5,15,5,5,30,5,5,60,5,5,120,... minutes. Two courier-py keys in courierd
shorten it for tests and small sites: RETRYFIRST replaces both retryalpha and
retrygamma, RETRYMAX caps every wait. The control files `queuetime` (1w) and
`warntime` (4h) say when a message is given up (and bounced) and when its
sender gets one delay warning; the QUEUETIME/WARNTIME keys are used when the
control file is absent.

Remote delivery (esmtp) settings live in EsmtpConfig (remote.py reads them).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from courier_deliver import dotcourier, dsn
from courier_deliver.routes import AuthClient, Routes, load_authclient, load_routes

from libcourier.aliases import AliasTable
from libcourier.config.control import read_control_file, read_control_lines, read_control_value
from libcourier.config.errors import ConfigError
from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import Setting, load_settings, non_negative_int
from libcourier.idn import IdnError, to_ascii
from libcourier.layout import COURIERD_SETTINGS, Layout, load_layout
from libcourier.mx import RESOLVER_SETTING


def positive_int(v: str) -> int:
    n = non_negative_int(v)
    if n == 0:
        raise ValueError("must be at least 1")
    return n


def to_duration(v: str) -> int:
    """Seconds; Courier's queuetime syntax: a number with an optional unit s/m/h/d/w."""
    v = v.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    mult = 1
    if v and v[-1] in units:
        mult = units[v[-1]]
        v = v[:-1]
    if not v.isdigit():
        raise ValueError(f"expected a duration like 300, 5m, 7d, got {v!r}")
    return int(v) * mult


def to_defaultdelivery(v: str) -> str:
    """Courier's DEFAULTDELIVERY: `.courier` lines (dot-courier(5)) -- a Maildir
    or mbox path, `| program`, `|| program`, forwarding addresses -- one or
    several (a quoted value may span lines, as Courier's courierd shows)."""
    v = v.strip()
    try:
        if not dotcourier.default_instructions(v):
            raise ValueError("no delivery instruction in it")
    except dotcourier.DotCourierError as e:
        raise ValueError(str(e)) from None
    return v


def optional_duration(v: str) -> int | None:
    return None if not v.strip() else to_duration(v)


def to_flag(v: str) -> bool:
    v = v.strip()
    if v not in ("0", "1"):
        raise ValueError(f"expected 0 or 1, got {v!r}")
    return v == "1"




def to_port(v: str) -> int:
    n = positive_int(v)
    if n > 65535:
        raise ValueError("a port is at most 65535")
    return n


QUEUE_SETTINGS = (
    Setting("RETRYFIRST", "retry_first", optional_duration, "",
            "courier-py: replaces retryalpha and retrygamma (empty: Courier's schedule)"),
    Setting("RETRYMAX", "retry_max", optional_duration, "",
            "courier-py: the longest wait between retries (empty: no cap)"),
    Setting("QUEUETIME", "queuetime", to_duration, "1w",
            "used when the queuetime control file is absent: after this long in "
            "the queue a message is bounced"),
    Setting("WARNTIME", "warntime", to_duration, "4h",
            "used when the warntime control file is absent: after this long the "
            "sender gets one delay warning"),
    Setting("RESCAN", "rescan", positive_int, "60",
            "seconds between scans of the spool for messages not announced"),
    Setting("MAXDELS", "maxdels", positive_int, "4",
            "messages delivered at the same time"),
    Setting("DEFAULTDELIVERY", "defaultdelivery", to_defaultdelivery, "./Maildir",
            "delivery instructions (.courier syntax: ./Maildir, an mbox file, "
            "| program, addresses) for accounts without a .courier file or "
            "their own Maildir; read at start"),
    # Remote delivery. Courier keeps MAXDELS/MAXHOST/MAXRCPT in module.esmtp;
    # courier-py has no modules, so they are courierd keys with the esmtp
    # module's Debian values.
    Setting("ESMTPMAXDELS", "esmtp_maxdels", positive_int, "40",
            "remote SMTP sessions open at the same time"),
    Setting("MAXHOST", "esmtp_maxhost", positive_int, "4",
            "remote SMTP sessions open at the same time to one host"),
    Setting("MAXRCPT", "esmtp_maxrcpt", positive_int, "100",
            "recipients in one SMTP transaction"),
    Setting("ESMTP_USE_STARTTLS", "esmtp_starttls", to_flag, "1",
            "use STARTTLS when the remote server offers it"),
    Setting("ESMTP_PREFER_IPV6_MX", "esmtp_prefer_ipv6", to_flag, "0",
            "try a mail exchanger's IPv6 addresses before its IPv4 ones"),
    Setting("ESMTP_TLS_VERIFY_DOMAIN", "esmtp_tls_verify", to_flag, "0",
            "verify the certificate of every server by its name (/SECURITY=REQUIRED too)"),
    Setting("TLS_TRUSTCERTS", "tls_trustcerts", str, "",
            "CA certificates (file or directory) for verifying servers; empty: the system's"),
    Setting("TLS_TRUSTSECURITYCERTS", "tls_trustsecuritycerts", str, "",
            "CA certificates (file or directory) that verify servers for messages sent "
            "with SECURITY=STARTTLS; empty: such messages cannot be relayed and bounce "
            "(Courier's rule)"),
    RESOLVER_SETTING,
    Setting("ESMTPPORT", "esmtp_port", to_port, "25",
            "courier-py: the port of mail exchangers found in DNS"),
)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Courier's retry schedule (man courier(8), retryalpha ... retrymaxdelta)."""

    alpha: int = 300
    beta: int = 3
    gamma: int = 900
    maxdelta: int = 3
    cap: int | None = None

    def delay(self, attempts: int) -> int:
        """Seconds to wait after the `attempts`-th failed attempt (1-based):
        beta waits of alpha, then groups of (gamma*2^k, then beta-1 alphas)."""
        if attempts < 1:
            return 0
        if attempts <= self.beta:
            d = self.alpha
        else:
            group, pos = divmod(attempts - self.beta - 1, self.beta)
            d = self.gamma * 2 ** min(group, self.maxdelta) if pos == 0 else self.alpha
        return d if self.cap is None else min(d, self.cap)


@dataclass(frozen=True, slots=True)
class EsmtpTimeouts:
    """Courier's esmtptimeout* control files (seconds). RFC 5321 §4.5.3.2 asks
    for at least 5 minutes per reply and 10 for the reply to the final dot."""

    connect: int = 60        # esmtptimeoutconnect
    helo: int = 300          # esmtptimeouthelo: the greeting and the EHLO reply
    reply: int = 600         # esmtptimeout: every other reply
    data: int = 600          # esmtptimeoutdata: the reply to the final dot
    quit: int = 10           # esmtptimeoutquit


@dataclass(frozen=True, slots=True)
class EsmtpConfig:
    helo: str
    maxdels: int = 40
    maxhost: int = 4
    maxrcpt: int = 100
    port: int = 25
    starttls: bool = True
    prefer_ipv6: bool = False
    verify: bool = False
    resolver: tuple[tuple[str, int], ...] = ()
    routes: Routes = field(default_factory=Routes)
    auth: AuthClient = field(default_factory=AuthClient)   # esmtpauthclient
    keepalive: int = 60                  # esmtptimeoutkeepalive: idle reuse window, 0 = off
    me: str = ""                         # this host's name (MX loop rule)
    # Courier's backuprelay control file: where remote mail still undelivered
    # after warntime goes (looked up by MX, then A/AAAA), instead of a delay notice.
    backuprelay: str | None = None
    backuprelay_after: int = 4 * 3600    # warntime
    timeouts: EsmtpTimeouts = field(default_factory=EsmtpTimeouts)
    # Built before the privilege drop (the CA files may be unreadable after it).
    tls_client: ssl.SSLContext | None = None      # opportunistic: no verification
    tls_verified: ssl.SSLContext | None = None    # /SECURITY=REQUIRED, ESMTP_TLS_VERIFY_DOMAIN
    tls_security: ssl.SSLContext | None = None    # SECURITY=STARTTLS messages (None: bounce)


@dataclass(frozen=True, slots=True)
class Domains:
    """Which domains are ours: `me`/`locals` (user = local part) and `hosteddomains`
    (user = the full address). FORMATS.md §4.4."""

    me: str
    locals: tuple[str, ...]
    hosted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueConfig:
    layout: Layout
    retry: RetrySchedule
    queuetime: int
    rescan: int
    maxdels: int
    domains: Domains
    defaultdelivery: str = "./Maildir"
    aliases: AliasTable | None = None    # ETC/aliases.dat, re-read when it changes
    warntime: int = 4 * 3600
    esmtp: EsmtpConfig | None = None     # None: remote recipients stay queued
    dsnlimit: int = 32 * 1024            # larger originals are returned as headers only
    dsnfrom: str | None = None           # From: of DSNs (control file dsnfrom)
    dsn_texts: dsn.DsnTexts = field(default_factory=dsn.DsnTexts)   # ETC/dsn*.txt


def _domains(etc: Path) -> Domains:
    me = (read_control_value(etc / "me") or socket.getfqdn()).lower()
    locals_ = tuple(d.lower() for d in read_control_file(etc / "locals")) or (me,)
    hosted = []
    for line in read_control_file(etc / "hosteddomains"):
        # Courier's hosteddomains: "domain" or "alias<TAB>domain"; both are hosted.
        hosted.extend(part.lower() for part in line.split())
    return Domains(me, locals_, tuple(hosted))


def load_config(etc: Path) -> QueueConfig:
    """Raises ConfigError (file:line) on a bad value."""
    etc = Path(etc)
    layout = load_layout(etc)
    scope = read_rc_files([etc / "courierd"], missing_ok=True)
    # The layout keys are declared in libcourier.layout; pass them along so
    # they are not reported as unknown.
    values, _warnings = load_settings(QUEUE_SETTINGS + COURIERD_SETTINGS, scope,
                                      str(etc / "courierd"))
    domains = _domains(etc)
    aliases = AliasTable(etc / "aliases.dat", domains.me,
                         lambda d: d == domains.me or _domain_matches(d, domains.locals))
    retry = RetrySchedule(
        alpha=_control(etc, "retryalpha", to_duration, 300),
        beta=_control(etc, "retrybeta", positive_int, 3),
        gamma=_control(etc, "retrygamma", to_duration, 900),
        maxdelta=_control(etc, "retrymaxdelta", non_negative_int, 3),
        cap=values["retry_max"])
    if values["retry_first"] is not None:
        retry = dataclasses.replace(retry, alpha=values["retry_first"],
                                    gamma=values["retry_first"])
    warntime = _control(etc, "warntime", to_duration, values["warntime"])
    return QueueConfig(layout=layout, retry=retry,
                       queuetime=_control(etc, "queuetime", to_duration, values["queuetime"]),
                       warntime=warntime,
                       rescan=values["rescan"], maxdels=values["maxdels"],
                       domains=domains, defaultdelivery=values["defaultdelivery"],
                       aliases=aliases, esmtp=_esmtp(etc, values, domains, warntime),
                       dsnlimit=_control(etc, "dsnlimit", _size, 32 * 1024),
                       dsnfrom=_control(etc, "dsnfrom", _header_value, None),
                       dsn_texts=_dsn_texts(etc))


def _dsn_texts(etc: Path) -> dsn.DsnTexts:
    """Courier's DSN templates (ETC/dsnheader.txt, ...), those present; read
    at load, before any privilege drop."""
    files: dict[str, bytes] = {}
    for name, filename in dsn.TEMPLATE_FILES.items():
        path = etc / filename
        try:
            with open(path, "rb") as fh:
                files[name] = fh.read(dsn.MAX_TEMPLATE)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", str(path)) from None
    return dsn.texts_from_files(files)


def _header_value(v: str) -> str:
    if any(ch < " " for ch in v):
        raise ValueError("control characters in a header value")
    return v


def _positive_duration(v: str) -> int:
    n = to_duration(v)
    if n == 0:
        raise ValueError("a timeout must be at least 1 second")
    return n


def _size(v: str) -> int:
    """Courier's dsnlimit: bytes, or with a K/M suffix."""
    v = v.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(v[-1:], 1)
    if mult != 1:
        v = v[:-1]
    if not v.isdigit():
        raise ValueError(f"expected a size like 32K, got {v!r}")
    return int(v) * mult


def _control(etc: Path, name: str, convert, default):
    """A one-value control file (queuetime, retryalpha, ...): its first line, else default."""
    lines = read_control_lines(etc / name)
    if not lines:
        return default
    first = lines[0]
    try:
        return convert(first.text)
    except ValueError as e:
        raise ConfigError(str(e), first.path, first.line) from None


def _tls_contexts(values: dict) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    # Opportunistic STARTTLS (RFC 3207 §4.1, RFC 7435): encrypt whatever the
    # certificate; an unverified session still beats a clear one.
    loose = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    trust = values["tls_trustcerts"]
    try:
        if not trust:
            strict = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        elif Path(trust).is_dir():
            strict = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=trust)
        else:
            strict = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=trust)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS_TRUSTCERTS: cannot load {trust}: {e}") from None
    return loose, strict


def _security_context(trust: str) -> ssl.SSLContext | None:
    """Courier verifies a SECURITY=STARTTLS message's server against
    TLS_TRUSTSECURITYCERTS alone, meant to be a private CA (the SECURITY
    draft §7): a public CA would vouch for anyone DNS sends us to."""
    if not trust:
        return None
    try:
        if Path(trust).is_dir():
            return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=trust)
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=trust)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS_TRUSTSECURITYCERTS: cannot load {trust}: {e}") from None


def _hostname(v: str) -> str:
    """A control file naming one host (backuprelay): "Spaces are not allowed"."""
    v = v.strip()
    if not v or any(c.isspace() or not c.isprintable() for c in v) or len(v) > 255:
        raise ValueError(f"expected one host name, got {v[:60]!r}")
    return v


def _helo(v: str) -> str:
    """esmtphelo: the EHLO name, or "*" for the reverse DNS of the local
    address of each connection (Courier)."""
    v = v.strip()
    try:                    # an IDN name goes as A-labels, as Courier's idna_to_ascii
        v = to_ascii(v)
    except IdnError:
        raise ValueError(f"not a host name: {v[:60]!r}") from None
    if v != "*" and not _HELO_NAME.fullmatch(v):
        raise ValueError(f"expected a host name, an address literal or *, got {v[:60]!r}")
    return v


_HELO_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,253})|\[[0-9A-Fa-f.:Iv]{2,60}\]")


def _esmtp(etc: Path, values: dict, domains: Domains, warntime: int) -> EsmtpConfig:
    loose, strict = _tls_contexts(values)
    helo = _control(etc, "esmtphelo", _helo, None) or domains.me
    return EsmtpConfig(
        helo=helo, maxdels=values["esmtp_maxdels"], maxhost=values["esmtp_maxhost"],
        maxrcpt=values["esmtp_maxrcpt"], port=values["esmtp_port"],
        starttls=values["esmtp_starttls"], prefer_ipv6=values["esmtp_prefer_ipv6"],
        verify=values["esmtp_tls_verify"], resolver=values["esmtp_resolver"],
        routes=load_routes(etc / "esmtproutes"), auth=load_authclient(etc / "esmtpauthclient"),
        keepalive=_control(etc, "esmtptimeoutkeepalive", to_duration, 60),
        me=domains.me,
        backuprelay=_control(etc, "backuprelay", _hostname, None),
        backuprelay_after=warntime,
        timeouts=EsmtpTimeouts(
            connect=_control(etc, "esmtptimeoutconnect", _positive_duration, 60),
            helo=_control(etc, "esmtptimeouthelo", _positive_duration, 300),
            reply=_control(etc, "esmtptimeout", _positive_duration, 600),
            data=_control(etc, "esmtptimeoutdata", _positive_duration, 600),
            quit=_control(etc, "esmtptimeoutquit", _positive_duration, 10)),
        tls_client=loose, tls_verified=strict,
        tls_security=_security_context(values["tls_trustsecuritycerts"]))


def _domain_matches(domain: str, entries: tuple[str, ...]) -> bool:
    # Courier's locals/hosteddomains: an entry starting with "." covers every subdomain.
    for e in entries:
        if domain == e or (e.startswith(".") and domain.endswith(e)):
            return True
    return False


def local_user(address: str, domains: Domains) -> str | None:
    """The authd lookup key for a local recipient, or None when the address is remote.

    A bare local part (postmaster) and a `locals` domain give the local part;
    a hosted domain gives the whole address with the domain lowercased.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    domain = domain.lower()
    if _domain_matches(domain, domains.locals):
        return local
    if _domain_matches(domain, domains.hosted):
        return f"{local}@{domain}"
    return None
