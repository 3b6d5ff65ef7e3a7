"""As root: a system user in userdb gets mail delivered and logs in over IMAP;
the IMAP child serving it runs with the user's uids, and no SMTP session
child runs as root (DESIGN.md §2, INTERNALS.md "Privileges")."""

from __future__ import annotations

import imaplib
import os
import secrets
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from libcourier.userdb import compile_userdb, set_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
DELIVERY_WAIT = 20.0


@pytest.fixture
def system_user():
    name = f"ctest{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="courier-root-", dir="/tmp"))
    os.chmod(base, 0o755)
    home = base / name
    subprocess.run(["useradd", "-M", "-U", "-d", str(home), "-s", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd
        pw = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        for sub in ("", "tmp", "new", "cur"):
            d = home / "Maildir" / sub
            d.mkdir(mode=0o700)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        yield name, pw.pw_uid, pw.pw_gid, home
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _serving_child(listener_pid: int, client_port: int) -> psutil.Process:
    """The listener's child whose socket's peer is our client's port."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for child in psutil.Process(listener_pid).children(recursive=True):
            try:
                conns = getattr(child, "net_connections", None) or child.connections  # psutil < 6
                for c in conns(kind="tcp"):
                    if c.raddr and c.raddr.port == client_port:
                        return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no child of {listener_pid} serves client port {client_port}")


def test_system_user_delivery_and_imap_child_uids(running_instance, system_user):
    inst = running_instance
    name, uid, gid, home = system_user
    # Courier's way for a system account: a userdb entry with its own uid/gid.
    from passlib.hash import sha512_crypt
    set_user(inst.etc / "userdb", name, {
        "uid": str(uid), "gid": str(gid), "home": str(home), "mail": str(home / "Maildir"),
        "systempw": sha512_crypt.using(rounds=5000).hash("sys-secret")})
    compile_userdb(inst.etc / "userdb", inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")
    inst.courier("reload", "authdaemond")

    # Deliver to it (mx.test is in `locals`).
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=10) as s:
        # While this session is open, its child must not run as root.
        s.ehlo("client.example.net")
        smtp_child = _serving_child(inst.pid("esmtpd"), s.sock.getsockname()[1])
        assert 0 not in smtp_child.uids(), smtp_child.uids()
        assert 0 not in smtp_child.gids(), smtp_child.gids()
        s.sendmail("sender@example.net", [f"{name}@mx.test"],
                   b"Subject: to a system user\r\n\r\nhello\r\n")
    deadline = time.monotonic() + DELIVERY_WAIT
    new = home / "Maildir" / "new"
    while not list(new.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    files = list(new.iterdir())
    assert len(files) == 1, inst.logs()
    assert files[0].stat().st_uid == uid  # written by the user, not by root

    imap = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=10)
    try:
        assert imap.login(name, "sys-secret")[0] == "OK"
        assert imap.select("INBOX")[1] == [b"1"]
        child = _serving_child(inst.pid("imapd"), imap.sock.getsockname()[1])
        uids, gids = child.uids(), child.gids()
        assert (uids.real, uids.effective, uids.saved) == (uid, uid, uid)
        assert (gids.real, gids.effective, gids.saved) == (gid, gid, gid)
    finally:
        imap.logout()
