"""What authpgsql and authmysql share (courier-authlib's authmysqllib / authpgsqllib):
the PGSQL_* / MYSQL_* field-name keys, the default queries built from them, the
admin's custom SELECT/ENUMERATE/CHPASS clauses with their $(...) substitutions,
a row turned into an Account, and one persistent connection per worker.

Our own queries pass the login name as a bound parameter. The admin's custom
clauses are SQL text with $(local_part) etc. pasted in, as Courier does; every
pasted value goes through the server's own string escaping first
(PQescapeStringConn / mysql_real_escape_string), exactly where Courier escapes.
The field-name keys are SQL expressions the admin writes (Courier's shipped
example puts a CONCAT(...) in *_AUXOPTIONS_FIELD), so they are pasted as given.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from courier_authd.authrc import AuthRc
from courier_authd.modules import Account, BackendTempFail
from courier_authd.passwords import MAX_PASSWORD, check_password, hash_password

log = logging.getLogger("courier.authd")

MAX_LOGIN = 512          # longer login names are refused before any query
MAX_ROWS = 100_000       # ENUMERATE stops here rather than filling memory
_VAR = re.compile(r"\$\(([A-Za-z_]+)\)")
SELECT_VARS = frozenset({"local_part", "domain", "service"})
CHPASS_VARS = frozenset({"local_part", "domain", "newpass", "newpass_crypt"})


@dataclass(frozen=True, slots=True)
class SqlConfig:
    prefix: str                  # "PGSQL" or "MYSQL", for messages
    user_table: str
    crypt_field: str
    clear_field: str
    uid_field: str
    gid_field: str
    login_field: str
    home_field: str
    name_field: str
    maildir_field: str
    defaultdelivery_field: str
    quota_field: str
    auxoptions_field: str
    where_clause: str
    default_domain: str
    select_clause: str
    enumerate_clause: str
    chpass_clause: str


def _check_vars(rc: AuthRc, key: str, allowed: frozenset[str]) -> str:
    clause = rc.get(key)
    for name in _VAR.findall(clause):
        if name not in allowed:
            raise rc.error(key, f"unknown substitution $({name}) (allowed: "
                           f"{', '.join('$(' + v + ')' for v in sorted(allowed))})")
    return clause


def load_sql_config(rc: AuthRc, prefix: str) -> SqlConfig:
    """The field keys as authlib reads them, with its defaults (authmysqllib.c)."""
    def g(key: str, default: str = "") -> str:
        return rc.get(f"{prefix}_{key}", default)

    cfg = SqlConfig(
        prefix=prefix,
        user_table=g("USER_TABLE"),
        crypt_field=g("CRYPT_PWFIELD"),
        clear_field=g("CLEAR_PWFIELD"),
        uid_field=g("UID_FIELD", "uid"),
        gid_field=g("GID_FIELD", "gid"),
        login_field=g("LOGIN_FIELD", "id"),
        home_field=g("HOME_FIELD", "home"),
        name_field=g("NAME_FIELD"),
        maildir_field=g("MAILDIR_FIELD"),
        defaultdelivery_field=g("DEFAULTDELIVERY"),
        quota_field=g("QUOTA_FIELD"),
        auxoptions_field=g("AUXOPTIONS_FIELD"),
        where_clause=g("WHERE_CLAUSE"),
        # Courier reads plain DEFAULT_DOMAIN in both files.
        default_domain=rc.get("DEFAULT_DOMAIN"),
        select_clause=_check_vars(rc, f"{prefix}_SELECT_CLAUSE", SELECT_VARS),
        enumerate_clause=_check_vars(rc, f"{prefix}_ENUMERATE_CLAUSE", SELECT_VARS),
        chpass_clause=_check_vars(rc, f"{prefix}_CHPASS_CLAUSE", CHPASS_VARS),
    )
    if not cfg.select_clause:
        if not cfg.user_table:
            raise rc.error(f"{prefix}_USER_TABLE", "must be set (or a custom SELECT clause)")
        if not cfg.crypt_field and not cfg.clear_field:
            raise rc.error(f"{prefix}_CRYPT_PWFIELD",
                           f"{prefix}_CRYPT_PWFIELD or {prefix}_CLEAR_PWFIELD must be set")
    return cfg


# -- names and queries (no I/O) ------------------------------------------------------------

def split_login(user: str, default_domain: str) -> tuple[str, str, str]:
    """(login, local_part, domain): `user` gets @DEFAULT_DOMAIN when it has no domain."""
    if "@" not in user and default_domain:
        user = f"{user}@{default_domain}"
    local, _, domain = user.partition("@")
    return user, local, domain


def substitute(clause: str, values: dict[str, str], escape: Callable[[str], str]) -> str:
    """Courier's $(name) substitution; each value escaped for a '...' SQL literal."""
    return _VAR.sub(lambda m: escape(values.get(m.group(1), "")), clause)


def _or_empty(field: str) -> str:
    return field or "''"


def select_query(cfg: SqlConfig) -> str:
    """authlib's default lookup, with the login as a bound parameter (%s)."""
    cols = [cfg.login_field, _or_empty(cfg.crypt_field), _or_empty(cfg.clear_field),
            cfg.uid_field, cfg.gid_field, cfg.home_field, _or_empty(cfg.maildir_field),
            _or_empty(cfg.quota_field), _or_empty(cfg.name_field),
            _or_empty(cfg.auxoptions_field), _or_empty(cfg.defaultdelivery_field)]
    sql = f"SELECT {', '.join(cols)} FROM {cfg.user_table} WHERE {cfg.login_field} = %s"
    if cfg.where_clause:
        sql += f" AND ({cfg.where_clause})"
    return sql


def enumerate_query(cfg: SqlConfig) -> str:
    cols = [cfg.login_field, cfg.uid_field, cfg.gid_field, cfg.home_field,
            _or_empty(cfg.maildir_field), _or_empty(cfg.auxoptions_field)]
    sql = f"SELECT {', '.join(cols)} FROM {cfg.user_table}"
    if cfg.where_clause:
        sql += f" WHERE ({cfg.where_clause})"
    return sql


def chpass_query(cfg: SqlConfig, with_clear: bool) -> tuple[str, int]:
    """The default UPDATE: (sql, how many new-password parameters precede the login)."""
    sets = []
    if cfg.crypt_field:
        sets.append(f"{cfg.crypt_field} = %s")
    if cfg.clear_field and with_clear:
        sets.append(f"{cfg.clear_field} = %s")
    sql = f"UPDATE {cfg.user_table} SET {', '.join(sets)} WHERE {cfg.login_field} = %s"
    if cfg.where_clause:
        sql += f" AND ({cfg.where_clause})"
    return sql, len(sets)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _options(aux: str, defaultdelivery: str) -> str:
    # Courier passes DEFAULTDELIVERY to the mail server as an account option.
    if defaultdelivery:
        return ",".join(x for x in (aux, f"defaultdelivery={defaultdelivery}") if x)
    return aux


def row_to_account(row: Sequence[Any], name: str) -> Account | None:
    """username, cryptpw, clearpw, uid, gid, home, maildir, quota, fullname, options
    [, defaultdelivery]: the column order of Courier's SELECT clause."""
    cols = [_text(v) for v in row] + [""] * max(0, 11 - len(row))
    if len(row) < 6:
        log.error("sql: the query returned %d columns for %r, at least 6 needed", len(row), name)
        return None
    user, crypt, clear, uid, gid, home, maildir, quota, fullname, aux, dd = cols[:11]
    try:
        uid_n, gid_n = int(uid), int(gid)
    except ValueError:
        log.error("sql: %r has a non-numeric uid/gid (%r, %r): ignored", name, uid, gid)
        return None
    if not home:
        log.error("sql: %r has an empty home: ignored", name)
        return None
    # authinfo's cryptpassword and clearpassword (the clear one also serves CRAM).
    pw = {}
    if crypt:
        pw["systempw"] = crypt
    if clear:
        pw["clearpw"] = clear
    return Account(address=user or name, uid=uid_n, gid=gid_n, home=home,
                   maildir=maildir or None, quota=quota or None, fullname=fullname or None,
                   options=_options(aux, dd), passwords=pw)


def enum_row_to_account(row: Sequence[Any]) -> Account | None:
    """name, uid, gid, homedir, maildir, options (Courier's ENUMERATE clause)."""
    if len(row) < 4:
        return None
    cols = [_text(v) for v in row] + [""] * max(0, 6 - len(row))
    name, uid, gid, home, maildir, opts = cols[:6]
    try:
        uid_n, gid_n = int(uid), int(gid)
    except ValueError:
        return None
    if not name or not home:
        return None
    return Account(address=name, uid=uid_n, gid=gid_n, home=home, maildir=maildir or None,
                   options=opts)


def password_matches(a: Account, password: str) -> bool:
    """authlib's rule: the crypted password when there is one, else the clear one."""
    crypt, clear = a.passwords.get("systempw"), a.passwords.get("clearpw")
    if crypt:
        return check_password(password, crypt)
    # passwords.py compares a {PLAIN} value as plain text, in constant time.
    return bool(clear) and check_password(password, "{PLAIN}" + clear)


# -- the module: one connection per worker, reconnect once -----------------------------

class SqlModule:
    """Subclasses give name, `_connect()`, `_escape(conn, s)` and `errors` (the
    driver's base exception). A failed statement drops the connection and is
    tried once more on a fresh one; failing again is a temporary failure."""

    name = "authsql"
    takes_service = True     # the SELECT clause may use $(service)
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, cfg: SqlConfig):
        self.cfg = cfg
        self._conn: Any = None
        self._pid = 0
        self._orphans: list[Any] = []

    # driver hooks
    def _connect(self) -> Any:
        raise NotImplementedError

    def _escape(self, conn: Any, value: str) -> str:
        raise NotImplementedError

    def _close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # closing a broken connection may fail too; nothing to do
            pass

    def _connection(self) -> Any:
        if self._conn is not None and self._pid != os.getpid():
            # Inherited over fork from the parent: its socket is the parent's, so
            # keep the object alive (no close message on the shared socket) and
            # open our own.
            self._orphans.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = self._connect()
            self._pid = os.getpid()
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._close(self._conn)
            self._conn = None

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        last: BaseException | None = None
        for _attempt in range(2):
            try:
                conn = self._connection()
                return fn(conn)
            except self.errors as e:
                last = e
                self._drop()
        msg = f"{self.name}: {what} failed: {str(last).strip()[:300]}"
        log.error("%s", msg)
        raise BackendTempFail(msg)

    def _query(self, sql: str, params: Sequence[Any] | None, limit: int) -> list[tuple]:
        def go(conn: Any) -> list[tuple]:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchmany(limit)) if cur.description else []
        return self._run("query", go)

    def _update(self, sql: str, params: Sequence[Any] | None) -> int:
        def go(conn: Any) -> int:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                n = cur.rowcount
            self._commit(conn)
            return n
        return self._run("update", go)

    def _commit(self, conn: Any) -> None:
        """Drivers connect in autocommit mode (no transaction left open between
        requests); a driver that cannot overrides this."""

    # the Module protocol
    def lookup(self, user: str, service: str = "") -> Account | None:
        if not user or len(user) > MAX_LOGIN or "\0" in user:
            return None
        login, local, domain = split_login(user, self.cfg.default_domain)
        if self.cfg.select_clause:
            values = {"local_part": local, "domain": domain, "service": service}
            rows = self._run("query", lambda c: self._custom(c, self.cfg.select_clause, values))
        else:
            rows = self._query(select_query(self.cfg), (login,), 2)
        if not rows:
            return None
        if len(rows) > 1:
            log.error("%s: more than one row for %r: refused", self.name, login)
            return None
        return row_to_account(rows[0], login)

    def _custom(self, conn: Any, clause: str, values: dict[str, str]) -> list[tuple]:
        sql = substitute(clause, values, lambda v: self._escape(conn, v))
        with conn.cursor() as cur:
            cur.execute(sql)   # no parameters: a literal % in the clause stays as it is
            return list(cur.fetchmany(2)) if cur.description else []

    def authenticate(self, user: str, password: str, service: str = "") -> Account | None:
        a = self.lookup(user, service)
        if a is None or len(password) > MAX_PASSWORD:
            return None
        return a if password_matches(a, password) else None

    def passwd(self, user: str, oldpw: str, newpw: str, service: str = "") -> bool | None:
        """PASSWD: None when the user is not ours (next module), else success."""
        a = self.authenticate(user, oldpw, service)
        if a is None:
            return None if self.lookup(user, service) is None else False
        if not newpw or len(newpw) > MAX_PASSWORD:
            return False
        return self.change_password(user, "systempw", hash_password(newpw), newpw)

    def enumerate(self) -> list[Account]:
        if self.cfg.enumerate_clause:
            def go(conn: Any) -> list[tuple]:
                sql = substitute(self.cfg.enumerate_clause, {}, lambda v: self._escape(conn, v))
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return list(cur.fetchmany(MAX_ROWS))
            rows = self._run("enumerate", go)
        elif self.cfg.select_clause:
            return []   # a custom SELECT without an ENUMERATE clause: Courier lists nobody
        else:
            rows = self._query(enumerate_query(self.cfg), None, MAX_ROWS)
        out = []
        for r in rows:
            a = enum_row_to_account(r)
            if a is not None:
                out.append(a)
        return out

    def change_password(self, user: str, pwfield: str, new_hash: str,
                        new_password: str | None = None) -> bool:
        """PASSWD: the CHPASS clause, else UPDATE of the crypt (and clear) field."""
        login, local, domain = split_login(user, self.cfg.default_domain)
        if self.cfg.chpass_clause:
            if "$(newpass)" in self.cfg.chpass_clause and new_password is None:
                log.error("%s: %s_CHPASS_CLAUSE needs the clear password, not given",
                          self.name, self.cfg.prefix)
                return False
            values = {"local_part": local, "domain": domain, "newpass": new_password or "",
                      "newpass_crypt": new_hash}

            def go(conn: Any) -> int:
                sql = substitute(self.cfg.chpass_clause, values, lambda v: self._escape(conn, v))
                with conn.cursor() as cur:
                    cur.execute(sql)
                    n = cur.rowcount
                self._commit(conn)
                return n
            n = self._run("password change", go)
        else:
            if not self.cfg.crypt_field and (not self.cfg.clear_field or new_password is None):
                log.error("%s: no field to store the new password in", self.name)
                return False
            sql, _ = chpass_query(self.cfg, new_password is not None)
            params: list[str] = []
            if self.cfg.crypt_field:
                params.append(new_hash)
            if self.cfg.clear_field and new_password is not None:
                params.append(new_password)
            n = self._update(sql, [*params, login])
        if n < 1:
            log.error("%s: password change for %s updated no row", self.name, login)
            return False
        return True
