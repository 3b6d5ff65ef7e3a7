"""`python -m courier_pop3d -C ETC --service pop3d|pop3d-ssl`: the POP3 listener.

The listener (libcourier.tcpd) forks a root child per connection; the child
runs login.prelogin, asks authd, switches for good to the user, takes the
maildrop lock and only then reads the Maildir (DESIGN.md §2). Everything the
child needs is imported here, at the top, before any fork or privilege drop.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import socket
import time
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
    cert_login,
    flush,
    prelogin,
)
from courier_pop3d.maildrop import Maildrop, MaildropInUse
from courier_pop3d.session import Session

from libcourier import authclient, privsep, proctitle, tcpd
from libcourier.layout import Layout
from libcourier.maildir import pop3sizelist as _sizelist  # noqa: F401
from libcourier.maildir import uiddb as _uiddb  # noqa: F401
from libcourier.sasl import CramCredentials, ExternalCredentials, cram_nonce
from libcourier.sasl.scram import ScramProof
from libcourier.tcpd.daemon import ListenerDaemon, run_listener

log = logging.getLogger("courier.pop3d")


def _authenticator(layout: Layout):
    def authenticate(user: str, password: str, ip: str):
        try:
            return authclient.auth_login(layout.authsocket, "pop3", user, password, remote_ip=ip)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None
    return authenticate


class _SaslVerifier:
    """CRAM and EXTERNAL credentials to authd (password mechanisms go through authenticate)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def cram(self, cred: CramCredentials, ip: str):
        try:
            return authclient.auth_cram(self.layout.authsocket, "pop3", cred.mech.lower(),
                                        base64.b64encode(cred.challenge).decode("ascii"),
                                        base64.b64encode(cred.response).decode("ascii"),
                                        remote_ip=ip)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None

    def external(self, cred: ExternalCredentials, ip: str):  # noqa: ARG002 - the protocol
        try:
            return authclient.auth_pre(self.layout.authsocket, "pop3", cred.identity)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None

    def scram_keys(self, mech: str, user: str):
        try:
            return authclient.auth_scram_salt(self.layout.authsocket, "pop3", mech, user)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None

    def scram_check(self, proof: ScramProof, ip: str):
        try:
            return authclient.auth_scram_verify(self.layout.authsocket, "pop3", proof,
                                                remote_ip=ip)
        except authclient.AuthTempFail as e:
            raise AuthUnavailable(str(e)) from None


def maildir_of(home: str, maildir: str | None, default: str) -> Path:
    """The user's Maildir: authd's MAILDIR (absolute or relative to home), else MAILDIRPATH."""
    p = Path(maildir or default)
    return p if p.is_absolute() else Path(home) / p


def handle_connection(conn: Wire, *, cfg: Pop3dConfig, layout: Layout, starttls_ctx) -> None:
    proctitle.set_title(f"pop3d: [{conn.peer_ip}] AUTHORIZATION")
    # What authd can verify now (its mechanisms file, re-read when it changed).
    verifiable = authclient.verifiable_mechanisms_for(cfg.etc)
    core = Pop3Server(Options(stls=starttls_ctx is not None, tls=conn.tls,
                              tls_required=cfg.tls_required,
                              sasl=tuple(m for m in cfg.pop3auth if m in verifiable),
                              sasl_tls=tuple(m for m in cfg.pop3auth_tls if m in verifiable),
                              hostname=socket.gethostname(),
                              max_bad_commands=cfg.max_bad_commands,
                              max_failed_logins=cfg.max_failed_logins,
                              nonce=lambda: cram_nonce(int(time.time())),
                              scram=True, external_identity=cert_login(conn, cfg)))
    counters = Counters()
    ok = prelogin(conn, core, cfg, _authenticator(layout), starttls_ctx, counters,
                  sasl=_SaslVerifier(layout))
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


def make_handler(cfg: Pop3dConfig, layout: Layout, ctx) -> tcpd.Handler:
    return partial(handle_connection, cfg=cfg, layout=layout,
                   starttls_ctx=ctx if cfg.stls else None)


DAEMON = ListenerDaemon(
    prog="courier_pop3d",
    description="courier-py POP3 server",
    services=("pop3d", "pop3d-ssl"),
    load_config=load_config,
    make_handler=make_handler,
    # RFC 3206 §4: SYS/TEMP, a temporary problem on our side.
    busy_reply=b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
    deny_reply=b"-ERR [SYS/PERM] Access denied.\r\n",
    timeout=PRELOGIN_TIMEOUT,
    logger="courier.pop3d",
)


def main(argv: list[str] | None = None) -> int:
    return run_listener(DAEMON, argv)
