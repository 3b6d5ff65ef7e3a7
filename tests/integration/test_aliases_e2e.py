"""Aliases end to end: makealiases compiles ETC/aliases, esmtpd accepts the alias
at RCPT, courierd expands it and each member gets one copy; user-ext at RCPT."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time

from waiting import wait_for

from libcourier.spool import list_queue


def new_files(inst, address: str) -> list:
    d = inst.maildir(address) / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def makealiases(inst, *args: str):
    return subprocess.run([sys.executable, "-m", "courier_deliver.makealiases", "-C",
                           str(inst.etc), *args], capture_output=True, text=True, timeout=30)


def test_alias_accepted_at_rcpt_and_expanded(running_instance):
    inst = running_instance
    (inst.etc / "aliases").write_text(
        "team: alice@example.com,\n   bob@example.net, team@example.com\n"
        "broken: | prog\n")
    r = makealiases(inst)
    assert r.returncode == 1 and "aliases:3" in r.stderr and "not supported" in r.stderr
    (inst.etc / "aliases").write_text(
        "team@example.com: alice@example.com,\n   bob@example.net, team@example.com\n")
    r = makealiases(inst)
    assert r.returncode == 0, r.stderr
    assert makealiases(inst, "-dump").stdout.splitlines()[1].startswith("team@example.com\t")
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        s.mail("sender@remote.test")
        assert s.rcpt("team@example.com")[0] == 250
        assert s.rcpt("alice-ext@example.com")[0] == 250      # user-ext
        assert s.rcpt("nobody@example.com")[0] == 550
        s.rset()
        s.sendmail("sender@remote.test", ["team@example.com", "alice@example.com"],
                   b"Subject: alias\r\n\r\nto the team\r\n")
    a = wait_for(lambda: new_files(inst, "alice@example.com"))
    b = wait_for(lambda: new_files(inst, "bob@example.net"))
    assert a and b, inst.logs()
    assert wait_for(lambda: not list_queue(inst.layout.spooldir)), inst.logs()
    time.sleep(0.3)
    # alice was named twice (directly and through the alias): one copy.
    assert len(new_files(inst, "alice@example.com")) == 1
    assert len(new_files(inst, "bob@example.net")) == 1
    assert b"Delivered-To: bob@example.net\n" in b[0].read_bytes()
