"""Real database and directory servers for the authd backend tests.

Each server is started once per test run (session fixtures) in its own temp dir
on 127.0.0.1 and a free port, as an unprivileged account when we are root
(postgres / mysql / openldap: the servers refuse root), and stopped by PID at
the end. A missing binary skips the tests that need it, with the reason.

Import the fixtures into a test module: `from authservers import pg_server`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
START_TIMEOUT = 60.0    # a loaded CI machine can be slow to initialise a database
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    detail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{detail}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """One started server process: stop() signals it by PID and waits."""

    name: str
    root: Path
    port: int
    proc: subprocess.Popen | None = None
    stop_signal: int = signal.SIGTERM
    startup_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)     # how to start it again (restart)
    popen: dict = field(default_factory=dict)

    def restart(self) -> None:
        """Start the paused server again, same data, same port."""
        self.pause()
        with open(self.root / "restart.log", "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.root, stdout=out,
                                         stderr=subprocess.STDOUT, **self.popen)
        wait_until(lambda: port_open(self.port), START_TIMEOUT, self.name, self.proc,
                   self.root / "restart.log")

    def pause(self) -> None:
        """Stop the server, keeping its data (tests of "server down")."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.pause()
        shutil.rmtree(self.root, ignore_errors=True)


def _run_as(account: str) -> dict:
    """Popen arguments that start the child as `account` when we are root."""
    if not IS_ROOT:
        return {}
    pw = pwd.getpwnam(account)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": str(Path("/tmp")), "USER": account,
                    "LOGNAME": account}}


def _tempdir(prefix: str, owner: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    if IS_ROOT:
        pw = pwd.getpwnam(owner)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o755)
    return d


def _need(binary: str | None, what: str) -> str:
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip(f"{what} not installed (Debian package needed for this test)")
    return binary


# -- PostgreSQL ----------------------------------------------------------------------------

def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def start_postgres() -> Server:
    initdb = _need(pg_bin("initdb"), "PostgreSQL (initdb)")
    postgres = _need(pg_bin("postgres"), "PostgreSQL (postgres)")
    t0 = time.monotonic()
    root = _tempdir("courier-pg-", "postgres")
    run = _run_as("postgres")
    data = root / "data"
    r = subprocess.run([initdb, "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"],
                       cwd=root, capture_output=True, text=True, timeout=START_TIMEOUT, **run)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
    port = free_port()
    log = root / "postgres.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [postgres, "-D", str(data), "-k", str(root), "-p", str(port), "-h", "127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, **run)
    srv = Server("postgres", root, port, proc, signal.SIGINT)   # SIGINT: fast shutdown

    def ready() -> bool:
        import psycopg
        try:
            psycopg.connect(host=str(root), port=port, user="postgres", dbname="postgres",
                            connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False
    try:
        wait_until(ready, START_TIMEOUT, "PostgreSQL", proc, log)
    except Exception:
        srv.stop()
        raise
    srv.startup_seconds = time.monotonic() - t0
    return srv


def pg_admin(srv: Server, dbname: str = "postgres"):
    """A superuser connection over the Unix socket (autocommit)."""
    import psycopg
    return psycopg.connect(host=str(srv.root), port=srv.port, user="postgres", dbname=dbname,
                           autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    srv = start_postgres()
    try:
        yield srv
    finally:
        srv.stop()


# -- MariaDB -------------------------------------------------------------------------------

def start_mariadb() -> Server:
    install = _need(shutil.which("mariadb-install-db") or shutil.which("mysql_install_db"),
                    "MariaDB (mariadb-install-db)")
    server = _need(shutil.which("mariadbd") or shutil.which("mysqld")
                   or ("/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None),
                   "MariaDB (mariadbd)")
    t0 = time.monotonic()
    root = _tempdir("courier-my-", "mysql")
    run = _run_as("mysql")
    data = root / "data"
    r = subprocess.run([install, "--no-defaults", f"--datadir={data}", "--skip-test-db",
                        "--auth-root-authentication-method=normal", "--skip-name-resolve"],
                       cwd=root, capture_output=True, text=True, timeout=START_TIMEOUT * 2, **run)
    if r.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {r.stdout}{r.stderr}")
    port = free_port()
    sock = root / "mysqld.sock"
    log = root / "mariadb.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
             "--bind-address=127.0.0.1", f"--pid-file={root / 'mariadbd.pid'}",
             f"--log-error={log}", "--skip-log-bin", "--skip-name-resolve",
             "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
             "--innodb-flush-log-at-trx-commit=0", "--performance-schema=OFF"],
            cwd=root, stdout=out, stderr=subprocess.STDOUT, **run)
    srv = Server("mariadb", root, port, proc, signal.SIGTERM, extra={"socket": str(sock)})

    def ready() -> bool:
        import pymysql
        try:
            pymysql.connect(unix_socket=str(sock), user="root", password="",
                            connect_timeout=2).close()
            return True
        except pymysql.MySQLError:
            return False
    try:
        wait_until(ready, START_TIMEOUT, "MariaDB", proc, log)
    except Exception:
        srv.stop()
        raise
    srv.startup_seconds = time.monotonic() - t0
    return srv


def my_admin(srv: Server, database: str | None = None):
    import pymysql
    return pymysql.connect(unix_socket=srv.extra["socket"], user="root", password="",
                           database=database, autocommit=True)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Server]:
    srv = start_mariadb()
    try:
        yield srv
    finally:
        srv.stop()


# -- OpenLDAP slapd ------------------------------------------------------------------------

BASEDN = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{BASEDN}"
ADMIN_PW = "ldap-admin-secret"

# The part of Courier's authldap schema the tests use (same OIDs as Courier's).
COURIER_SCHEMA = """
attributetype ( 1.3.6.1.4.1.10018.1.1.1 NAME 'mailbox'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.10018.1.1.2 NAME 'quota'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.10018.1.1.3 NAME 'clearPassword'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{128} )
attributetype ( 1.3.6.1.4.1.10018.1.1.8 NAME 'defaultdelivery'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )
attributetype ( 1.3.6.1.4.1.10018.1.1.9 NAME 'disableimap'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )
attributetype ( 1.3.6.1.4.1.10018.1.1.10 NAME 'disablepop3'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )
objectclass ( 1.3.6.1.4.1.10018.1.2.1 NAME 'CourierMailAccount' SUP top AUXILIARY
    MUST ( mail $ homeDirectory )
    MAY ( uidNumber $ gidNumber $ mailbox $ uid $ cn $ quota $ userPassword $
          clearPassword $ defaultdelivery $ disableimap $ disablepop3 ) )
"""


def make_cert(d: Path, owner: dict) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), key readable by `owner`."""
    openssl = _need(shutil.which("openssl"), "openssl")
    key, cert = d / "server.key", d / "server.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=START_TIMEOUT)
    if owner:
        os.chown(key, owner["user"], owner["group"])
    return key, cert


def start_slapd(ldif: str, tls: bool = False) -> Server:
    """slapd with an mdb database of `ldif` (loaded by slapadd before start); with
    `tls`, a self-signed certificate for StartTLS (extra["cacert"] is its file)."""
    slapd = _need(shutil.which("slapd") or "/usr/sbin/slapd", "OpenLDAP (slapd)")
    slapadd = _need(shutil.which("slapadd") or "/usr/sbin/slapadd", "OpenLDAP (slapadd)")
    schema = Path("/etc/ldap/schema")
    if not (schema / "nis.schema").exists():
        pytest.skip("OpenLDAP schema files (/etc/ldap/schema) not installed")
    modpath = next((p for p in ("/usr/lib/ldap", "/usr/lib/openldap", "/usr/libexec/openldap")
                    if glob.glob(f"{p}/back_mdb*")), None)
    t0 = time.monotonic()
    root = _tempdir("courier-ldap-", "openldap")
    run = _run_as("openldap")
    (root / "db").mkdir()
    (root / "courier.schema").write_text(COURIER_SCHEMA)
    conf = root / "slapd.conf"
    lines = [f"include {schema / n}.schema" for n in ("core", "cosine", "nis", "inetorgperson")]
    lines.append(f"include {root / 'courier.schema'}")
    if modpath:
        lines += [f"modulepath {modpath}", "moduleload back_mdb"]
    lines += [
        f"pidfile {root / 'slapd.pid'}",
        "database mdb", "maxsize 16777216",
        f'suffix "{BASEDN}"', f'rootdn "{ADMIN_DN}"', f"rootpw {ADMIN_PW}",
        f"directory {root / 'db'}",
        # Users may change their own passwords (LDAP_AUTHBIND's PASSWD binds as them).
        "access to attrs=userPassword,clearPassword by self write by anonymous auth "
        "by * none",
        "access to * by * read",
    ]
    extra = {}
    if tls:
        key, cert = make_cert(root, run)
        # Global directives: before the database section.
        lines[5:5] = [f"TLSCertificateFile {cert}", f"TLSCertificateKeyFile {key}"]
        extra["cacert"] = str(cert)
    conf.write_text("\n".join(lines) + "\n")
    (root / "tree.ldif").write_text(ldif)
    for p in [root / "db", conf, root / "tree.ldif", root / "courier.schema"]:
        if IS_ROOT:
            os.chown(p, run["user"], run["group"])
    r = subprocess.run([slapadd, "-f", str(conf), "-l", str(root / "tree.ldif")],
                       cwd=root, capture_output=True, text=True, timeout=START_TIMEOUT, **run)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"slapadd failed: {r.stdout}{r.stderr}")
    port = free_port()
    log = root / "slapd.log"
    with open(log, "wb") as out:
        # -d 0: stay in the foreground (so the PID we hold is slapd's) with no debug output.
        argv = [slapd, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"]
        proc = subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT, **run)
    srv = Server("slapd", root, port, proc, signal.SIGTERM, argv=argv, popen=run, extra=extra)
    try:
        wait_until(lambda: port_open(port), START_TIMEOUT, "slapd", proc, log)
    except Exception:
        srv.stop()
        raise
    srv.startup_seconds = time.monotonic() - t0
    return srv
