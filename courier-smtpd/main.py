"""`python -m courier_smtpd -C ETC --service esmtpd|esmtpd-msa|esmtpd-ssl`: the ESMTP listener.

The listener (libcourier.tcpd) binds as root, loads the TLS key, then forks a
child per connection that drops to the daemon account (MAILUSER/MAILGROUP of
`courierd`) before reading a byte; the child runs session.Session. Everything
the child needs is imported here, before any fork or privilege drop. SIGHUP
makes the listener call load() again: config and the `me`, `locals` and
`hosteddomains` control files are re-read, all or nothing.
"""

from __future__ import annotations

import base64
import encodings.idna  # noqa: F401  (gethostbyaddr may need it after the drop)
import logging
import os
from functools import partial
from pathlib import Path

from courier_smtpd import session as _session  # noqa: F401
from courier_smtpd.config import SmtpdConfig, courier_flag, helo_level, load_config
from courier_smtpd.policy import Domains, KnownRecipients, LocalPolicy, load_domains
from courier_smtpd.senderdns import DnsChecks
from courier_smtpd.session import Credentials, Session

from libcourier import authclient, privsep, spool, tcpd
from libcourier.aliases import AliasTable
from libcourier.layout import Layout
from libcourier.sasl import CramCredentials, LoginCredentials, VerifiedCredentials
from libcourier.tcpd.daemon import ListenerDaemon, StartupError, run_listener

log = logging.getLogger("courier.esmtpd")


def handle_connection(conn: tcpd.Connection, *, cfg: SmtpdConfig, layout: Layout,
                      domains: Domains, starttls_ctx, aliases: AliasTable | None = None,
                      known: KnownRecipients | None = None) -> None:
    block = conn.env.get("BLOCK")
    if block is not None:
        # Courier's smtpaccess BLOCK: refuse the whole session, with its text if any.
        text = block.strip() or "Access denied."
        conn.sendall(f"554 5.7.1 {text}\r\n".encode("utf-8", "replace"))
        conn.linger()       # a client that talks first still reads the 554 (no reset)
        return
    relayclient = "RELAYCLIENT" in conn.env
    # smtpaccess may set BOFHCHECKDNS/BOFHCHECKHELO per client, over the esmtpd file.
    check_dns = cfg.check_dns if "BOFHCHECKDNS" not in conn.env else \
        courier_flag(conn.env["BOFHCHECKDNS"])
    check_helo = cfg.check_helo if "BOFHCHECKHELO" not in conn.env else \
        helo_level(conn.env["BOFHCHECKHELO"])
    policy = LocalPolicy(domains, layout.authsocket, relayclient=relayclient,
                         aliases=aliases, bofh=cfg.bofh, auth_sender_check=cfg.auth_sender_check,
                         dns=DnsChecks(cfg.resolver, check_domain=check_dns,
                                       badmx=cfg.bofh.badmx, check_helo=check_helo),
                         client_ip=conn.peer_ip, known=known)
    session = Session(conn, cfg, layout.spooldir, layout.queue_socket, policy, starttls_ctx,
                      authenticate=partial(_authenticate, layout.authsocket),
                      relayclient=relayclient,
                      scram=authclient.ScramAuthd(layout.authsocket, "esmtp", conn.peer_ip),
                      verifiable=authclient.verifiable_mechanisms(layout.authsocket))
    policy.remote_host = session.verified_rdns
    session.run()


def _authenticate(authsocket: Path, creds: Credentials, ip: str) -> str | None:
    """SMTP AUTH credentials to authd (service "esmtp"); the user name, or None."""
    if isinstance(creds, LoginCredentials):
        info = authclient.auth_login(authsocket, "esmtp", creds.user, creds.password,
                                     remote_ip=ip)
        user = creds.user
    elif isinstance(creds, VerifiedCredentials):
        # SCRAM: authd has already checked the proof (AuthScramProof); this is its verdict.
        if creds.unavailable:
            raise authclient.AuthTempFail(creds.unavailable)
        info, user = creds.info, creds.user
    elif isinstance(creds, CramCredentials):
        info = authclient.auth_cram(authsocket, "esmtp", creds.mech.lower(),
                                    base64.b64encode(creds.challenge).decode(),
                                    base64.b64encode(creds.response).decode(), remote_ip=ip)
        user = creds.response.rpartition(b" ")[0].decode("utf-8", "replace")
    else:
        info = authclient.auth_pre(authsocket, "esmtp", creds.identity)
        user = creds.identity
    if info is None:
        return None
    # authd OPTIONS disablesmtp=1 (issue 4; "disableesmtp" too) refuses AUTH.
    for key in ("disablesmtp", "disableesmtp"):
        if key in info.options and info.options[key] != "0":
            return None
    return user


def make_handler(cfg: SmtpdConfig, layout: Layout, ctx) -> tcpd.Handler:
    # Re-read on every load (SIGHUP) with the config: `me`, `locals`, `hosteddomains`.
    domains = load_domains(cfg.etc, cfg.hostname)
    # What authd can verify, read once before the children drop privileges (each session
    # re-reads it when it changed, and keeps this copy if it cannot).
    authclient.verifiable_mechanisms(layout.authsocket)
    aliases = AliasTable(cfg.etc / "aliases.dat", domains.me, domains.is_locals)
    # One per load: each forked child has its own copy, shared by the sessions it serves.
    known = KnownRecipients()
    return partial(handle_connection, cfg=cfg, layout=layout, domains=domains,
                   starttls_ctx=None if cfg.tls_on_connect else ctx, aliases=aliases,
                   known=known)


def _prepare_spool(layout: Layout) -> None:
    try:
        if os.geteuid() == 0:
            uid, gid = privsep.lookup_account(layout.mailuser, layout.mailgroup)
            spool.ensure_spool(layout.spooldir, uid, gid)
        else:
            spool.ensure_spool(layout.spooldir)
    except (OSError, KeyError, privsep.PrivsepError) as e:
        raise StartupError(f"cannot prepare the spool {layout.spooldir}: {e}") from None


DAEMON = ListenerDaemon(
    prog="courier_smtpd",
    description="courier-py ESMTP server",
    services=("esmtpd", "esmtpd-msa", "esmtpd-ssl"),
    load_config=load_config,
    make_handler=make_handler,
    busy_reply=b"421 4.7.0 Too many connections, try again later.\r\n",
    deny_reply=b"554 5.7.1 Access denied.\r\n",
    timeout=300.0,     # RFC 5321 §4.5.3.2.7: server timeout 5 minutes
    logger="courier.esmtpd",
    children_drop_to_mailuser=True,
    log_ident=lambda service: "courieresmtpd" if service == "esmtpd" else service,
    prepare=_prepare_spool,
    # Every session runs as the daemon account, so a child may serve the next client
    # too (Postfix's max_use): no fork, copy-on-write faults or exit per connection.
    reuse_children=100,
)


def main(argv: list[str] | None = None) -> int:
    return run_listener(DAEMON, argv)
