"""msmtp, a real submission client nobody here wrote: STARTTLS + AUTH on the
submission port (its own Message-ID/Date left alone, not doubled), and a
refused password that leaves nothing in the spool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from libcourier.spool import list_queue, open_data, read_envelope

USER = "alice@example.com"


@pytest.fixture
def smtpd(new_instance):
    new_instance.adduser(USER, "alice-secret")
    new_instance.start("authdaemond", "esmtpd", "esmtpd-msa")
    return new_instance


def msmtp(inst, tmp_path, password: str, message: bytes, *extra: str):
    exe = shutil.which("msmtp")
    assert exe, "msmtp is required (apt-get install msmtp; .ci/run installs it)"
    rc = tmp_path / "msmtprc"
    rc.write_text(f"""defaults
tls on
tls_starttls on
tls_certcheck off
logfile {tmp_path}/msmtp.log
account sub
host 127.0.0.1
port {inst.port('submission')}
auth plain
user {USER}
password {password}
from {USER}
account default : sub
""")
    rc.chmod(0o600)
    return subprocess.run([exe, "-C", str(rc), *extra, "bob@example.net"], input=message,
                          capture_output=True, timeout=60)


def _spooled(inst) -> list[tuple[str, bytes]]:
    out = []
    for qid in list_queue(inst.layout.spooldir):
        env = read_envelope(inst.layout.spooldir, qid)
        with open_data(inst.layout.spooldir, qid) as fh:
            out.append((env.sender, fh.read()))
    return out


def test_msmtp_submits_over_starttls_with_auth(smtpd, tmp_path):
    msg = b"From: alice@example.com\nTo: bob@example.net\nSubject: by msmtp\n\nhello from msmtp\n"
    r = msmtp(smtpd, tmp_path, "alice-secret", msg)
    assert r.returncode == 0, r.stderr.decode()
    [(sender, data)] = _spooled(smtpd)
    assert sender == USER
    assert b" with ESMTPSA" in data.split(b"\n\n")[0]        # TLS + AUTH (RFC 3848)
    head, _, body = data.partition(b"\n\n")
    assert body == b"hello from msmtp\n"
    # msmtp sends its own Date and Message-ID: kept, and not doubled by esmtpd-msa.
    assert head.lower().count(b"\nmessage-id: ") == 1 and head.lower().count(b"\ndate: ") == 1
    assert b"\nMessage-ID: <courier." not in head


def test_msmtp_wrong_password_is_refused(smtpd, tmp_path):
    r = msmtp(smtpd, tmp_path, "wrong", b"Subject: x\n\nx\n")
    assert r.returncode != 0
    assert b"535" in r.stderr or b"authentication failed" in r.stderr.lower(), r.stderr
    assert _spooled(smtpd) == []
