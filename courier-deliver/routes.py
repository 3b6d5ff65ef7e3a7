"""esmtproutes: where mail for a domain goes, as Courier reads it (man courier(8),
module.esmtp/smtproutes.c).

One route a line, first match wins:

    domain: relay[,port] [/OPTION[,OPTION...]]
    .domain: ...        every subdomain of domain
    : relay             the smarthost: any domain not matched above
    domain:             empty relay: look the domain up in DNS (an exception
                        to a smarthost line further down)
    domain: /OPTION     DNS as usual, with the options

The relay is a host name (its MX, else its A/AAAA records, as Courier looks
it up), an IP address or [IP]; without a port, port 25. Domains and relays
may be written in UTF-8 (compared and looked up as A-labels). Courier's
options (case-insensitive, any number, separated by commas, blanks or
further slashes), each a flag of its own as in smtproutes.h:

  SECURITY=STARTTLS  Courier's SECURITY extension, as if every message had
                     MAIL FROM ... SECURITY=STARTTLS: TLS verified against
                     TLS_TRUSTSECURITYCERTS by the exchanger's name, to a
                     server offering STARTTLS and XSECURITY=STARTTLS, the
                     keyword passed on; else the message bounces (5.7.10).
  SECURITY=REQUIRED  STARTTLS or nothing: a server that does not offer it
                     bounces the message; a refused STARTTLS or a failed
                     handshake is temporary. The certificate is verified only
                     with ESMTP_TLS_VERIFY_DOMAIN=1, as for any server.
  SECURITY=SMTPS     TLS from the first byte (the port, 465, must be given:
                     Courier has no other default than 25).
  IPV4ONLY, IPV6ONLY only the exchangers' addresses of that family.
  SECURITY=NONE      no flag (Courier's webadmin writes it; its parser
                     ignores it), the default behaviour.

Courier ignores any other word after the slash; here it is a ConfigError, so
that a mistyped security option never sends mail in clear unnoticed. Courier
reads options only after the last slash of the line; `/A/B`, the syntax its
manual page shows, is read here as `/A,B`. A line that cannot be parsed is a
ConfigError with file:line. Courier reads esmtproutes and esmtpauthclient
anew for each connection; remote delivery reloads them when they change
(control_signature), besides SIGHUP.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from libcourier.config.control import read_control_lines
from libcourier.config.errors import ConfigError
from libcourier.idn import IdnError, to_ascii

MAX_ROUTES = 10000
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})?\.?")
_IP = re.compile(r"[0-9A-Fa-f.:]+")


class Option(enum.Enum):
    """Courier's esmtproutes flags (smtproutes.h ROUTE_*), by their spelling."""
    SECURITY_STARTTLS = "SECURITY=STARTTLS"   # ROUTE_STARTTLS
    SECURITY_REQUIRED = "SECURITY=REQUIRED"   # ROUTE_TLS_REQUIRED
    SECURITY_SMTPS = "SECURITY=SMTPS"         # ROUTE_SMTPS
    IPV4ONLY = "IPV4ONLY"                     # ROUTE_IPV4
    IPV6ONLY = "IPV6ONLY"                     # ROUTE_IPV6


# Spelled in Courier's webadmin, ignored by its esmtp module: no flag at all.
_NO_FLAG = frozenset({"SECURITY=NONE"})
_OPTION_SEPARATORS = re.compile(r"[,/\s]+")


@dataclass(frozen=True, slots=True)
class Route:
    relay: str | None                # None: the domain's MX records
    port: int | None = None          # None: 25 for a relay, ESMTPPORT for DNS
    options: frozenset[Option] = frozenset()

    @property
    def security_starttls(self) -> bool:
        return Option.SECURITY_STARTTLS in self.options

    @property
    def tls_required(self) -> bool:
        return Option.SECURITY_REQUIRED in self.options

    @property
    def smtps(self) -> bool:
        return Option.SECURITY_SMTPS in self.options

    def family_allowed(self, address: str) -> bool:
        """IPV4ONLY / IPV6ONLY: whether an exchanger's address may be used
        (both: none, as in Courier; a v4-mapped address counts as IPv4)."""
        addr = ipaddress.ip_address(address)
        v6 = addr.version == 6 and getattr(addr, "ipv4_mapped", None) is None
        if Option.IPV4ONLY in self.options and v6:
            return False
        return not (Option.IPV6ONLY in self.options and not v6)


@dataclass(frozen=True, slots=True)
class Routes:
    entries: tuple[tuple[str, Route], ...] = ()   # (pattern, route); "" = smarthost
    # Where it was read from and control_signature() just before: remote
    # delivery reloads it when the file changes, as Courier reads it anew.
    path: Path | None = field(default=None, compare=False)
    signature: tuple = field(default=(), compare=False)

    def lookup(self, domain: str) -> Route:
        domain = _ace(domain.lower().rstrip("."))
        for pattern, route in self.entries:
            if (pattern == "" or pattern == domain
                    or (pattern.startswith(".") and domain.endswith(pattern))):
                return route
        return Route(None)


def parse_route(text: str) -> tuple[str, Route]:
    """One esmtproutes line; ValueError says what is wrong."""
    domain, colon, rest = text.partition(":")
    if not colon:
        raise ValueError("expected `domain: relay[,port]`")
    domain = _ace(domain.strip().lower().rstrip("."))
    if domain and not _HOST.fullmatch(domain.lstrip(".")):
        raise ValueError(f"bad domain {domain!r}")
    rest, slash, opts = rest.partition("/")
    options = parse_options(opts) if slash else frozenset()
    rest = rest.strip()
    if not rest:
        return domain, Route(None, None, options)
    relay, comma, port_text = rest.rpartition(",") if "," in rest else (rest, "", "")
    relay = _ace(relay.strip())
    port: int | None = None
    if comma:
        port_text = port_text.strip()
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    if relay.startswith("[") and relay.endswith("]"):
        relay = relay[1:-1]
        if not _IP.fullmatch(relay):
            raise ValueError(f"bad address [{relay}]")
    elif not (_HOST.fullmatch(relay) or (":" in relay and _IP.fullmatch(relay))):
        raise ValueError(f"bad relay {relay!r}")
    return domain, Route(relay.rstrip(".").lower(), port, options)


def _ace(name: str) -> str:
    """A UTF-8 domain as A-labels (courier(8): international domain names are
    listed in UTF-8; Courier compares them with the address's domain by their
    Unicode form, i.e. the same as comparing A-labels). A name that is not a
    valid IDN stays as it is (and fails the syntax check, or matches nothing)."""
    try:
        return to_ascii(name, suffix=True)
    except IdnError:
        return name


def parse_options(text: str) -> frozenset[Option]:
    """The words after the slash, each a flag (see the module docstring)."""
    options = set()
    for word in _OPTION_SEPARATORS.split(text.strip().upper()):
        if not word or word in _NO_FLAG:
            continue
        try:
            options.add(Option(word))
        except ValueError:
            raise ValueError(f"unknown option /{word}") from None
    return frozenset(options)


@dataclass(frozen=True, slots=True)
class AuthClient:
    """esmtpauthclient: credentials for a relay, as Courier reads them
    (`host[,port] userid password`, one a line). The file holds passwords:
    keep it 0600/0400, owned by MAILUSER (courierd re-reads it on SIGHUP after
    dropping privileges)."""

    entries: tuple[tuple[str, int | None, str, str], ...] = ()
    path: Path | None = field(default=None, compare=False)      # as in Routes
    signature: tuple = field(default=(), compare=False)

    def lookup(self, host: str, port: int) -> tuple[str, str] | None:
        host = host.lower().rstrip(".")
        for h, p, user, password in self.entries:
            if h == host and p in (None, port):
                return user, password
        return None

    def __repr__(self) -> str:        # never a password in a log line or a traceback
        return f"AuthClient({len(self.entries)} entries)"


def control_signature(path: Path) -> tuple:
    """What changes when NAME or a file of NAME.dir (read_control_lines) is
    edited, renamed over, added or removed: name, mtime, size, inode of each."""
    out: list[tuple] = []
    candidates = [path]
    d = Path(str(path) + ".dir")
    try:
        candidates += sorted(d.iterdir())[:MAX_ROUTES]
    except OSError:
        pass                                    # no NAME.dir: the usual case
    for p in candidates:
        try:
            st = p.stat()
        except OSError:
            out.append((p.name,))
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def load_authclient(path: Path) -> AuthClient:
    signature = control_signature(path)
    entries = []
    for line in read_control_lines(path)[:MAX_ROUTES]:
        parts = line.text.split()
        if len(parts) != 3:
            raise ConfigError("expected `host[,port] userid password`", line.path, line.line)
        host, comma, port_text = parts[0].partition(",")
        port = None
        if comma:
            if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
                raise ConfigError(f"bad port {port_text!r}", line.path, line.line)
            port = int(port_text)
        entries.append((host.strip("[]").lower().rstrip("."), port, parts[1], parts[2]))
    return AuthClient(tuple(entries), path, signature)


def load_routes(path: Path) -> Routes:
    signature = control_signature(path)
    entries = []
    for line in read_control_lines(path)[:MAX_ROUTES]:
        try:
            entries.append(parse_route(line.text))
        except ValueError as e:
            raise ConfigError(str(e), line.path, line.line) from None
    return Routes(tuple(entries), path, signature)
