"""DNS checks at MAIL FROM, as Courier's submit does them (checkdns(), checkmx()).

BOFHCHECKDNS: a return address must be able to receive a bounce: its domain
must exist and have a mail exchanger or an address (RFC 5321 §5.1); a domain
that says it takes no mail (null MX, RFC 7505 §4.2) is refused with 5.7.27; a
domain whose mail exchangers include an address listed by `badmx` in the `bofh`
file is refused ("Mail server at ... is blocked").

BOFHCHECKHELO=1 (or 2): the HELO/EHLO name of a client that is not a relay
client must lead back to the client's address, through its MX records or its
own A/AAAA records; a name that does not exist or does not match is refused
(5xx with 1, 4xx with 2).

DNS trouble is a temporary failure. The lookups are libcourier.mx's, the same
courierd makes before relaying, with the ESMTP_RESOLVER of `courierd`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from courier_smtpd.core import Verdict

from libcourier.mx import DnsFailure, find_targets, host_addresses, make_resolver

log = logging.getLogger("courier.esmtpd")


def _same_ip(a: str, b: str) -> bool:
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    x = getattr(x, "ipv4_mapped", None) or x
    y = getattr(y, "ipv4_mapped", None) or y
    return x == y


class DnsChecks:
    def __init__(self, servers: tuple[tuple[str, int], ...], *, check_domain: bool,
                 badmx: frozenset[str], check_helo: int = 0):
        self.servers = servers
        self.check_domain = check_domain
        self.badmx = badmx
        self.check_helo = check_helo        # 0 off, 1 refuse (5xx), 2 defer (4xx)
        self._resolver = None

    def _run(self, coro):
        if self._resolver is None:
            self._resolver = make_resolver(self.servers)
        return asyncio.run(coro(self._resolver))

    def sender(self, sender: str) -> Verdict | None:
        """A refusal for this return address, or None when it may be used."""
        domain = sender.rpartition("@")[2]
        if not self.check_domain or not domain:
            return None
        try:
            targets = self._run(lambda r: find_targets(r, domain))
        except DnsFailure as e:
            log.info("sender domain %s: %s", domain, e.text)
            if not e.permanent:
                return Verdict.tempfail(451, "4.4.3",
                                        f"DNS lookup failure: {domain}. Try again later.")
            if e.status == "5.1.10":
                return Verdict.reject(550, "5.7.27",
                                      f"Sender domain {domain} accepts no mail (null MX).")
            return Verdict.reject(550, "5.1.8", f"Sender domain {domain} cannot receive "
                                  "mail: no such domain or no mail server.")
        for target in targets:
            for addr in target.addresses:
                if addr.removeprefix("::ffff:") in self.badmx:
                    return Verdict.reject(550, "5.7.1", f"Mail server at {addr} is blocked.")
        return None

    def helo(self, helo: str, ip: str) -> Verdict | None:
        """A refusal for this HELO name from this client address, or None."""
        if not self.check_helo or not helo or _same_ip(helo.strip("[]"), ip):
            return None
        def refuse(text: str) -> Verdict:
            # Courier: 517 with BOFHCHECKHELO=1, 417 (try later) with 2.
            return (Verdict.reject(550, "5.7.1", text) if self.check_helo == 1
                    else Verdict.tempfail(450, "4.7.1", text))

        try:
            targets = self._run(lambda r: find_targets(r, helo))
            if any(_same_ip(a, ip) for t in targets for a in t.addresses):
                return None
            own = self._run(lambda r: host_addresses(r, helo))
        except DnsFailure as e:
            if not e.permanent:
                return Verdict.tempfail(451, "4.4.3",
                                        f"DNS lookup on HELO {helo} failed. Try again later.")
            return refuse(f"HELO {helo} does not exist.")
        if own and any(_same_ip(a, ip) for a in own):
            return None
        return refuse(f"HELO {helo} does not match {ip}.")
