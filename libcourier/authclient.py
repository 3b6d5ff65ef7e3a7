"""Client of authdaemond (Courier's authdaemonlib.c `_authdaemondo`, auth_generic, auth_pre).

One request per connection over the Unix socket (libcourier.layout's `authsocket`).
None means the daemon answered FAIL (bad user or password); AuthTempFail means it
could not be asked: unreachable, timed out, or it hung up without a complete reply,
which Courier's client reports as a temporary failure (the caller answers 4xx / NO
[UNAVAILABLE] / -ERR and the user may retry).

Timeouts as authdaemonlib.c: connect 10 s, write 10 s, read 30 s for the whole reply;
the environment variables TIMEOUT_SOCK, TIMEOUT_WRITE, TIMEOUT_READ override them
(the `timeout` argument is the read timeout when the variable is unset).
"""

from __future__ import annotations

import base64
import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from libcourier.authproto import (
    AuthProtocolError,
    AuthReply,
    AuthRequest,
    EnumerateParser,
    EnumerateRequest,
    Failed,
    PasswdRequest,
    PreRequest,
    ReplyParser,
    Request,
    format_request,
    login_authdata,
)
from libcourier.config import ConfigError
from libcourier.layout import load_layout
from libcourier.proto import NEED_DATA
from libcourier.sasl import ScramUnavailable
from libcourier.sasl.scram import ScramProof

__all__ = ["MECHANISMS_FILE", "AuthInfo", "AuthTempFail", "auth_cram", "auth_enumerate",
           "auth_login", "auth_passwd", "auth_pre", "auth_raw", "auth_scram_salt",
           "auth_scram_verify", "parse_options", "ScramAuthd",
           "verifiable_mechanisms", "verifiable_mechanisms_for"]

# authd writes, beside its socket, the SASL mechanisms its modules can verify
# (one line of names); without it, only the password mechanisms are safe to offer.
MECHANISMS_FILE = "mechanisms"
PASSWORD_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
_MECH_MAX = 512
_mech_cache: dict[str, tuple[tuple[int, int, int], frozenset[str]]] = {}


def verifiable_mechanisms(socket_path: str | Path) -> frozenset[str]:
    """What authd says it can verify (re-read when the file changes); PLAIN and LOGIN
    when it has not said (authd not started yet, or an older one)."""
    path = os.path.join(os.path.dirname(os.fspath(socket_path)), MECHANISMS_FILE)
    try:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = _mech_cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with open(path, "rb") as f:
            text = f.read(_MECH_MAX).decode("ascii", "replace")
    except OSError:
        # After the switch to the user the socket directory is closed to us: keep
        # what we read before it.
        hit = _mech_cache.get(path)
        return hit[1] if hit is not None else PASSWORD_MECHANISMS
    mechs = frozenset(w.upper() for w in text.split() if w.isascii() and len(w) <= 20)
    mechs |= PASSWORD_MECHANISMS
    _mech_cache[path] = (stamp, mechs)
    return mechs


@functools.lru_cache(maxsize=8)
def _authsocket(etc: str) -> Path | None:
    try:
        return load_layout(Path(etc)).authsocket
    except (ConfigError, OSError):
        return None


def verifiable_mechanisms_for(etc: str | Path) -> frozenset[str]:
    """verifiable_mechanisms() of the authd that config dir `etc` names (its layout is
    read once per process; the mechanisms file on each call, when it changed)."""
    sock = _authsocket(os.fspath(etc))
    return PASSWORD_MECHANISMS if sock is None else verifiable_mechanisms(sock)


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """What authd tells us about an account. No password fields: those stay in authd."""

    username: str | None
    uid: int | None
    gid: int
    home: str
    address: str
    name: str | None
    maildir: str | None
    quota: str | None
    options: dict[str, str]


class AuthTempFail(Exception):
    """authd unreachable, timed out, or hung up without a reply."""


def parse_options(text: str) -> dict[str, str]:
    """OPTIONS "a=1,b" -> {"a": "1", "b": ""}; a repeated name keeps the last value
    (except group=, which may repeat: its values are joined with ',')."""
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        k, _, v = item.partition("=")
        if k == "group" and k in out:
            out[k] = out[k] + "," + v
        else:
            out[k] = v
    return out


def _env_timeout(name: str, default: float) -> float:
    v = os.environ.get(name)
    if v:
        try:
            n = float(v)
            if n > 0:
                return n
        except ValueError:
            pass
    return default


def _info_from_reply(reply: AuthReply) -> AuthInfo:
    f = reply.fields
    try:
        gid = int(f["GID"])
        uid = int(f["UID"]) if "UID" in f else None
        home, address = f["HOME"], f["ADDRESS"]
    except (KeyError, ValueError):
        # README_authlib: ADDRESS, HOME, GID and UID or USERNAME are mandatory;
        # a reply without them is a broken daemon, not a wrong password.
        raise AuthTempFail("authdaemon reply lacks mandatory fields") from None
    username = f.get("USERNAME")
    if uid is None and not username:
        raise AuthTempFail("authdaemon reply has neither UID nor USERNAME")
    return AuthInfo(username=username, uid=uid, gid=gid, home=home, address=address,
                    name=f.get("NAME"), maildir=f.get("MAILDIR") or None,
                    quota=f.get("QUOTA") or None, options=parse_options(f.get("OPTIONS", "")))


def _exchange(socket_path: str | Path, data: bytes, parser: ReplyParser | EnumerateParser,
              timeout: float):
    connect_t = _env_timeout("TIMEOUT_SOCK", 10.0)
    write_t = _env_timeout("TIMEOUT_WRITE", 10.0)
    read_t = _env_timeout("TIMEOUT_READ", timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.settimeout(connect_t)
            s.connect(os.fspath(socket_path))
            s.settimeout(write_t)
            s.sendall(data)
        except OSError as e:
            raise AuthTempFail(f"cannot reach authdaemon: {e}") from None
        deadline = time.monotonic() + read_t
        while True:
            try:
                res = parser.result()
            except AuthProtocolError as e:
                raise AuthTempFail(f"bad authdaemon reply: {e}") from None
            if res is not NEED_DATA:
                return res
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuthTempFail("authdaemon timed out")
            s.settimeout(left)
            try:
                chunk = s.recv(16384)
            except OSError as e:  # includes socket.timeout
                raise AuthTempFail(f"authdaemon read failed: {e}") from None
            if not chunk:
                raise AuthTempFail("authdaemon closed the connection without a reply")
            parser.feed(chunk)
    finally:
        s.close()


def _auth_request(socket_path: str | Path, req: Request, timeout: float) -> AuthInfo | None:
    try:
        data = format_request(req)
    except ValueError:
        return None  # unsendable input (LF in a password, space in a name): a plain FAIL
    res = _exchange(socket_path, data, ReplyParser(), timeout)
    if res is Failed.FAIL:
        return None
    assert isinstance(res, AuthReply)
    return _info_from_reply(res)


def auth_raw(socket_path: str | Path, req: PreRequest | AuthRequest, *,
             timeout: float = 30.0) -> AuthReply | None:
    """The daemon's reply as sent, PASSWD fields included (for authtest); None = FAIL."""
    res = _exchange(socket_path, format_request(req), ReplyParser(), timeout)
    return None if res is Failed.FAIL else res


def _meta(remote_ip: str | None) -> dict[str, str]:
    return {"TCPREMOTEIP": remote_ip} if remote_ip else {}


def auth_login(socket_path: str | Path, service: str, user: str, password: str, *,
               remote_ip: str | None = None, timeout: float = 30.0) -> AuthInfo | None:
    """AUTH with authtype "login" (auth_login in authlib)."""
    try:
        authdata = login_authdata(user, password)
    except ValueError:
        return None
    return _auth_request(socket_path, AuthRequest(service, "login", authdata, _meta(remote_ip)),
                         timeout)


def auth_cram(socket_path: str | Path, service: str, mech: str, challenge_b64: str,
              response_b64: str, *, remote_ip: str | None = None,
              timeout: float = 30.0) -> AuthInfo | None:
    """AUTH with authtype cram-md5/cram-sha1/cram-sha256: challenge and response in base64."""
    mech = mech.lower()
    if any(c in challenge_b64 + response_b64 for c in "\r\n") or not challenge_b64 \
            or not response_b64:
        return None
    authdata = f"{challenge_b64}\n{response_b64}\n".encode("ascii", "replace")
    return _auth_request(socket_path, AuthRequest(service, mech, authdata, _meta(remote_ip)),
                         timeout)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth_scram_salt(socket_path: str | Path, service: str, mech: str, user: str, *,
                    timeout: float = 30.0) -> tuple[bytes, int] | None:
    """Our SCRAM extension, first request: the user's salt and iteration count, or None
    (no such user or no SCRAM keys: the caller should go on with a made-up salt)."""
    if not user or any(c in user for c in "\0\r\n"):
        return None
    req = AuthRequest(service, mech.lower(), _b64(user.encode("utf-8")) + b"\n")
    res = _exchange(socket_path, format_request(req), ReplyParser(), timeout)
    if res is Failed.FAIL:
        return None
    assert isinstance(res, AuthReply)
    try:
        salt = base64.b64decode(res.fields["SALT"], validate=True)
        iterations = int(res.fields["ITERATIONS"])
    except (KeyError, ValueError):
        raise AuthTempFail("authdaemon's SCRAM salt reply is malformed") from None
    return salt, iterations


def auth_scram_verify(socket_path: str | Path, service: str, proof: ScramProof, *,
                      remote_ip: str | None = None,
                      timeout: float = 30.0) -> tuple[AuthInfo, bytes] | None:
    """Second request: authd checks the client proof; the account and the ServerSignature
    for the server-final-message, or None when the proof is wrong."""
    authdata = b"".join(_b64(x) + b"\n" for x in (
        proof.client_first_bare, proof.server_first, proof.client_final_without_proof,
        proof.proof))
    req = AuthRequest(service, proof.mech.lower(), authdata, _meta(remote_ip))
    res = _exchange(socket_path, format_request(req), ReplyParser(), timeout)
    if res is Failed.FAIL:
        return None
    assert isinstance(res, AuthReply)
    try:
        signature = base64.b64decode(res.fields["SCRAM_SIGNATURE"], validate=True)
    except (KeyError, ValueError):
        raise AuthTempFail("authdaemon's SCRAM reply lacks the server signature") from None
    return _info_from_reply(res), signature


class ScramAuthd:
    """libcourier.sasl's ScramBackend through authd: what a daemon passes to
    ServerExchange(..., scram=ScramAuthd(layout.authsocket, "imap", peer_ip))."""

    def __init__(self, socket_path: str | Path, service: str, remote_ip: str | None = None):
        self.socket_path, self.service, self.remote_ip = socket_path, service, remote_ip

    @classmethod
    def for_config(cls, etc: str | Path, service: str,
                   remote_ip: str | None = None) -> ScramAuthd | None:
        """The backend for the authd that config dir `etc` names; None when it cannot
        be found (no SCRAM then)."""
        sock = _authsocket(os.fspath(etc))
        return None if sock is None else cls(sock, service, remote_ip)

    def salt(self, mech: str, user: str) -> tuple[bytes, int] | None:
        try:
            return auth_scram_salt(self.socket_path, self.service, mech, user)
        except AuthTempFail as e:
            raise ScramUnavailable(str(e)) from None

    def verify(self, proof: ScramProof) -> tuple[AuthInfo, bytes] | None:
        try:
            return auth_scram_verify(self.socket_path, self.service, proof,
                                     remote_ip=self.remote_ip)
        except AuthTempFail as e:
            raise ScramUnavailable(str(e)) from None


def auth_pre(socket_path: str | Path, service: str, user: str, *, module: str = ".",
             timeout: float = 30.0) -> AuthInfo | None:
    """PRE: look an account up without a password (delivery, EXTERNAL)."""
    return _auth_request(socket_path, PreRequest(module, service, user), timeout)


def auth_passwd(socket_path: str | Path, service: str, user: str, oldpw: str, newpw: str, *,
                timeout: float = 30.0) -> bool:
    try:
        data = format_request(PasswdRequest(service, user, oldpw, newpw))
    except ValueError:
        return False
    res = _exchange(socket_path, data, ReplyParser(passwd=True), timeout)
    return res is True


def auth_enumerate(socket_path: str | Path, *,
                   timeout: float = 30.0) -> list[tuple[str, int, int, str, str, str]]:
    """Every account of every module that can enumerate: (name, uid, gid, home, maildir, options)."""
    res = _exchange(socket_path, format_request(EnumerateRequest()), EnumerateParser(), timeout)
    return [(e.name, e.uid, e.gid, e.home, e.maildir, e.options) for e in res]
