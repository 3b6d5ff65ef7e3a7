"""authmysql: accounts in MySQL/MariaDB, configured by Courier's authmysqlrc (PyMySQL).

Connection keys: MYSQL_SERVER, MYSQL_USERNAME, MYSQL_PASSWORD, MYSQL_DATABASE,
MYSQL_PORT (0: the default), MYSQL_SOCKET, MYSQL_OPT (client flags),
MYSQL_CHARACTER_SET, MYSQL_SSL_KEY/CERT/CACERT/CAPATH/CIPHERS. As with
libmysqlclient, MYSQL_SERVER "localhost" without MYSQL_SOCKET means the
server's default Unix socket. The field keys and clauses are sqlcommon's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pymysql
from courier_authd.authrc import AuthRc, read_authrc
from courier_authd.sqlcommon import SqlModule, load_sql_config

CONNECT_TIMEOUT = 10
IO_TIMEOUT = 30
DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock")
_SSL = {"MYSQL_SSL_KEY": "key", "MYSQL_SSL_CERT": "cert", "MYSQL_SSL_CACERT": "ca",
        "MYSQL_SSL_CAPATH": "capath", "MYSQL_SSL_CIPHERS": "cipher"}


def connect_args(rc: AuthRc) -> dict[str, Any]:
    host = rc.get("MYSQL_SERVER", "localhost")
    sock = rc.get("MYSQL_SOCKET")
    if not sock and host == "localhost":
        sock = next((s for s in DEFAULT_SOCKETS if os.path.exists(s)), "")
    args: dict[str, Any] = {
        "host": host,
        "user": rc.get("MYSQL_USERNAME"),
        "password": rc.get("MYSQL_PASSWORD"),
        "database": rc.get("MYSQL_DATABASE") or None,
        "port": rc.get_int("MYSQL_PORT", 0, 0, 65535) or 3306,
        "client_flag": rc.get_int("MYSQL_OPT", 0),
        "charset": rc.get("MYSQL_CHARACTER_SET") or "utf8mb4",
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": IO_TIMEOUT,
        "write_timeout": IO_TIMEOUT,
        "autocommit": True,
    }
    if sock:
        args["unix_socket"] = sock
    ssl = {param: rc.get(key) for key, param in _SSL.items() if rc.has(key)}
    for key in ("MYSQL_SSL_KEY", "MYSQL_SSL_CERT", "MYSQL_SSL_CACERT", "MYSQL_SSL_CAPATH"):
        if rc.has(key) and not os.path.exists(rc.get(key)):
            raise rc.error(key, f"{rc.get(key)} does not exist")
    if ssl:
        args["ssl"] = ssl
    return args


class MysqlModule(SqlModule):
    name = "authmysql"
    errors = (pymysql.MySQLError,)

    def __init__(self, rc: AuthRc):
        super().__init__(load_sql_config(rc, "MYSQL"))
        self.args = connect_args(rc)

    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(**self.args)

    def _escape(self, conn: pymysql.connections.Connection, value: str) -> str:
        # mysql_real_escape_string: backslash escapes, or '' under NO_BACKSLASH_ESCAPES.
        # PyMySQL's escape() follows the server's mode and adds the quotes: strip them.
        return conn.escape(value)[1:-1]


def load(etc: Path) -> MysqlModule:
    return MysqlModule(read_authrc(etc / "authmysqlrc"))
