"""Who we accept mail for (RFC 5321 §3.6, §4.5.1; Courier's locals/hosteddomains).

A recipient is local when its domain (lowercased) is `me`, is listed in
`locals`, or is a hosted domain (`hosteddomains`, lines `domain` or
`alias<TAB>domain`). Local recipients are looked up in authd with service
"esmtp": hosted domains by full address, `me`/`locals` domains by local part
(they map to system-style accounts). `postmaster` is always accepted for any
local domain (RFC 5321 §4.5.1), and bare `<postmaster>` too (§4.1.1.3).
Other domains are relaying: refused unless the access file set RELAYCLIENT, the
client authenticated (SMTP AUTH), or the domain is in `esmtpacceptmailfor`
(Courier's backup-MX list: accepted from anyone, delivered on by MX).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from courier_smtpd.bofh import Bofh, relay_in_domains
from courier_smtpd.core import SessionInfo, Verdict
from courier_smtpd.senderdns import DnsChecks

from libcourier.aliases import AliasTable
from libcourier.authclient import AuthInfo, AuthTempFail, auth_pre
from libcourier.config import read_control_file
from libcourier.config.control import read_control_value
from libcourier.expiring import ExpiringDict

log = logging.getLogger("courier.esmtpd")

Lookup = Callable[[Path, str, str], AuthInfo | None]

# A recipient authd knew is taken on authd's word for this long without asking again,
# in the same session and the later sessions the same child serves (ListenerSpec.reuse):
# many messages to one mailbox (a list's run, a bulk sender, the usual few busy
# mailboxes of an MX) ask once instead of once per RCPT. Only found users are kept (an
# unknown address asks every time, and a user added meanwhile is seen at once); a user
# removed meanwhile is still accepted for at most this long, and delivery then bounces
# it, as it would for one removed after the RCPT. The answer does not depend on the
# client (service "esmtp", the address). Courier's submit asks authdaemond per RCPT
# with no cache; Postfix's smtpd asks proxymap per RCPT: this saves authd a
# connection and a lookup per message instead.
KNOWN_RECIPIENT_SECONDS = 60.0
KNOWN_RECIPIENTS_MAX = 256      # addresses remembered (oldest dropped)


class KnownRecipients:
    """Recipients authd found, each until KNOWN_RECIPIENT_SECONDS after the answer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        # (local part, domain) -> True while authd's "found" holds
        self._found: ExpiringDict[tuple[str, str], bool] = ExpiringDict(
            KNOWN_RECIPIENT_SECONDS, KNOWN_RECIPIENTS_MAX, clock)

    def __len__(self) -> int:
        return len(self._found)

    def holds(self, local: str, domain: str) -> bool:
        return self._found.get((local, domain)) is not None

    def add(self, local: str, domain: str) -> None:
        self._found.put((local, domain), True)


@dataclass(frozen=True, slots=True)
class Domains:
    me: str
    locals: tuple[str, ...]                  # entries as in the file, lowercased
    hosted: Mapping[str, str]                # domain or alias -> hosted domain
    # esmtpacceptmailfor(.dir): other domains we take mail for and pass on by MX
    # (a backup MX), without RELAYCLIENT. `.example.com` matches sub-domains.
    acceptmailfor: tuple[str, ...] = ()

    def accepts_for(self, domain: str) -> bool:
        return any(domain == e or (e.startswith(".") and domain.endswith(e))
                   for e in self.acceptmailfor)

    def is_locals(self, domain: str) -> bool:
        """`me` or a `locals` entry. `.example.com` matches subdomains; `!host`
        excludes a host (Courier's locals syntax)."""
        if domain == self.me:
            return True
        # Exclusions win wherever they stand, so `.lan` then `!printer.lan` works.
        if "!" + domain in self.locals:
            return False
        for entry in self.locals:
            if entry.startswith("!"):
                continue
            if entry.startswith("."):
                if domain.endswith(entry):
                    return True
            elif domain == entry:
                return True
        return False


def load_domains(etc: Path, hostname: str) -> Domains:
    etc = Path(etc)
    me = (read_control_value(etc / "me") or hostname).lower()
    locals_ = tuple(x.lower() for x in read_control_file(etc / "locals"))
    hosted: dict[str, str] = {}
    for line in read_control_file(etc / "hosteddomains"):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            hosted[parts[0].strip().lower()] = parts[1].strip().lower()
        else:
            hosted[parts[0].strip().lower()] = parts[0].strip().lower()
    accept = tuple(x.lower() for x in read_control_file(etc / "esmtpacceptmailfor"))
    return Domains(me, locals_, hosted, accept)


def split_address(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return local, domain.lower()


class LocalPolicy:
    """The esmtpd recipient policy: local users via authd, no open relay."""

    def __init__(self, domains: Domains, authsocket: Path, *, relayclient: bool = False,
                 lookup: Lookup | None = None, aliases: AliasTable | None = None,
                 bofh: Bofh | None = None, remote_host: Callable[[], str | None] | None = None,
                 auth_sender_check: bool = False, dns: DnsChecks | None = None,
                 client_ip: str = "", known: KnownRecipients | None = None):
        self.domains = domains
        self.aliases = aliases      # ETC/aliases.dat: an alias is a valid recipient
        self.authsocket = authsocket
        self.relayclient = relayclient
        self.bofh = bofh or Bofh()
        self.remote_host = remote_host or (lambda: None)   # the client's verified rDNS name
        self.auth_sender_check = auth_sender_check
        self.dns = dns             # BOFHCHECKDNS / BOFHCHECKHELO lookups
        self.client_ip = client_ip
        self._lookup = lookup or (lambda sock, service, user: auth_pre(sock, service, user))
        # Shared by the sessions of one child (main.make_handler), else this session's.
        self.known = known if known is not None else KnownRecipients()

    def check_sender(self, sender: str, session: SessionInfo) -> Verdict:
        if sender and self.bofh.is_badfrom(sender):
            return Verdict.reject(550, "5.7.1", f"Sender rejected: {sender}")
        if self.auth_sender_check and session.authenticated and sender \
                and not self.owns(session.authenticated, sender):
            return Verdict.reject(553, "5.7.1",
                                  f"Sender address not owned by user {session.authenticated}.")
        if sender and not (self.relayclient or session.authenticated):
            relays = self.bofh.freemail_domains(sender)
            # Courier's freemail: only from a client whose host name is in the domain.
            if relays is not None and not relay_in_domains(self.remote_host(), relays):
                return Verdict.reject(550, "5.7.1", f"Sender rejected: {sender} can be accepted "
                                      f"only from {relays[0]}'s mail relays.")
        if self.dns is not None:
            # Courier checks HELO at MAIL time, and never for relay clients.
            if not (self.relayclient or session.authenticated):
                refusal = self.dns.helo(session.helo, self.client_ip)
                if refusal is not None:
                    return refusal
            refusal = self.dns.sender(sender) if sender else None
            if refusal is not None:
                return refusal
        return Verdict.accept()

    def owns(self, login: str, sender: str) -> bool:
        """Is `sender` the login's own address: itself, or login-ext at its domain
        (a login without a domain owns that local part at `me` and `locals`)?"""
        s_local, s_domain = split_address(sender)
        l_local, at, l_domain = login.lower().rpartition("@")
        if not at:
            l_local, l_domain = login.lower(), ""
        if l_domain:
            if s_domain != l_domain:
                return False
        elif not self.domains.is_locals(s_domain):
            return False
        s_local = s_local.lower()
        return s_local == l_local or s_local.startswith(l_local + "-")

    def check_recipient(self, address: str, session: SessionInfo) -> Verdict:
        local, domain = split_address(address)
        if not domain:
            if local.lower() == "postmaster":
                return Verdict.accept()
            return Verdict.reject(550, "5.1.3", "Address must have a domain.")
        hosted = self.domains.hosted.get(domain)
        is_local = hosted is not None or self.domains.is_locals(domain)
        if not is_local:
            # smtpaccess RELAYCLIENT, or an AUTHenticated client (RFC 4954 §1, RFC 6409).
            if self.relayclient or session.authenticated or self.domains.accepts_for(domain):
                return Verdict.accept()
            return Verdict.reject(550, "5.7.1", "Relaying denied.")
        if local.lower() == "postmaster":
            return Verdict.accept()
        if self.aliases is not None and self.aliases.lookup(address) is not None:
            return Verdict.accept()
        if self.known.holds(local, domain):
            return Verdict.accept()
        # user-ext addresses go to `user` (Courier's rule; its .courier-ext decides
        # at delivery): try the whole local part, then shorter prefixes at "-".
        parts = local.split("-")
        for n in range(len(parts), 0, -1):
            head = "-".join(parts[:n])
            if not head or len(parts) - n > 8:
                break
            user = f"{head}@{hosted}" if hosted is not None else head
            try:
                info = self._lookup(self.authsocket, "esmtp", user)
            except AuthTempFail as e:
                log.warning("authd unavailable for %s: %s", address, e)
                return Verdict.tempfail(451, "4.4.3",
                                        "Unable to verify the address, try again later.")
            if info is not None:
                self.known.add(local, domain)
                return Verdict.accept()
        return Verdict.reject(550, "5.1.1", "User unknown.")
