"""authpgsql: accounts in PostgreSQL, configured by Courier's authpgsqlrc (psycopg 3).

Where to connect: PGSQL_CONNECTION, a libpq connection string as Courier 0.69+
ships it ("host=... port=... user=... password=..."), plus PGSQL_DATABASE and
PGSQL_CHARACTER_SET. The keys of older authpgsqlrc files (PGSQL_HOST, PGSQL_PORT,
PGSQL_USERNAME, PGSQL_PASSWORD, PGSQL_OPT) are read too, so an old file works.
The field keys and clauses are sqlcommon's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.pq
from courier_authd.authrc import AuthRc, read_authrc
from courier_authd.sqlcommon import SqlModule, load_sql_config

CONNECT_TIMEOUT = 10   # seconds; libpq waits forever without one
QUERY_TIMEOUT_MS = 30_000
_OLD_KEYS = {"PGSQL_HOST": "host", "PGSQL_PORT": "port", "PGSQL_USERNAME": "user",
             "PGSQL_PASSWORD": "password", "PGSQL_OPT": "options"}


def conninfo(rc: AuthRc) -> str:
    base = rc.get("PGSQL_CONNECTION")
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(base) if base else {}
    except psycopg.ProgrammingError as e:
        raise rc.error("PGSQL_CONNECTION", f"not a libpq connection string: {e}") from None
    extra: dict[str, Any] = {}
    for key, param in _OLD_KEYS.items():
        v = rc.get(key)
        if v and not (key == "PGSQL_OPT" and v == "0"):
            extra[param] = v
    if rc.has("PGSQL_DATABASE"):
        extra["dbname"] = rc.get("PGSQL_DATABASE")
    if rc.has("PGSQL_CHARACTER_SET"):
        extra["client_encoding"] = rc.get("PGSQL_CHARACTER_SET")
    if "connect_timeout" not in parsed:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    return psycopg.conninfo.make_conninfo(base, **extra)


class PgsqlModule(SqlModule):
    name = "authpgsql"
    errors = (psycopg.Error,)

    def __init__(self, rc: AuthRc):
        super().__init__(load_sql_config(rc, "PGSQL"))
        self.conninfo = conninfo(rc)

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.conninfo, autocommit=True)
        # A stuck query must not hold a worker for ever.
        conn.execute(f"SET statement_timeout = {QUERY_TIMEOUT_MS}")
        return conn

    def _escape(self, conn: psycopg.Connection, value: str) -> str:
        # PQescapeStringConn, as authpgsql escapes what it pastes into the clauses.
        raw = psycopg.pq.Escaping(conn.pgconn).escape_string(value.encode("utf-8"))
        return bytes(raw).decode("utf-8")


def load(etc: Path) -> PgsqlModule:
    return PgsqlModule(read_authrc(etc / "authpgsqlrc"))
