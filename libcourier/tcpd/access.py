"""Courier's access file (smtpaccess, imapaccess, pop3daccess): who may connect, with what.

Text format (couriertcpd(8), makesmtpaccess(8); FORMATS.md 4.14), one rule a line:

    # comment
    netblock<TAB or spaces>deny
    netblock<TAB or spaces>allow[,VAR[=value],...]

netblock is
- an IPv4 address or a prefix of whole octets: ``192.168.1.2``, ``192.168`` (= 192.168/16);
- IPv6 as Courier writes it, ``:`` and zero-padded 16-bit words, possibly a prefix:
  ``:2001:0db8`` (= 2001:db8::/32);
- a plain IPv6 literal (``2001:db8::1``) or CIDR (``10.0.0.0/8``, ``2001:db8::/32``),
  which makesmtpaccess would have expanded for us;
- ``*``, the default.

The most specific (longest prefix) match wins; an address no rule covers is
allowed with no variables, as couriertcpd does. An IPv4-mapped IPv6 client
(``::ffff:192.0.2.1``) is matched as the IPv4 address. ``allow,RELAYCLIENT``
sets RELAYCLIENT to the empty string; ``VAR=value`` and ``VAR="quoted value"``
set it to the value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from libcourier.config.errors import ConfigError

MAX_LINE = 4096
MAX_RULES = 100_000
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEXWORD = re.compile(r"[0-9A-Fa-f]{1,4}\Z")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allow: bool
    env: Mapping[str, str] = field(default_factory=dict)


ALLOW_ALL = AccessDecision(True, MappingProxyType({}))


def parse_netblock(text: str) -> Network | None:
    """The network a netblock names; None for ``*``. Raises ValueError."""
    if text == "*":
        return None
    if "/" in text:
        return ipaddress.ip_network(text, strict=False)
    if text.startswith(":") and not text.startswith("::"):
        # Courier's IPv6 key: ":hhhh:hhhh..." whole words from the left.
        words = text[1:].split(":")
        if not 1 <= len(words) <= 8 or not all(_HEXWORD.match(w) for w in words):
            raise ValueError(f"bad IPv6 netblock {text!r}")
        value = 0
        for w in words:
            value = (value << 16) | int(w, 16)
        value <<= 16 * (8 - len(words))
        return ipaddress.IPv6Network((value, 16 * len(words)))
    if ":" in text:
        return ipaddress.IPv6Network(ipaddress.IPv6Address(text))
    octets = text.rstrip(".").split(".")
    if not 1 <= len(octets) <= 4 or not all(o.isdigit() and len(o) <= 3 and int(o) < 256
                                             for o in octets):
        raise ValueError(f"bad IPv4 netblock {text!r}")
    value = 0
    for o in octets:
        value = (value << 8) | int(o)
    value <<= 8 * (4 - len(octets))
    return ipaddress.IPv4Network((value, 8 * len(octets)))


def _split_action(text: str) -> list[str]:
    """Split on commas outside double quotes."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise ValueError("unterminated quote")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_action(text: str) -> AccessDecision:
    parts = _split_action(text)
    verb = parts[0].lower()
    if verb == "deny":
        if len(parts) > 1:
            raise ValueError("deny takes no variables")
        return AccessDecision(False, MappingProxyType({}))
    if verb != "allow":
        raise ValueError(f"expected allow or deny, not {parts[0]!r}")
    env: dict[str, str] = {}
    for item in parts[1:]:
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip()
        if not _VAR_NAME.match(name):
            raise ValueError(f"bad variable name {name!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        elif '"' in value:
            raise ValueError(f"bad quoting in {item!r}")
        env[name] = value if eq else ""
    return AccessDecision(True, MappingProxyType(env))


class AccessRules:
    """Rules indexed by prefix length, so a lookup is one dict probe per length in use."""

    __slots__ = ("_default", "_v4", "_v6", "_count")

    def __init__(self) -> None:
        self._default: AccessDecision | None = None
        self._v4: dict[int, dict[int, AccessDecision]] = {}
        self._v6: dict[int, dict[int, AccessDecision]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, network: Network | None, decision: AccessDecision) -> None:
        """Add a rule; a later rule for the same netblock replaces the earlier one."""
        self._count += 1
        if network is None:
            self._default = decision
            return
        table = self._v4 if network.version == 4 else self._v6
        if network.prefixlen not in table:
            table[network.prefixlen] = {}
            # Keep the longest prefixes first: the most specific match wins.
            ordered = sorted(table.items(), reverse=True)
            table.clear()
            table.update(ordered)
        table[network.prefixlen][int(network.network_address)] = decision

    def check(self, ip: str) -> AccessDecision:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return self._default or ALLOW_ALL
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        bits = 32 if addr.version == 4 else 128
        table = self._v4 if addr.version == 4 else self._v6
        value = int(addr)
        for prefixlen, nets in table.items():
            key = (value >> (bits - prefixlen)) << (bits - prefixlen) if prefixlen else 0
            found = nets.get(key)
            if found is not None:
                return found
        return self._default or ALLOW_ALL


def parse_access(text: str, path: str = "<access>") -> AccessRules:
    rules = AccessRules()
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            raise ConfigError(f"line longer than {MAX_LINE} characters", path, lineno)
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 1)
        if len(fields) != 2:
            raise ConfigError("expected: netblock allow|deny[,VAR=value...]", path, lineno)
        try:
            network = parse_netblock(fields[0])
            decision = parse_action(fields[1].strip())
        except ValueError as exc:
            raise ConfigError(str(exc), path, lineno) from None
        if len(rules) >= MAX_RULES:
            raise ConfigError(f"more than {MAX_RULES} rules", path, lineno)
        rules.add(network, decision)
    return rules


def load_access(path: Path | str) -> AccessRules:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read access file: {exc.strerror}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", str(path)) from None
    return parse_access(text, str(path))
