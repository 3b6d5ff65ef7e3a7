"""`python -m courier_pop3d -C ETC --service pop3d|pop3d-ssl`: the POP3 listener.

The listener (libcourier.tcpd) forks a root child per connection; the child
runs login.prelogin, asks authd, switches for good to the user, takes the
maildrop lock and only then reads the Maildir (DESIGN.md §2). Everything the
child needs is imported here, at the top, before any fork or privilege drop.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
from functools import partial
from pathlib import Path

from courier_pop3d import maildrop as _maildrop  # noqa: F401  (imported before the drop)
from courier_pop3d.config import Pop3dConfig, load_config
from courier_pop3d.core import Options, Pop3Server
from courier_pop3d.login import (
    PRELOGIN_TIMEOUT,
    AuthUnavailable,
    Counters,
    Wire,
    flush,
    prelogin,
)
from courier_pop3d.maildrop import Maildrop, MaildropInUse
from courier_pop3d.session import Session

from libcourier import authclient, privsep, proctitle, tcpd
from libcourier import log as courier_log
from libcourier.config import ConfigError, config_dir
from libcourier.layout import Layout, load_layout
from libcourier.maildir import pop3sizelist as _sizelist  # noqa: F401
from libcourier.maildir import uiddb as _uiddb  # noqa: F401

log = logging.getLogger("courier.pop3d")


def _authenticator(layout: Layout):
    def authenticate(user: str, password: str, ip: str):
        try:
            return authclient.auth_login(layout.authsocket, "pop3", user, password, remote_ip=ip)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None
    return authenticate


def maildir_of(home: str, maildir: str | None, default: str) -> Path:
    """The user's Maildir: authd's MAILDIR (absolute or relative to home), else MAILDIRPATH."""
    p = Path(maildir or default)
    return p if p.is_absolute() else Path(home) / p


def handle_connection(conn: Wire, *, cfg: Pop3dConfig, layout: Layout, starttls_ctx) -> None:
    proctitle.set_title(f"pop3d: [{conn.peer_ip}] AUTHORIZATION")
    core = Pop3Server(Options(stls=starttls_ctx is not None, tls=conn.tls,
                              tls_required=cfg.tls_required))
    counters = Counters()
    ok = prelogin(conn, core, cfg, _authenticator(layout), starttls_ctx, counters)
    if ok is None:
        return
    info = ok.info
    try:
        uid = info.uid if info.uid is not None else pwd.getpwnam(info.username).pw_uid
        privsep.switch_to_user(uid, info.gid)
        os.chdir(info.home)
        drop = Maildrop(maildir_of(info.home, info.maildir, cfg.maildirpath))
        if not (drop.root / "cur").is_dir():
            raise FileNotFoundError(f"{drop.root} is not a Maildir")
    except (privsep.PrivsepError, KeyError, OSError) as e:
        log.error("cannot open the mailbox of user=%s, ip=[%s]: %s", ok.user, conn.peer_ip, e)
        core.login_refused("Unable to open your mailbox.", "SYS/TEMP")
        flush(conn, core, counters)
        return
    try:
        drop.lock()
    except MaildropInUse:
        log.info("LOCKED, user=%s, ip=[%s], port=[%d]", ok.user, conn.peer_ip, conn.peer_port)
        core.login_refused("Unable to lock the maildrop: another session is active.", "IN-USE")
        flush(conn, core, counters)
        return
    except OSError as e:
        log.error("cannot lock the maildrop of user=%s: %s", ok.user, e)
        core.login_refused("Unable to lock the maildrop.", "SYS/TEMP")
        flush(conn, core, counters)
        return
    log.info("LOGIN, user=%s, ip=[%s], port=[%d]%s", ok.user, conn.peer_ip, conn.peer_port,
             ", stls=1" if conn.tls else "")
    try:
        view = drop.open()
    except OSError as e:
        drop.unlock()
        log.error("cannot read the Maildir of user=%s: %s", ok.user, e)
        core.login_refused("Maildir invalid.", "SYS/TEMP")
        flush(conn, core, counters)
        return
    core.login_ok(view)
    Session(conn, core, drop, ok.user, timeout=cfg.timeout,
            log_deletions=cfg.log_deletions, counters=counters).run()


def make_loader(etc: Path, service: str, layout: Layout):
    def load():
        cfg, warnings = load_config(etc, service)
        for w in warnings:
            log.warning("%s", w)
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
            tls_context=ctx if cfg.tls_on_connect else None,
            # RFC 3206 §4: SYS/TEMP, a temporary problem on our side.
            busy_reply=b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
            deny_reply=b"-ERR [SYS/PERM] Access denied.\r\n",
            pidfile=layout.pidfile(service),
            timeout=PRELOGIN_TIMEOUT,
        )
        handler = partial(handle_connection, cfg=cfg, layout=layout,
                          starttls_ctx=ctx if cfg.stls else None)
        return spec, handler
    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="courier_pop3d", description="courier-py POP3 server")
    ap.add_argument("-C", dest="etc", help="config directory (default /etc/courier)")
    ap.add_argument("--service", default="pop3d", choices=("pop3d", "pop3d-ssl"))
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    etc = config_dir(args.etc)
    try:
        layout = load_layout(etc)
        load = make_loader(etc, args.service, layout)
        load()   # validate now, so a bad value stops us with file:line before binding
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    courier_log.setup(args.service, foreground=True, debug=args.debug)
    try:
        return tcpd.serve(load)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
