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
    """No open relay: a remote recipient from an unauthenticated client is refused
    (SMTP AUTH on submission comes with issue 7)."""
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('submission')}", "--tls",
              "--from", "bob@example.net", "--to", "someone@elsewhere.example",
              "--body", "relay attempt")
    assert r.returncode != 0
    assert "550 5.7.1 Relaying denied" in r.stdout, r.stdout


def test_swaks_unknown_recipient_refused(running_instance):
    inst = running_instance
    r = swaks("--server", f"127.0.0.1:{inst.port('smtp')}", "--from", "sender@example.net",
              "--to", "nobody@example.com", "--body", "x")
    assert r.returncode != 0
    assert "<** 5" in r.stdout  # a permanent 5xx for the recipient
