"""The issue's proof both ways, with Debian's Courier binaries (tests/integration/courier_ns.py):

- Courier's clients through our authd: /usr/sbin/authtest and authenumerate print the
  same bytes as ours; Courier's authtest changes a password (PASSWD) through us;
  Courier's imaplogin logs in with LOGIN and AUTHENTICATE CRAM-MD5 through us, then
  Courier's imapd serves the mailbox.
- Our clients through Courier's authdaemond: our imapd logs a user in whose userdb
  Courier's makeuserdb compiled and Courier's authdaemond checks.
"""

from __future__ import annotations

import base64
import hmac
import imaplib
import subprocess
import time

import psutil
import pytest
from courier_authd.authenumerate import main as our_authenumerate
from courier_authd.authtest import main as our_authtest
from courier_authd.passwords import hash_password
from courier_ns import (
    AUTHDAEMON_DIR,
    COURIER_IMAPD,
    IMAPLOGIN,
    CourierAuthdaemond,
    ns_argv,
    run_ns,
    skip_reason,
)

from libcourier.authclient import auth_login
from libcourier.userdb import compile_userdb, parse_userdb, set_user

USER, PASSWORD = "alice@example.com", "alice-secret"
IO_TIMEOUT = 10.0


def with_hmac(inst) -> None:
    src = inst.etc / "userdb"
    entry = next(e for e in parse_userdb(src) if e.name == USER)
    fields = dict(entry.fields)
    fields["hmac-md5pw"] = hash_password(PASSWORD, "hmac-md5")
    set_user(entry.path, USER, fields)
    compile_userdb(src, inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")


@pytest.fixture
def ours(new_instance):
    reason = skip_reason("/usr/sbin/authtest", "/usr/sbin/authenumerate")
    if reason:
        pytest.skip(reason)
    new_instance.adduser(USER, PASSWORD)
    new_instance.adduser("bob@example.net", "bob-secret")
    with_hmac(new_instance)
    new_instance.start("authdaemond")
    return new_instance


def courier_tool(inst, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_ns({inst.layout.authsocket.parent: AUTHDAEMON_DIR}, list(argv))


def test_courier_authtest_and_authenumerate_through_our_authd(ours, capsys):
    for args in (["-s", "imap", USER, PASSWORD], [USER], ["bob@example.net"]):
        theirs = courier_tool(ours, "/usr/sbin/authtest", *args)
        assert theirs.returncode == 0, theirs.stderr
        assert our_authtest(["-C", str(ours.etc), *args]) == 0
        assert capsys.readouterr().out == theirs.stdout
    bad = courier_tool(ours, "/usr/sbin/authtest", "-s", "imap", USER, "wrong")
    assert bad.returncode == 1 and "Authentication FAILED" in bad.stderr
    theirs = courier_tool(ours, "/usr/sbin/authenumerate")
    assert theirs.returncode == 0
    assert our_authenumerate(["-C", str(ours.etc)]) == 0
    assert capsys.readouterr().out == theirs.stdout
    assert sorted(line.split("\t")[0] for line in theirs.stdout.splitlines()) == \
        ["alice@example.com", "bob@example.net"]


def test_courier_authtest_changes_a_password_through_our_authd(ours):
    r = courier_tool(ours, "/usr/sbin/authtest", "-s", "imap", "bob@example.net", "bob-secret",
                     "bob-new")
    assert r.returncode == 0 and "Password change succeeded" in r.stderr, r.stdout + r.stderr
    sock = ours.layout.authsocket
    assert auth_login(sock, "imap", "bob@example.net", "bob-new") is not None
    assert auth_login(sock, "imap", "bob@example.net", "bob-secret") is None


class Lines:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def send(self, line: bytes) -> None:
        self.proc.stdin.write(line + b"\r\n")
        self.proc.stdin.flush()

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.startswith(tag):
                return out
        raise AssertionError(f"no {tag!r} line: {out!r}")


def courier_imap(inst) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": "1234",
           "TCPLOCALIP": "127.0.0.1", "IMAP_CAPABILITY": "IMAP4rev1 IDLE AUTH=CRAM-MD5"}
    return subprocess.Popen(
        ns_argv({inst.layout.authsocket.parent: AUTHDAEMON_DIR},
                [str(IMAPLOGIN), str(COURIER_IMAPD), "Maildir"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)


@pytest.fixture
def courier_imapd_ok(ours):
    reason = skip_reason(IMAPLOGIN, COURIER_IMAPD)
    if reason:
        pytest.skip(reason)
    return ours


def test_courier_imapd_logs_in_through_our_authd(courier_imapd_ok):
    inst = courier_imapd_ok
    p = courier_imap(inst)
    io = Lines(p)
    try:
        assert b"Courier-IMAP ready" in io.until(b"* OK")[-1]
        io.send(b"a LOGIN " + USER.encode() + b" wrong")
        assert io.until(b"a ")[-1].startswith(b"a NO")
        io.send(b"b LOGIN " + USER.encode() + b" " + PASSWORD.encode())
        assert io.until(b"b ")[-1].startswith(b"b OK")
        io.send(b"c SELECT INBOX")
        assert io.until(b"c ")[-1].startswith(b"c OK")
        io.send(b"d LOGOUT")
        io.until(b"d ")
    finally:
        p.stdin.close()
        p.wait(timeout=20)


def test_courier_imapd_cram_md5_through_our_authd(courier_imapd_ok):
    """Courier's imaplogin sends AUTH cram-md5 to authd: our parsing of its bytes."""
    p = courier_imap(courier_imapd_ok)
    io = Lines(p)
    try:
        io.until(b"* OK")
        io.send(b"a AUTHENTICATE CRAM-MD5")
        line = io.until(b"+ ")[-1]
        ch = base64.b64decode(line[2:].strip())
        digest = hmac.new(PASSWORD.encode(), ch, "md5").hexdigest()
        io.send(base64.b64encode(f"{USER} {digest}".encode()))
        assert io.until(b"a ")[-1].startswith(b"a OK")
        io.send(b"b LOGOUT")
        io.until(b"b ")
    finally:
        p.stdin.close()
        p.wait(timeout=20)


def test_our_imapd_logs_in_through_courier_authdaemond(new_instance, tmp_path):
    reason = skip_reason(str(CourierAuthdaemond.__init__.__globals__["AUTHDAEMOND"]),
                         "/usr/sbin/makeuserdb")
    if reason:
        pytest.skip(reason)
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    courier = CourierAuthdaemond(tmp_path / "courier", inst.etc / "userdb")
    try:
        # Our daemons ask Courier's socket: only authdaemonvar changes.
        with open(inst.etc / "authdaemonrc", "a") as f:
            f.write(f"authdaemonvar={courier.socket.parent}\n")
        assert inst.layout.authsocket == courier.socket
        assert auth_login(courier.socket, "imap", USER, PASSWORD) is not None
        inst.start("imapd")
        c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
        try:
            c.starttls(ssl_context=_unverified())
            with pytest.raises(imaplib.IMAP4.error):
                c.login(USER, "wrong")
            assert c.login(USER, PASSWORD)[0] == "OK"
            assert c.select("INBOX")[0] == "OK"
        finally:
            c.logout()
    finally:
        courier.stop()
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "authdaemond"
                and str(tmp_path) in " ".join(_cmd(p))]


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _unverified():
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
