"""Courier's `bofh` control file: per-server anti-abuse rules (courier(8), bofh.c).

One directive a line, `#` starts a comment, words split on blanks:

    badfrom  user@domain | @domain | @.domain     refuse this return address
    spamtrap user@domain | @domain | @.domain     a message to it is refused whole
    badmx    192.0.2.1                            (kept; used by BOFHCHECKDNS)
    freemail domain [alias-domain ...]            mail from @domain only via its relays
    maxrcpts N [hard]                             recipients per message (default 100)
    opt      NAME=value                           a default for an esmtpd setting

Matching is Courier's (chkbadlist): an entry `@domain` matches any user at that
domain, `@.domain` any user at a sub-domain of it (not the domain itself),
`user@.domain` that user at any sub-domain, anything else the whole address; all
case-insensitive.
An unknown directive is ignored, as Courier does, but logged so a typo shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("courier.esmtpd")

MAX_FILE = 1024 * 1024       # a bofh file bigger than this is a mistake; refuse to load it
DEFAULT_MAXRCPTS = 100       # Courier's max_bofh


@dataclass(frozen=True, slots=True)
class Bofh:
    badfrom: tuple[str, ...] = ()
    spamtrap: tuple[str, ...] = ()
    badmx: frozenset[str] = frozenset()
    freemail: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # domain -> its relays' domains
    maxrcpts: int = DEFAULT_MAXRCPTS
    maxrcpts_hard: bool = False
    opts: Mapping[str, str] = field(default_factory=dict)

    def is_badfrom(self, address: str) -> bool:
        return _listed(address, self.badfrom)

    def is_spamtrap(self, address: str) -> bool:
        return _listed(address, self.spamtrap)

    def freemail_domains(self, address: str) -> tuple[str, ...] | None:
        """The domains whose relays may send mail from `address`, when its domain is freemail."""
        domain = address.rpartition("@")[2].lower()
        names = self.freemail.get(domain)
        return None if names is None else (domain, *names)


def relay_in_domains(host: str | None, domains: tuple[str, ...]) -> bool:
    """Courier's do_checkfreemail: the client's host name is one of the domains or under one."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def _listed(address: str, entries: tuple[str, ...]) -> bool:
    addr = address.lower()
    local, at, domain = addr.rpartition("@")
    for e in entries:
        if at and e == "@" + domain:                          # @domain
            return True
        if addr == e:                                         # whole address
            return True
        if at and e.startswith("@.") and domain.endswith(e[1:]):
            return True                                       # @.domain: sub-domains
        el, eat, ed = e.rpartition("@")
        if at and eat and el == local and ed.startswith(".") and domain.endswith(ed):
            return True                                       # user@.domain: same, one user
    return False


def parse_bofh(text: str, source: str = "bofh") -> Bofh:
    badfrom: list[str] = []
    spamtrap: list[str] = []
    badmx: set[str] = set()
    freemail: dict[str, tuple[str, ...]] = {}
    maxrcpts, hard = DEFAULT_MAXRCPTS, False
    opts: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        verb, args = words[0].lower(), words[1:]
        if verb in ("badfrom", "spamtrap", "badmx", "freemail") and not args:
            log.warning("%s:%d: %s needs an argument; line ignored", source, n, verb)
        elif verb == "badfrom":
            badfrom.append(args[0].lower())
        elif verb == "spamtrap":
            spamtrap.append(args[0].lower())
        elif verb == "badmx":
            badmx.add(args[0].lower().removeprefix("::ffff:"))
        elif verb == "freemail":
            freemail[args[0].lower()] = tuple(a.lower() for a in args[1:])
        elif verb == "maxrcpts":
            if args:
                # Courier: atoi(); zero or junk keeps the previous value.
                num = args[0] if args[0].isdigit() else ""
                if num and int(num) > 0:
                    maxrcpts = int(num)
                else:
                    log.warning("%s:%d: maxrcpts %r is not a positive number; kept %d",
                                source, n, args[0], maxrcpts)
                hard = len(args) > 1 and args[1].lower() == "hard"
        elif verb == "opt":
            if args and "=" in args[0]:
                name, _, value = args[0].partition("=")
                opts.setdefault(name, value)     # Courier: the first setting wins (putenv once)
            else:
                log.warning("%s:%d: opt needs NAME=value; line ignored", source, n)
        else:
            log.warning("%s:%d: unknown bofh directive %r ignored", source, n, verb)
    return Bofh(tuple(badfrom), tuple(spamtrap), frozenset(badmx), freemail, maxrcpts, hard, opts)


def load_bofh(etc: Path) -> Bofh:
    path = Path(etc) / "bofh"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return Bofh()
    if len(data) > MAX_FILE:
        raise ValueError(f"{path}: larger than {MAX_FILE} bytes")
    return parse_bofh(data.decode("utf-8", "replace"), str(path))
