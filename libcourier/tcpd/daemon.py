"""The start-up every listener daemon (esmtpd, imapd, pop3d) shares: argv, logging, config, serve.

A daemon describes itself once in a `ListenerDaemon` (its services, its config
loader, how to build a connection handler, its busy/deny replies) and its
`main(argv)` is `run_listener(DAEMON, argv)`. What that does, in order:

1. `-C ETC --service NAME [--check] [--debug]`;
2. logging with the service's ident (Courier's syslog names);
3. load the layout and the config once, before binding, so a bad value stops
   the daemon with `file:line: problem` on stderr and exit 1;
   `--check` stops here (exit 0; warnings on stderr), which `courier check` uses;
4. the daemon's own preparation (esmtpd: the spool);
5. `tcpd.serve(load)`, where `load` re-reads the config on SIGHUP; the pid file
   is written by the listener once every address listens (INTERNALS.md).
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libcourier import log as courier_log
from libcourier.config import ConfigError, config_dir
from libcourier.config.listener import ListenerConfig
from libcourier.layout import Layout, load_layout
from libcourier.tcpd.connection import Handler, ListenerSpec
from libcourier.tcpd.listener import serve
from libcourier.tcpd.tls import server_context


class StartupError(Exception):
    """A problem preparing to serve (not a config value): printed as is, exit 1."""


ConfigLoader = Callable[[Path, str], tuple[Any, list[str]]]
# (config, layout, TLS context or None) -> the per-connection handler. The context
# is built whenever TLS_CERTFILE is set; the handler decides whether it offers STARTTLS.
HandlerFactory = Callable[[Any, Layout, ssl.SSLContext | None], Handler]


def _same(service: str) -> str:
    return service


@dataclass(frozen=True, slots=True)
class ListenerDaemon:
    prog: str                               # argparse prog, e.g. "courier_imapd"
    description: str
    services: tuple[str, ...]               # the first is the default --service
    load_config: ConfigLoader               # (etc, service) -> (ListenerConfig subclass, warnings)
    make_handler: HandlerFactory            # called on every (re)load
    busy_reply: bytes                       # over MAXDAEMONS/MAXPERIP
    deny_reply: bytes                       # refused by the access file
    timeout: float                          # socket timeout of an accepted connection
    logger: str                             # e.g. "courier.imapd"
    children_drop_to_mailuser: bool = False  # esmtpd: children run as MAILUSER/MAILGROUP
    log_ident: Callable[[str], str] = _same  # service -> syslog ident
    prepare: Callable[[Layout], None] | None = None  # once, before binding; StartupError
    reuse_children: int = 0                 # ListenerSpec.reuse (with children_drop_to_mailuser)
    # Sessions may hibernate (ListenerSpec.hibernate_socket): config -> seconds the
    # listener keeps a sleeping connection (0: no hibernation); None: never.
    hibernate_linger: Callable[[Any], float] | None = None
    hibernate_bye: bytes = b""              # said when a sleeping connection times out
    # config -> seconds a finished session's process stays for its account's next
    # login (ListenerSpec.warm_linger; needs the hibernation socket); None: never.
    warm_linger: Callable[[Any], float] | None = None


def tls_context(cfg: ListenerConfig) -> ssl.SSLContext | None:
    """The server context of TLS_CERTFILE/TLS_PRIVATE_KEYFILE/TLS_PROTOCOL/TLS_CIPHER_LIST."""
    if cfg.tls_certfile is None:
        return None
    return server_context(cfg.tls_certfile, cfg.tls_keyfile,
                          protocol=cfg.tls_protocol or None,
                          ciphers=cfg.tls_cipher_list or None,
                          verifypeer=cfg.tls_verifypeer, trustcerts=cfg.tls_trustcerts)


def make_loader(daemon: ListenerDaemon, etc: Path, service: str, layout: Layout):
    """tcpd's `load()`: config -> (ListenerSpec, handler); ConfigError when bad."""
    log = logging.getLogger(daemon.logger)

    def load() -> tuple[ListenerSpec, Handler]:
        cfg, warnings = daemon.load_config(etc, service)
        for w in warnings:
            log.warning("%s", w)
        ctx = tls_context(cfg)
        linger = 0.0
        if daemon.hibernate_linger is not None and not cfg.tls_on_connect:
            linger = daemon.hibernate_linger(cfg)
        spec = ListenerSpec(
            name=service,
            addresses=cfg.addresses,
            maxdaemons=cfg.maxdaemons,
            maxperip=cfg.maxperip,
            access_file=cfg.accessfile,
            tls_context=ctx if cfg.tls_on_connect else None,
            busy_reply=daemon.busy_reply,
            deny_reply=daemon.deny_reply,
            pidfile=layout.pidfile(service),
            child_user=(layout.mailuser, layout.mailgroup)
            if daemon.children_drop_to_mailuser else None,
            timeout=daemon.timeout,
            reuse=daemon.reuse_children if daemon.children_drop_to_mailuser else 0,
            # Bound whenever the service can hibernate (a reload may turn it on);
            # a TLS port never does: its session state lives in OpenSSL in the child.
            hibernate_socket=layout.rundir / f"{service}.hibernate"
            if daemon.hibernate_linger is not None and not cfg.tls_on_connect else None,
            hibernate_linger=linger,
            hibernate_bye=daemon.hibernate_bye,
            warm_linger=daemon.warm_linger(cfg)
            if daemon.warm_linger is not None and not cfg.tls_on_connect else 0.0,
        )
        return spec, daemon.make_handler(cfg, layout, ctx)
    return load


def parse_args(daemon: ListenerDaemon, argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=daemon.prog, description=daemon.description)
    ap.add_argument("-C", dest="etc", help="config directory (default /etc/courier)")
    ap.add_argument("--service", default=daemon.services[0], choices=daemon.services)
    ap.add_argument("--check", action="store_true",
                    help="validate the configuration and exit (0 = usable)")
    ap.add_argument("--debug", action="store_true")
    return ap.parse_args(argv)


def run_listener(daemon: ListenerDaemon, argv: list[str] | None = None) -> int:
    args = parse_args(daemon, argv)
    etc = config_dir(args.etc)
    # Logging first, so warnings of the first load read like every later one.
    courier_log.setup(daemon.log_ident(args.service), foreground=True, debug=args.debug)
    try:
        layout = load_layout(etc)
        load = make_loader(daemon, etc, args.service, layout)
        load()   # validate now, so a bad value stops us with file:line before binding
        if args.check:
            return 0
        if daemon.prepare is not None:
            daemon.prepare(layout)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except StartupError as e:
        print(f"{args.service}: {e}", file=sys.stderr)
        return 1
    try:
        return serve(load)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
