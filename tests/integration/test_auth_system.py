"""authpwd, authshadow, authpam and authpipe: a shadow file written by the test, a PAM
service file with pam_pwdfile (root only), and an authpipe program (authpipe_prog.py)
through a real authd socket."""

from __future__ import annotations

import base64
import hmac
import os
import pwd
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from courier_authd.authpwd import PwdModule
from courier_authd.authshadow import ShadowModule, read_shadow
from courier_authd.core import Authenticator
from courier_authd.passwords import hash_password

from libcourier.authclient import (
    AuthTempFail,
    auth_cram,
    auth_enumerate,
    auth_login,
    auth_passwd,
    auth_pre,
)
from libcourier.authproto import FAIL, AuthRequest, PreRequest, login_authdata

HERE = Path(__file__).parent
NOBODY = pwd.getpwnam("nobody")


def login(a, user, pw, service="imap"):
    return a.handle(AuthRequest(service, "login", login_authdata(user, pw))).reply


def test_read_shadow(tmp_path):
    h = hash_password("pw")
    f = tmp_path / "shadow"
    f.write_text(f"root:*:19000:0:99999:7:::\nnobody:{h}:19000:0:99999:7:::\n"
                 f"old:{h}:19000:0:99999:7::19001:\nlocked::19000::::::\n")
    assert read_shadow("nobody", f) == h
    assert read_shadow("old", f, today=19000) == h
    assert read_shadow("old", f, today=19001) is None     # expired on that day
    assert read_shadow("locked", f) is None
    assert read_shadow("nob", f) is None
    with pytest.raises(Exception, match="missing"):
        read_shadow("nobody", tmp_path / "missing")


def test_shadow_and_pwd_modules(tmp_path):
    f = tmp_path / "shadow"
    f.write_text(f"nobody:{hash_password('nobody-pw')}:19000:0:99999:7:::\n")
    a = Authenticator([ShadowModule(f)])
    reply = login(a, "nobody", "nobody-pw")
    assert reply.startswith(f"UID={NOBODY.pw_uid}\nGID={NOBODY.pw_gid}\nHOME={NOBODY.pw_dir}\n"
                            .encode())
    assert login(a, "nobody", "wrong") == FAIL
    assert login(a, "root", "x") == FAIL                  # uid 0 is never a mail login
    assert a.handle(PreRequest(".", "imap", "nobody")).reply.startswith(b"UID=")
    # authpwd: passwd holds "x" here, so nobody can log in with it, but PRE works.
    p = Authenticator([PwdModule()])
    assert login(p, "nobody", "x") == FAIL
    assert p.handle(PreRequest(".", "imap", "nobody")).reply != FAIL
    assert PwdModule().lookup("root") is None
    assert all(x.uid != 0 for x in PwdModule().enumerate())


# -- PAM ---------------------------------------------------------------------------------

PAM_DIR = Path("/etc/pam.d")
PWDFILE_SO = [Path("/lib/x86_64-linux-gnu/security/pam_pwdfile.so"),
              Path("/usr/lib/x86_64-linux-gnu/security/pam_pwdfile.so"),
              Path("/lib/security/pam_pwdfile.so")]


@pytest.fixture
def pam_service(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("writing a PAM service file into /etc/pam.d needs root")
    if not any(p.exists() for p in PWDFILE_SO):
        pytest.skip("pam_pwdfile.so is not installed (Debian: libpam-pwdfile)")
    name = f"courier-py-test-{secrets.token_hex(4)}"
    pwdfile = tmp_path / "pwdfile"
    pwdfile.write_text(f"nobody:{hash_password('pam-secret', 'md5')}\n")
    svc = PAM_DIR / name
    svc.write_text(f"auth required pam_pwdfile.so pwdfile={pwdfile}\n"
                   "account required pam_permit.so\n")
    try:
        yield name
    finally:
        svc.unlink()


def test_pam_in_process(pam_service):
    from courier_authd.authpam import PamModule
    a = Authenticator([PamModule()])
    assert login(a, "nobody", "pam-secret", service=pam_service).startswith(
        f"UID={NOBODY.pw_uid}\n".encode())
    assert login(a, "nobody", "wrong", service=pam_service) == FAIL
    assert login(a, "no-such-user-xyz", "pam-secret", service=pam_service) == FAIL


def write_etc(tmp_path: Path, modules: str, extra: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "authdaemonrc").write_text(
        f'authmodulelist="{modules}"\ndaemons=2\nauthdaemonvar={tmp_path}/run/authdaemon\n'
        f"AUTH_THROTTLE_FAILURES=0\n{extra}")
    (etc / "courierd").write_text(f"RUNDIR={tmp_path}/run\nLOGDIR={tmp_path}/log\n")
    return etc


class Authd:
    def __init__(self, etc: Path, env: dict[str, str] | None = None):
        self.etc = etc
        self.sock = etc.parent / "run" / "authdaemon" / "socket"
        self.log = open(etc.parent / "authd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "courier_authd", "-C", str(etc)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20
        while not (self.sock.exists() and stat.S_ISSOCK(self.sock.stat().st_mode)):
            assert self.proc.poll() is None, self.logtext()
            assert time.monotonic() < deadline, "authd did not start"
            time.sleep(0.05)

    def logtext(self) -> str:
        self.log.flush()
        return (self.etc.parent / "authd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


def test_pam_through_authd(pam_service, tmp_path):
    d = Authd(write_etc(tmp_path, "authpam"))
    try:
        info = auth_login(d.sock, pam_service, "nobody", "pam-secret")
        assert info is not None and info.uid == NOBODY.pw_uid
        assert auth_login(d.sock, pam_service, "nobody", "bad") is None
    finally:
        d.stop()


# -- authpipe ----------------------------------------------------------------------------

def test_authpipe_through_authd(tmp_path):
    prog = tmp_path / "authProg"
    prog.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.path.insert(0, {str(HERE)!r})\n"
                    "runpy.run_path(" + repr(str(HERE / "authpipe_prog.py")) +
                    ", run_name='__main__')\n")
    prog.chmod(0o755)
    starts = tmp_path / "starts"
    etc = write_etc(tmp_path, "authpipe", f"PIPE_PROGRAM={prog}\n")
    d = Authd(etc, {"AUTHPIPE_STARTS": str(starts),
                    "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        info = auth_login(d.sock, "imap", "bob", "bobpw")
        assert info is not None and info.address == "bob@pipe.test" and info.uid == 1000
        assert auth_login(d.sock, "imap", "bob", "nope") is None
        assert auth_pre(d.sock, "courier", "bob").maildir == "/home/bob/Maildir"
        assert auth_pre(d.sock, "courier", "alice") is None
        assert [e[0] for e in auth_enumerate(d.sock)] == ["bob@pipe.test"]
        # CRAM goes to the program unchanged, as in Courier's authpipe.
        ch = b"<1.2@mx.test>"
        for secret, ok in ((b"bobpw", True), (b"nope", False)):
            resp = b"bob " + hmac.new(secret, ch, "md5").hexdigest().encode()
            info = auth_cram(d.sock, "imap", "cram-md5", base64.b64encode(ch).decode(),
                             base64.b64encode(resp).decode())
            assert (info is not None and info.address == "bob@pipe.test") is ok
        assert auth_passwd(d.sock, "imap", "bob", "bobpw", "new")
        assert not auth_passwd(d.sock, "imap", "bob", "wrong", "new")
        # The program exits on "temp": a temporary failure, never "bad password"...
        with pytest.raises(AuthTempFail):
            auth_login(d.sock, "imap", "temp", "x")
        # ... and the next request starts a fresh copy.
        for _ in range(4):
            assert auth_login(d.sock, "imap", "bob", "bobpw") is not None
        # Persistent: at most one start per worker plus the restart.
        n = len(starts.read_text().split())
        assert 1 <= n <= 3, n
    finally:
        d.stop()
