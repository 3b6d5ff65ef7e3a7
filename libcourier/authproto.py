r"""Courier's authdaemon socket protocol without I/O (FORMATS.md §3.1).

Shared by the client (libcourier.authclient) and the daemon (courier_authd), so
both ends use one formatter and one parser. Sources it follows:
courier-authlib `authdaemond.c` (doauth, pre, auth, passwd, enumerate,
printauth) and `authdaemonlib.c` (_authdaemondo, request_with_meta_create).

One request per connection. A request is optional metadata lines
`NAME=value\n` followed by one command line (the first line with a space
before any `=`):

    PRE <module|.> <service> <user>\n
    AUTH <len>\n<service>\n<authtype>\n<authdata>        (exactly <len> bytes after the first \n)
    PASSWD <service>\t<user>\t<oldpw>\t<newpw>\n   (as Courier's authtest sends it; a
                                                    trailing TAB is accepted too)
    ENUMERATE\n

A PRE/AUTH reply is `KEY=value\n` lines in printauth's order ending `.\n`, or
`FAIL\n`; PASSWD answers `OK\n` or `FAIL\n`; ENUMERATE answers `# module\n\n`
headers and `name\tuid\tgid\thome\tmaildir\toptions\n` lines ending `.\n`.

Everything has a limit: a request is at most MAX_REQUEST bytes in all (Courier's
authdaemond reads into a fixed buffer, so a longer request is garbage to it too),
at most MAX_META metadata lines; an AUTH/PRE reply at most MAX_REPLY bytes; an
ENUMERATE reply lines of at most MAX_LINE bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from libcourier.proto import NEED_DATA, LineTooLong, ReceiveBuffer
from libcourier.proto.buffer import _NeedData

MAX_REQUEST = 8192
MAX_LINE = 8192
MAX_META = 16
MAX_REPLY = 64 * 1024
MAX_ENUMERATE_LINES = 1_000_000

# printauth's order (authdaemond.c); the client keeps unknown keys it is sent.
REPLY_ORDER = ("USERNAME", "UID", "GID", "HOME", "ADDRESS", "NAME", "MAILDIR", "QUOTA",
               "PASSWD", "PASSWD2", "OPTIONS")

# Metadata names the daemon records; the rest are read and ignored (as Courier does).
KNOWN_META = ("TCPREMOTEIP",)


class AuthProtocolError(Exception):
    """The request or reply is malformed; the connection answers FAIL (or tempfails) and ends."""


# ---- requests ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PreRequest:
    module: str          # "." = every module
    service: str
    user: str
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    service: str
    authtype: str        # "login", "cram-md5", "cram-sha1", "cram-sha256"
    authdata: bytes      # login: b"user\npassword\n"; cram: b"<b64 challenge>\n<b64 response>\n"
    meta: Mapping[str, str] = field(default_factory=dict)

    def fields(self) -> list[bytes]:
        """authdata split at LF into its parts (the trailing LF ends the last one)."""
        parts = self.authdata.split(b"\n")
        if parts and parts[-1] == b"":
            parts.pop()
        return parts

    def __repr__(self) -> str:  # authdata holds a password: never print it
        return f"AuthRequest(service={self.service!r}, authtype={self.authtype!r}, authdata=<{len(self.authdata)} bytes>)"


@dataclass(frozen=True, slots=True)
class PasswdRequest:
    service: str
    user: str
    oldpw: str
    newpw: str
    meta: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PasswdRequest(service={self.service!r}, user={self.user!r}, <passwords hidden>)"


@dataclass(frozen=True, slots=True)
class EnumerateRequest:
    meta: Mapping[str, str] = field(default_factory=dict)


Request = PreRequest | AuthRequest | PasswdRequest | EnumerateRequest


_CTL = re.compile("[\x00-\x1f\x7f]")


def _has_ctl(s: str, allow: str = "") -> bool:
    # One regex scan: this runs on every field of every reply (was a Python loop per char).
    if allow:
        s = s.translate({ord(c): None for c in allow})
    return _CTL.search(s) is not None


def _check_word(s: str, what: str) -> None:
    if not s or _has_ctl(s) or " " in s:
        raise ValueError(f"{what} must be non-empty without spaces or control characters")


def _meta_bytes(meta: Mapping[str, str]) -> bytes:
    out = bytearray()
    for k, v in meta.items():
        # request_with_meta_create: no control characters, and the name must not
        # contain a space or '=' or the daemon would take it for the command.
        if not k or "=" in k or " " in k or _has_ctl(k) or _has_ctl(v):
            raise ValueError("bad metadata name or value")
        out += f"{k}={v}\n".encode()
    return bytes(out)


def format_request(req: Request) -> bytes:
    """The bytes a client writes; ValueError when a field cannot be sent (the caller FAILs)."""
    head = _meta_bytes(req.meta)
    match req:
        case PreRequest(module, service, user):
            _check_word(module, "module")
            _check_word(service, "service")
            _check_word(user, "user")
            body = f"PRE {module} {service} {user}\n".encode()
        case AuthRequest(service, authtype, authdata):
            _check_word(service, "service")
            _check_word(authtype, "authtype")
            payload = service.encode() + b"\n" + authtype.encode() + b"\n" + authdata
            body = b"AUTH %d\n" % len(payload) + payload
        case PasswdRequest(service, user, oldpw, newpw):
            # authdaemond FAILs any control character other than TAB; TAB separates.
            for v in (service, user, oldpw, newpw):
                if _has_ctl(v):
                    raise ValueError("control characters are not allowed in PASSWD")
            # Courier's client (authpasswd, authtest) sends no TAB after the new password.
            body = f"PASSWD {service}\t{user}\t{oldpw}\t{newpw}\n".encode()
        case EnumerateRequest():
            body = b"ENUMERATE\n"
        case _:
            raise TypeError(f"not a request: {req!r}")
    data = head + body
    if len(data) > MAX_REQUEST:
        raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return data


def login_authdata(user: str, password: str) -> bytes:
    if "\n" in user or "\n" in password or not user:
        raise ValueError("user and password must not contain LF")
    return f"{user}\n{password}\n".encode()


class _ReqState(enum.Enum):
    LINES = enum.auto()      # metadata lines, then the command line
    AUTH_BODY = enum.auto()  # reading exactly <len> bytes
    DONE = enum.auto()


class RequestParser:
    """Feed bytes; `next_request()` returns the Request, NEED_DATA, or raises AuthProtocolError.

    Bytes after the request are ignored: one request per connection.
    """

    def __init__(self) -> None:
        self._buf = ReceiveBuffer(MAX_LINE)
        self._state = _ReqState.LINES
        self._meta: dict[str, str] = {}
        self._nmeta = 0
        self._total = 0
        self._auth_len = 0
        self._result: Request | None = None

    def feed(self, data: bytes) -> None:
        if self._state is _ReqState.DONE:
            return
        self._total += len(data)
        self._buf.feed(data)

    def next_request(self) -> Request | _NeedData:
        if self._state is _ReqState.DONE:
            assert self._result is not None
            return self._result
        if self._state is _ReqState.LINES:
            while True:
                try:
                    raw = self._buf.next_line()
                except LineTooLong:
                    raise AuthProtocolError("request line too long") from None
                if raw is NEED_DATA:
                    if self._total > MAX_REQUEST:
                        raise AuthProtocolError("request too long")
                    return NEED_DATA
                assert isinstance(raw, bytes)
                try:
                    line = raw[:-1].decode("utf-8")
                except UnicodeDecodeError:
                    raise AuthProtocolError("request line is not UTF-8") from None
                eq, sp = line.find("="), line.find(" ")
                if eq >= 0 and (sp < 0 or eq < sp):
                    # NAME=value metadata (request_with_meta_create).
                    self._nmeta += 1
                    if self._nmeta > MAX_META:
                        raise AuthProtocolError("too many metadata lines")
                    name, value = line[:eq], line[eq + 1:]
                    if name in KNOWN_META and not _has_ctl(value):
                        self._meta[name] = value
                    continue
                req = self._command(line)
                if req is not None:
                    return self._finish(req)
                break  # AUTH: the body follows
        # AUTH_BODY
        if len(self._buf) < self._auth_len:
            if self._total > MAX_REQUEST:
                raise AuthProtocolError("request too long")
            return NEED_DATA
        payload = self._buf.take(self._auth_len)
        parts = payload.split(b"\n", 2)
        if len(parts) != 3:
            raise AuthProtocolError("AUTH body lacks service and authtype lines")
        try:
            service, authtype = parts[0].decode("ascii"), parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthProtocolError("AUTH service/authtype not ASCII") from None
        if not service or not authtype or _has_ctl(service) or _has_ctl(authtype):
            raise AuthProtocolError("AUTH service/authtype empty or bad")
        return self._finish(AuthRequest(service, authtype, parts[2], dict(self._meta)))

    def _finish(self, req: Request) -> Request:
        self._state = _ReqState.DONE
        self._result = req
        return req

    def _command(self, line: str) -> Request | None:
        if line.endswith("\r"):
            line = line[:-1]
        verb, _, rest = line.partition(" ")
        meta = dict(self._meta)
        if verb == "PRE":
            words = rest.split(" ")
            if len(words) != 3 or not all(words) or any(_has_ctl(w) for w in words):
                raise AuthProtocolError("PRE needs: PRE <module> <service> <user>")
            return PreRequest(words[0], words[1], words[2], meta)
        if verb == "AUTH":
            if not rest.isdigit() or len(rest) > 6:
                raise AuthProtocolError("AUTH needs a byte count")
            n = int(rest)
            # The count covers service\nauthtype\nauthdata; it must fit the buffer.
            if n < 4 or n > MAX_REQUEST:
                raise AuthProtocolError("AUTH byte count out of range")
            self._auth_len = n
            self._state = _ReqState.AUTH_BODY
            return None
        if verb == "PASSWD":
            parts = rest.split("\t")
            # Courier's client sends "svc\tuser\told\tnew"; a trailing TAB (an empty
            # fifth part) is tolerated.
            if len(parts) == 5 and parts[4] == "":
                parts.pop()
            if len(parts) != 4 or any(_has_ctl(p) for p in parts):
                raise AuthProtocolError("PASSWD needs four TAB-separated fields")
            return PasswdRequest(parts[0], parts[1], parts[2], parts[3], meta)
        if verb == "ENUMERATE" and rest == "":
            return EnumerateRequest(meta)
        raise AuthProtocolError(f"unknown command {verb[:20]!r}")


# ---- replies ----------------------------------------------------------------------------

FAIL = b"FAIL\n"
OK = b"OK\n"


def format_auth_reply(fields: Mapping[str, str | int | None]) -> bytes:
    """printauth: known keys in Courier's order (None/absent skipped), then any others, then `.`.

    Raises ValueError when a mandatory key is missing (ADDRESS, HOME, GID, and UID
    or USERNAME: README_authlib) or a value holds a control character.
    """
    if fields.get("GID") is None or not fields.get("HOME") or not fields.get("ADDRESS") \
            or (fields.get("UID") is None and not fields.get("USERNAME")):
        raise ValueError("reply needs ADDRESS, HOME, GID and UID or USERNAME")
    out = bytearray()
    keys = [k for k in REPLY_ORDER if k in fields] + [k for k in fields if k not in REPLY_ORDER]
    for k in keys:
        v = fields[k]
        if v is None:
            continue
        s = str(v)
        if _has_ctl(s) or _has_ctl(k) or "=" in k:
            raise ValueError(f"control character in reply field {k}")
        out += f"{k}={s}\n".encode()
    out += b".\n"
    return bytes(out)


@dataclass(frozen=True, slots=True)
class AuthReply:
    """A parsed success reply: KEY -> value, in the order received."""

    fields: Mapping[str, str]

    def __repr__(self) -> str:
        shown = {k: ("<hidden>" if k.startswith("PASSWD") else v) for k, v in self.fields.items()}
        return f"AuthReply({shown!r})"


class Failed(enum.Enum):
    FAIL = "FAIL"


class ReplyParser:
    """Client side of PRE/AUTH (and PASSWD with `passwd=True`): feed bytes, then `result()`.

    result(): AuthReply, Failed.FAIL, True (PASSWD OK), NEED_DATA; AuthProtocolError on garbage.
    `eof()` tells the parser the daemon closed: an unfinished reply is then an error
    (Courier's client treats it as a temporary failure).
    """

    def __init__(self, *, passwd: bool = False) -> None:
        self._buf = ReceiveBuffer(MAX_LINE)
        self._passwd = passwd
        self._fields: dict[str, str] = {}
        self._total = 0
        self._result: AuthReply | Failed | bool | None = None

    def feed(self, data: bytes) -> None:
        self._total += len(data)
        self._buf.feed(data)

    def result(self) -> AuthReply | Failed | bool | _NeedData:
        if self._result is not None:
            return self._result
        while True:
            try:
                raw = self._buf.next_line()
            except LineTooLong:
                raise AuthProtocolError("reply line too long") from None
            if raw is NEED_DATA:
                if self._total > MAX_REPLY:
                    raise AuthProtocolError("reply too long")
                return NEED_DATA
            assert isinstance(raw, bytes)
            line = raw.rstrip(b"\r\n")
            if line == b"FAIL" and not self._fields:
                self._result = Failed.FAIL
                return self._result
            if self._passwd:
                if line == b"OK":
                    self._result = True
                    return True
                raise AuthProtocolError("PASSWD reply is neither OK nor FAIL")
            if line == b".":
                self._result = AuthReply(dict(self._fields))
                return self._result
            text = line.decode("utf-8", "replace")
            k, eq, v = text.partition("=")
            if eq:  # lines without '=' are tolerated and skipped, as Courier's client does
                self._fields[k] = v


@dataclass(frozen=True, slots=True)
class EnumEntry:
    name: str
    uid: int
    gid: int
    home: str
    maildir: str
    options: str


def format_enumerate(modules: list[tuple[str, list[EnumEntry]]]) -> bytes:
    out = bytearray()
    for mod, entries in modules:
        out += f"# {mod}\n\n".encode()
        for e in entries:
            vals = (e.name, str(e.uid), str(e.gid), e.home, e.maildir, e.options)
            if any(_has_ctl(v) for v in vals):
                continue  # a line we cannot represent is skipped, not garbled
            out += ("\t".join(vals) + "\n").encode()
    out += b".\n"
    return bytes(out)


class EnumerateParser:
    """Client side of ENUMERATE: feed bytes; `result()` -> list[EnumEntry] or NEED_DATA."""

    def __init__(self) -> None:
        self._buf = ReceiveBuffer(MAX_LINE)
        self._entries: list[EnumEntry] = []
        self._done = False

    def feed(self, data: bytes) -> None:
        self._buf.feed(data)

    def result(self) -> list[EnumEntry] | _NeedData:
        while not self._done:
            try:
                raw = self._buf.next_line()
            except LineTooLong:
                raise AuthProtocolError("enumerate line too long") from None
            if raw is NEED_DATA:
                return NEED_DATA
            assert isinstance(raw, bytes)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if line == ".":
                self._done = True
                break
            if line == "FAIL" and not self._entries:
                raise AuthProtocolError("ENUMERATE failed")
            # auth_enumerate (authdaemonlib.c) drops '#' comments and blank lines.
            line = line.split("#", 1)[0]
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            parts += [""] * (6 - len(parts))
            try:
                uid, gid = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            if uid == 0 or gid == 0:
                continue  # Courier's client refuses root entries
            if len(self._entries) >= MAX_ENUMERATE_LINES:
                raise AuthProtocolError("enumerate reply too long")
            self._entries.append(EnumEntry(parts[0], uid, gid, parts[3], parts[4], parts[5]))
        return list(self._entries)
