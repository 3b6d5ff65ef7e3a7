"""Local delivery through the real courierd + courierlocal + authd: Maildir++
quota from the account (over quota: deferred, then delivered once there is
room), mbox lines, deliverquota as a `.courier` program, a hanging program
killed after ETC/localtimeout, one copy per mailbox per run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from functools import partial

import psutil
import pytest
import waiting

from libcourier.maildir import quota
from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify

WAIT = 20.0
wait_for = partial(waiting.wait_for, timeout=WAIT)
BODY = b"Received: from client\nSubject: local\n\n" + b"z" * 200 + b"\n"


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    new_instance.adduser("bob@example.com", "pw")
    with open(new_instance.etc / "courierd", "a") as fh:
        fh.write("RETRYFIRST=1\nRETRYMAX=1\n")
    (new_instance.etc / "localtimeout").write_text("4\n")
    new_instance.start("authdaemond", "courierd")
    return new_instance


def home(inst, address: str):
    return inst.maildir(address).parent


def write_dot(inst, address: str, text: str, name: str = ".courier"):
    p = home(inst, address) / name
    p.write_text(text)
    os.chmod(p, 0o644)
    return p


def spool(inst, *rcpts: str, body: bytes = BODY, sender: str = "carol@example.net") -> str:
    lay = inst.layout
    w = SpoolWriter(lay.spooldir, 1 << 20)
    w.write(body)
    qid = w.commit(Envelope(sender, tuple(Recipient(r) for r in rcpts), time.time()))
    notify(lay.queue_socket, qid)
    return qid


def new_files(inst, address: str) -> list:
    d = inst.maildir(address) / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def log(inst) -> str:
    p = inst.root / "var" / "log" / "courierd.log"
    return p.read_text(errors="replace") if p.exists() else ""


def set_account_quota(inst, address: str, spec: str) -> None:
    """userdb's quota field (authd QUOTA=), recompiled as an admin would."""
    src = inst.etc / "userdb"
    lines = []
    for line in src.read_text().splitlines():
        if line.startswith(address + "\t"):
            fields = [f for f in line.split("\t", 1)[1].split("|")
                      if not f.startswith("quota=")]
            line = f"{address}\t" + "|".join(fields + [f"quota={spec}"])
        lines.append(line)
    src.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "courier_authd.makeuserdb", "-C", str(inst.etc)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_account_quota_defers_then_delivers_when_there_is_room(inst):
    set_account_quota(inst, "alice@example.com", "800S")
    for _ in range(2):
        qid = spool(inst, "alice@example.com")
        assert wait_for(lambda q=qid: q not in list_queue(inst.layout.spooldir)), log(inst)
    md = inst.maildir("alice@example.com")
    usage = quota.parse((md / "maildirsize").read_bytes())
    assert usage is not None and usage.spec == quota.QuotaSpec(800, None)
    assert usage.count == 2
    qid = spool(inst, "alice@example.com")       # the third does not fit: deferred
    assert wait_for(lambda: "over quota" in log(inst)), log(inst)
    assert "4.2.2" in log(inst)
    time.sleep(1.5)                              # retried meanwhile, still queued
    assert qid in list_queue(inst.layout.spooldir)
    assert len(new_files(inst, "alice@example.com")) == 2
    # The user makes room as a POP3 or IMAP client would: the removal is
    # recorded in maildirsize (an unrecorded rm would be noticed by the
    # 15-minute recount, as in Courier).
    gone = new_files(inst, "alice@example.com")
    sizes = [quota.message_size(f.name) for f in gone]
    for f in gone:
        f.unlink()
    quota.removed(md, sizes)
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert len(new_files(inst, "alice@example.com")) == 1


def test_mbox_line_and_one_copy_per_mailbox(inst):
    write_dot(inst, "alice@example.com",
              "./mail/inbox\n./Maildir/\n./Maildir\n./mail/../mail/inbox\n")
    (home(inst, "alice@example.com") / "mail").mkdir()
    os.chown(home(inst, "alice@example.com") / "mail",
             home(inst, "alice@example.com").stat().st_uid,
             home(inst, "alice@example.com").stat().st_gid)
    body = b"Received: x\nSubject: m\n\nFrom here on\nbye\n"
    qid = spool(inst, "alice@example.com", body=body)
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    box = home(inst, "alice@example.com") / "mail" / "inbox"
    data = box.read_bytes()
    assert data.startswith(b"From carol@example.net ")
    assert data.count(b"\nFrom ") == 0                       # one message, quoted body
    assert b"\n>From here on\nbye\n\n" in data
    assert b"Return-Path: <carol@example.net>\nDelivered-To: alice@example.com\n" in data
    assert (box.stat().st_mode & 0o777) == 0o600
    assert box.stat().st_uid == home(inst, "alice@example.com").stat().st_uid
    assert len(new_files(inst, "alice@example.com")) == 1    # ./Maildir/ and ./Maildir: once


def test_hanging_program_is_killed_after_localtimeout_and_retried(inst):
    marker = home(inst, "alice@example.com") / "ran"
    write_dot(inst, "alice@example.com", f"| echo run >> {marker}; exec sleep 600\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: "killed or timed out" in log(inst), timeout=40), log(inst)
    assert qid in list_queue(inst.layout.spooldir)
    # The killed program's process group is gone: no shell of ours is left.
    assert wait_for(lambda: not _running(str(marker)), timeout=10)
    write_dot(inst, "alice@example.com", "./Maildir/\n")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert marker.read_text().count("run") >= 1


def _running(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def _owner_can_run_python(inst, address: str) -> bool:
    uid = home(inst, address).stat().st_uid
    if uid == os.getuid():
        return True
    r = subprocess.run(["runuser", "-u", str(uid_name(uid)), "--", sys.executable, "-c",
                        "import courier_deliver.deliverquota"], capture_output=True,
                       timeout=30)
    return r.returncode == 0


def uid_name(uid: int) -> str:
    import pwd
    return pwd.getpwuid(uid).pw_name


@pytest.mark.parametrize("impl", ["ours", "courier"])
def test_deliverquota_from_a_dot_courier_line(inst, impl):
    """`| deliverquota ./Maildir` with ours, and with Courier's own where it is
    installed: the same environment and exit codes work for both."""
    if impl == "ours":
        if not _owner_can_run_python(inst, "alice@example.com"):
            pytest.skip(f"the mailbox owner cannot run {sys.executable} (a Python under "
                        f"a private home); ours is covered by tests/unit/test_maildir_quota.py")
        dq = f"{sys.executable} -m courier_deliver.deliverquota"
    else:
        dq = shutil.which("deliverquota.courier") or shutil.which("deliverquota.maildrop")
        if dq is None:
            pytest.skip("Courier's deliverquota is not installed (courier-base or maildrop)")
    md = inst.maildir("alice@example.com")
    write_dot(inst, "alice@example.com", f"| {dq} ./Maildir 500S\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert len(new_files(inst, "alice@example.com")) == 1
    assert quota.parse((md / "maildirsize").read_bytes()).spec == quota.QuotaSpec(500, None)
    qid = spool(inst, "alice@example.com")
    qid2 = spool(inst, "alice@example.com")
    # The second fits; the third is over: deliverquota exits 75 from a pipe, deferred.
    assert wait_for(lambda: "program exited 75" in log(inst)), log(inst)
    assert len(new_files(inst, "alice@example.com")) == 2
    assert {qid, qid2} & set(list_queue(inst.layout.spooldir))


def test_dynamic_delivery_instructions(inst):
    h = home(inst, "alice@example.com")
    out = h / "dyn.out"
    # The generated instructions: a folder, and a program that sees the usual
    # environment; exit 0 lets the rest of the original file run too.
    write_dot(inst, "alice@example.com",
              f"|| echo ./Maildir/.dyn/; echo '| echo $EXT-$LOCAL > {out}'\n./Maildir/\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert len(list((inst.maildir("alice@example.com") / ".dyn" / "new").iterdir())) == 1
    assert out.read_text() == "-alice\n"
    assert len(new_files(inst, "alice@example.com")) == 1
    # Exit 99 after generating: the generated lines run, the rest of the file not.
    write_dot(inst, "alice@example.com", "|| echo ./Maildir/.dyn/; exit 99\n./Maildir/\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert len(list((inst.maildir("alice@example.com") / ".dyn" / "new").iterdir())) == 2
    assert len(new_files(inst, "alice@example.com")) == 1
    # A generator that generates itself stops at Courier's recursion limit: bounced.
    gen = h / "gen.sh"
    gen.write_text('echo "|| sh $HOME/gen.sh"\n')
    write_dot(inst, "alice@example.com", "|| sh $HOME/gen.sh\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert "maximum recursion level" in log(inst)
    # Any other exit code: the output is not used, the delivery is deferred.
    write_dot(inst, "alice@example.com", "|| echo ./Maildir/.dyn/; exit 3\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: "program exited 3" in log(inst)), log(inst)
    assert qid in list_queue(inst.layout.spooldir)
    assert len(list((inst.maildir("alice@example.com") / ".dyn" / "new").iterdir())) == 2


def test_program_killed_by_a_signal_is_permanent(inst):
    write_dot(inst, "alice@example.com", "| kill -SEGV $$\n")
    qid = spool(inst, "alice@example.com")
    assert wait_for(lambda: qid not in list_queue(inst.layout.spooldir)), log(inst)
    assert "killed by signal 11" in log(inst)
    assert new_files(inst, "alice@example.com") == []


def test_one_delivery_process_serves_one_user_in_turn(inst):
    """localworker: messages for the same account, one after the other, are
    delivered by the same (kept) delivery process, not a fork each."""
    out = home(inst, "alice@example.com") / "pids"
    write_dot(inst, "alice@example.com", f"| echo $PPID >> {out}\n./Maildir/\n")
    for _ in range(3):
        qid = spool(inst, "alice@example.com")
        assert wait_for(lambda q=qid: q not in list_queue(inst.layout.spooldir)), log(inst)
    pids = out.read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 1, pids
    assert len(new_files(inst, "alice@example.com")) == 3
