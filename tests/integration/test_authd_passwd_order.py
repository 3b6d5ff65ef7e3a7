"""PASSWD walks authmodulelist in order, as Courier's authdaemond does: a module that
does not know the user passes, the first that knows it decides (changed or refused)
and the same name in a later module is left alone. authuserdb against authpgsql /
authmysql (real servers started by the test setup), both orders, in-process and
through authdaemond."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_authd_sql as sqltests
from authservers import mariadb_server, pg_server  # noqa: F401 - pytest fixtures
from courier_authd.core import Authenticator
from courier_authd.modules import UserdbModule
from courier_authd.passwords import check_password, hash_password
from test_authd import Daemon
from test_authd_sql import CLEAR_PW, CLEAR_USER, Backend, write_etc

from libcourier.authclient import auth_login, auth_passwd
from libcourier.authproto import FAIL, OK, PasswdRequest
from libcourier.userdb import compile_userdb, parse_userdb, set_user

USERDB_PW = "userdb-secret"
_ready: set[str] = set()


@pytest.fixture(params=["pgsql", "mysql"])
def db(request) -> Backend:
    """The database with test_authd_sql's rows (its servers, set up once per run)."""
    srv = request.getfixturevalue("pg_server" if request.param == "pgsql" else "mariadb_server")
    b = Backend(request.param, srv)
    # The server fixtures imported here are this module's own servers (a fixture
    # imported into two modules is two fixtures): set each up once.
    if request.param not in _ready:
        (sqltests.setup_pg if request.param == "pgsql" else sqltests.setup_my)(srv)
        _ready.add(request.param)
    b.reset()
    return b


def userdb_etc(etc: Path) -> Path:
    """CLEAR_USER in userdb too, with a password of its own."""
    etc.mkdir(exist_ok=True)
    set_user(etc / "userdb", CLEAR_USER, {"uid": "1000", "gid": "1000", "home": "/home/udb",
                                          "systempw": hash_password(USERDB_PW)})
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
    return etc


def userdb_hash(etc: Path) -> str:
    return next(e for e in parse_userdb(etc / "userdb") if e.name == CLEAR_USER
                ).fields["systempw"]


def sql_clear(db) -> str:
    return db.execute("SELECT clear FROM passwd WHERE id = %s", (CLEAR_USER,))[0][0]


def passwd(auth: Authenticator, old: str, new: str) -> bytes | None:
    return auth.handle(PasswdRequest("imap", CLEAR_USER, old, new)).reply


def test_userdb_first_decides(db, tmp_path):
    etc = userdb_etc(tmp_path / "etc")
    auth = Authenticator([UserdbModule(etc), db.module()])
    # The database's password is not the one of the first module that knows the user:
    # refused, and the database row is not touched either.
    assert passwd(auth, CLEAR_PW, "via-sql") == FAIL
    assert sql_clear(db) == CLEAR_PW
    assert passwd(auth, USERDB_PW, "new-userdb") == OK
    assert check_password("new-userdb", userdb_hash(etc))
    assert sql_clear(db) == CLEAR_PW


def test_sql_first_decides(db, tmp_path):
    etc = userdb_etc(tmp_path / "etc")
    before = userdb_hash(etc)
    auth = Authenticator([db.module(), UserdbModule(etc)])
    assert passwd(auth, USERDB_PW, "via-userdb") == FAIL
    assert passwd(auth, CLEAR_PW, "new-sql") == OK
    assert sql_clear(db) == "new-sql"
    assert userdb_hash(etc) == before


def test_a_module_that_does_not_know_the_user_passes(db, tmp_path):
    etc = userdb_etc(tmp_path / "etc")
    auth = Authenticator([UserdbModule(etc), db.module()])
    db.add("only-sql@example.com", clear="pw-1")
    assert auth.handle(PasswdRequest("imap", "only-sql@example.com", "pw-1", "pw-2")).reply == OK
    assert db.execute("SELECT clear FROM passwd WHERE id = %s",
                       ("only-sql@example.com",))[0][0] == "pw-2"
    assert auth.handle(PasswdRequest("imap", "ghost@example.com", "x", "y")).reply == FAIL


@pytest.mark.parametrize("order", ["authuserdb {sql}", "{sql} authuserdb"])
def test_through_authdaemond(db, tmp_path, order):
    etc = write_etc(tmp_path, db, db.rc_text())
    userdb_etc(etc)
    modlist = order.format(sql=db.module_name)
    rc = etc / "authdaemonrc"
    rc.write_text(rc.read_text().replace(f'authmodulelist="{db.module_name}"',
                                         f'authmodulelist="{modlist}"'))
    d = Daemon(etc)
    try:
        userdb_first = modlist.startswith("authuserdb")
        old = USERDB_PW if userdb_first else CLEAR_PW
        other = CLEAR_PW if userdb_first else USERDB_PW
        assert not auth_passwd(d.sock, "imap", CLEAR_USER, other, "nope")
        assert auth_passwd(d.sock, "imap", CLEAR_USER, old, "changed-pw")
        info = auth_login(d.sock, "imap", CLEAR_USER, "changed-pw")
        assert info is not None
        assert info.home == ("/home/udb" if userdb_first else "/home/clear")
        assert (sql_clear(db) == CLEAR_PW) is userdb_first
    finally:
        d.stop()
