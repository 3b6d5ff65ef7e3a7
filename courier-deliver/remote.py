"""Remote delivery: asyncio connections driving the sans-I/O SmtpClient.

`RemoteDelivery.deliver(env, recipients, message)` takes the remote recipients
of one message, groups them by domain (and by MAXRCPT), finds each group's
route (esmtproutes, else MX/A/AAAA) and tries the hosts best first: one SMTP
session per host carries every recipient of the group still waiting. A host
that cannot be reached, times out, talks garbage or answers 4xx leaves its
recipients for the next host; 2xx and 5xx are final (RFC 5321 §5.1 and
§4.2.1). What is still temporary after the last host is retried later by the
queue manager. Timeouts are Courier's esmtptimeout* control files
(config.EsmtpTimeouts); a host that says nothing is a temporary failure.

Courier's extensions (libcourier.smtp.client does the protocol): a message
spooled with VERP goes to each recipient with its own return path unless the
server offers XVERP=Courier; a message spooled with SECURITY=STARTTLS, or for
a domain whose esmtproutes line says /SECURITY=STARTTLS (the same flag in
Courier), is sent only over TLS verified against TLS_TRUSTSECURITYCERTS (by
the exchanger's name), to a server offering XSECURITY=STARTTLS, else it
bounces (5.7.10), and a connection is reused only for mail of the same
security level. The other esmtproutes options (routes.py) as Courier's
libesmtp.c: /SECURITY=REQUIRED bounces when the server offers no STARTTLS,
/SECURITY=SMTPS speaks TLS from the first byte, /IPV4ONLY and /IPV6ONLY skip
the other family's addresses; certificates are verified by name against
TLS_TRUSTCERTS only with ESMTP_TLS_VERIFY_DOMAIN=1. A server whose STARTTLS
failed is on Courier's broken-STARTTLS list for 2 hours: mail goes to it in
clear, mail that needs TLS fails (courier(8), esmtproutes).

Limits: at most ESMTPMAXDELS sessions at once overall and MAXHOST to one
exchanger (by name), as Courier's esmtp module does. Connection reuse: after
a transaction the session stays open (idle) for esmtptimeoutkeepalive seconds
(Courier's control file, default 60; 0 turns reuse off), and the next
message for the same exchanger, address, port, TLS policy and credentials
takes it (RSET first when needed); a session whose last transaction got a
4xx is not reused. Idle sessions do not hold a MAXHOST slot; at most MAXHOST
of them are kept per exchanger. The next message for a domain takes an idle
session that carried the domain's mail before without looking the domain up
again (as Courier's esmtp module hands a kept connection the next message for
the same domain, and Postfix reuses by destination): the same route, port,
TLS policy and credentials, to one of the best-preference exchangers of the
last lookup, which is at most DOMAIN_REUSE_TIME old, so DNS changes show
within that (when that exchanger has MAXHOST sessions busy, the message waits
for one of them instead of looking up); no such session, or a dead one, and
the domain is looked up as before. Timeouts follow RFC 5321
§4.5.3.2 (5 minutes for a reply, 10 for the reply to the final dot).

Courier's control files: esmtphelo is the EHLO name (default `me`); "*"
means the reverse DNS of the local address of each connection, else that
address as a literal (RFC 5321 §4.1.3). backuprelay names a host (found by
MX, then A/AAAA) that takes every remote recipient still undelivered after
warntime, whatever its domain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.reversename
from courier_deliver.config import EsmtpConfig, EsmtpTimeouts
from courier_deliver.routes import (
    Option,
    Route,
    control_signature,
    load_authclient,
    load_routes,
)

from libcourier.config.errors import ConfigError
from libcourier.expiring import ExpiringDict
from libcourier.mx import DnsFailure, Target, find_targets, make_resolver
from libcourier.smtp.client import (
    Finished,
    Rcpt,
    SmtpClient,
    StartTLS,
    State,
    TlsPolicy,
    Transaction,
    local_reply,
)
from libcourier.smtp.reply import Reply
from libcourier.spool import Envelope, Recipient

logger = logging.getLogger("courier.courieresmtp")

TLS_TIMEOUT = 60.0            # a TLS handshake
DEFAULT_TIMEOUTS = EsmtpTimeouts()
REAP_INTERVAL = 5.0           # how often idle connections past keepalive are closed
READ_CHUNK = 64 * 1024
PTR_CACHE = 256               # local addresses whose reverse name is remembered
FILE_CHECK_INTERVAL = 1.0     # esmtproutes/esmtpauthclient stat at most this often
# Courier's track files: a server whose STARTTLS failed is remembered for at
# least 2 hours (comtrack.h TRACK_NHOURS), by its name; bounded here.
BROKEN_STARTTLS_TIME = 2 * 3600
MAX_BROKEN_STARTTLS = 10000
# A domain's mail goes over an idle session without a new MX lookup for this
# long after the lookup that chose the exchanger (Postfix's
# smtp_connection_reuse_time_limit is 300 s too); then the next message looks
# the domain up again, so a changed MX shows within this.
DOMAIN_REUSE_TIME = 300.0
MAX_DOMAINS = 10000           # domains whose last exchangers are remembered


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """The final (or last temporary) answer for one recipient."""
    reply: Reply
    host: str | None = None        # the server that gave it (None: DNS, no server)
    dsn_relayed: bool = False      # 2xx from a server offering DSN: it reports from now on

    @property
    def temporary(self) -> bool:
        return self.reply.code < 500 and not 200 <= self.reply.code < 300


@dataclass(frozen=True, slots=True)
class _SessionOutcome:
    results: dict[str, Reply]
    dsn: bool


class RemoteDelivery:
    """Lives in courierd's event loop; its semaphores are the MAXDELS/MAXHOST limits."""

    def __init__(self, config: EsmtpConfig,
                 resolver: dns.asyncresolver.Resolver | None = None):
        self.config = config
        self.resolver = resolver or make_resolver(config.resolver)
        self._all = asyncio.Semaphore(config.maxdels)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[_PoolKey, list[tuple[Connection, float]]] = {}
        # (looked-up name, route) -> the pool keys of sessions to its best
        # exchangers since the lookup: reuse before a lookup, until the next.
        self._domains: ExpiringDict[tuple[str, Route], list[_PoolKey]] = ExpiringDict(
            DOMAIN_REUSE_TIME, MAX_DOMAINS)
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ptr: dict[str, str] = {}     # esmtphelo "*": local address -> EHLO name
        self._files_checked = time.monotonic()
        self._unusable: dict[str, tuple] = {}  # file -> signature that failed to load
        self._broken_starttls: ExpiringDict[str, bool] = ExpiringDict(   # exchanger names
            BROKEN_STARTTLS_TIME, MAX_BROKEN_STARTTLS)

    def _host_limit(self, host: str) -> asyncio.Semaphore:
        sem = self._hosts.get(host)
        if sem is None:
            sem = self._hosts[host] = asyncio.Semaphore(self.config.maxhost)
        return sem

    def _release_host(self, host: str) -> None:
        # Forget idle semaphores so the dict does not grow with every domain seen.
        sem = self._hosts.get(host)
        if sem is not None and sem._value == self.config.maxhost and not sem._waiters:  # noqa: SLF001
            del self._hosts[host]

    async def deliver(self, env: Envelope, recipients: list[Recipient], message: bytes,
                      qid: str = "") -> dict[str, RemoteResult]:
        self._refresh_files()
        groups: dict[str, list[Recipient]] = {}
        for r in recipients:
            domain = r.address.rpartition("@")[2].lower()
            groups.setdefault(domain, []).append(r)
        jobs = []
        for domain, rcpts in groups.items():
            for i in range(0, len(rcpts), self.config.maxrcpt):
                jobs.append(self._deliver_domain(env, domain, rcpts[i:i + self.config.maxrcpt],
                                                 message, qid))
        out: dict[str, RemoteResult] = {}
        for part in await asyncio.gather(*jobs):
            out.update(part)
        return out

    def _refresh_files(self) -> None:
        """Courier reads esmtproutes and esmtpauthclient anew for each new
        connection (courier(8): changes "take effect immediately, more or
        less"): here they are reloaded when their stat changes, looked at no
        more than once a second. A changed file that does not load keeps the
        old contents in use, with one log line per version of it."""
        now = time.monotonic()
        if now - self._files_checked < FILE_CHECK_INTERVAL:
            return
        self._files_checked = now
        c = self.config
        new: dict[str, object] = {}
        for name, current, loader in (("routes", c.routes, load_routes),
                                      ("auth", c.auth, load_authclient)):
            if current.path is None:
                continue
            signature = control_signature(current.path)
            if signature in (current.signature, self._unusable.get(name)):
                continue
            try:
                new[name] = loader(current.path)
            except (ConfigError, OSError) as e:
                self._unusable[name] = signature
                logger.error("%s changed but cannot be used; the old one stays: %s",
                             current.path.name, e)
                continue
            logger.info("%s changed: reloaded", current.path.name)
        if new:
            self.config = dataclasses.replace(c, **new)

    async def _targets(self, domain: str, route: Route) -> tuple[list[Target], int]:
        if route.relay is None:
            myself = frozenset(n.lower().rstrip(".") for n in (self.config.helo, self.config.me)
                               if n)
            return (await find_targets(self.resolver, domain, self.config.prefer_ipv6,
                                       myself=myself), self.config.port)
        port = self._port(route)
        try:
            ipaddress.ip_address(route.relay)
            return [Target(route.relay, 0, (route.relay,))], port
        except ValueError:
            pass
        try:
            # "Unlike Qmail, Courier looks up MX and A records" for a relay;
            # a static route is never a loop back to myself.
            return await find_targets(self.resolver, route.relay,
                                      self.config.prefer_ipv6), port
        except DnsFailure as e:
            if not e.permanent:
                raise
            # Our esmtproutes names a relay DNS does not know: ours to fix.
            raise DnsFailure(False, "4.4.3", f"relay {route.relay}: {e.text}") from None

    def _tls(self, route: Route, security: str | None) -> tuple[TlsPolicy, ssl.SSLContext | None]:
        """Courier's esmtp_enable_tls: SECURITY=STARTTLS (the message's or the
        route's) trusts only TLS_TRUSTSECURITYCERTS, by the exchanger's name;
        otherwise the certificate is verified (TLS_TRUSTCERTS, by name) only
        with ESMTP_TLS_VERIFY_DOMAIN=1, whatever /SECURITY=REQUIRED or SMTPS."""
        c = self.config
        if security:
            ctx = c.tls_security
        else:
            ctx = c.tls_verified if c.verify else c.tls_client
        if route.smtps:
            return TlsPolicy.SMTPS, ctx          # Courier drops REQUIRED then
        if route.tls_required:
            return TlsPolicy.REQUIRED, ctx
        return (TlsPolicy.OPPORTUNISTIC if c.starttls else TlsPolicy.NONE), ctx

    async def _deliver_domain(self, env: Envelope, domain: str, rcpts: list[Recipient],
                              message: bytes, qid: str) -> dict[str, RemoteResult]:
        route = self.config.routes.lookup(domain)
        lookup = domain
        c = self.config
        if c.backuprelay and time.time() - env.received >= c.backuprelay_after:
            logger.info("id=%s: undelivered after %d s: rerouted to the backup relay %s",
                        qid, c.backuprelay_after, c.backuprelay)
            route, lookup = Route(None), c.backuprelay
        # esmtproutes /SECURITY=STARTTLS sets the flag a SECURITY=STARTTLS
        # message sets (Courier's ROUTE_STARTTLS): the same checks, and the
        # keyword goes on in MAIL FROM.
        security = env.security or ("STARTTLS" if route.security_starttls else None)
        policy, ctx = self._tls(route, security)
        refusal = None
        if security and ctx is None:
            # Courier: only TLS_TRUSTSECURITYCERTS vouches for the server; without
            # it the level cannot be met ("Unable to set minimum security level").
            refusal = local_reply(554, "5.7.10", "Unable to set minimum security level: "
                                  "TLS_TRUSTSECURITYCERTS is not set")
        elif policy is TlsPolicy.REQUIRED and not self.config.starttls:
            # ESMTP_USE_STARTTLS=0: Courier sees no STARTTLS anywhere.
            refusal = local_reply(554, "5.7.10", "/SECURITY=REQUIRED set, but TLS is not "
                                  "available (ESMTP_USE_STARTTLS=0)")
        if refusal is not None:
            logger.info("id=%s: %s", qid, refusal.text)
            return {r.address: RemoteResult(refusal) for r in rcpts}
        txn_base = Transaction(
            sender=env.sender, recipients=(), message=message,
            eightbit=env.body.upper() == "8BITMIME", smtputf8=env.smtputf8,
            envid=env.envid, ret=env.ret, verp=env.verp, security=security)
        waiting = {r.address: r for r in rcpts}
        results: dict[str, RemoteResult] = {}

        def record(outcome: _SessionOutcome, host: str) -> None:
            for addr, reply in outcome.results.items():
                res = RemoteResult(reply, host,
                                   dsn_relayed=outcome.dsn and 200 <= reply.code < 300)
                results[addr] = res
                if not res.temporary:
                    waiting.pop(addr, None)

        def transaction() -> Transaction:
            return dataclasses.replace(txn_base, recipients=tuple(
                Rcpt(r.address, r.orcpt, r.notify) for r in waiting.values()))

        port = self._port(route)
        # Courier's auth key is what it connects to: the esmtproutes
        # relay, else the domain (backuprelay: its name), not an MX.
        auth = self.config.auth.lookup(route.relay or lookup, port)
        # An idle session to one of the domain's exchangers: no lookup.
        reused: set[tuple[str, str]] = set()
        dkey = (lookup, route)
        for key in self._idle_for_domain(dkey, port, policy, ctx, auth, security):
            if not waiting:
                return results
            host, address = key[0], key[1]
            outcome = await self._limited(host, address, port, transaction(), policy, ctx,
                                          auth, qid, reuse_only=True)
            if outcome is not None:
                reused.add((host, address))
                record(outcome, host)
        if not waiting:
            return results
        try:
            targets, port = await self._targets(lookup, route)
        except DnsFailure as e:
            code = 550 if e.permanent else 451
            reply = local_reply(code, e.status, e.text)
            logger.info("id=%s: %s", qid, e.text)
            return results | {a: RemoteResult(reply) for a in waiting}
        best = targets[0].preference if targets else 0
        remembered: list[_PoolKey] = []
        self._remember_domain(dkey, remembered)
        tried = bool(reused)
        for target in targets:
            for address in target.addresses:
                if not waiting:
                    return results
                if not route.family_allowed(address):
                    continue                     # /IPV4ONLY, /IPV6ONLY
                if (target.host, address) in reused:
                    continue                     # its session just answered 4xx
                tried = True
                txn = transaction()
                host_policy = policy
                if policy is not TlsPolicy.SMTPS and self._starttls_broken(target.host):
                    if security or policy is TlsPolicy.REQUIRED:
                        # Courier's hello3 forgets the STARTTLS of a server in
                        # the broken list; what needs it then fails for good.
                        flag = "/SECURITY" if security else "/SECURITY=REQUIRED"
                        reply = local_reply(554, "5.7.10", f"{flag} set, but TLS is not "
                                            f"available (STARTTLS with {target.host} "
                                            "failed recently)")
                        logger.info("id=%s,host=%s: %s", qid, target.host, reply.text)
                        for addr in list(waiting):
                            results[addr] = RemoteResult(reply, target.host)
                            waiting.pop(addr)
                        continue
                    host_policy = TlsPolicy.NONE      # Courier: send in clear meanwhile
                if target.preference == best and host_policy is policy:
                    # Only the best exchangers' sessions are reused without a
                    # lookup: a backup taking mail now is asked again next time.
                    remembered.append(_pool_key(target.host, address, port, policy, ctx,
                                                auth, security))
                outcome = await self._limited(target.host, address, port, txn, host_policy,
                                              ctx, auth, qid)
                record(outcome, target.host)
        if not tried:
            # Courier: no reply at all, so the message waits for a later try.
            family = "IPv4" if Option.IPV4ONLY in route.options else "IPv6"
            reply = local_reply(451, "4.4.4", f"no {family} address for the mail "
                                f"exchangers of {lookup} (esmtproutes /{family.upper()}ONLY)")
            logger.info("id=%s: %s", qid, reply.text)
            return {r.address: RemoteResult(reply) for r in rcpts}
        return results

    def _port(self, route: Route) -> int:
        # Courier: port 25 unless the line gives one (even for /SECURITY=SMTPS).
        return self.config.port if route.relay is None else route.port or 25

    # -- reuse by domain, before the lookup --

    def _remember_domain(self, dkey: tuple[str, Route], keys: list[_PoolKey]) -> None:
        """A fresh lookup of the domain: the sessions of its best exchangers
        (`keys`, filled as they are tried) may carry its mail for
        DOMAIN_REUSE_TIME."""
        self._domains.put(dkey, keys)

    def _idle_for_domain(self, dkey: tuple[str, Route], port: int, policy: TlsPolicy,
                         ctx: ssl.SSLContext | None, auth: tuple[str, str] | None,
                         security: str | None) -> list[_PoolKey]:
        """Pool keys holding an idle session that may take this domain's mail
        now: from a lookup at most DOMAIN_REUSE_TIME old, the same port, TLS
        policy and context, credentials and security level (esmtproutes and
        esmtpauthclient may have changed since), not to a server whose
        STARTTLS broke since (the lookup path decides what goes there). Also
        a key whose exchanger has MAXHOST sessions busy: its slot is awaited
        and the session that freed it taken."""
        keys = self._domains.get(dkey)
        if keys is None:
            return []
        want = _pool_key("", "", port, policy, ctx, auth, security)[2:]
        return [k for k in dict.fromkeys(keys)
                if k[2:] == want and (self._idle.get(k) or self._host_full(k[0]))
                and (policy is TlsPolicy.SMTPS or not self._starttls_broken(k[0]))]

    def _host_full(self, host: str) -> bool:
        # MAXHOST sessions busy: a lookup would only end up waiting for one of
        # them, which goes idle as its transaction ends; wait for it instead.
        sem = self._hosts.get(host)
        return sem is not None and sem.locked()

    async def _limited(self, host: str, address: str, port: int, txn: Transaction,
                       policy: TlsPolicy, ctx: ssl.SSLContext | None,
                       auth: tuple[str, str] | None, qid: str, *,
                       reuse_only: bool = False) -> _SessionOutcome | None:
        async with self._all:
            sem = self._host_limit(host)
            try:
                async with sem:
                    return await self._transact(host, address, port, txn, policy, ctx,
                                                auth, qid, reuse_only)
            finally:
                self._release_host(host)

    async def _transact(self, host: str, address: str, port: int, txn: Transaction,
                        policy: TlsPolicy, ctx: ssl.SSLContext | None,
                        auth: tuple[str, str] | None, qid: str,
                        reuse_only: bool = False) -> _SessionOutcome | None:
        """One transaction over an idle session of this key, else a new one;
        reuse_only: None when no idle session (left, or alive) took it."""
        key = _pool_key(host, address, port, policy, ctx, auth, txn.security)
        outcome: _SessionOutcome | None = None
        conn = self._take_idle(key)
        if conn is not None:
            outcome = await conn.transact(txn, qid)
            if outcome is None:          # it had died while idle: a fresh one
                await conn.close()
                conn = None
        if outcome is None:
            if reuse_only:
                return None
            conn, outcome = await Connection.open(
                self.config.helo, host, address, port, txn, policy, ctx, auth, qid,
                keep_open=self.config.keepalive > 0, timeouts=self.config.timeouts,
                helo_for=self._helo_name if self.config.helo == "*" else None)
        if conn is not None:
            if conn.client.starttls_failed and not txn.security:
                self._note_broken_starttls(host)
            if conn.reusable:
                self._put_idle(key, conn)
            else:
                await conn.close()
        return outcome

    # -- Courier's broken-STARTTLS list (courier(8), esmtproutes) --

    def _starttls_broken(self, host: str) -> bool:
        return self._broken_starttls.get(host) is not None

    def _note_broken_starttls(self, host: str) -> None:
        """A server offered STARTTLS and then refused it or failed the
        handshake: for BROKEN_STARTTLS_TIME mail goes to it in clear (a message
        needing TLS fails), as Courier's report_broken_starttls. Not for
        SECURITY=STARTTLS mail, whose failure is "on us" (libesmtp.c)."""
        if not self._starttls_broken(host):
            logger.info("host=%s: STARTTLS failed: mail goes to it without TLS for %d s",
                        host, BROKEN_STARTTLS_TIME)
        self._broken_starttls.put(host, True)

    async def _helo_name(self, local: str) -> str:
        """esmtphelo "*": the PTR name of the connection's local address, else
        the address literal; remembered per address until the next reload."""
        name = self._ptr.get(local)
        if name is None:
            name = await _reverse_name(self.resolver, local) or _address_literal(local)
            if len(self._ptr) >= PTR_CACHE:
                self._ptr.clear()
            self._ptr[local] = name
        return name

    # -- the idle connections (Courier's esmtptimeoutkeepalive) --

    def _take_idle(self, key: _PoolKey) -> Connection | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            conn, since = idle.pop()
            if conn.reusable and now - since < self.config.keepalive:
                if not idle:
                    del self._idle[key]
                return conn
            self._background(conn.close())
        self._idle.pop(key, None)
        return None

    def _put_idle(self, key: _PoolKey, conn: Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.config.maxhost:
            self._background(conn.close())
            return
        idle.append((conn, asyncio.get_running_loop().time()))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    def _background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self) -> None:
        while self._idle:
            await asyncio.sleep(REAP_INTERVAL)
            self._domains.prune()
            now = asyncio.get_running_loop().time()
            for key in list(self._idle):
                keep = []
                for conn, since in self._idle[key]:
                    if conn.reusable and now - since < self.config.keepalive:
                        keep.append((conn, since))
                    else:
                        self._background(conn.close())
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    async def close_idle(self) -> None:
        """At shutdown: QUIT every idle connection (bounded by esmtptimeoutquit each)."""
        conns = [c for idle in self._idle.values() for c, _ in idle]
        self._idle.clear()
        if conns:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


_PoolKey = tuple[str, str, int, TlsPolicy, int, "tuple[str, str] | None", "str | None"]


def _pool_key(host: str, address: str, port: int, policy: TlsPolicy,
              ctx: ssl.SSLContext | None, auth: tuple[str, str] | None,
              security: str | None) -> _PoolKey:
    """Who may share a session: the exchanger, its address and port, the TLS
    policy and context, the credentials and the message's security level."""
    return (host, address, port, policy, id(ctx), auth, security)


class Connection:
    """One SMTP connection driving one SmtpClient; several transactions when kept open."""

    def __init__(self, client: SmtpClient, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, host: str, address: str, port: int,
                 ctx: ssl.SSLContext | None, timeouts: EsmtpTimeouts):
        self.client = client
        self.reader = reader
        self.writer = writer
        self.host = host
        self.address = address
        self.port = port
        self.ctx = ctx
        self.deferred = False        # the last transaction had a 4xx: do not reuse
        self.timeouts = timeouts

    @classmethod
    async def open(cls, helo: str, host: str, address: str, port: int, txn: Transaction,
                   policy: TlsPolicy, ctx: ssl.SSLContext | None,
                   auth: tuple[str, str] | None, qid: str = "", *, keep_open: bool = False,
                   timeouts: EsmtpTimeouts = DEFAULT_TIMEOUTS,
                   helo_for: Callable[[str], Awaitable[str]] | None = None
                   ) -> tuple[Connection | None, _SessionOutcome]:
        """Connect and run the first transaction; never raises for network trouble."""
        client = SmtpClient(helo, txn, tls=policy, auth=auth, keep_open=keep_open)
        where = f"id={qid},host={host}[{address}]:{port}"
        smtps = policy is TlsPolicy.SMTPS
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address, port, ssl=ctx if smtps else None,
                    server_hostname=host if smtps else None,
                    ssl_handshake_timeout=TLS_TIMEOUT if smtps else None),
                timeouts.connect)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            logger.info("%s: cannot connect: %s", where, e or "timeout")
            if smtps and txn.security and isinstance(e, ssl.SSLError):
                # Courier's esmtp_enable_tls: for SECURITY=STARTTLS a failed
                # handshake (the certificate) is a 5xx, as after STARTTLS.
                finished = client.tls_failed(f"TLS handshake with {host} failed: {e}")
            else:
                finished = client.connection_lost(f"cannot connect to {host}[{address}]: "
                                                  f"{e or 'timeout'}")
            return None, _SessionOutcome(finished[0].results, False)
        if helo_for is not None:
            sock = writer.get_extra_info("sockname")
            if sock:
                client.helo = await helo_for(sock[0])
        conn = cls(client, reader, writer, host, address, port, ctx, timeouts)
        results = await conn._pump([], where)
        if client.session_refused:
            # A 5xx greeting/HELO speaks of this host: try the next one, retry later.
            logger.info("%s: the host refused the session: temporary for this message",
                        where)
            results = {a: Reply(451, "4.4.0", (f"{host} refused the session: "
                                               f"{r.code} {r.text}",))
                       for a, r in results.items()}
        return conn, _SessionOutcome(results, "DSN" in client.extensions)

    async def transact(self, txn: Transaction, qid: str = "") -> _SessionOutcome | None:
        """Another transaction on an idle connection; None when the connection
        turned out dead before the server answered anything (try a new one)."""
        where = f"id={qid},host={self.host}[{self.address}]:{self.port} (reused)"
        before = self.client.last_reply
        events = self.client.next_transaction(txn)
        results = await self._pump(list(events), where)
        if self.client.last_reply is before:
            return None
        return _SessionOutcome(results, "DSN" in self.client.extensions)

    @property
    def reusable(self) -> bool:
        return (self.client.state is State.IDLE and not self.deferred
                and not self.writer.is_closing() and not self.reader.at_eof())

    async def _pump(self, events: list, where: str) -> dict[str, Reply]:
        """Write what the client has to say, act on its events, read replies,
        until the transaction is finished."""
        client = self.client
        results: dict[str, Reply] | None = None
        while True:
            out = client.data_to_send()
            if out and not self.writer.is_closing():
                self.writer.write(out)
                try:
                    await asyncio.wait_for(self.writer.drain(), self.timeouts.reply)
                except (OSError, TimeoutError, ssl.SSLError) as e:
                    events += client.connection_lost(f"write to {self.host}[{self.address}] "
                                                     f"failed: {e}")
            for ev in events:
                if isinstance(ev, StartTLS):
                    try:
                        await asyncio.wait_for(
                            self.writer.start_tls(self.ctx or ssl.create_default_context(),
                                                  server_hostname=self.host),
                            TLS_TIMEOUT)
                    except (OSError, TimeoutError, ssl.SSLError) as e:
                        logger.info("%s: TLS handshake failed: %s", where, e)
                        # RFC 3207 §4.1: after a failed handshake the session is unusable.
                        client.tls_failed(f"TLS handshake with {self.host} failed: {e}")
                        results = dict(client.results)
                        break
                    client.tls_started()
                    self.writer.write(client.data_to_send())   # EHLO again, in TLS
                elif isinstance(ev, Finished):
                    results = ev.results
            events = []
            if results is None and client.state is State.DONE:
                results = dict(client.results)     # lost after the last event
            if results is not None:
                _log_results(where, results)
                # A server that deferred something may be throttling this very
                # session; the next message gets a fresh connection.
                self.deferred = any(400 <= r.code < 500 for r in results.values())
                return results
            t = self.timeouts
            timeout = (t.data if client.state is State.DATA_BODY else
                       t.helo if client.state in (State.GREETING, State.EHLO, State.HELO)
                       else t.reply)
            try:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                events = client.connection_lost(f"timeout talking to {self.host}"
                                                f"[{self.address}]")
                continue
            except (OSError, ssl.SSLError) as e:
                events = client.connection_lost(f"connection to {self.host}[{self.address}] "
                                                f"lost: {e}")
                continue
            events = client.receive(data)

    async def close(self) -> None:
        """QUIT when the session allows it, wait briefly for the 221, close."""
        client, writer = self.client, self.writer
        try:
            client.quit()
            out = client.data_to_send()
            if out and not writer.is_closing():
                writer.write(out)
            if client.state is State.QUIT and not writer.is_closing():
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_CHUNK),
                                                  self.timeouts.quit)
                except (OSError, TimeoutError, ssl.SSLError):
                    data = b""
                if data:
                    client.receive(data)
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.timeouts.quit)
            except (OSError, TimeoutError, ssl.SSLError):
                pass


def _address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3: [192.0.2.1], [IPv6:2001:db8::1]; a v4-mapped address as v4."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return f"[{addr}]" if addr.version == 4 else f"[IPv6:{addr}]"


async def _reverse_name(resolver: dns.asyncresolver.Resolver, ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        answer = await resolver.resolve(dns.reversename.from_address(str(addr)), "PTR")
    except (dns.exception.DNSException, ValueError):
        return None
    for rr in answer:
        name = rr.target.to_text(omit_final_dot=True)
        if name and name.isascii() and len(name) <= 253:
            return name
    return None


def _log_results(where: str, results: dict[str, Reply]) -> None:
    for addr, reply in results.items():
        logger.info("%s,addr=<%s>: %d %s%s", where, addr, reply.code,
                    f"{reply.enhanced} " if reply.enhanced else "", reply.text)
