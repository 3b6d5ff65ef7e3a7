"""authpgsql / authmysql without a server: Courier's rc format, the keys, the
queries built from them, the $(...) substitutions and escaping, rows to accounts."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_authd.authmysql import connect_args
from courier_authd.authpgsql import conninfo
from courier_authd.authrc import parse_authrc, read_authrc
from courier_authd.modules import Account
from courier_authd.passwords import hash_password
from courier_authd.sqlcommon import (
    chpass_query,
    enum_row_to_account,
    enumerate_query,
    load_sql_config,
    password_matches,
    row_to_account,
    select_query,
    split_login,
    substitute,
)

from libcourier.config import ConfigError

DEFAULTS = Path(__file__).resolve().parents[2] / "libcourier" / "control" / "defaults"


def rc(text: str):
    return parse_authrc(text, "authpgsqlrc")


# -- the file format -----------------------------------------------------------------------

def test_key_value_comments_and_continuations():
    r = rc("# comment\n\nPGSQL_USER_TABLE\tpasswd\n"
           "PGSQL_SELECT_CLAUSE  SELECT a, \\\n     b \\\n  FROM t\n"
           "EMPTY\n")
    assert r.get("PGSQL_USER_TABLE") == "passwd"
    # The backslash-newline joins the lines with white space (SQL does not mind how much).
    assert r.get("PGSQL_SELECT_CLAUSE").split() == "SELECT a, b FROM t".split()
    assert "\\" not in r.get("PGSQL_SELECT_CLAUSE")
    assert r.get("EMPTY") == "" and r.get("MISSING", "x") == "x"
    assert r.entries["PGSQL_SELECT_CLAUSE"].line == 4


@pytest.mark.parametrize("text, line", [
    ("A 1\nA 2\n", 2),                 # a key set twice
    ("# ok\nKEY=value\n", 2),          # shell syntax is not this format
    ("\n\n  -bad value\n", 3),
])
def test_bad_lines_have_file_and_line(text, line):
    with pytest.raises(ConfigError) as e:
        rc(text)
    assert e.value.path == "authpgsqlrc" and e.value.line == line


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_authrc(tmp_path / "authpgsqlrc")


@pytest.mark.parametrize("name, prefix", [("authpgsqlrc", "PGSQL"), ("authmysqlrc", "MYSQL")])
def test_shipped_files_load(name, prefix):
    r = read_authrc(DEFAULTS / name)
    cfg = load_sql_config(r, prefix)
    assert cfg.user_table == "passwd" and cfg.crypt_field == "crypt"
    assert cfg.login_field == "id" and not cfg.select_clause


def test_shipped_pgsql_connection():
    info = conninfo(read_authrc(DEFAULTS / "authpgsqlrc"))
    assert "host=localhost" in info and "dbname=mail" in info and "connect_timeout=10" in info


# -- keys ----------------------------------------------------------------------------------

BASE = "PGSQL_USER_TABLE users\nPGSQL_CRYPT_PWFIELD pw\n"


def test_defaults_and_fields():
    cfg = load_sql_config(rc(BASE + "DEFAULT_DOMAIN example.com\nPGSQL_QUOTA_FIELD q\n"), "PGSQL")
    assert (cfg.uid_field, cfg.gid_field, cfg.login_field, cfg.home_field) == \
        ("uid", "gid", "id", "home")
    assert cfg.default_domain == "example.com" and cfg.quota_field == "q"


def test_unknown_substitution_is_refused_with_line():
    with pytest.raises(ConfigError) as e:
        load_sql_config(rc(BASE + "PGSQL_SELECT_CLAUSE SELECT 1 WHERE x='$(user)'\n"), "PGSQL")
    assert e.value.line == 3 and "$(user)" in str(e.value)
    with pytest.raises(ConfigError, match=r"\$\(service\)"):
        load_sql_config(rc(BASE + "PGSQL_CHPASS_CLAUSE UPDATE t SET a='$(service)'\n"), "PGSQL")


def test_table_and_password_field_needed():
    with pytest.raises(ConfigError, match="USER_TABLE"):
        load_sql_config(rc("PGSQL_CRYPT_PWFIELD pw\n"), "PGSQL")
    with pytest.raises(ConfigError, match="CRYPT_PWFIELD or PGSQL_CLEAR_PWFIELD"):
        load_sql_config(rc("PGSQL_USER_TABLE t\n"), "PGSQL")
    # A custom SELECT clause needs neither.
    load_sql_config(rc("PGSQL_SELECT_CLAUSE SELECT 1\n"), "PGSQL")


def test_pgsql_old_keys_and_bad_connection_string():
    info = conninfo(rc("PGSQL_HOST db.example\nPGSQL_PORT 5433\nPGSQL_USERNAME u\n"
                       "PGSQL_PASSWORD p w\nPGSQL_OPT 0\nPGSQL_DATABASE mail\n"))
    assert "host=db.example" in info and "port=5433" in info and "dbname=mail" in info
    assert "password='p w'" in info and "options" not in info
    with pytest.raises(ConfigError) as e:
        conninfo(rc("\nPGSQL_CONNECTION host='unterminated\n"))
    assert e.value.line == 2


def test_mysql_connect_args():
    a = connect_args(parse_authrc("MYSQL_SERVER db.example\nMYSQL_USERNAME u\nMYSQL_PASSWORD p\n"
                                  "MYSQL_PORT 0\nMYSQL_DATABASE mail\nMYSQL_SOCKET /tmp/s\n"
                                  "MYSQL_CHARACTER_SET latin1\n", "authmysqlrc"))
    assert (a["host"], a["port"], a["user"], a["database"], a["unix_socket"], a["charset"]) == \
        ("db.example", 3306, "u", "mail", "/tmp/s", "latin1")
    with pytest.raises(ConfigError) as e:
        connect_args(parse_authrc("MYSQL_PORT http\n", "authmysqlrc"))
    assert e.value.line == 1
    with pytest.raises(ConfigError, match="does not exist"):
        connect_args(parse_authrc("MYSQL_SSL_CACERT /nonexistent/ca.pem\n", "authmysqlrc"))


# -- queries -------------------------------------------------------------------------------

def test_select_query_binds_the_login():
    cfg = load_sql_config(rc(BASE + "PGSQL_WHERE_CLAUSE active = 1\n"), "PGSQL")
    sql = select_query(cfg)
    assert sql.startswith("SELECT id, pw, '', uid, gid, home, '', '', '', '', '' FROM users ")
    assert sql.endswith("WHERE id = %s AND (active = 1)")
    assert enumerate_query(cfg) == "SELECT id, uid, gid, home, '', '' FROM users WHERE (active = 1)"


def test_chpass_query_sets_crypt_and_clear():
    cfg = load_sql_config(rc(BASE + "PGSQL_CLEAR_PWFIELD cl\n"), "PGSQL")
    assert chpass_query(cfg, True) == ("UPDATE users SET pw = %s, cl = %s WHERE id = %s", 2)
    assert chpass_query(cfg, False) == ("UPDATE users SET pw = %s WHERE id = %s", 1)


def test_split_login_default_domain():
    assert split_login("bob", "example.com") == ("bob@example.com", "bob", "example.com")
    assert split_login("bob@x.org", "example.com") == ("bob@x.org", "bob", "x.org")
    assert split_login("bob", "") == ("bob", "bob", "")


def pg_escape(v: str) -> str:   # standard_conforming_strings: only quotes double
    return v.replace("'", "''")


def test_substitution_escapes_every_value():
    clause = "SELECT * FROM t WHERE u='$(local_part)' AND d='$(domain)' AND s='$(service)'"
    sql = substitute(clause, {"local_part": "x' OR '1'='1", "domain": "d", "service": "imap"},
                     pg_escape)
    assert sql == "SELECT * FROM t WHERE u='x'' OR ''1''=''1' AND d='d' AND s='imap'"


# -- rows ----------------------------------------------------------------------------------

def test_row_to_account_full_and_short():
    a = row_to_account(("a@x", "$6$h", "clear", 10, "20", "/h", "/h/Md", "5S", "Alice", "o=1",
                        "| prog"), "a@x")
    assert (a.address, a.uid, a.gid, a.home, a.maildir, a.quota, a.fullname) == \
        ("a@x", 10, 20, "/h", "/h/Md", "5S", "Alice")
    assert a.options == "o=1,defaultdelivery=| prog"
    assert a.passwords == {"systempw": "$6$h", "clearpw": "clear"}
    # A custom clause may stop after home; empty strings are absent values.
    b = row_to_account(("b@x", "", "pw", 1, 1, "/b"), "b@x")
    assert b.maildir is None and b.quota is None and b.passwords == {"clearpw": "pw"}


@pytest.mark.parametrize("row", [
    ("a", "", "", "x", 1, "/h"),    # uid not a number
    ("a", "", "", 1, 1, ""),        # no home
    ("a", "", "", 1),               # too few columns
])
def test_bad_rows_are_ignored(row):
    assert row_to_account(row, "a") is None


def test_enum_rows():
    a = enum_row_to_account(("a@x", 1, 2, "/h", "", "sharedgroup=g"))
    assert (a.address, a.uid, a.gid, a.home, a.maildir, a.options) == \
        ("a@x", 1, 2, "/h", None, "sharedgroup=g")
    assert enum_row_to_account(("a@x", "u", 2, "/h")) is None


def test_crypt_wins_over_clear():
    h = hash_password("right")
    a = Account("a", 1, 1, "/h", passwords={"systempw": h, "clearpw": "other"})
    assert password_matches(a, "right") and not password_matches(a, "other")
    c = Account("a", 1, 1, "/h", passwords={"clearpw": "plain"})
    assert password_matches(c, "plain") and not password_matches(c, "Plain")
    assert not password_matches(Account("a", 1, 1, "/h"), "")
