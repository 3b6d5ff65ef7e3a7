"""Where a domain's mail goes: MX records by preference, else the domain's own
A/AAAA records (RFC 5321 §5.1), with dnspython's asyncio resolver.

- MX records are tried by preference, equal preferences in random order
  (RFC 5321 §5.1 asks to spread the load);
- no MX record (NOERROR, empty answer): the domain itself is the one host,
  the "implicit MX" (§5.1);
- a null MX (RFC 7505 §3: the single record `0 .`) or a domain that does
  not exist is a permanent failure, any other DNS trouble a temporary one;
- a domain literal ([192.0.2.1], [IPv6:2001:db8::1], RFC 5321 §4.1.3) is used
  as it is.

Shared by courierd (remote delivery) and esmtpd (BOFHCHECKDNS, bofh badmx).
The resolver is configurable (ESMTP_RESOLVER in `courierd`) so tests use a DNS
server on loopback. dnspython imports some record-type modules lazily; they are
imported here, before courierd drops privileges (the Python installation may
be unreadable afterwards).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

import libcourier.idn  # noqa: F401 - the idna codec dns.name encodes IDNs through, loaded now
from libcourier.config.schema import Setting

dns.asyncbackend.get_backend("asyncio")   # loads dns._asyncio_backend now

MAX_MX = 20                 # mail exchangers looked at for one domain
MAX_ADDRESSES = 10          # addresses tried for one exchanger
DNS_TIMEOUT = 5.0           # one server, one query
DNS_LIFETIME = 20.0         # one lookup, all retries


def parse_resolver(v: str) -> tuple[tuple[str, int], ...]:
    """ESMTP_RESOLVER: "ip[:port] ..." ([v6]:port for IPv6); empty = /etc/resolv.conf."""
    out = []
    for item in v.split():
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ValueError(f"bad resolver address {item!r}")
                port = int(rest[1:])
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            if not p.isdigit():
                raise ValueError(f"bad resolver port in {item!r}")
            port = int(p)
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            raise ValueError(f"resolver must be an IP address, got {host!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad resolver port in {item!r}")
        out.append((host, port))
    return tuple(out)


# One declaration for courierd (remote delivery) and esmtpd (BOFHCHECKDNS), which
# both read it from the `courierd` file.
RESOLVER_SETTING = Setting("ESMTP_RESOLVER", "esmtp_resolver", parse_resolver, "",
                           "courier-py: DNS servers for MX/A/AAAA lookups, `ip[:port] ...`; "
                           "empty: /etc/resolv.conf")


@dataclass(frozen=True, slots=True)
class Target:
    host: str                         # the exchanger's name (logs, TLS SNI, MAXHOST)
    preference: int
    addresses: tuple[str, ...]


class DnsFailure(Exception):
    """No target: `permanent` says bounce (5.x.x) or retry (4.x.x)."""

    def __init__(self, permanent: bool, status: str, text: str):
        super().__init__(text)
        self.permanent = permanent
        self.status = status
        self.text = text


def make_resolver(servers: tuple[tuple[str, int], ...] = ()) -> dns.asyncresolver.Resolver:
    if servers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
    else:
        r = dns.asyncresolver.Resolver()
    r.timeout = DNS_TIMEOUT
    r.lifetime = DNS_LIFETIME
    r.cache = dns.resolver.LRUCache(4096)
    return r


def domain_literal(domain: str) -> str | None:
    """The address of [192.0.2.1] / [IPv6:2001:db8::1], or None for a name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise DnsFailure(True, "5.1.2", f"bad address literal {domain}") from None


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
                 ) -> list | None:
    """The records, [] for NOERROR without them, None for NXDOMAIN; raises
    DnsFailure(temporary) for a timeout or a server failure."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.resolver.NoAnswer:
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
        raise DnsFailure(False, "4.4.3", f"DNS lookup of {name}/{rdtype} failed: {e}") from None
    except (dns.name.NameTooLong, dns.name.EmptyLabel, dns.name.LabelTooLong,
            UnicodeError) as e:
        raise DnsFailure(True, "5.1.2", f"bad domain name {name!r}: {e}") from None
    except dns.exception.DNSException as e:
        raise DnsFailure(False, "4.4.3", f"DNS lookup of {name}/{rdtype} failed: {e}") from None
    return list(answer)


async def host_addresses(resolver: dns.asyncresolver.Resolver, host: str,
                         prefer_ipv6: bool = False) -> tuple[str, ...] | None:
    """A and AAAA addresses of a host (IPv4 first unless prefer_ipv6); None when
    the name does not exist; raises DnsFailure when both lookups failed."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    results = await asyncio.gather(_query(resolver, host, "A"), _query(resolver, host, "AAAA"),
                                   return_exceptions=True)
    v4, v6 = results
    if isinstance(v4, DnsFailure) and isinstance(v6, DnsFailure):
        raise v4
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, DnsFailure):
            raise r
    if v4 is None and v6 is None:
        return None
    a4 = [r.address for r in v4] if isinstance(v4, list) else []
    a6 = [r.address for r in v6] if isinstance(v6, list) else []
    ordered = a6 + a4 if prefer_ipv6 else a4 + a6
    return tuple(ordered[:MAX_ADDRESSES])


async def find_targets(resolver: dns.asyncresolver.Resolver, domain: str,
                       prefer_ipv6: bool = False,
                       rng: random.Random | None = None,
                       myself: frozenset[str] = frozenset()) -> list[Target]:
    """The exchangers of `domain`, best first, each with its addresses.
    `myself`: this host's names (me, esmtphelo), for the loop rule of §5.1."""
    literal = domain_literal(domain)
    if literal is not None:
        return [Target(literal, 0, (literal,))]
    domain = domain.rstrip(".").lower()
    mx = await _query(resolver, domain, "MX")
    if mx is None:
        raise DnsFailure(True, "5.1.2", f"domain {domain} does not exist")
    if mx:
        exchanges = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower())
                     for r in mx]
        # RFC 7505 §3: a single MX of "." means the domain takes no mail.
        if any(x in ("", ".") for _, x in exchanges):
            if len(exchanges) == 1:
                raise DnsFailure(True, "5.1.10", f"domain {domain} accepts no mail (null MX)")
            exchanges = [(p, x) for p, x in exchanges if x not in ("", ".")]
        rng = rng or random.Random()
        rng.shuffle(exchanges)
        exchanges.sort(key=lambda e: e[0])          # stable: equal preferences stay shuffled
        # RFC 5321 §5.1: when we are one of the exchangers, only better ones
        # may be tried; none left means the mail would loop back to us.
        mine = [p for p, x in exchanges if x in myself]
        if mine:
            exchanges = [(p, x) for p, x in exchanges if p < min(mine)]
            if not exchanges:
                raise DnsFailure(True, "5.4.6", f"mail for {domain} loops back to myself")
        exchanges = exchanges[:MAX_MX]
    else:
        exchanges = [(0, domain)]                   # RFC 5321 §5.1: the implicit MX
    lookups = await asyncio.gather(
        *(host_addresses(resolver, host, prefer_ipv6) for _, host in exchanges),
        return_exceptions=True)
    targets: list[Target] = []
    temp: DnsFailure | None = None
    for (pref, host), addrs in zip(exchanges, lookups, strict=True):
        if isinstance(addrs, DnsFailure):
            temp = temp or addrs
        elif isinstance(addrs, BaseException):
            raise addrs
        elif addrs:
            targets.append(Target(host, pref, addrs))
    if targets:
        return targets
    if temp is not None:
        raise temp
    if not mx:
        raise DnsFailure(True, "5.1.2", f"domain {domain} has no MX and no address")
    # Every exchanger's name is missing from DNS: a broken zone, which its
    # owner may fix; keep retrying until queuetime.
    raise DnsFailure(False, "4.4.3", f"no address for the mail exchangers of {domain}")
