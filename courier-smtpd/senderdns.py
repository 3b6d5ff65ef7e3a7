"""The sender domain's DNS, checked at MAIL FROM (Courier's submit checkdns()).

With BOFHCHECKDNS on, a return address must be able to receive a bounce: its
domain must exist and have a mail exchanger or an address (RFC 5321 §5.1), and
a domain that says it takes no mail (null MX, RFC 7505 §4.2) is refused with
5.7.27. Whether or not BOFHCHECKDNS is on, a sender domain whose mail
exchangers include an address listed by `badmx` in the `bofh` file is refused
(Courier: "Mail server at ... is blocked"). DNS trouble is a temporary failure
only when the check was asked for. The lookups are libcourier.mx's, the same
courierd makes before relaying, with the ESMTP_RESOLVER of `courierd`.
"""

from __future__ import annotations

import asyncio
import logging

from courier_smtpd.core import Verdict

from libcourier.mx import DnsFailure, find_targets, make_resolver

log = logging.getLogger("courier.esmtpd")


class SenderDns:
    def __init__(self, servers: tuple[tuple[str, int], ...], *, check_domain: bool,
                 badmx: frozenset[str]):
        self.servers = servers
        self.check_domain = check_domain
        self.badmx = badmx
        self._resolver = None

    @property
    def active(self) -> bool:
        return self.check_domain or bool(self.badmx)

    def check(self, sender: str) -> Verdict | None:
        """A refusal for this return address, or None when it may be used."""
        domain = sender.rpartition("@")[2]
        if not self.active or not domain:
            return None
        if self._resolver is None:
            self._resolver = make_resolver(self.servers)
        try:
            targets = asyncio.run(find_targets(self._resolver, domain))
        except DnsFailure as e:
            if not self.check_domain:
                return None
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
