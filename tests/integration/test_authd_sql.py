"""authpgsql and authmysql against real servers (PostgreSQL, MariaDB) started by
the test setup: the modules directly, authdaemond as a process, and IMAP/POP3/
SMTP logins of an instance whose accounts live in the database."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from authservers import (  # noqa: F401 - pytest fixtures
    Server,
    free_port,
    mariadb_server,
    my_admin,
    pg_admin,
    pg_server,
    start_mariadb,
    start_postgres,
)
from courier_authd.authmysql import MysqlModule
from courier_authd.authpgsql import PgsqlModule
from courier_authd.authrc import parse_authrc
from courier_authd.modules import BackendTempFail
from courier_authd.passwords import hash_password
from courier_authd.sqlcommon import SqlModule
from test_authd import Daemon

from libcourier.authclient import (
    AuthTempFail,
    auth_enumerate,
    auth_login,
    auth_passwd,
    auth_pre,
)

DB_USER, DB_PW = "courier", "db-secret"
CRYPT_USER, CRYPT_PW = "crypt@example.com", "crypt-secret"
CLEAR_USER, CLEAR_PW = "clear@example.com", "clear-secret"
QUOTE_USER, QUOTE_PW = "o'brien@example.com", "quote-secret"
TABLE = """CREATE TABLE passwd (
    id VARCHAR(255) PRIMARY KEY, crypt VARCHAR(255) NOT NULL DEFAULT '',
    clear VARCHAR(255) NOT NULL DEFAULT '', uid INT NOT NULL, gid INT NOT NULL,
    home VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL DEFAULT '',
    maildir VARCHAR(255) NOT NULL DEFAULT '', quota VARCHAR(64) NOT NULL DEFAULT '',
    disableimap CHAR(1) NOT NULL DEFAULT '0')"""


def setup_pg(srv: Server) -> None:
    with pg_admin(srv) as c:
        c.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PW}'")
        c.execute(f"CREATE DATABASE mail OWNER {DB_USER}")
    with pg_admin(srv, "mail") as c:
        c.execute(TABLE)
        c.execute(f"ALTER TABLE passwd OWNER TO {DB_USER}")


def setup_my(srv: Server) -> None:
    with my_admin(srv) as c, c.cursor() as cur:
        cur.execute("CREATE DATABASE mail")
        cur.execute(f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PW}'")
        cur.execute(f"GRANT ALL ON mail.* TO '{DB_USER}'@'127.0.0.1'")
        cur.execute("USE mail")
        cur.execute(TABLE)


@dataclass
class Backend:
    kind: str              # "pgsql" / "mysql"
    server: Server

    @property
    def prefix(self) -> str:
        return self.kind.upper()

    @property
    def module_name(self) -> str:
        return f"auth{self.kind}"

    @property
    def rcfile(self) -> str:
        return f"auth{self.kind}rc"

    def location(self, port: int | None = None) -> str:
        port = port or self.server.port
        if self.kind == "pgsql":
            return (f"PGSQL_CONNECTION host=127.0.0.1 port={port} user={DB_USER} "
                    f"password={DB_PW}\nPGSQL_DATABASE mail\n")
        return (f"MYSQL_SERVER 127.0.0.1\nMYSQL_PORT {port}\nMYSQL_USERNAME {DB_USER}\n"
                f"MYSQL_PASSWORD {DB_PW}\nMYSQL_DATABASE mail\n")

    def aux_expr(self) -> str:
        if self.kind == "pgsql":
            return "'disableimap=' || disableimap"
        return "CONCAT('disableimap=', disableimap)"

    def rc_text(self, extra: str = "", port: int | None = None, fields: bool = True) -> str:
        p = self.prefix
        text = self.location(port)
        if fields:
            text += (f"{p}_USER_TABLE passwd\n{p}_CRYPT_PWFIELD crypt\n{p}_CLEAR_PWFIELD clear\n"
                     f"{p}_NAME_FIELD name\n{p}_MAILDIR_FIELD maildir\n{p}_QUOTA_FIELD quota\n"
                     f"{p}_AUXOPTIONS_FIELD {self.aux_expr()}\n")
        return text + extra

    def module(self, extra: str = "", port: int | None = None, fields: bool = True) -> SqlModule:
        rc = parse_authrc(self.rc_text(extra, port, fields), self.rcfile)
        return PgsqlModule(rc) if self.kind == "pgsql" else MysqlModule(rc)

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "pgsql":
            with pg_admin(self.server, "mail") as c:
                cur = c.execute(sql, params or None)
                return list(cur.fetchall()) if cur.description else []
        with my_admin(self.server, "mail") as c, c.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall()) if cur.description else []

    def add(self, user: str, *, crypt: str = "", clear: str = "", home: str = "/home/x",
            uid: int = 1000, gid: int = 1000, quota: str = "", disableimap: str = "0") -> None:
        self.execute("INSERT INTO passwd (id, crypt, clear, uid, gid, home, quota, disableimap)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                     (user, crypt, clear, uid, gid, home, quota, disableimap))

    def reset(self) -> None:
        self.execute("DELETE FROM passwd")
        self.add(CRYPT_USER, crypt=hash_password(CRYPT_PW), home="/home/crypt", quota="100S")
        self.add(CLEAR_USER, clear=CLEAR_PW, home="/home/clear", disableimap="1")
        self.add(QUOTE_USER, clear=QUOTE_PW, home="/home/obrien")

    def kill_connections(self) -> int:
        """End every server session of DB_USER (as an admin or a restart would)."""
        if self.kind == "pgsql":
            rows = self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE usename = %s", (DB_USER,))
            return len(rows)
        ids = self.execute("SELECT id FROM information_schema.processlist WHERE user = %s",
                           (DB_USER,))
        for (i,) in ids:
            self.execute(f"KILL {int(i)}")
        return len(ids)


_ready: set[str] = set()


@pytest.fixture(params=["pgsql", "mysql"])
def sql(request) -> Backend:
    srv = request.getfixturevalue("pg_server" if request.param == "pgsql" else "mariadb_server")
    b = Backend(request.param, srv)
    if request.param not in _ready:
        (setup_pg if request.param == "pgsql" else setup_my)(srv)
        _ready.add(request.param)
    b.reset()
    return b


# -- the modules ---------------------------------------------------------------------------

def test_login_crypt_and_clear(sql):
    m = sql.module()
    a = m.authenticate(CRYPT_USER, CRYPT_PW)
    assert a is not None and (a.address, a.uid, a.home, a.quota) == \
        (CRYPT_USER, 1000, "/home/crypt", "100S")
    assert a.options == "disableimap=0"
    assert m.authenticate(CRYPT_USER, "wrong") is None
    assert m.authenticate(CRYPT_USER, "") is None
    assert m.authenticate(CLEAR_USER, CLEAR_PW).options == "disableimap=1"
    assert m.authenticate(CLEAR_USER, CLEAR_PW.upper()) is None
    assert m.authenticate(QUOTE_USER, QUOTE_PW) is not None
    assert m.authenticate("nobody@example.com", CRYPT_PW) is None


def test_default_domain(sql):
    m = sql.module("DEFAULT_DOMAIN example.com\n")
    assert m.authenticate("crypt", CRYPT_PW).address == CRYPT_USER


@pytest.mark.parametrize("custom", [False, True])
def test_sql_injection_in_the_login_does_nothing(sql, custom):
    extra = ""
    if custom:
        # The admin's clause pastes $(local_part)/$(domain): the values are escaped.
        extra = (f"{sql.prefix}_SELECT_CLAUSE SELECT id, crypt, clear, uid, gid, home, '', "
                 "quota, name, '' FROM passwd WHERE id = "
                 + ("'$(local_part)' || '@' || '$(domain)'" if sql.kind == "pgsql"
                    else "CONCAT('$(local_part)', '@', '$(domain)')") + "\n")
    m = sql.module(extra)
    for evil in ("x' OR '1'='1", "x' OR 1=1 -- @example.com", "x\\' OR 1=1 #@example.com",
                 "'; DELETE FROM passwd; --@example.com"):
        assert m.lookup(evil) is None
        assert m.authenticate(evil, CRYPT_PW) is None
    assert len(sql.execute("SELECT id FROM passwd")) == 3
    assert m.authenticate(QUOTE_USER, QUOTE_PW) is not None


def test_custom_select_with_service(sql):
    concat = ("'$(service)' || ':' || '$(local_part)'" if sql.kind == "pgsql"
              else "CONCAT('$(service)', ':', '$(local_part)')")
    m = sql.module(f"{sql.prefix}_SELECT_CLAUSE SELECT id, crypt, '', uid, gid, home, maildir, \\\n"
                   f"    quota, name, {concat} \\\n    FROM passwd WHERE id = '$(local_part)@$(domain)'\n",
                   fields=False)
    a = m.lookup(CRYPT_USER, "imap")
    assert a.options == "imap:crypt"
    assert m.authenticate(CRYPT_USER, CRYPT_PW, "pop3").options == "pop3:crypt"
    # No ENUMERATE clause with a custom SELECT: nobody is listed (as Courier).
    assert m.enumerate() == []


def test_enumerate(sql):
    names = sorted(a.address for a in sql.module().enumerate())
    assert names == sorted([CRYPT_USER, CLEAR_USER, QUOTE_USER])
    m = sql.module(f"{sql.prefix}_ENUMERATE_CLAUSE SELECT id, uid, gid, home, '', "
                   "'sharedgroup=x' FROM passwd WHERE clear <> ''\n")
    got = {a.address: a.options for a in m.enumerate()}
    assert got == {CLEAR_USER: "sharedgroup=x", QUOTE_USER: "sharedgroup=x"}


def test_passwd_default_update(sql):
    m = sql.module()
    assert m.passwd(CRYPT_USER, "wrong", "new-one") is False
    assert m.passwd("nobody@example.com", "x", "y") is None
    assert m.passwd(CRYPT_USER, CRYPT_PW, "new-one") is True
    crypt, clear = sql.execute("SELECT crypt, clear FROM passwd WHERE id = %s", (CRYPT_USER,))[0]
    assert crypt.startswith("$6$") and clear == "new-one"
    assert m.authenticate(CRYPT_USER, "new-one") is not None
    assert m.authenticate(CRYPT_USER, CRYPT_PW) is None


def test_passwd_chpass_clause(sql):
    m = sql.module(f"{sql.prefix}_CHPASS_CLAUSE UPDATE passwd SET clear = '$(newpass)', \\\n"
                   "    crypt = '$(newpass_crypt)' WHERE id = '$(local_part)@$(domain)'\n")
    new = "it's a \"new\" \\ one"
    assert m.passwd(QUOTE_USER, QUOTE_PW, new) is True
    crypt, clear = sql.execute("SELECT crypt, clear FROM passwd WHERE id = %s", (QUOTE_USER,))[0]
    assert clear == new and crypt.startswith("$6$")
    assert m.authenticate(QUOTE_USER, new) is not None


def test_reconnects_after_the_server_drops_the_connection(sql):
    m = sql.module()
    assert m.lookup(CRYPT_USER) is not None
    first = m._conn
    assert sql.kill_connections() >= 1
    time.sleep(0.2)   # let the server finish closing; the module must not care either way
    assert m.authenticate(CRYPT_USER, CRYPT_PW) is not None
    assert m._conn is not None and m._conn is not first


def test_server_not_listening_is_a_temporary_failure(sql):
    m = sql.module(port=free_port())
    with pytest.raises(BackendTempFail):
        m.authenticate(CRYPT_USER, CRYPT_PW)
    with pytest.raises(BackendTempFail):
        m.enumerate()


def test_bad_query_is_a_temporary_failure_not_a_refusal(sql):
    m = sql.module(f"{sql.prefix}_WHERE_CLAUSE no_such_column = 1\n")
    with pytest.raises(BackendTempFail):
        m.authenticate(CRYPT_USER, CRYPT_PW)


# -- authdaemond ---------------------------------------------------------------------------

def write_etc(tmp: Path, b: Backend, rc_text: str) -> Path:
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text(f'authmodulelist="{b.module_name}"\ndaemons=2\n'
                                      "authdaemonvar=../var/run/authdaemon\n")
    (etc / b.rcfile).write_text(rc_text)
    (etc / b.rcfile).chmod(0o600)
    return etc


@pytest.fixture
def sql_daemon(sql, tmp_path) -> Iterator[tuple[Backend, Daemon]]:
    d = Daemon(write_etc(tmp_path, sql, sql.rc_text()))
    try:
        yield sql, d
    finally:
        d.stop()


def test_authd_login_passwd_enumerate(sql_daemon):
    b, d = sql_daemon
    info = auth_login(d.sock, "imap", CRYPT_USER, CRYPT_PW, remote_ip="192.0.2.1")
    assert info is not None and info.home == "/home/crypt" and info.quota == "100S"
    assert auth_login(d.sock, "imap", CRYPT_USER, "wrong") is None
    assert auth_login(d.sock, "imap", CLEAR_USER, CLEAR_PW).options == {"disableimap": "1"}
    assert auth_pre(d.sock, "courier", QUOTE_USER).home == "/home/obrien"
    assert sorted(e[0] for e in auth_enumerate(d.sock)) == \
        sorted([CRYPT_USER, CLEAR_USER, QUOTE_USER])
    assert auth_passwd(d.sock, "imap", CLEAR_USER, CLEAR_PW, "changed")
    assert auth_login(d.sock, "imap", CLEAR_USER, "changed") is not None
    assert not auth_passwd(d.sock, "imap", CLEAR_USER, "wrong", "x")


def test_authd_server_stopped_is_temporary(sql, tmp_path):
    """A private server (so the shared one keeps running), stopped under a running authd."""
    srv = start_postgres() if sql.kind == "pgsql" else start_mariadb()
    try:
        (setup_pg if sql.kind == "pgsql" else setup_my)(srv)
        own = Backend(sql.kind, srv)
        own.add(CRYPT_USER, crypt=hash_password(CRYPT_PW), home="/home/crypt")
        d = Daemon(write_etc(tmp_path, own, own.rc_text()))
        try:
            assert auth_login(d.sock, "imap", CRYPT_USER, CRYPT_PW) is not None
            srv.pause()
            for _ in range(3):   # every worker, with or without an open connection
                with pytest.raises(AuthTempFail):
                    auth_login(d.sock, "imap", CRYPT_USER, CRYPT_PW)
            with pytest.raises(AuthTempFail):
                auth_pre(d.sock, "courier", CRYPT_USER)
        finally:
            d.stop()
    finally:
        srv.stop()


def test_authd_refuses_a_broken_rc_file_with_line(sql, tmp_path):
    import subprocess
    import sys
    etc = write_etc(tmp_path, sql, sql.rc_text(f"{sql.prefix}_SELECT_CLAUSE SELECT '$(bogus)'\n"))
    r = subprocess.run([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    n = len(sql.rc_text().splitlines()) + 1
    assert f"{sql.rcfile}:{n}:" in r.stderr and "$(bogus)" in r.stderr


# -- an instance: IMAP, POP3, SMTP AUTH ----------------------------------------------------

USER, USERDB_PW, DB_LOGIN_PW = "carol@example.org", "userdb-secret", "carol-db-secret"


def instance_with_sql(inst, b: Backend, rc_text: str) -> None:
    """carol's maildir made by adduser; her account (same uid/gid/home) in the database
    with another password; authmodulelist names only the SQL module."""
    inst.adduser(USER, USERDB_PW)
    md = inst.maildir(USER)
    st = md.stat()
    b.add(USER, crypt=hash_password(DB_LOGIN_PW), home=str(md.parent), uid=st.st_uid,
          gid=st.st_gid)
    rc = inst.etc / "authdaemonrc"
    text = rc.read_text().replace('authmodulelist="authuserdb"',
                                  f'authmodulelist="{b.module_name}"')
    assert b.module_name in text
    rc.write_text(text)
    (inst.etc / b.rcfile).write_text(rc_text)
    (inst.etc / b.rcfile).chmod(0o600)


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def test_imap_pop3_smtp_logins_from_the_database(sql, new_instance):
    inst = new_instance
    instance_with_sql(inst, sql, sql.rc_text())
    inst.start("authdaemond", "imapd", "pop3d", "esmtpd-msa")
    with imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30) as im:
        with pytest.raises(imaplib.IMAP4.error):
            im.login(USER, USERDB_PW)   # userdb is no longer asked
    with imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30) as im:
        im.login(USER, DB_LOGIN_PW)
        assert im.select("INBOX")[0] == "OK"
        im.logout()
    p = poplib.POP3("127.0.0.1", inst.port("pop3"), timeout=30)
    try:
        p.user(USER)
        p.pass_(DB_LOGIN_PW)
        assert p.stat() == (0, 0)
    finally:
        p.quit()
    with smtplib.SMTP("127.0.0.1", inst.port("submission"), timeout=30) as s:
        s.starttls(context=_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(USER, "wrong")
        s.login(USER, DB_LOGIN_PW)


def test_imap_pop3_smtp_say_try_later_when_the_database_is_down(sql, new_instance):
    inst = new_instance
    instance_with_sql(inst, sql, sql.rc_text(port=free_port()))
    inst.start("authdaemond", "imapd", "pop3d", "esmtpd-msa")
    im = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30)
    try:
        typ, data = im._simple_command("LOGIN", USER, im._quote(DB_LOGIN_PW))
        assert typ == "NO" and b"[UNAVAILABLE]" in data[0]
    finally:
        im.shutdown()
    p = poplib.POP3("127.0.0.1", inst.port("pop3"), timeout=30)
    try:
        p.user(USER)
        with pytest.raises(poplib.error_proto) as e:
            p.pass_(DB_LOGIN_PW)
        assert b"-ERR" in e.value.args[0] and b"[SYS/TEMP]" in e.value.args[0]
    finally:
        p.close()
    with smtplib.SMTP("127.0.0.1", inst.port("submission"), timeout=30) as s:
        s.starttls(context=_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(USER, DB_LOGIN_PW)
        assert 400 <= e.value.smtp_code < 500


def test_authd_cram_md5_with_clear_passwords(sql_daemon):
    """*_CLEAR_PWFIELD makes CRAM possible (as authlib says): authd publishes it and
    verifies a CRAM-MD5 response against the clear column; crypt-only rows cannot."""
    import base64
    import hashlib
    import hmac

    from libcourier.authclient import auth_cram, verifiable_mechanisms
    b, d = sql_daemon
    assert "CRAM-MD5" in verifiable_mechanisms(d.sock)
    challenge = b"<1896.697170952@postoffice.example.net>"

    def resp(user: str, pw: str) -> str:
        digest = hmac.new(pw.encode(), challenge, hashlib.md5).hexdigest()
        return base64.b64encode(f"{user} {digest}".encode()).decode()
    ch = base64.b64encode(challenge).decode()
    info = auth_cram(d.sock, "imap", "cram-md5", ch, resp(CLEAR_USER, CLEAR_PW))
    assert info is not None and info.home == "/home/clear"
    assert auth_cram(d.sock, "imap", "cram-md5", ch, resp(CLEAR_USER, "wrong")) is None
    assert auth_cram(d.sock, "imap", "cram-md5", ch, resp(CRYPT_USER, CRYPT_PW)) is None


def test_mysql_escaping_follows_no_backslash_escapes(request):
    """Under sql_mode NO_BACKSLASH_ESCAPES a backslash is an ordinary character, so the
    escaping must double quotes instead (as mysql_real_escape_string does)."""
    b = Backend("mysql", request.getfixturevalue("mariadb_server"))
    if "mysql" not in _ready:
        setup_my(b.server)
        _ready.add("mysql")
    b.reset()
    old = b.execute("SELECT @@GLOBAL.sql_mode")[0][0]
    b.execute("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    try:
        m = b.module("MYSQL_SELECT_CLAUSE SELECT id, crypt, clear, uid, gid, home FROM passwd "
                     "WHERE id = CONCAT('$(local_part)', '@', '$(domain)')\n")
        for evil in ("x\\' OR 1=1 -- @example.com", "x\\' OR '1'='1@example.com"):
            assert m.lookup(evil) is None
        assert m.authenticate(QUOTE_USER, QUOTE_PW) is not None
        # The mode is the server's: quotes doubled, the backslash left alone.
        assert m._escape(m._connection(), "a'b\\c") == "a''b\\c"
    finally:
        b.execute("SET GLOBAL sql_mode = %s", (old,))
