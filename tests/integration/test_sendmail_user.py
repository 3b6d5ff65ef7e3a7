"""sendmail run by an ordinary user (issue 8): through SPOOLDIR/maildrop and
courierd's pickup, on a running instance, as `nobody`.

Needs root (to become nobody). The user must be able to run a Python: the
venv's interpreter often lives under /root (0700), so when nobody cannot run
it, the system's python3 (3.11+) is used with a copy of our packages on
PYTHONPATH (sendmail needs nothing outside the standard library).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import pytest
import waiting

from libcourier.spool import list_queue, read_envelope

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="becoming an ordinary user needs root")

ROOT = Path(__file__).resolve().parents[2]
USER = "nobody"
WAIT = 20.0
wait_for = partial(waiting.wait_for, timeout=WAIT)


@pytest.fixture(scope="module")
def user_python():
    """(argv prefix, env) that runs `python -m courier_deliver.sendmail` as nobody."""
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is not installed")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no account {USER!r}")
    base = ["runuser", "-u", USER, "--"]
    probe = subprocess.run([*base, sys.executable, "-c", "import courier_deliver"],
                           capture_output=True, timeout=30)
    if probe.returncode == 0:
        yield [*base, sys.executable], {}
        return
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip(f"{USER} cannot run {sys.executable} and there is no system python3")
    d = Path(tempfile.mkdtemp(prefix="courier-pypath-"))
    try:
        os.chmod(d, 0o755)
        # Copies, not links: the checkout itself may sit where nobody cannot look (/root).
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "courier-deliver", d / "courier_deliver", ignore=skip)
        shutil.copytree(ROOT / "libcourier", d / "libcourier", ignore=skip)
        # Compiled once here, by the interpreter nobody will run: each sendmail
        # then starts as fast as an installed one.
        subprocess.run([system, "-m", "compileall", "-q", str(d)], capture_output=True,
                       timeout=120)
        for sub in d.rglob("*"):
            os.chmod(sub, 0o755 if sub.is_dir() else 0o644)
        env = {"PYTHONPATH": str(d), "PYTHONDONTWRITEBYTECODE": "1"}
        probe = subprocess.run([*base, "env", *(f"{k}={v}" for k, v in env.items()), system,
                                "-c", "import sys; assert sys.version_info >= (3, 11); "
                                      "import courier_deliver.sendmail"],
                               capture_output=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip(f"{USER} cannot run a Python 3.11 with our code: "
                        f"{probe.stderr.decode(errors='replace')[-300:]}")
        yield [*base, "env", *(f"{k}={v}" for k, v in env.items()), system], env
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sendmail_as_user(user_python, inst, *args: str, data: bytes):
    prefix, _env = user_python
    return subprocess.run([*prefix, "-m", "courier_deliver.sendmail", "-C", str(inst.etc),
                           *args], input=data, capture_output=True, timeout=60,
                          cwd="/")


def maildrop_files(inst) -> list[str]:
    return os.listdir(inst.layout.spooldir / "maildrop")


def quarantined(inst) -> list[str]:
    d = inst.layout.spooldir / "quarantine"
    return sorted(os.listdir(d)) if d.is_dir() else []


def log_text(inst) -> str:
    p = inst.root / "var" / "log" / "courierd.log"
    return p.read_text(errors="replace") if p.exists() else ""


def test_ordinary_user_sendmail_is_delivered(running_instance, user_python):
    inst = running_instance
    nobody = pwd.getpwnam(USER)
    r = sendmail_as_user(user_python, inst, "-oi", "alice@example.com",
                         data=b"Subject: from a user\n\nhello from nobody\n.\nstill here\n")
    assert r.returncode == 0, r.stderr
    new = inst.maildir("alice@example.com") / "new"
    files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [])
    assert files, inst.logs()
    text = files[0].read_bytes()
    # The envelope sender is the user's own address at defaultdomain; the
    # Received line names the account pickup saw as the file's owner.
    assert text.startswith(b"Return-Path: <nobody@mx.test>\nDelivered-To: alice@example.com\n"
                           + f"Received: (from nobody@localhost uid {nobody.pw_uid})\n"
                             f"  by mx.test (courier-py) with local id ".encode())
    assert b"\nSubject: from a user\n" in text and b"\nMessage-ID: <courier-py." in text
    assert text.endswith(b"\nhello from nobody\n.\nstill here\n")
    assert maildrop_files(inst) == [] and quarantined(inst) == []
    assert f"user nobody (uid {nobody.pw_uid}), sender <nobody@mx.test>" in log_text(inst)
    # The directories a user may reach: maildrop writable, not listable.
    spool = inst.layout.spooldir
    assert (spool / "maildrop").stat().st_mode & 0o7777 == 0o3733
    assert (spool / "quarantine").stat().st_mode & 0o777 == 0o700
    assert (spool / "msgs").stat().st_mode & 0o007 == 0


def test_ordinary_user_may_not_use_another_sender(running_instance, user_python):
    inst = running_instance
    r = sendmail_as_user(user_python, inst, "-f", "alice@example.com", "bob@example.net",
                         data=b"Subject: forged\n\nx\n")
    assert r.returncode == 77 and b"may not use <alice@example.com>" in r.stderr
    r = sendmail_as_user(user_python, inst, "-f", "", "bob@example.net", data=b"x\n")
    assert r.returncode == 77 and b"null sender" in r.stderr
    # An address extension of its own is fine (Courier's user-ext).
    r = sendmail_as_user(user_python, inst, "-f", "nobody-cron@mx.test", "bob@example.net",
                         data=b"Subject: ext\n\nx\n")
    assert r.returncode == 0, r.stderr
    new = inst.maildir("bob@example.net") / "new"
    files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [])
    assert files and files[0].read_bytes().startswith(b"Return-Path: <nobody-cron@mx.test>\n")


def test_hostile_maildrop_files_are_quarantined(running_instance, user_python):
    """What a user could leave without sendmail: courierd moves it aside, logs, delivers nothing."""
    inst = running_instance
    nobody = pwd.getpwnam(USER)
    drop = inst.layout.spooldir / "maildrop"
    # Made aside, then renamed in whole: pickup must see nobody's file, never root's.
    staging = Path(tempfile.mkdtemp(dir=inst.root / "var"))
    forged = staging / "f"
    forged.write_bytes(b"courier-py-maildrop 1\nsender alice@example.com\n"
                       b"rcpt bob@example.net - -\nend\nSubject: forged\n\nx\n")
    # As sendmail's file would be: nobody's, the maildrop's group (setgid dir), 0640.
    os.chown(forged, nobody.pw_uid, drop.stat().st_gid)
    os.chmod(forged, 0o640)
    link = staging / "l"
    link.symlink_to("/etc/shadow")
    os.lchown(link, nobody.pw_uid, -1)
    os.rename(forged, drop / "f")
    os.rename(link, drop / "l")
    # sendmail's own file wakes pickup at once (inotify); the others go with it.
    r = sendmail_as_user(user_python, inst, "alice@example.com", data=b"Subject: ok\n\nok\n")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: len(quarantined(inst)) == 2), (quarantined(inst), inst.logs())
    names = quarantined(inst)
    assert any(n.endswith(".f") for n in names) and any(n.endswith(".l") for n in names)
    assert (inst.layout.spooldir / "quarantine" / [n for n in names if n.endswith(".l")][0]
            ).is_symlink()
    log = wait_for(lambda: (t := log_text(inst)).count("quarantined as") == 2 and t)
    assert "may not use <alice@example.com>" in log and "not a regular file" in log, log
    assert wait_for(lambda: maildrop_files(inst) == [])
    assert not (inst.maildir("bob@example.net") / "new").exists() or \
        list((inst.maildir("bob@example.net") / "new").iterdir()) == []


def test_sendmail_bs_as_user(running_instance, user_python):
    inst = running_instance
    script = (b"EHLO client.example\r\n"
              b"MAIL FROM:<alice@example.com>\r\n"
              b"MAIL FROM:<nobody@mx.test> BODY=8BITMIME\r\n"
              b"RCPT TO:<alice@example.com> NOTIFY=NEVER\r\n"
              b"DATA\r\n"
              b"Subject: bs\r\n\r\n..dotted\r\nbody\r\n.\r\n"
              b"QUIT\r\n")
    r = sendmail_as_user(user_python, inst, "-bs", data=script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\r\n")
    codes = [ln[:4] for ln in lines if ln]
    assert codes[0] == "220 " and "250 " in codes and "250-" in codes
    assert any(ln.startswith("553 5.7.1 user nobody") for ln in lines)
    assert any(ln.startswith("250 2.0.0 Ok: queued as ") for ln in lines)
    assert lines[-2].startswith("221 2.0.0")
    new = inst.maildir("alice@example.com") / "new"
    files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [])
    assert files, inst.logs()
    text = files[0].read_bytes()
    assert text.startswith(b"Return-Path: <nobody@mx.test>\n")
    assert b"\nSubject: bs\n" in text and text.endswith(b"\n.dotted\nbody\n")


def test_sendmail_bs_as_user_carries_verp_security_and_smtputf8(new_instance, user_python):
    """MAIL FROM ... VERP SECURITY=STARTTLS SMTPUTF8 through the maildrop and pickup:
    the flags are in the spool entry, and the local copy has its VERP return path.
    held.test's relay is a socket that never answers, so the entry stays queued."""
    inst = new_instance
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)           # the kernel completes connections; nobody ever speaks
        (inst.etc / "esmtproutes").write_text(
            f"held.test: 127.0.0.1,{silent.getsockname()[1]}\n")
        with open(inst.etc / "courierd", "a") as fh:
            # A trust store, so that a SECURITY message is not bounced before connecting.
            fh.write(f"\nTLS_TRUSTSECURITYCERTS={inst.etc / 'esmtpd.pem'}\n")
        inst.adduser("alice@example.com", "alice-secret")
        inst.start()
        script = (b"EHLO client.example\r\n"
                  b"MAIL FROM:<nobody@mx.test> VERP SECURITY=STARTTLS SMTPUTF8\r\n"
                  b"RCPT TO:<alice@example.com>\r\nRCPT TO:<x@held.test>\r\n"
                  b"DATA\r\nSubject: flags\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        r = sendmail_as_user(user_python, inst, "-bs", data=script)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().split("\r\n")
        for word in ("XVERP=Courier", "XEXDATA", "XSECURITY=NONE,STARTTLS", "SMTPUTF8"):
            assert f"250-{word}" in lines, lines
        assert any(ln.startswith("250 2.0.0 Ok: queued as ") for ln in lines), lines
        new = inst.maildir("alice@example.com") / "new"
        files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [])
        assert files, inst.logs()
        assert files[0].read_bytes().startswith(
            b"Return-Path: <nobody-alice=example.com@mx.test>\n")
        spool = inst.layout.spooldir
        assert maildrop_files(inst) == [] and quarantined(inst) == []
        [qid] = list_queue(spool)
        env = read_envelope(spool, qid)
        assert (env.verp, env.security, env.smtputf8) == (True, "STARTTLS", True)
        assert env.sender == "nobody@mx.test"
        # alice's may be gone already: courierd keeps the recipients not yet delivered.
        assert [rc.address for rc in env.recipients][-1:] == ["x@held.test"]


def test_before_courierd_prepared_the_maildrop_it_is_a_temporary_failure(new_instance,
                                                                          user_python):
    r = sendmail_as_user(user_python, new_instance, "alice@example.com", data=b"x\n")
    assert r.returncode == 75 and b"is courierd running?" in r.stderr


def test_a_drop_made_while_courierd_is_down_is_taken_at_start(running_instance, user_python):
    inst = running_instance
    inst.courier("stop", "courierd")
    r = sendmail_as_user(user_python, inst, "alice@example.com", data=b"Subject: later\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert len(maildrop_files(inst)) == 1
    inst.start("courierd")
    new = inst.maildir("alice@example.com") / "new"
    files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [])
    assert files and b"\nSubject: later\n" in files[0].read_bytes(), inst.logs()
    assert maildrop_files(inst) == []
