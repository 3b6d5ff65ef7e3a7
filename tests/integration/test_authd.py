"""authdaemond as a real process: `python -m courier_authd -C <tmp etc>`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from courier_authd.passwords import hash_password

from libcourier.authclient import (
    AuthTempFail,
    auth_enumerate,
    auth_login,
    auth_passwd,
    auth_pre,
)
from libcourier.userdb import compile_userdb, set_user

PW = hash_password("secret")


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def make_etc(tmp: Path, extra: str = "") -> Path:
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text(
        f'authmodulelist="authuserdb"\ndaemons=2\nauthdaemonvar=../var/run/authdaemon\n{extra}')
    set_user(etc / "userdb", "bob@example.com",
             {"uid": "1000", "gid": "1000", "home": str(tmp / "bob"), "systempw": PW,
              "options": "disableimap=0"})
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
    return etc


class Daemon:
    def __init__(self, etc: Path):
        self.etc = etc
        self.sock = etc.parent / "var/run/authdaemon/socket"
        self.pidfile = etc.parent / "var/run/authdaemond.pid"
        self.log = open(etc.parent / "authd.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: self.pidfile.exists() or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.logtext()

    def logtext(self) -> str:
        return (self.etc.parent / "authd.log").read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(make_etc(tmp_path, 'DEFAULTOPTIONS="disableshared=1"\n'))
    yield d
    d.stop()


def raw(sock: Path, data: bytes, timeout=5.0, half_close=False) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
            if out.endswith(b"\n.\n") or out == b"FAIL\n":
                break
        return out


def test_login_pre_enumerate(daemon):
    pid = int(daemon.pidfile.read_text())
    assert pid == daemon.proc.pid
    assert oct(os.stat(daemon.sock).st_mode & 0o777) == "0o666"
    assert oct(os.stat(daemon.sock.parent).st_mode & 0o777) == "0o750"
    info = auth_login(daemon.sock, "imap", "Bob@example.com", "secret", remote_ip="192.0.2.1")
    assert info is not None and info.uid == 1000 and info.address == "bob@example.com"
    assert info.options == {"disableimap": "0", "disableshared": "1"}
    assert auth_login(daemon.sock, "imap", "bob@example.com", "wrong") is None
    assert auth_login(daemon.sock, "imap", "nobody", "secret") is None
    assert auth_pre(daemon.sock, "courier", "bob@example.com").home.endswith("/bob")
    assert auth_pre(daemon.sock, "courier", "nobody") is None
    assert [e[0] for e in auth_enumerate(daemon.sock)] == ["bob@example.com"]
    assert auth_passwd(daemon.sock, "imap", "bob@example.com", "secret", "fresh")
    assert auth_login(daemon.sock, "imap", "bob@example.com", "fresh") is not None


def test_raw_protocol_bytes(daemon):
    """What Courier's own client library writes, byte for byte, and what it reads."""
    reply = raw(daemon.sock, b"TCPREMOTEIP=::1\nAUTH 34\nimap\nlogin\nbob@example.com\nsecret\n")
    assert reply == (b"UID=1000\nGID=1000\nHOME=" + str(daemon.etc.parent / "bob").encode() +
                     b"\nADDRESS=bob@example.com\nPASSWD=" + PW.encode() +
                     b"\nOPTIONS=disableimap=0,disableshared=1\n.\n")
    assert raw(daemon.sock, b"PRE . courier nobody\n") == b"FAIL\n"
    assert raw(daemon.sock, b"BOGUS\n") == b"FAIL\n"
    assert raw(daemon.sock, b"AUTH 5\nim", half_close=True) == b""  # client hangs up mid-request: no reply
    assert raw(daemon.sock, b"X" * 20000 + b"\n") == b"FAIL\n"
    enum = raw(daemon.sock, b"ENUMERATE\n")
    assert enum.startswith(b"# authuserdb\n\nbob@example.com\t1000\t1000\t") and enum.endswith(b"\n.\n")
    # still serving after all that
    assert auth_pre(daemon.sock, "courier", "bob@example.com") is not None


def test_silent_client_does_not_block_others(daemon):
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(daemon.sock))  # holds one of the two workers
        for _ in range(5):
            assert auth_pre(daemon.sock, "courier", "bob@example.com", timeout=5) is not None


def test_sighup_reload_and_userdb_change(daemon):
    etc = daemon.etc
    set_user(etc / "userdb", "carol", {"uid": "1001", "gid": "1001", "home": "/c",
                                       "systempw": hash_password("cpw")})
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")
    (etc / "authdaemonrc").write_text(
        'authmodulelist="authuserdb"\ndaemons=3\nauthdaemonvar=../var/run/authdaemon\n'
        'DEFAULTOPTIONS="group=staff"\n')
    old = {p.pid for p in daemon.workers()}
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: len({p.pid for p in daemon.workers()} - old) == 3), daemon.logtext()
    info = auth_login(daemon.sock, "pop3", "carol", "cpw")
    assert info is not None and info.options == {"group": "staff"}
    # a bad config on SIGHUP is logged and the running one kept
    (etc / "authdaemonrc").write_text("daemons=many\n")
    daemon.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload failed" in daemon.logtext())
    assert auth_pre(daemon.sock, "courier", "carol") is not None


def test_dead_worker_is_replaced(daemon):
    assert wait_for(lambda: len(daemon.workers()) == 2)
    victim = daemon.workers()[0]
    victim.kill()
    assert wait_for(lambda: len(daemon.workers()) == 2 and
                    victim.pid not in {p.pid for p in daemon.workers()})
    assert auth_pre(daemon.sock, "courier", "bob@example.com") is not None


def test_sigterm_leaves_nothing(tmp_path):
    d = Daemon(make_etc(tmp_path))
    assert wait_for(lambda: len(d.workers()) == 2)
    procs = [psutil.Process(d.proc.pid), *d.workers()]
    d.stop()
    assert d.proc.returncode == 0
    gone, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive
    assert not d.sock.exists() and not d.pidfile.exists()
    with pytest.raises(AuthTempFail):
        auth_pre(d.sock, "courier", "bob@example.com")


def test_bad_config_exits_1_with_file_line(tmp_path):
    etc = make_etc(tmp_path, "authmodulelist=authnosuch\n")
    r = subprocess.run([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert f"{etc / 'authdaemonrc'}:4:" in r.stderr and "authnosuch" in r.stderr
    (etc / "authdaemonrc").write_text("daemons=2\nAUTH_THROTTLE_DELAY=soon\n")
    r = subprocess.run([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and f"{etc / 'authdaemonrc'}:2:" in r.stderr


def test_authtest_tool(daemon, capsys):
    from courier_authd.authtest import main as authtest
    assert authtest(["-C", str(daemon.etc), "-s", "imap", "bob@example.com", "secret"]) == 0
    out = capsys.readouterr().out
    assert "Authentication succeeded." in out and "(uid 1000, gid 1000)" in out
    assert f"Encrypted Password: {PW}" in out
    assert authtest(["-C", str(daemon.etc), "bob@example.com", "nope"]) == 1
    assert "Authentication FAILED" in capsys.readouterr().err
