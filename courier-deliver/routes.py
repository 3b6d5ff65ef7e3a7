"""esmtproutes: where mail for a domain goes, as Courier reads it (man courier(8)).

One route a line, first match wins:

    domain: relay[,port] [/SECURITY=STARTTLS|REQUIRED|SMTPS|NONE]
    .domain: ...        every subdomain of domain
    : relay             the smarthost: any domain not matched above
    domain:             empty relay: look the domain up in DNS (an exception
                        to a smarthost line further down)

The relay is a host name, an IP address or [IP]. /SECURITY=STARTTLS and
REQUIRED refuse to deliver without STARTTLS; REQUIRED also verifies the
certificate (TLS_TRUSTCERTS); SMTPS speaks TLS from the first byte (port 465
unless given). A line that cannot be parsed is a ConfigError with file:line.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from libcourier.config.control import read_control_lines
from libcourier.config.errors import ConfigError

MAX_ROUTES = 10000
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})?\.?")
_IP = re.compile(r"[0-9A-Fa-f.:]+")


class Security(enum.Enum):
    DEFAULT = "default"      # opportunistic STARTTLS (ESMTP_USE_STARTTLS)
    NONE = "none"
    STARTTLS = "starttls"
    REQUIRED = "required"
    SMTPS = "smtps"


@dataclass(frozen=True, slots=True)
class Route:
    relay: str | None                # None: the domain's MX records
    port: int | None = None          # None: ESMTPPORT (25), or 465 for SMTPS
    security: Security = Security.DEFAULT


@dataclass(frozen=True, slots=True)
class Routes:
    entries: tuple[tuple[str, Route], ...] = ()   # (pattern, route); "" = smarthost

    def lookup(self, domain: str) -> Route:
        domain = domain.lower().rstrip(".")
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
    domain = domain.strip().lower().rstrip(".")
    if domain and not _HOST.fullmatch(domain.lstrip(".")):
        raise ValueError(f"bad domain {domain!r}")
    rest, slash, opts = rest.partition("/")
    security = Security.DEFAULT
    if slash:
        key, eq, value = opts.strip().partition("=")
        if key.strip().upper() != "SECURITY" or not eq:
            raise ValueError(f"unknown option /{opts.strip()}")
        try:
            security = Security(value.strip().lower())
        except ValueError:
            raise ValueError(f"unknown /SECURITY={value.strip()}") from None
    rest = rest.strip()
    if not rest:
        if security is not Security.DEFAULT:
            raise ValueError("/SECURITY needs a relay")
        return domain, Route(None)
    relay, comma, port_text = rest.rpartition(",") if "," in rest else (rest, "", "")
    relay = relay.strip()
    port: int | None = None
    if comma:
        port_text = port_text.strip()
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    if relay.startswith("[") and relay.endswith("]"):
        relay = relay[1:-1]
        if not _IP.fullmatch(relay):
            raise ValueError(f"bad address [{relay}]")
    elif not (_HOST.fullmatch(relay) or (":" in relay and _IP.fullmatch(relay))):
        raise ValueError(f"bad relay {relay!r}")
    return domain, Route(relay.rstrip(".").lower(), port, security)


@dataclass(frozen=True, slots=True)
class AuthClient:
    """esmtpauthclient: credentials for a relay, as Courier reads them
    (`host[,port] userid password`, one a line). The file holds passwords:
    keep it 0600/0400, owned by MAILUSER (courierd re-reads it on SIGHUP after
    dropping privileges)."""

    entries: tuple[tuple[str, int | None, str, str], ...] = ()

    def lookup(self, host: str, port: int) -> tuple[str, str] | None:
        host = host.lower().rstrip(".")
        for h, p, user, password in self.entries:
            if h == host and p in (None, port):
                return user, password
        return None

    def __repr__(self) -> str:        # never a password in a log line or a traceback
        return f"AuthClient({len(self.entries)} entries)"


def load_authclient(path: Path) -> AuthClient:
    entries = []
    for line in read_control_lines(path)[:MAX_ROUTES]:
        parts = line.text.split()
        if len(parts) != 3:
            raise ConfigError("expected `host[,port] userid password`", line.path, line.line)
        host, comma, port_text = parts[0].partition(",")
        port = None
        if comma:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"bad port {port_text!r}", line.path, line.line)
            port = int(port_text)
        entries.append((host.strip("[]").lower().rstrip("."), port, parts[1], parts[2]))
    return AuthClient(tuple(entries))


def load_routes(path: Path) -> Routes:
    entries = []
    for line in read_control_lines(path)[:MAX_ROUTES]:
        try:
            entries.append(parse_route(line.text))
        except ValueError as e:
            raise ConfigError(str(e), line.path, line.line) from None
    return Routes(tuple(entries))
