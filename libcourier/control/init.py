"""`courier init DIR`: a self-contained instance (DESIGN.md §6, INTERNALS.md "Instance layout").

The config files are the shipped defaults (libcourier/control/defaults, Courier's file
names, keys and ##NAME markers) with the handful of keys an instance needs
changed in place, so an admin who knows /etc/courier finds the same files.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from libcourier.control.files import make_dir, write_atomic

# Standard ports are offset by --port-base (DESIGN.md §6).
PORT_OFFSETS = {"smtp": 25, "submission": 587, "smtps": 465, "imap": 143,
                "imaps": 993, "pop3": 110, "pop3s": 995}
CONFIG_FILES = ("courierd", "authdaemonrc", "esmtpd", "esmtpd-msa", "esmtpd-ssl",
                "imapd", "imapd-ssl", "pop3d", "pop3d-ssl")
CERT_FILES = ("esmtpd.pem", "imapd.pem", "pop3d.pem")
AUTH_RC_FILES = ("authpgsqlrc", "authmysqlrc", "authldaprc")
# Courier's DSN texts (courierd reads them at start; an admin may edit them).
DSN_FILES = ("dsnheader.txt", "dsnfooter.txt", "dsndelayed.txt", "dsnfailed.txt",
             "dsnrelayed.txt", "dsndelivered.txt", "dsnsubjectwarn.txt",
             "dsnsubjectnotice.txt")
# Every client of a test or demo instance is 127.0.0.1: Courier's per-IP
# limits (5 for SMTP) would refuse a benchmark's concurrent sessions.
LOOPBACK_MAXPERIP = "100"
MAX_HOSTNAME = 253
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


class InitError(Exception):
    pass


def template_dir() -> Path:
    """The shipped defaults: $COURIER_TEMPLATE_DIR, else the files installed with this package."""
    env = os.environ.get("COURIER_TEMPLATE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "defaults"


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:@,+-]*", value) and value:
        return value
    return '"' + re.sub(r'([\\"$`])', r"\\\1", value) + '"'


def set_keys(text: str, values: Mapping[str, str], name: str = "<template>") -> str:
    """Replace the value of each KEY=... line; every key must be present once."""
    lines = text.splitlines(keepends=True)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", line)
        if m and m.group(1) in values:
            key = m.group(1)
            if key in seen:
                raise InitError(f"{name}: {key} set twice in the template")
            seen.add(key)
            lines[i] = f"{key}={_quote(values[key])}\n"
    missing = set(values) - seen
    if missing:
        raise InitError(f"{name}: template lacks {', '.join(sorted(missing))}")
    return "".join(lines)


@dataclass(frozen=True, slots=True)
class Accounts:
    mailuser: str
    mailgroup: str
    mail_uid: int  # owner of DIR/mail: the uid/gid virtual users get
    mail_gid: int
    daemon_uid: int
    daemon_gid: int


def accounts() -> Accounts:
    """As root, Debian's courier accounts: daemon for the daemons, mail for the
    mailboxes (a mailbox is never served as root); otherwise the invoking user."""
    if os.geteuid() == 0:
        try:
            d = pwd.getpwnam("daemon")
            dg = grp.getgrnam("daemon")
            m = pwd.getpwnam("mail")
        except KeyError as e:
            raise InitError(f"running as root needs the accounts daemon and mail: {e}") from None
        return Accounts("daemon", "daemon", m.pw_uid, m.pw_gid, d.pw_uid, dg.gr_gid)
    uid, gid = os.geteuid(), os.getegid()
    return Accounts(pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name, uid, gid, uid, gid)


def config_values(etc: Path, port_base: int | None, acct: Accounts) -> dict[str, dict[str, str]]:
    """The keys `init` changes in each shipped file."""
    cert = {n: str(etc / n) for n in CERT_FILES}
    v: dict[str, dict[str, str]] = {
        "courierd": {"SPOOLDIR": "../var/spool", "RUNDIR": "../var/run", "LOGDIR": "../var/log",
                     "MAILUSER": acct.mailuser, "MAILGROUP": acct.mailgroup},
        "authdaemonrc": {"authdaemonvar": "../var/run/authdaemon",
                         # userdb lookups are fast; two workers are plenty for an instance.
                         "daemons": "2"},
        "esmtpd": {"TLS_CERTFILE": cert["esmtpd.pem"]},
        "esmtpd-msa": {},
        "esmtpd-ssl": {"TLS_CERTFILE": cert["esmtpd.pem"]},
        "imapd": {"TLS_CERTFILE": cert["imapd.pem"]},
        "imapd-ssl": {"TLS_CERTFILE": cert["imapd.pem"]},
        "pop3d": {"TLS_CERTFILE": cert["pop3d.pem"]},
        "pop3d-ssl": {"TLS_CERTFILE": cert["pop3d.pem"]},
    }
    if port_base is not None:
        p = {k: str(port_base + off) for k, off in PORT_OFFSETS.items()}
        addr = "127.0.0.1"
        for f in ("esmtpd", "imapd", "pop3d"):
            v[f].update(ADDRESS=addr, MAXPERIP=LOOPBACK_MAXPERIP)
        v["esmtpd"]["PORT"] = p["smtp"]
        v["esmtpd-msa"]["PORT"] = p["submission"]
        v["esmtpd-ssl"].update(SSLPORT=p["smtps"], SSLADDRESS=addr)
        v["imapd"]["PORT"] = p["imap"]
        v["imapd-ssl"].update(SSLPORT=p["imaps"], SSLADDRESS=addr)
        v["pop3d"]["PORT"] = p["pop3"]
        v["pop3d-ssl"].update(SSLPORT=p["pop3s"], SSLADDRESS=addr)
    return v


def _check_parents(path: Path, err: TextIO) -> None:
    """As root, the daemon account must be able to reach DIR (pytest's and
    mktemp's 0700 directories are a common trap)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            print(f"courier init: warning: {parent} is not searchable by others (mode "
                  f"{mode & 0o777:04o}); the daemon account cannot reach {path}", file=err)


def init(dest: Path, *, port_base: int | None = None, hostname: str | None = None,
         out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    dest = Path(dest).absolute()
    etc = dest / "etc"
    if etc.exists():
        raise InitError(f"{etc} exists: refusing to overwrite an instance")
    if port_base is not None and not 0 <= port_base <= 65535 - max(PORT_OFFSETS.values()):
        raise InitError(f"--port-base {port_base}: ports would fall outside 1-65535")
    hostname = (hostname or socket.getfqdn()).rstrip(".").lower()
    if not _HOSTNAME.fullmatch(hostname):
        raise InitError(f"--hostname {hostname!r} is not a host name")
    tdir = template_dir()
    if not (tdir / "courierd").is_file():
        raise InitError(f"shipped config templates not found in {tdir} "
                        "(set COURIER_TEMPLATE_DIR)")
    acct = accounts()
    root = os.geteuid() == 0
    # Import what we need from other parts before creating anything, so a
    # missing part leaves no half-made instance behind.
    from libcourier.tcpd.tls import make_self_signed
    from libcourier.userdb import compile_userdb

    dest.mkdir(parents=True, exist_ok=True)
    if root:
        os.chmod(dest, 0o755)
        _check_parents(dest, err)
    make_dir(etc, 0o755)
    try:
        values = config_values(etc, port_base, acct)
        for name in CONFIG_FILES:
            text = (tdir / name).read_text(encoding="utf-8")
            write_atomic(etc / name, set_keys(text, values[name], name), 0o644)
        write_atomic(etc / "me", hostname + "\n")
        write_atomic(etc / "defaultdomain", hostname + "\n")
        local_names = list(dict.fromkeys([hostname, "localhost"]))
        write_atomic(etc / "locals", "\n".join(local_names) + "\n")
        write_atomic(etc / "hosteddomains", (tdir / "hosteddomains").read_bytes())
        write_atomic(etc / "bofh", (tdir / "bofh").read_bytes())
        write_atomic(etc / "trustedusers", (tdir / "trustedusers").read_bytes())
        for name in DSN_FILES:
            write_atomic(etc / name, (tdir / name).read_bytes(), 0o644)
        # authlib's rc files, as Courier installs them: used once their module is in
        # authmodulelist; they will hold a database password, so not world-readable.
        for name in AUTH_RC_FILES:
            write_atomic(etc / name, (tdir / name).read_bytes(), 0o640)
        # userdb holds password hashes: 0600, as makeuserdb wants.
        write_atomic(etc / "userdb", b"", 0o600)
        compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
        # One key pair serves all three names (Courier's mk*cert make one each).
        make_self_signed(etc / CERT_FILES[0], hostname)
        os.chmod(etc / CERT_FILES[0], 0o600)
        for name in CERT_FILES[1:]:
            write_atomic(etc / name, (etc / CERT_FILES[0]).read_bytes(), 0o600)

        daemon = (acct.daemon_uid, acct.daemon_gid)
        var = dest / "var"
        make_dir(var, 0o755)
        make_dir(var / "spool", 0o750, daemon)
        for sub in ("tmp", "msgs"):
            make_dir(var / "spool" / sub, 0o750, daemon)
        make_dir(var / "run", 0o755)
        make_dir(var / "log", 0o755)
        make_dir(dest / "mail", 0o755, (acct.mail_uid, acct.mail_gid))
    except BaseException:
        # Leave no half-made etc/ that would make a retry refuse.
        shutil.rmtree(etc, ignore_errors=True)
        raise
    print(f"courier init: instance in {dest} (hostname {hostname}, daemons run as "
          f"{acct.mailuser}:{acct.mailgroup})", file=out)
    if port_base is not None:
        ports = ", ".join(f"{k} {port_base + off}" for k, off in PORT_OFFSETS.items())
        print(f"  ports on 127.0.0.1: {ports}", file=out)
    print(f"  next: courier adduser -C {etc} user@domain PASSWORD; courier start -C {etc}",
          file=out)
    return 0
