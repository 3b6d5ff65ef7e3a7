"""mailq run by an ordinary user: courierd answers over its socket with that
user's own messages only (uid from SO_PEERCRED), as Courier's mailq shows
everyone but the superuser; root still reads the whole spool itself.

Needs root (to become nobody); reuses test_sendmail_user's way of running
our code as nobody."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

import pytest
from courier_deliver import mailq
from test_sendmail_user import USER, sendmail_as_user, user_python, wait_for  # noqa: F401

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="becoming an ordinary user needs root")


def mailq_as_user(user_python, inst, *args: str):   # noqa: F811
    prefix, _env = user_python
    return subprocess.run([*prefix, "-m", "courier_deliver.mailq", "-C", str(inst.etc), *args],
                          capture_output=True, timeout=60, cwd="/")


def test_a_user_sees_only_their_own_messages(running_instance, user_python):  # noqa: F811
    inst = running_instance
    # alice's mail stays queued: an executable .courier defers delivery (Courier's rule).
    home = inst.maildir("alice@example.com").parent
    dot = home / ".courier"
    dot.write_text("./Maildir/\n")
    st = home.stat()
    os.chown(dot, st.st_uid, st.st_gid)
    os.chmod(dot, 0o755)
    r = sendmail_as_user(user_python, inst, "alice@example.com",
                         data=b"Subject: mine\n\nfrom nobody\n")
    assert r.returncode == 0, r.stderr
    w = SpoolWriter(inst.layout.spooldir, 1 << 20)
    w.write(b"Subject: not yours\n\nx\n")
    other = w.commit(Envelope("carol@example.net", (Recipient("alice@example.com"),),
                              time.time(), client="[192.0.2.9] mx.example.net"))
    notify(inst.layout.queue_socket, other)
    assert wait_for(lambda: len(list_queue(inst.layout.spooldir)) == 2
                    and not os.listdir(inst.layout.spooldir / "maildrop")), inst.logs()
    [mine] = [q for q in list_queue(inst.layout.spooldir) if q != other]

    r = mailq_as_user(user_python, inst)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert mine in out and other not in out and "carol@example.net" not in out
    assert "nobody@mx.test" in out and "alice@example.com" in out
    assert out.rstrip().endswith("in 1 Request.")
    r = mailq_as_user(user_python, inst, "--batch")
    [line] = r.stdout.decode().splitlines()
    assert line.split("\t")[0] == mine and line.split("\t")[4] == "alice@example.com"

    # Root reads the spool itself (a child: mailq drops to the mail account): both.
    r = subprocess.run([sys.executable, "-m", "courier_deliver.mailq", "-C", str(inst.etc),
                        "--batch"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(ln.split("\t")[0] for ln in r.stdout.decode().splitlines()) == sorted(
        [mine, other])
    nobody = pwd.getpwnam(USER).pw_uid
    assert [e.qid for e in mailq.scan_for(inst.layout, nobody)] == [mine]


def test_answer_round_trip():
    e = mailq.Entry("q1.2", 10, 1700000000.0, "j\u00f8ran@example.org",
                    ("a b@example.com", "x,y@example.com"))
    assert mailq.parse_answer(mailq.format_answer([e, e])) == [e, e]
    assert mailq.parse_answer(b"END\n") == []
    for bad in (b"", b"M q 1 2 x\n", b"X y\nEND\n", b"M q 1\nEND\n"):
        with pytest.raises(ValueError):
            mailq.parse_answer(bad)
    assert mailq.submitted_by("local uid=65534 user=nobody maildrop") == 65534
    assert mailq.submitted_by("[192.0.2.1] local uid=0") is None
