"""Real POP3 clients nobody here wrote against the instance's pop3d: fetchmail (keep
and delete, plain and STLS), mpop (plain and STLS, keep and delete), getmail6 and
poplib; fetchmail and mpop also over POP3S (pop3d-ssl's port). A missing client fails (apt-get install fetchmail mpop getmail6; .ci/run
installs them)."""

from __future__ import annotations

import os
import poplib
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

USER, PASSWORD = "alice@example.com", "alice-secret"
MSGS = [b"From: a@example.net\nSubject: one %d\n\nHello %d\n.leading dot\n" % (i, i)
        for i in range(3)]


def exe(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is required (apt-get install {name}; .ci/run installs it)"
    return path


def deliver(maildir: Path) -> None:
    st = maildir.stat()
    for i, m in enumerate(MSGS):
        tmp = maildir / "tmp" / f"t{i}"
        tmp.write_bytes(m)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, maildir / "new" / f"{1700000000 + i}.M{i}P9.mx.test,S={len(m)}")


def count(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / d)) for d in ("new", "cur"))


@pytest.fixture
def pop3(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    deliver(inst.maildir(USER))
    inst.start("authdaemond", "pop3d", "pop3d-ssl")
    return inst


def run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("tls", ["", "stls", "pop3s"], ids=["plain", "stls", "pop3s"])
def test_fetchmail_keep_then_delete(pop3, tmp_path: Path, tls: str) -> None:
    out = tmp_path / "bsmtp"
    ssl_opts = {"": "sslproto ''", "stls": "sslproto tls1.2+ no sslcertck",
                # POP3S: TLS from the first byte on pop3d-ssl's own port.
                "pop3s": "ssl sslproto tls1.2+ no sslcertck"}[tls]
    port = pop3.port("pop3s" if tls == "pop3s" else "pop3")
    rc = private(tmp_path / "fetchmailrc",
                 f'poll 127.0.0.1 port {port} proto pop3 uidl\n'
                 f'  user "{USER}" password "{PASSWORD}" {ssl_opts}\n')
    base = [exe("fetchmail"), "-f", str(rc), "--idfile", str(tmp_path / "ids"),
            "--bsmtp", str(out), "--nodetach", "--pidfile", str(tmp_path / "pid")]
    env = {**os.environ, "HOME": str(tmp_path)}
    r = run([*base, "--keep"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr + pop3.logs()
    got = out.read_text()
    assert got.count("Subject: one") == 3 and "\n..leading dot" in got   # BSMTP re-stuffs
    assert count(pop3.maildir(USER)) == 3
    r = run(base, env=env)      # UIDL: nothing new (fetchmail exits 1, "no mail")
    assert r.returncode == 1, r.stdout + r.stderr
    r = run([*base, "--all"], env=env)     # delete mode
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(pop3.maildir(USER)) == 0
    if tls:
        log = "pop3d-ssl.log" if tls == "pop3s" else "pop3d.log"
        assert "stls=1" in (pop3.root / "var/log" / log).read_text()


@pytest.mark.parametrize("tls", ["", "stls", "pop3s"], ids=["plain", "stls", "pop3s"])
def test_mpop_keep_then_delete(pop3, tmp_path: Path, tls: str) -> None:
    mbox = tmp_path / "mbox"
    mbox.write_text("")
    port = pop3.port("pop3s" if tls == "pop3s" else "pop3")
    conf = private(tmp_path / "mpoprc",
                   f"account default\nhost 127.0.0.1\nport {port}\n"
                   f"user {USER}\npassword {PASSWORD}\n"
                   f"tls {'on' if tls else 'off'}\n"
                   f"tls_starttls {'on' if tls == 'stls' else 'off'}\ntls_certcheck off\n"
                   f"auth {'plain' if tls else 'user'}\n"
                   f"delivery mbox {mbox}\nuidls_file {tmp_path / 'uidls'}\nkeep on\n")
    r = run([exe("mpop"), "-C", str(conf)])
    assert r.returncode == 0, r.stdout + r.stderr + pop3.logs()
    text = mbox.read_text()
    assert text.count("Subject: one") == 3 and "\n.leading dot" in text
    assert count(pop3.maildir(USER)) == 3
    r = run([exe("mpop"), "-C", str(conf), "--keep=off", "--only-new=off"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert count(pop3.maildir(USER)) == 0
    if tls:   # SASL PLAIN under TLS (POP3AUTH_TLS in the default pop3d file)
        log = "pop3d-ssl.log" if tls == "pop3s" else "pop3d.log"
        assert "stls=1" in (pop3.root / "var/log" / log).read_text()


def test_getmail6_delete(pop3, tmp_path: Path) -> None:
    # getmail refuses to deliver as root: as root, deliver as "nobody" into a Maildir
    # nobody can reach (pytest's tmp_path is 0700).
    import pwd
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="getmail-", dir="/tmp"))
    top.chmod(0o755)
    dest = top / "dest"
    nobody = pwd.getpwnam("nobody")
    for d in ("", "tmp", "new", "cur"):
        (dest / d).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(dest / d, nobody.pw_uid, nobody.pw_gid)
    as_user = "user = nobody\n" if os.geteuid() == 0 else ""
    rc = private(tmp_path / "getmailrc",
                 "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n"
                 f"port = {pop3.port('pop3')}\nusername = {USER}\npassword = {PASSWORD}\n"
                 f"[destination]\ntype = Maildir\npath = {dest}/\n{as_user}"
                 "[options]\ndelete = true\nverbose = 0\n")
    r = run([exe("getmail"), "--getmaildir", str(tmp_path), "--rcfile", str(rc)])
    assert r.returncode == 0, r.stdout + r.stderr + pop3.logs()
    got = [p.read_bytes() for p in (dest / "new").iterdir()]
    assert len(got) == 3 and all(b"\n.leading dot\n" in m for m in got)
    assert count(pop3.maildir(USER)) == 0
    shutil.rmtree(top)


def test_poplib_pop3s_retr_byte_exact(pop3) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3_SSL("127.0.0.1", pop3.port("pop3s"), timeout=10, context=ctx)
    p.user(USER)
    p.pass_(PASSWORD)
    uidls = [ln.split()[1] for ln in p.uidl()[1]]
    assert len(set(uidls)) == 3
    for i, m in enumerate(MSGS, 1):
        assert b"\n".join(p.retr(i)[1]) + b"\n" == m
    p.quit()
