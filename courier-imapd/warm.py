"""Warm workers: a finished session's process serves its account's next login.

A fresh child pays for its first SELECT in copy-on-write faults on the
listener's heap (about 150 pages, 0.4 ms of a 0.65 ms SELECT on 10,000
messages); a process that has run one does not. So, as Dovecot does with its
imap processes, when a plain-TCP session ends (LOGOUT, EOF, autologout; not
hibernation, which gave the connection away) its process, already switched to
the user, offers itself to the listener for IMAP_REUSE_TIMEOUT seconds
(libcourier.tcpd.listener.warm_offer). A new connection's login child, still
root, once authd accepted the login and before it switches, asks the listener
for such a worker of exactly that account (warm_ask); if there is one, the
client socket and a small payload go to it and the login child exits.

The account is named by `account_key`: authd's login, uid, gid, home, Maildir,
quota and group, so a worker never serves a login whose answer from authd
differs in anything the session uses (a changed quota: a fresh process). The
listener matches the uid against the kernel's credentials of the worker and takes
requests only from processes still running as its own user (root before the
switch); the worker checks the payload's login against its own. (Accounts that
share a uid, virtual users, rely on the worker's code for that check, as they do
for everything: a process of that uid can read all their mailboxes anyway.) The payload carries only
what the login child owes the client: the tag of the LOGIN/AUTHENTICATE to
answer, the octets it had read past that command, and its counters (for the
LOGOUT line). ENABLE and UTF8=ACCEPT come after login, so no such state
exists yet. The worker's Session is new: core, buffers, selected folder,
ENABLEd extensions, \\Recent, all fresh. A worker that gets anything else
exits. Over TLS nothing is handed over: a STARTTLS'd connection's TLS lives
in its own process, and imapd-ssl has no hibernation socket.
"""

from __future__ import annotations

import json
import logging
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from courier_imapd.config import ImapdConfig
from courier_imapd.core import ImapConnection, tagged, untagged
from courier_imapd.login import Counters, LoginOK, Wire, send
from courier_imapd.mailbox import give_back
from courier_imapd.session import account_settings

from libcourier import proctitle
from libcourier.tcpd.connection import Connection, handed_on
from libcourier.tcpd.listener import warm_ask, warm_next, warm_offer

log = logging.getLogger("courier.imapd")

VERSION = 1
MAX_SESSIONS = 100     # sessions one process serves before it exits (bounds its heap's age)
BACKSTOP = 30.0        # seconds past IMAP_REUSE_TIMEOUT a worker waits if the listener is stuck
KEPT_WITHIN = 0.05     # seconds in which the listener mostly refuses an offer it will not keep
MAX_LOGIN = 1024       # octets of a login in a payload


class HandoverError(Exception):
    """A payload that is not one a login child of ours wrote for this account."""


@dataclass(frozen=True, slots=True)
class Handover:
    tag: str           # the LOGIN/AUTHENTICATE to answer
    rest: bytes        # client octets read past that command
    rcvd: int
    sent: int


def enabled(cfg: ImapdConfig, conn: Wire) -> bool:
    return cfg.reuse_timeout > 0 and getattr(conn, "hibernate", None) is not None


def account_key(user: str, uid: int, info: Any) -> bytes:
    """The account as authd described it: equal keys = the same session set-up."""
    quota, groups = account_settings(info)
    return json.dumps([user, uid, info.gid, str(info.home), info.maildir or "",
                       quota or "", groups[0] if groups else ""],
                      ensure_ascii=False).encode("utf-8", "surrogateescape")


def payload_of(ok: LoginOK, core: ImapConnection, counters: Counters) -> bytes:
    return json.dumps({"v": VERSION, "login": ok.user, "tag": ok.tag,
                       "rest": core.unread().decode("latin-1"),
                       "rcvd": counters.rcvd, "sent": counters.sent}).encode()


def parse(payload: bytes, login: str) -> Handover:
    """The handover for this worker's `login`; HandoverError for anything else."""
    try:
        d = json.loads(payload)
        if not isinstance(d, dict) or d.get("v") != VERSION:
            raise HandoverError("not a handover of this version")
        user, tag, rest = d["login"], d["tag"], d["rest"]
        rcvd, sent = d["rcvd"], d["sent"]
        if not (isinstance(user, str) and isinstance(tag, str) and isinstance(rest, str)
                and type(rcvd) is int and type(sent) is int and rcvd >= 0 and sent >= 0):
            raise HandoverError("malformed fields")
        if len(user.encode("utf-8", "surrogateescape")) > MAX_LOGIN:
            raise HandoverError("login too long")
        data = rest.encode("latin-1")
    except (ValueError, KeyError, TypeError, UnicodeEncodeError) as e:
        raise HandoverError(f"malformed: {e}") from None
    if user != login:
        raise HandoverError(f"for login {user!r}, this process serves {login!r}")
    if not tag or not tag.isprintable() or " " in tag or len(tag) > 256:
        raise HandoverError("bad tag")
    return Handover(tag, data, rcvd, sent)


def ask(conn: Wire, ok: LoginOK, uid: int, key: bytes, core: ImapConnection,
        counters: Counters) -> bool:
    """In the root login child: True when a warm worker took the connection (exit
    without a word to the client), False to go on as usual."""
    if conn.tls:
        return False
    return warm_ask(conn.hibernate, conn.sock,  # type: ignore[attr-defined]
                    uid, key, payload_of(ok, core, counters))


# Runs one session on a handed-over connection; returns whether the process may go
# on to serve another (False after hibernation: the connection was given away).
SessionRunner = Callable[[Connection, Handover], bool]


def serve_more(conn: Connection, cfg: ImapdConfig, user: str, uid: int, key: bytes,
               run: SessionRunner) -> None:
    """After this process's session ended: offer it for `user`'s next logins, up to
    MAX_SESSIONS of them, until the listener drops the offer (IMAP_REUSE_TIMEOUT,
    reload, stop) or anything odd arrives."""
    channel = conn.hibernate
    if channel is None:
        return
    conn.sock.close()           # the finished client goes now, not when we exit
    for served in range(1, MAX_SESSIONS + 1):
        proctitle.set_title(f"imapd: {user} warm")
        mine = warm_offer(channel, uid, key)
        if mine is None:
            return
        try:
            # Kept (no refusal at once): what the session freed (a FETCH of 10,000
            # envelopes: ~25 MB) goes back to the system while we wait; what stays is
            # the heap the next session reuses. A refused worker exits untrimmed.
            if not select.select([mine], [], [], KEPT_WITHIN)[0]:
                give_back()
            got = warm_next(mine, cfg.reuse_timeout + BACKSTOP)
        finally:
            mine.close()
        if got is None:
            return
        sock, payload = got
        try:
            try:
                h = parse(payload, user)
                c = handed_on(sock, hibernate=channel)
            except HandoverError as e:
                log.error("user=%s: warm worker refused a handover: %s", user, e)
                _bye(sock)
                return
            except OSError:
                return              # the client left already
            sock.settimeout(cfg.autologout)
            log.debug("user=%s, ip=[%s]: served by warm worker %d (session %d)", user,
                      c.peer_ip, os.getpid(), served + 1)
            if not run(c, h):
                return
        finally:
            sock.close()


def greet(c: Connection, h: Handover, counters: Counters) -> ImapConnection:
    """The tagged OK the login child owed, and a fresh core holding the client's
    octets it had read past its LOGIN."""
    core = ImapConnection()
    core.receive_data(h.rest)
    send(c, tagged(h.tag, "OK", "LOGIN Ok."), counters)
    return core


def _bye(sock) -> None:
    try:
        sock.settimeout(5.0)
        sock.sendall(untagged("BYE Internal error, please log in again"))
    except OSError:
        pass
