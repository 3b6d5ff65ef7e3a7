"""`python -m courier_imapd -C ETC --service imapd|imapd-ssl`: the IMAP listener.

The listener (libcourier.tcpd) forks a root child per connection; the child
runs login.prelogin, asks authd, switches for good to the user, and only then
opens the Maildir and runs session.Session (DESIGN.md §2). Everything the
child needs is imported here, at the top, before any fork or privilege drop.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
from functools import partial

from courier_imapd import fetch as _fetch  # noqa: F401  (imported before the drop)
from courier_imapd import mailbox as _mailbox  # noqa: F401
from courier_imapd import resume, sharedfolders, warm
from courier_imapd.config import ImapdConfig, load_config
from courier_imapd.core import ImapConnection, tagged, untagged
from courier_imapd.login import (
    PRELOGIN_TIMEOUT,
    AuthUnavailable,
    Counters,
    Credentials,
    Wire,
    prelogin,
    send,
)
from courier_imapd.session import Session, account_settings, open_maildir_root

from libcourier import authclient, privsep, proctitle, tcpd
from libcourier.layout import Layout
from libcourier.sasl import CramCredentials, LoginCredentials, VerifiedCredentials
from libcourier.tcpd.daemon import ListenerDaemon, run_listener

log = logging.getLogger("courier.imapd")


def _authenticator(layout: Layout):
    def authenticate(user: str, password: str, ip: str):
        try:
            return authclient.auth_login(layout.authsocket, "imap", user, password, remote_ip=ip)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None
    return authenticate


def _sasl_authenticator(layout: Layout):
    """AUTHENTICATE's credentials to authd: password (PLAIN/LOGIN), cram, or PRE (EXTERNAL)."""
    def verify(creds: Credentials, ip: str):
        try:
            if isinstance(creds, LoginCredentials):
                return authclient.auth_login(layout.authsocket, "imap", creds.user,
                                             creds.password, remote_ip=ip)
            if isinstance(creds, CramCredentials):
                return authclient.auth_cram(layout.authsocket, "imap", creds.mech.lower(),
                                            base64.b64encode(creds.challenge).decode(),
                                            base64.b64encode(creds.response).decode(),
                                            remote_ip=ip)
            if isinstance(creds, VerifiedCredentials):   # SCRAM: authd already decided
                if creds.unavailable:
                    raise AuthUnavailable(creds.unavailable)
                return creds.info
            return authclient.auth_pre(layout.authsocket, "imap", creds.identity)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None
    return verify


def handle_connection(conn: Wire, *, cfg: ImapdConfig, layout: Layout,
                      starttls_ctx) -> None:
    if getattr(conn, "resumed", None) is not None:   # a hibernated session woken (hibernate.py)
        resume.resume(conn, cfg, layout.authsocket)
        return
    proctitle.set_title(f"imapd: [{conn.peer_ip}] NOT AUTHENTICATED")
    core = ImapConnection()
    counters = Counters()
    ok = prelogin(conn, core, cfg, _authenticator(layout), starttls_ctx, counters,
                  sasl_authenticate=_sasl_authenticator(layout))
    if ok is None:
        return
    info = ok.info
    reuse = warm.enabled(cfg, conn)
    try:
        uid = info.uid
        if uid is None:
            uid = pwd.getpwnam(info.username).pw_uid
        key = warm.account_key(ok.user, uid, info)
        if reuse and warm.ask(conn, ok, uid, key, core, counters):
            return      # a warm process of this account has the connection now
        privsep.switch_to_user(uid, info.gid)
        os.chdir(info.home)
        root = open_maildir_root(info.home, info.maildir, cfg.maildirpath)
        if not (root / "cur").is_dir():
            raise FileNotFoundError(f"{root} is not a Maildir")
    except (privsep.PrivsepError, KeyError, OSError) as e:
        log.error("cannot open the mailbox of user=%s, ip=[%s]: %s", ok.user, conn.peer_ip, e)
        send(conn, tagged(ok.tag, "NO", "Unable to open your mailbox"), counters)
        send(conn, untagged("BYE Login failed"), counters)
        return
    send(conn, tagged(ok.tag, "OK", "LOGIN Ok."), counters)
    sharedfolders.configure(cfg.etc)     # the config directory's maildirshared
    quota, groups = account_settings(info)
    session = Session(conn, core, root, cfg, ok.user, counters, account_quota=quota,
                      acl_groups=groups)
    session.run()
    if not reuse or session.hibernated:
        return

    def run_next(c: tcpd.Connection, h: warm.Handover) -> bool:
        """A later login of this account, handed over by its login child (warm.py)."""
        counters = Counters(rcvd=h.rcvd, sent=h.sent)
        core = warm.greet(c, h, counters)
        s = Session(c, core, root, cfg, ok.user, counters, account_quota=quota,
                    acl_groups=groups)
        s.run()
        return not s.hibernated

    warm.serve_more(conn, cfg, ok.user, uid, key, run_next)   # type: ignore[arg-type]


def _hibernate_linger(cfg: ImapdConfig) -> float:
    """How long the listener keeps a hibernated connection: the rest of the autologout."""
    if 0 < cfg.hibernate_timeout < cfg.autologout:
        return float(cfg.autologout - cfg.hibernate_timeout)
    return 0.0


def make_handler(cfg: ImapdConfig, layout: Layout, ctx) -> tcpd.Handler:
    return partial(handle_connection, cfg=cfg, layout=layout,
                   starttls_ctx=ctx if cfg.starttls else None)


DAEMON = ListenerDaemon(
    prog="courier_imapd",
    description="courier-py IMAP server",
    services=("imapd", "imapd-ssl"),
    load_config=load_config,
    make_handler=make_handler,
    busy_reply=b"* BYE Too many connections, try again later\r\n",
    deny_reply=b"* BYE Access denied\r\n",
    timeout=PRELOGIN_TIMEOUT,
    logger="courier.imapd",
    hibernate_linger=_hibernate_linger,
    hibernate_bye=b"* BYE Autologout; idle for too long\r\n",
    warm_linger=lambda cfg: float(cfg.reuse_timeout),
)


def main(argv: list[str] | None = None) -> int:
    return run_listener(DAEMON, argv)
