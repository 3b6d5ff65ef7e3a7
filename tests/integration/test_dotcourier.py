""".courier files through the real courierd + courierlocal + authd: a program
line runs as the user with Courier's environment, a forward line re-delivers to
another local user, extension addresses, and a bad file defers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from waiting import wait_for

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify

BODY = b"Received: from client\nSubject: dot\n\nhello\n"


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    new_instance.adduser("bob@example.com", "pw")
    with open(new_instance.etc / "courierd", "a") as fh:
        fh.write("RETRYFIRST=1\nRETRYMAX=1\n")
    new_instance.start("authdaemond", "courierd")
    return new_instance


def home(inst, address: str):
    return inst.maildir(address).parent


def write_dot(inst, address: str, name: str, text: str, mode: int = 0o644):
    p = home(inst, address) / name
    p.write_text(text)
    os.chmod(p, mode)
    return p


def spool(inst, *rcpts: str, sender: str = "carol@example.net") -> str:
    lay = inst.layout
    w = SpoolWriter(lay.spooldir, 1 << 20)
    w.write(BODY)
    qid = w.commit(Envelope(sender, tuple(Recipient(r) for r in rcpts), time.time()))
    notify(lay.queue_socket, qid)
    return qid


def new_files(inst, address: str) -> list:
    d = inst.maildir(address) / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def log(inst) -> str:
    p = inst.root / "var" / "log" / "courierd.log"
    return p.read_text(errors="replace") if p.exists() else ""


def test_program_line_runs_as_the_user_with_courier_environment(inst):
    h = home(inst, "alice@example.com")
    out = h / "prog.out"
    write_dot(inst, "alice@example.com", ".courier",
              "# deliver and run a program\n./Maildir/\n"
              f"| (id -u; echo \"$SENDER|$RECIPIENT|$HOST|$LOCAL|$EXT|$HOME|$USER\"; \\\n"
              f"   echo \"$DTLINE\"; cat) > {out}\n")
    spool(inst, "alice@example.com")
    assert wait_for(lambda: out.exists() and out.stat().st_size > 0 and
                    not list_queue(inst.layout.spooldir)), log(inst)
    lines = out.read_text().split("\n")
    assert int(lines[0]) == h.stat().st_uid
    assert lines[1] == f"carol@example.net|alice@example.com|example.com|alice||{h}|" \
                       "alice@example.com"
    assert lines[2] == "Delivered-To: alice@example.com"
    assert "\n".join(lines[3:]) == BODY.decode()      # no Return-Path for programs
    assert len(new_files(inst, "alice@example.com")) == 1


def test_forward_line_redelivers_to_another_local_user(inst):
    write_dot(inst, "alice@example.com", ".courier", "&bob@example.com\n")
    spool(inst, "alice@example.com")
    files = wait_for(lambda: new_files(inst, "bob@example.com"))
    assert files, log(inst)
    text = files[0].read_bytes()
    # The original sender is kept; the forwarding hop is recorded.
    assert text.startswith(b"Return-Path: <carol@example.net>\nDelivered-To: bob@example.com\n"
                           b"Delivered-To: alice@example.com\n")
    assert new_files(inst, "alice@example.com") == []
    assert wait_for(lambda: not list_queue(inst.layout.spooldir))


def test_forward_loop_is_refused(inst):
    write_dot(inst, "alice@example.com", ".courier", "bob@example.com\n")
    write_dot(inst, "bob@example.com", ".courier", "alice@example.com\n")
    spool(inst, "alice@example.com")
    assert wait_for(lambda: "mail loop" in log(inst)), log(inst)
    assert wait_for(lambda: not list_queue(inst.layout.spooldir))
    assert new_files(inst, "alice@example.com") == new_files(inst, "bob@example.com") == []


def test_extension_addresses_and_default(inst):
    write_dot(inst, "alice@example.com", ".courier-lists-default", "./Maildir/.lists/\n")
    spool(inst, "alice-lists-python@example.com", "alice-nothing@example.com")
    assert wait_for(lambda: not list_queue(inst.layout.spooldir)), log(inst)
    got = sorted((inst.maildir("alice@example.com") / ".lists" / "new").iterdir())
    assert len(got) == 1
    assert b"Delivered-To: alice-lists-python@example.com\n" in got[0].read_bytes()
    assert "alice-nothing@example.com" in log(inst) and "no such address" in log(inst)
    assert new_files(inst, "alice@example.com") == []


def test_bad_file_or_permissions_defer_never_drop(inst):
    dot = write_dot(inst, "alice@example.com", ".courier", "not an address\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: "bad forwarding address" in log(inst)), log(inst)
    assert qid in list_queue(inst.layout.spooldir)
    dot.write_text("./Maildir/\n")
    os.chmod(dot, 0o666)
    assert wait_for(lambda: "unsafe ownership" in log(inst)), log(inst)
    assert qid in list_queue(inst.layout.spooldir)
    os.chmod(dot, 0o644)
    assert wait_for(lambda: new_files(inst, "alice@example.com")), log(inst)


def test_program_exit_codes(inst):
    write_dot(inst, "alice@example.com", ".courier", "| echo no such list; exit 67\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert "program exited 67: no such list" in log(inst)
    write_dot(inst, "alice@example.com", ".courier", "| exit 99\n./Maildir/\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert new_files(inst, "alice@example.com") == []


def test_sendmail_to_a_user_with_a_program(inst):
    out = home(inst, "alice@example.com") / "sm.out"
    write_dot(inst, "alice@example.com", ".courier", f"| cat > {out}\n")
    r = subprocess.run([sys.executable, "-m", "courier_deliver.sendmail", "-C", str(inst.etc),
                        "alice@example.com"], input=b"Subject: s\n\nvia sendmail\n",
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: out.exists() and b"via sendmail" in out.read_bytes()), log(inst)
