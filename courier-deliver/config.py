"""courierd's settings: the layout keys plus the queue's timing, from ETC/courierd,
and the domain lists that decide which recipients are local.

Courier's own courierd tunes retries with the control files retryalpha,
retrybeta, retrygamma and retrymaxdelta (a two-level schedule). This milestone
uses a simpler one, declared here as courierd keys: the first retry after
RETRYFIRST seconds, each later wait doubled up to RETRYMAX, and the message
kept until QUEUETIME has passed since it was accepted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from libcourier.aliases import AliasTable
from libcourier.config.control import read_control_file, read_control_value
from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import Setting, load_settings, non_negative_int
from libcourier.layout import COURIERD_SETTINGS, Layout, load_layout


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


def to_maildir(v: str) -> str:
    """Courier's DEFAULTDELIVERY; only a Maildir path is supported in this milestone
    (no `| program`, no mbox)."""
    v = v.strip()
    if not v or v[0] in "|!" or "\n" in v:
        raise ValueError(f"only a Maildir path is supported, got {v!r}")
    return v.rstrip("/") or "/"


QUEUE_SETTINGS = (
    Setting("RETRYFIRST", "retry_first", to_duration, "5m",
            "wait before the first retry of a temporarily failed recipient"),
    Setting("RETRYMAX", "retry_max", to_duration, "1h",
            "the longest wait between retries (each wait doubles up to this)"),
    Setting("QUEUETIME", "queuetime", to_duration, "7d",
            "after this long in the queue a message is no longer retried"),
    Setting("RESCAN", "rescan", positive_int, "60",
            "seconds between scans of the spool for messages not announced"),
    Setting("MAXDELS", "maxdels", positive_int, "4",
            "messages delivered at the same time"),
    Setting("DEFAULTDELIVERY", "defaultdelivery", to_maildir, "./Maildir",
            "the Maildir (relative to HOME) for accounts without their own; "
            "read at start"),
)


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
    retry_first: int
    retry_max: int
    queuetime: int
    rescan: int
    maxdels: int
    domains: Domains
    defaultdelivery: str = "./Maildir"
    aliases: AliasTable | None = None    # ETC/aliases.dat, re-read when it changes


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
    return QueueConfig(layout=layout, retry_first=values["retry_first"],
                       retry_max=values["retry_max"], queuetime=values["queuetime"],
                       rescan=values["rescan"], maxdels=values["maxdels"],
                       domains=domains, defaultdelivery=values["defaultdelivery"],
                       aliases=aliases)


def retry_delay(attempts: int, first: int, maximum: int) -> int:
    """Seconds to wait after the `attempts`-th failed attempt (1-based): first,
    2*first, 4*first, ... capped at maximum."""
    if attempts < 1:
        return 0
    delay = first
    for _ in range(attempts - 1):
        delay *= 2
        if delay >= maximum:
            return maximum
    return min(delay, maximum)


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
