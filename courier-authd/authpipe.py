"""authpipe: accounts answered by an external program (courier-authlib's authpipe.c,
README_authlib "The authpipe protocol").

The program speaks the authdaemon socket protocol over its stdin/stdout
(libcourier.authproto: PRE, AUTH, PASSWD, ENUMERATE), one request after another
on the same pipes. Each authd worker starts its own copy on first use and keeps
it; a copy that exits, closes its output or stays silent past READ_TIMEOUT is a
temporary failure (Courier's programs exit on tempfail) and is replaced on the
next request. The program is PIPE_PROGRAM in authdaemonrc (Courier compiles it
in: /usr/lib/courier/authProg on Debian, the default here).

The program verifies passwords itself (AUTH login and cram-* are passed through,
as Courier does); PRE answers give the account, with PASSWD/PASSWD2 kept as
systempw/clear password.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import selectors
import signal
import subprocess
import time
from pathlib import Path

from courier_authd.config import load_config
from courier_authd.modules import Account, BackendTempFail

from libcourier.authproto import (
    AuthProtocolError,
    AuthReply,
    AuthRequest,
    EnumerateParser,
    EnumerateRequest,
    PasswdRequest,
    PreRequest,
    ReplyParser,
    Request,
    format_request,
    login_authdata,
)
from libcourier.proto import NEED_DATA

log = logging.getLogger("courier.authd")

DEFAULT_PROGRAM = "/usr/lib/courier/authProg"
READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 10.0


def _account(fields: dict[str, str], user: str) -> Account | None:
    try:
        gid = int(fields["GID"])
        uid = int(fields["UID"]) if "UID" in fields else None
        home, address = fields["HOME"], fields.get("ADDRESS") or user
    except (KeyError, ValueError):
        log.error("authpipe: the program's reply for %r lacks GID/HOME or has bad numbers", user)
        return None
    if uid is None:
        # USERNAME without UID: a system account name, as Courier allows.
        try:
            uid = pwd.getpwnam(fields.get("USERNAME", "")).pw_uid
        except KeyError:
            return None
    if uid == 0:
        log.warning("authpipe: the program answered uid 0 for %r: refused", user)
        return None
    pw = {}
    if fields.get("PASSWD"):
        pw["systempw"] = fields["PASSWD"]
    if fields.get("PASSWD2"):
        pw["clearpw"] = fields["PASSWD2"]
    return Account(address=address, uid=uid, gid=gid, home=home,
                   maildir=fields.get("MAILDIR") or None, quota=fields.get("QUOTA") or None,
                   fullname=fields.get("NAME") or None, options=fields.get("OPTIONS", ""),
                   passwords=pw)


class PipeModule:
    name = "authpipe"
    takes_service = True

    def __init__(self, program: str = DEFAULT_PROGRAM, *, read_timeout: float = READ_TIMEOUT):
        self.program = program
        self.read_timeout = read_timeout
        self._proc: subprocess.Popen | None = None
        self._owner = 0   # the pid that started _proc: a forked worker starts its own

    # -- the child ------------------------------------------------------------------------

    def _child(self) -> subprocess.Popen:
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return self._proc
        if self._owner == os.getpid():
            self._reap()
        try:
            self._proc = subprocess.Popen([self.program], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, close_fds=True,
                                          restore_signals=True)
        except OSError as e:
            self._proc = None
            raise BackendTempFail(f"authpipe: cannot run {self.program}: {e.strerror}") from None
        self._owner = os.getpid()
        return self._proc

    def _reap(self) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()

    def _ask(self, req: Request, parser: ReplyParser | EnumerateParser):
        p = self._child()
        assert p.stdin is not None and p.stdout is not None
        try:
            os.set_blocking(p.stdin.fileno(), True)
            p.stdin.write(format_request(req))
            p.stdin.flush()
        except (OSError, ValueError) as e:
            self._reap()
            raise BackendTempFail(f"authpipe: cannot write to {self.program}: {e}") from None
        fd = p.stdout.fileno()
        deadline = time.monotonic() + self.read_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                try:
                    res = parser.result()
                except AuthProtocolError as e:
                    self._reap()
                    raise BackendTempFail(f"authpipe: bad reply from {self.program}: {e}") from None
                if res is not NEED_DATA:
                    return res
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self._reap()
                    raise BackendTempFail(f"authpipe: {self.program} did not answer")
                chunk = os.read(fd, 16384)
                if not chunk:
                    # Courier's programs exit without replying on a temporary failure.
                    self._reap()
                    raise BackendTempFail(f"authpipe: {self.program} exited")
                parser.feed(chunk)

    # -- the Module protocol ----------------------------------------------------------------

    def lookup(self, user: str, service: str = "courier") -> Account | None:
        try:
            req = PreRequest(".", service or "courier", user)
            format_request(req)
        except ValueError:
            return None
        res = self._ask(req, ReplyParser())
        return _account(dict(res.fields), user) if isinstance(res, AuthReply) else None

    def authenticate(self, user: str, password: str, service: str = "") -> Account | None:
        try:
            req = AuthRequest(service or "login", "login", login_authdata(user, password))
            format_request(req)
        except ValueError:
            return None
        res = self._ask(req, ReplyParser())
        return _account(dict(res.fields), user) if isinstance(res, AuthReply) else None

    def cram(self, service: str, authtype: str, authdata: bytes) -> Account | None:
        """CRAM-*: the AUTH request goes to the program unchanged (Courier's authpipe
        does the same), so a program that keeps HMAC secrets can answer it."""
        try:
            req = AuthRequest(service or "login", authtype, authdata)
            format_request(req)
        except ValueError:
            return None
        res = self._ask(req, ReplyParser())
        if not isinstance(res, AuthReply):
            return None
        user = base64.b64decode(authdata.split(b"\n")[1]).rpartition(b" ")[0]
        return _account(dict(res.fields), user.decode("utf-8", "replace"))

    def enumerate(self) -> list[Account]:
        entries = self._ask(EnumerateRequest(), EnumerateParser())
        return [Account(address=e.name, uid=e.uid, gid=e.gid, home=e.home,
                        maildir=e.maildir or None, options=e.options) for e in entries]

    def passwd(self, user: str, oldpw: str, newpw: str, service: str) -> bool | None:
        """PASSWD passed through: the program checks the old password and stores the new;
        None when the program does not know the user (core tries the next module)."""
        if self.lookup(user, service) is None:
            return None
        try:
            req = PasswdRequest(service, user, oldpw, newpw)
            format_request(req)
        except ValueError:
            return False
        return self._ask(req, ReplyParser(passwd=True)) is True

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool:
        return False   # core uses passwd() above for this module

    def sasl_mechanisms(self) -> frozenset[str]:
        # Whether the program can verify CRAM is its business (Courier forwards it too);
        # the admin's IMAP_CAPABILITY/POP3AUTH/ESMTPAUTH decide what is offered.
        return frozenset({"PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"})

    def close(self) -> None:
        if self._owner == os.getpid():
            self._reap()


def load(etc: Path) -> PipeModule:
    return PipeModule(load_config(etc).pipe_program)
