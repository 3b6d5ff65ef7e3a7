"""`python -m courier_smtpd -C ETC --service esmtpd|esmtpd-msa|esmtpd-ssl`: the ESMTP listener.

The listener (libcourier.tcpd) binds as root, loads the TLS key, then forks a
child per connection that drops to the daemon account (MAILUSER/MAILGROUP of
`courierd`) before reading a byte; the child runs session.Session. Everything
the child needs is imported here, before any fork or privilege drop. SIGHUP
makes the listener call load() again: config and the `me`, `locals` and
`hosteddomains` control files are re-read, all or nothing.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (gethostbyaddr may need it after the drop)
import logging
import os
import sys
from functools import partial
from pathlib import Path

from courier_smtpd import session as _session  # noqa: F401
from courier_smtpd.config import SmtpdConfig, load_config
from courier_smtpd.policy import Domains, LocalPolicy, load_domains
from courier_smtpd.session import Session

from libcourier import log as courier_log
from libcourier import privsep, spool, tcpd
from libcourier.config import ConfigError, config_dir
from libcourier.layout import Layout, load_layout

log = logging.getLogger("courier.esmtpd")


def handle_connection(conn: tcpd.Connection, *, cfg: SmtpdConfig, layout: Layout,
                      domains: Domains, starttls_ctx) -> None:
    block = conn.env.get("BLOCK")
    if block is not None:
        # Courier's smtpaccess BLOCK: refuse the whole session, with its text if any.
        text = block.strip() or "Access denied."
        conn.sendall(f"554 5.7.1 {text}\r\n".encode("utf-8", "replace"))
        return
    policy = LocalPolicy(domains, layout.authsocket, relayclient="RELAYCLIENT" in conn.env)
    Session(conn, cfg, layout.spooldir, layout.queue_socket, policy, starttls_ctx).run()


def make_loader(etc: Path, service: str, layout: Layout):
    def load():
        cfg, warnings = load_config(etc, service)
        for w in warnings:
            log.warning("%s", w)
        domains = load_domains(etc, cfg.hostname)
        ctx = None
        if cfg.tls_certfile is not None:
            ctx = tcpd.server_context(cfg.tls_certfile, cfg.tls_keyfile,
                                      protocol=cfg.tls_protocol or None,
                                      ciphers=cfg.tls_cipher_list or None)
        spec = tcpd.ListenerSpec(
            name=service,
            addresses=cfg.addresses,
            maxdaemons=cfg.maxdaemons,
            maxperip=cfg.maxperip,
            access_file=cfg.accessfile,
            tls_context=ctx if cfg.tls_on_connect else None,
            busy_reply=b"421 4.7.0 Too many connections, try again later.\r\n",
            deny_reply=b"554 5.7.1 Access denied.\r\n",
            pidfile=layout.pidfile(service),
            child_user=(layout.mailuser, layout.mailgroup),
            timeout=300.0,     # RFC 5321 §4.5.3.2.7: server timeout 5 minutes
        )
        handler = partial(handle_connection, cfg=cfg, layout=layout, domains=domains,
                          starttls_ctx=None if cfg.tls_on_connect else ctx)
        return spec, handler
    return load


def _prepare_spool(layout: Layout) -> None:
    if os.geteuid() == 0:
        uid, gid = privsep.lookup_account(layout.mailuser, layout.mailgroup)
        spool.ensure_spool(layout.spooldir, uid, gid)
    else:
        spool.ensure_spool(layout.spooldir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="courier_smtpd", description="courier-py ESMTP server")
    ap.add_argument("-C", dest="etc", help="config directory (default /etc/courier)")
    ap.add_argument("--service", default="esmtpd", choices=("esmtpd", "esmtpd-msa", "esmtpd-ssl"))
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    etc = config_dir(args.etc)
    try:
        layout = load_layout(etc)
        load = make_loader(etc, args.service, layout)
        load()   # validate now, so a bad value stops us with file:line before binding
        _prepare_spool(layout)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except (OSError, KeyError, privsep.PrivsepError) as e:
        print(f"{args.service}: cannot prepare the spool {layout.spooldir}: {e}", file=sys.stderr)
        return 1
    courier_log.setup("courieresmtpd" if args.service == "esmtpd" else args.service,
                      foreground=True, debug=args.debug)
    try:
        return tcpd.serve(load)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
