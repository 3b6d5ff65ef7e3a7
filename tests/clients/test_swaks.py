"""swaks, a real SMTP client nobody here wrote, against the instance:
plain SMTP, STARTTLS (RFC 3207), SMTPS (RFC 8314), and the relay refusal."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

DELIVERY_WAIT = 20.0


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    assert exe, "swaks is required (apt-get install swaks; .ci/run installs it)"
    return subprocess.run([exe, "--timeout", "10", "--helo", "swaks.example.net", *args],
                          capture_output=True, text=True, timeout=60)


def delivered(maildir, n: int) -> int:
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        count = len(list((maildir / "new").iterdir()))
        if count >= n:
            return count
        time.sleep(0.05)
    return len(list((maildir / "new").iterdir()))


@pytest.mark.parametrize("mode", ["plain", "starttls", "smtps"])
def test_swaks_delivers(running_instance, mode):
    inst = running_instance
    args = ["--from", "sender@example.net", "--to", "alice@example.com",
            "--header", f"Subject: swaks {mode}", "--body", f"sent by swaks over {mode}"]
    if mode == "plain":
        args += ["--server", f"127.0.0.1:{inst.port('smtp')}"]
    elif mode == "starttls":
        args += ["--server", f"127.0.0.1:{inst.port('smtp')}", "--tls"]
    else:
        args += ["--server", f"127.0.0.1:{inst.port('smtps')}", "--tls-on-connect"]
    r = swaks(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert delivered(inst.maildir("alice@example.com"), 1) == 1, inst.logs()
    body = next((inst.maildir("alice@example.com") / "new").iterdir()).read_bytes()
    assert f"sent by swaks over {mode}".encode() in body


def test_swaks_relaying_refused(running_instance):
    """No open relay: a remote recipient from an unauthenticated client is refused on
    port 25, and the submission port wants AUTH before MAIL (AUTH_REQUIRED=1)."""
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('smtp')}", "--tls",
              "--from", "bob@example.net", "--to", "someone@elsewhere.example",
              "--body", "relay attempt")
    assert r.returncode != 0
    assert "550 5.7.1 Relaying denied" in r.stdout, r.stdout
    r = swaks("--server", f"127.0.0.1:{inst.port('submission')}", "--tls",
              "--from", "bob@example.net", "--to", "someone@elsewhere.example",
              "--body", "relay attempt")
    assert r.returncode != 0
    assert "530 5.7.0 Authentication required" in r.stdout, r.stdout


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth_on_submission(running_instance, mech):
    """RFC 4954 AUTH after STARTTLS on port 587; the Received line says ESMTPSA and
    names the user as Courier does; a wrong password is 535 5.7.8."""
    inst = running_instance
    base = ["--server", f"127.0.0.1:{inst.port('submission')}", "--tls",
            "--auth", mech, "--auth-user", "bob@example.net",
            "--from", "bob@example.net", "--to", "alice@example.com"]
    r = swaks(*base, "--auth-password", "wrong", "--body", "x")
    assert r.returncode != 0 and "535 5.7.8" in r.stdout, r.stdout
    r = swaks(*base, "--auth-password", "bob-secret", "--body", f"authenticated {mech}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout
    assert delivered(inst.maildir("alice@example.com"), 1) == 1, inst.logs()
    body = next((inst.maildir("alice@example.com") / "new").iterdir()).read_bytes()
    assert f"(AUTH: {mech} bob@example.net)".encode() in body
    assert b"with ESMTPSA;" in body


def test_swaks_authenticated_client_may_relay(running_instance):
    """An authenticated client relays: the message for a remote domain is queued
    (remote delivery is issue 8)."""
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('submission')}", "--tls",
              "--auth", "PLAIN", "--auth-user", "bob@example.net",
              "--auth-password", "bob-secret",
              "--from", "bob@example.net", "--to", "someone@elsewhere.example",
              "--body", "relayed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.1.5" in r.stdout


def test_swaks_unknown_recipient_refused(running_instance):
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('smtp')}", "--from", "sender@example.net",
              "--to", "nobody@example.com", "--body", "x")
    assert r.returncode != 0
    assert "<** 5" in r.stdout  # a permanent 5xx for the recipient
