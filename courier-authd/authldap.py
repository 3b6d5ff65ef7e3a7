"""authldap: accounts in an LDAP directory, configured by Courier's authldaprc (ldap3).

The lookup follows courier-authlib's authldaplib.c: the login (with @LDAP_DOMAIN
added when it has none) is matched against LDAP_MAIL, ANDed with LDAP_FILTER,
under LDAP_BASEDN; with LDAP_EMAILMAP a first search maps user@realm to a
handle that the second search matches against LDAP_EMAILMAP_MAIL. Values put
into a filter are escaped as RFC 4515 §3 requires.

Passwords: LDAP_AUTHBIND 1 checks the password by binding as the user's DN on
a second connection; otherwise LDAP_CRYPTPW (any scheme passwords.py knows,
slapd's {SSHA}/{CRYPT} included) or, without it, LDAP_CLEARPW.
PASSWD replaces LDAP_CRYPTPW ({CRYPT} + SHA-512 crypt) and LDAP_CLEARPW; with
LDAP_AUTHBIND the change is made bound as the user, as Courier does.

One connection per worker, opened on first use, re-opened once when a request
fails on it; a directory that cannot be reached is a temporary failure.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ldap3
from courier_authd.authrc import AuthRc, read_authrc
from courier_authd.modules import Account, BackendTempFail
from courier_authd.passwords import MAX_PASSWORD, hash_password
from courier_authd.sqlcommon import password_matches
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from libcourier.config import ConfigError

log = logging.getLogger("courier.authd")

MAX_LOGIN = 512
MAX_ENTRIES = 100_000
DEREF = {"never": ldap3.DEREF_NEVER, "searching": ldap3.DEREF_SEARCH,
         "finding": ldap3.DEREF_BASE, "always": ldap3.DEREF_ALWAYS}


@dataclass(frozen=True, slots=True)
class LdapConfig:
    uris: tuple[str, ...]
    version: int
    basedn: str
    binddn: str
    bindpw: str
    initbind: bool
    timeout: int
    mail: str
    filter: str
    enumerate_filter: str
    domain: str
    glob_uid: int | None
    glob_gid: int | None
    homedir: str
    mailroot: str
    maildir: str
    defaultdelivery: str
    quota: str
    fullname: str
    clearpw: str
    cryptpw: str
    uid: str
    gid: str
    auxoptions: tuple[tuple[str, str], ...]   # (attribute, option name)
    authbind: bool
    deref: str
    tls: bool
    emailmap: str
    emailmap_basedn: str
    emailmap_attribute: str
    emailmap_mail: str
    tls_cacert: str | None = None     # OpenLDAP's TLS_CACERT (None: the system's CAs)
    tls_verify: int = ssl.CERT_REQUIRED


# OpenLDAP's TLS_REQCERT (ldap.conf(5)): what libldap, and so Courier's authldap, does.
REQCERT = {"never": ssl.CERT_NONE, "allow": ssl.CERT_NONE, "try": ssl.CERT_OPTIONAL,
           "demand": ssl.CERT_REQUIRED, "hard": ssl.CERT_REQUIRED}
LDAP_CONF = Path("/etc/ldap/ldap.conf")


def tls_settings(env: Mapping[str, str] | None = None, conf: Path = LDAP_CONF
                 ) -> tuple[str | None, int]:
    """(CA file, verify mode) from OpenLDAP's client settings, which authlib's authldap
    obeys through libldap: LDAPTLS_CACERT / LDAPTLS_REQCERT in the environment (set
    them in authdaemond's environment), else TLS_CACERT / TLS_REQCERT in ldap.conf."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    try:
        for line in conf.read_text(errors="replace").splitlines()[:1000]:
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].upper() in ("TLS_CACERT", "TLS_REQCERT"):
                found[parts[0].upper()] = parts[1].strip()
    except OSError:
        pass
    cacert = env.get("LDAPTLS_CACERT") or found.get("TLS_CACERT") or None
    req = (env.get("LDAPTLS_REQCERT") or found.get("TLS_REQCERT") or "demand").lower()
    if req not in REQCERT:
        raise ConfigError(f"TLS_REQCERT/LDAPTLS_REQCERT: unknown value {req!r} "
                          f"(one of {', '.join(REQCERT)})")
    if cacert and not os.path.exists(cacert):
        raise ConfigError(f"TLS_CACERT/LDAPTLS_CACERT: {cacert} does not exist")
    return cacert, REQCERT[req]


def _id(rc: AuthRc, key: str, lookup: Any) -> int | None:
    v = rc.get(key)
    if not v:
        return None
    if v.isdigit():
        return int(v)
    try:
        return lookup(v)
    except KeyError:
        raise rc.error(key, f"no such {'user' if lookup is _uid else 'group'} {v!r}") from None


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _aux(rc: AuthRc) -> tuple[tuple[str, str], ...]:
    out = []
    for item in rc.get("LDAP_AUXOPTIONS").split(","):
        item = item.strip()
        if not item:
            continue
        attr, _, name = item.partition("=")
        if not attr or not name:
            raise rc.error("LDAP_AUXOPTIONS", f"expected attribute=option, got {item!r}")
        out.append((attr.strip(), name.strip()))
    return tuple(out)


def split_uri(uri: str) -> tuple[str, int, bool]:
    """ldap[s]://host[:port][/] -> (host, port, ssl); ValueError for anything else."""
    u = urlsplit(uri)
    scheme = u.scheme.lower()
    if scheme not in ("ldap", "ldaps"):
        raise ValueError(f"{uri!r} is not an ldap:// or ldaps:// URI (ldapi:// is not supported)")
    if u.path not in ("", "/") or u.query or not u.hostname:
        raise ValueError(f"{uri!r}: only ldap[s]://host[:port] is understood")
    port = u.port   # raises ValueError for a bad port
    return u.hostname, port or (636 if scheme == "ldaps" else 389), scheme == "ldaps"


def _filter(rc: AuthRc, key: str) -> str:
    f = rc.get(key)
    if f and not (f.startswith("(") and f.endswith(")")):
        raise rc.error(key, f"an LDAP filter must be in parentheses, got {f[:60]!r}")
    return f


def load_ldap_config(rc: AuthRc) -> LdapConfig:
    uris = tuple(u.strip() for u in rc.get("LDAP_URI", "ldap://localhost").replace(",", " ").split()
                 if u.strip())
    for u in uris:
        try:
            split_uri(u)
        except ValueError as e:
            raise rc.error("LDAP_URI", str(e)) from None
    if not rc.has("LDAP_BASEDN"):
        raise rc.error("LDAP_BASEDN", "must be set")
    deref = rc.get("LDAP_DEREF", "never").lower()
    if deref not in DEREF:
        raise rc.error("LDAP_DEREF", f"must be one of {', '.join(DEREF)}, got {deref!r}")
    cfg = LdapConfig(
        uris=uris or ("ldap://localhost",),
        version=rc.get_int("LDAP_PROTOCOL_VERSION", 3, 2, 3),
        basedn=rc.get("LDAP_BASEDN"),
        binddn=rc.get("LDAP_BINDDN"),
        bindpw=rc.get("LDAP_BINDPW"),
        initbind=rc.get_bool("LDAP_INITBIND", True),
        timeout=rc.get_int("LDAP_TIMEOUT", 5, 1, 3600),
        mail=rc.get("LDAP_MAIL", "mail"),
        filter=_filter(rc, "LDAP_FILTER"),
        enumerate_filter=_filter(rc, "LDAP_ENUMERATE_FILTER"),
        domain=rc.get("LDAP_DOMAIN"),
        glob_uid=_id(rc, "LDAP_GLOB_UID", _uid),
        glob_gid=_id(rc, "LDAP_GLOB_GID", _gid),
        homedir=rc.get("LDAP_HOMEDIR", "homeDirectory"),
        mailroot=rc.get("LDAP_MAILROOT"),
        maildir=rc.get("LDAP_MAILDIR"),
        defaultdelivery=rc.get("LDAP_DEFAULTDELIVERY"),
        quota=rc.get("LDAP_MAILDIRQUOTA"),
        fullname=rc.get("LDAP_FULLNAME"),
        clearpw=rc.get("LDAP_CLEARPW"),
        cryptpw=rc.get("LDAP_CRYPTPW"),
        uid=rc.get("LDAP_UID"),
        gid=rc.get("LDAP_GID"),
        auxoptions=_aux(rc),
        authbind=rc.get_bool("LDAP_AUTHBIND", False),
        deref=deref,
        tls=rc.get_bool("LDAP_TLS", False),
        emailmap=_filter(rc, "LDAP_EMAILMAP"),
        emailmap_basedn=rc.get("LDAP_EMAILMAP_BASEDN") or rc.get("LDAP_BASEDN"),
        emailmap_attribute=rc.get("LDAP_EMAILMAP_ATTRIBUTE"),
        emailmap_mail=rc.get("LDAP_EMAILMAP_MAIL"),
    )
    if (cfg.glob_uid is None and not cfg.uid) or (cfg.glob_gid is None and not cfg.gid):
        raise rc.error("LDAP_UID", "set LDAP_UID/LDAP_GID (attributes) or "
                       "LDAP_GLOB_UID/LDAP_GLOB_GID (one id for everyone)")
    if not cfg.authbind and not cfg.cryptpw and not cfg.clearpw:
        raise rc.error("LDAP_CRYPTPW", "LDAP_CRYPTPW or LDAP_CLEARPW must be set "
                       "(or LDAP_AUTHBIND 1)")
    if cfg.emailmap and not cfg.emailmap_attribute:
        raise rc.error("LDAP_EMAILMAP", "needs LDAP_EMAILMAP_ATTRIBUTE")
    if cfg.tls or any(u.lower().startswith("ldaps:") for u in cfg.uris):
        cacert, verify = tls_settings()
        cfg = dataclasses.replace(cfg, tls_cacert=cacert, tls_verify=verify)
    return cfg


# -- filters and entries (no I/O) ----------------------------------------------------------

def user_filter(cfg: LdapConfig, attr: str, value: str) -> str:
    """(&LDAP_FILTER(attr=value)) with the value escaped (RFC 4515 §3)."""
    f = f"({attr}={escape_filter_chars(value)})"
    return f"(&{cfg.filter}{f})" if cfg.filter else f


def emailmap_filter(cfg: LdapConfig, user: str, realm: str) -> str:
    return (cfg.emailmap.replace("@user@", escape_filter_chars(user))
            .replace("@realm@", escape_filter_chars(realm)))


def wanted_attributes(cfg: LdapConfig) -> list[str]:
    names = [cfg.mail, cfg.homedir, cfg.maildir, cfg.defaultdelivery, cfg.quota, cfg.fullname,
             cfg.uid, cfg.gid, *(a for a, _ in cfg.auxoptions)]
    if not cfg.authbind:
        names += [cfg.cryptpw, cfg.clearpw]
    return sorted({n for n in names if n})


def _first(attrs: dict[str, list[bytes]], name: str) -> str:
    if not name:
        return ""
    vals = attrs.get(name.lower()) or []
    return vals[0].decode("utf-8", "replace") if vals else ""


def entry_to_account(cfg: LdapConfig, login: str, attrs: dict[str, list[bytes]]
                     ) -> Account | None:
    """One entry (attribute names lower-cased, raw values) as an Account."""
    try:
        uid = int(_first(attrs, cfg.uid)) if cfg.uid and _first(attrs, cfg.uid) else cfg.glob_uid
        gid = int(_first(attrs, cfg.gid)) if cfg.gid and _first(attrs, cfg.gid) else cfg.glob_gid
    except ValueError:
        log.error("authldap: %r has a non-numeric uid/gid: ignored", login)
        return None
    home = _first(attrs, cfg.homedir)
    if uid is None or gid is None or not home:
        log.error("authldap: %r lacks a uid, gid or home: ignored", login)
        return None
    if cfg.mailroot and not home.startswith("/"):
        home = os.path.join(cfg.mailroot, home)
    opts = [f"{name}={_first(attrs, attr)}" for attr, name in cfg.auxoptions
            if _first(attrs, attr)]
    dd = _first(attrs, cfg.defaultdelivery)
    if dd:
        opts.append(f"defaultdelivery={dd}")
    pw = {}
    if not cfg.authbind:
        crypt, clear = _first(attrs, cfg.cryptpw), _first(attrs, cfg.clearpw)
        if crypt:
            pw["systempw"] = crypt
        if clear:
            pw["clearpw"] = clear
    return Account(address=_first(attrs, cfg.mail) or login, uid=uid, gid=gid, home=home,
                   maildir=_first(attrs, cfg.maildir) or None,
                   quota=_first(attrs, cfg.quota) or None,
                   fullname=_first(attrs, cfg.fullname) or None,
                   options=",".join(opts), passwords=pw)


def _entries(conn: ldap3.Connection) -> list[tuple[str, dict[str, list[bytes]]]]:
    out = []
    for r in conn.response or []:
        if r.get("type") == "searchResEntry":
            attrs = {k.lower(): list(v) for k, v in (r.get("raw_attributes") or {}).items()}
            out.append((r["dn"], attrs))
    return out


# -- the module ----------------------------------------------------------------------------

class LdapModule:
    name = "authldap"

    def __init__(self, cfg: LdapConfig):
        self.cfg = cfg
        self._conn: ldap3.Connection | None = None
        self._pid = 0
        self._orphans: list[Any] = []

    def _server(self, uri: str) -> ldap3.Server:
        host, port, use_ssl = split_uri(uri)
        tls = None
        if use_ssl or self.cfg.tls:
            # Verified against TLS_CACERT or the system's CAs, host name checked (ldap3's
            # own default would be no verification at all).
            tls = ldap3.Tls(validate=self.cfg.tls_verify, ca_certs_file=self.cfg.tls_cacert)
        return ldap3.Server(host, port=port, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE,
                            connect_timeout=self.cfg.timeout)

    def _open(self, user: str | None, password: str | None) -> ldap3.Connection | None:
        """A bound connection to the first URI that answers; None if the bind was
        refused (bad credentials). LDAPException when no server can be reached."""
        last: Exception | None = None
        for uri in self.cfg.uris:
            conn = ldap3.Connection(self._server(uri), user=user, password=password,
                                    version=self.cfg.version, auto_bind=ldap3.AUTO_BIND_NONE,
                                    receive_timeout=self.cfg.timeout, raise_exceptions=False,
                                    read_only=False)
            try:
                conn.open()
                if self.cfg.tls and not uri.lower().startswith("ldaps://"):
                    # RFC 4513 §3: StartTLS before the bind; refused = no plain-text fallback.
                    if not conn.start_tls():
                        raise LDAPException(f"StartTLS refused by {uri}: "
                                            f"{(conn.result or {}).get('description')}")
                if user is None:
                    return conn
                if conn.bind():
                    return conn
                result = conn.result or {}
                conn.unbind()
                if result.get("result") == 49:   # invalidCredentials
                    return None
                raise LDAPException(f"bind as {user} failed: {result.get('description')}")
            except LDAPException as e:
                last = e
                try:
                    conn.unbind()
                except LDAPException:
                    pass
        raise LDAPException(str(last) if last else "no LDAP_URI")

    def _connection(self) -> ldap3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            self._orphans.append(self._conn)   # the parent's socket: leave it be
            self._conn = None
        if self._conn is None:
            bind = self.cfg.initbind and bool(self.cfg.binddn)
            conn = self._open(self.cfg.binddn if bind else None,
                              self.cfg.bindpw if bind else None)
            if conn is None:
                raise LDAPException(f"LDAP_BINDDN {self.cfg.binddn}: invalid credentials")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.unbind()
            except LDAPException:
                pass
            self._conn = None

    def _search(self, base: str, flt: str, attrs: list[str], limit: int
                ) -> list[tuple[str, dict[str, list[bytes]]]]:
        last: Exception | None = None
        for _attempt in range(2):
            try:
                conn = self._connection()
                ok = conn.search(base, flt, search_scope=ldap3.SUBTREE, attributes=attrs,
                                 dereference_aliases=DEREF[self.cfg.deref],
                                 size_limit=limit, time_limit=self.cfg.timeout)
                res = (conn.result or {}).get("result", 0)
                if not ok and res not in (0, 4, 32):   # success, sizeLimitExceeded, noSuchObject
                    raise LDAPException(f"search failed: {(conn.result or {}).get('description')}")
                return _entries(conn)
            except LDAPException as e:
                last = e
                self._drop()
        msg = f"authldap: {str(last)[:300]}"
        log.error("%s", msg)
        raise BackendTempFail(msg)

    def _login(self, user: str) -> str:
        return f"{user}@{self.cfg.domain}" if "@" not in user and self.cfg.domain else user

    def _find(self, user: str) -> tuple[str, Account] | None:
        if not user or len(user) > MAX_LOGIN or "\0" in user:
            return None
        login = self._login(user)
        attr, key = self.cfg.mail, login
        if self.cfg.emailmap and "@" in login:
            local, _, realm = login.partition("@")
            found = self._search(self.cfg.emailmap_basedn, emailmap_filter(self.cfg, local, realm),
                                 [self.cfg.emailmap_attribute], 2)
            if len(found) != 1:
                return None
            key = _first(found[0][1], self.cfg.emailmap_attribute)
            if not key:
                return None
            attr = self.cfg.emailmap_mail or self.cfg.mail
        found = self._search(self.cfg.basedn, user_filter(self.cfg, attr, key),
                             wanted_attributes(self.cfg), 2)
        if not found:
            return None
        if len(found) > 1:
            log.error("authldap: more than one entry for %r: refused", login)
            return None
        dn, attrs = found[0]
        a = entry_to_account(self.cfg, login, attrs)
        return (dn, a) if a is not None else None

    # the Module protocol
    def sasl_mechanisms(self) -> frozenset[str]:
        """CRAM and SCRAM need the clear password: only with LDAP_CLEARPW, never with
        LDAP_AUTHBIND (the directory keeps the secret)."""
        if self.cfg.clearpw and not self.cfg.authbind:
            return frozenset({"PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256",
                              "SCRAM-SHA-1", "SCRAM-SHA-256"})
        return frozenset({"PLAIN", "LOGIN"})

    def lookup(self, user: str, service: str = "") -> Account | None:
        found = self._find(user)
        return found[1] if found else None

    def _bind_ok(self, dn: str, password: str) -> bool:
        # An empty password would be an unauthenticated bind, which servers accept
        # as anonymous (RFC 4513 §5.1.2): never a login.
        if not password or len(password) > MAX_PASSWORD:
            return False
        try:
            conn = self._open(dn, password)
        except LDAPException as e:
            raise BackendTempFail(f"authldap: bind as {dn}: {str(e)[:200]}") from None
        if conn is None:
            return False
        conn.unbind()
        return True

    def authenticate(self, user: str, password: str, service: str = "") -> Account | None:
        found = self._find(user)
        if found is None:
            return None
        dn, a = found
        if self.cfg.authbind:
            return a if self._bind_ok(dn, password) else None
        return a if password_matches(a, password) else None

    def enumerate(self) -> list[Account]:
        flt = self.cfg.enumerate_filter or self.cfg.filter or f"({self.cfg.mail}=*)"
        out = []
        for _dn, attrs in self._search(self.cfg.basedn, flt, wanted_attributes(self.cfg),
                                       MAX_ENTRIES):
            name = _first(attrs, self.cfg.mail)
            a = entry_to_account(self.cfg, name, attrs) if name else None
            if a is not None:
                out.append(a)
        return out

    def _modify(self, conn: ldap3.Connection, dn: str, new_hash: str,
                new_password: str | None) -> bool:
        changes: dict[str, Any] = {}
        if self.cfg.cryptpw:
            changes[self.cfg.cryptpw] = [(ldap3.MODIFY_REPLACE, ["{CRYPT}" + new_hash])]
        if self.cfg.clearpw and new_password is not None:
            changes[self.cfg.clearpw] = [(ldap3.MODIFY_REPLACE, [new_password])]
        if not changes:
            log.error("authldap: neither LDAP_CRYPTPW nor LDAP_CLEARPW to store a password in")
            return False
        if not conn.modify(dn, changes):
            log.error("authldap: password change of %s refused: %s", dn,
                      (conn.result or {}).get("description"))
            return False
        return True

    def passwd(self, user: str, oldpw: str, newpw: str, service: str = "") -> bool | None:
        """PASSWD: None when the user is not ours (next module), else success."""
        found = self._find(user)
        if found is None:
            return None
        dn, a = found
        if not newpw or len(newpw) > MAX_PASSWORD:
            return False
        new_hash = hash_password(newpw)
        if self.cfg.authbind:
            if not oldpw or len(oldpw) > MAX_PASSWORD:
                return False
            try:
                conn = self._open(dn, oldpw)
            except LDAPException as e:
                raise BackendTempFail(f"authldap: bind as {dn}: {str(e)[:200]}") from None
            if conn is None:
                return False
            try:
                return self._modify(conn, dn, new_hash, newpw)
            except LDAPException as e:
                raise BackendTempFail(f"authldap: modify {dn}: {str(e)[:200]}") from None
            finally:
                conn.unbind()
        if not password_matches(a, oldpw):
            return False
        try:
            return self._modify(self._connection(), dn, new_hash, newpw)
        except LDAPException as e:
            self._drop()
            raise BackendTempFail(f"authldap: modify {dn}: {str(e)[:200]}") from None

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool:
        """The Module protocol's form (old password already checked by the caller)."""
        found = self._find(user)
        if found is None or self.cfg.authbind:
            return False
        try:
            return self._modify(self._connection(), found[0], new_hash, None)
        except LDAPException as e:
            self._drop()
            raise BackendTempFail(f"authldap: modify: {str(e)[:200]}") from None


def load(etc: Path) -> LdapModule:
    return LdapModule(load_ldap_config(read_authrc(etc / "authldaprc")))
