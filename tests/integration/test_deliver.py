"""courierd + courierlocal as real processes with a real authd: spool -> Maildir,
deferral while authd is down, pick-up after a restart, clean stop."""

from __future__ import annotations

import os
import time

import pytest
from waiting import wait_for

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify

BODY = b"Received: from client\nSubject: test\n\nline one\r\n.dot line\n"


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    with open(new_instance.etc / "courierd", "a") as fh:
        # Fast retries so a deferred message comes back within the test.
        fh.write("RETRYFIRST=1\nRETRYMAX=1\n")
    return new_instance


def spool(inst, *rcpts: str, sender: str = "bob@example.net") -> str:
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


def test_delivers_into_the_maildir_and_empties_the_spool(inst):
    inst.start("authdaemond", "courierd")
    lay = inst.layout
    assert oct(lay.local_socket.stat().st_mode & 0o777) == "0o660"
    qid = spool(inst, "alice@example.com", "nobody@example.com")
    assert wait_for(lambda: not list_queue(lay.spooldir)), log(inst)
    files = new_files(inst, "alice@example.com")
    assert len(files) == 1, log(inst)
    data = files[0].read_bytes()
    assert data == (b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.com\n"
                    + BODY.replace(b"\r\n", b"\n"))
    assert files[0].name.endswith(f",S={len(data)}")
    owner = (inst.root / "mail").stat()
    assert (files[0].stat().st_uid, files[0].stat().st_gid) == (owner.st_uid, owner.st_gid)
    text = log(inst)
    assert f"id={qid},from=<bob@example.net>,addr=<alice@example.com>,status: success" in text
    assert f"id={qid},from=<bob@example.net>,addr=<nobody@example.com>,status: failure" in text
    assert list((lay.spooldir / "msgs").iterdir()) == []


def test_authd_down_defers_then_delivers(inst):
    inst.start("authdaemond", "courierd")
    inst.courier("stop", "authdaemond")
    qid = spool(inst, "alice@example.com", sender="")
    assert wait_for(lambda: f"id={qid},from=<>,addr=<alice@example.com>,status: deferred"
                      in log(inst)), log(inst)
    assert new_files(inst, "alice@example.com") == []
    assert list_queue(inst.layout.spooldir) == [qid]
    inst.start("authdaemond")
    assert wait_for(lambda: not list_queue(inst.layout.spooldir)), log(inst)
    files = new_files(inst, "alice@example.com")
    assert len(files) == 1 and files[0].read_bytes().startswith(b"Return-Path: <>\n")


def test_restart_picks_up_what_was_spooled_while_down(inst):
    inst.start("authdaemond", "courierd")
    inst.courier("stop", "courierd")
    lay = inst.layout
    assert not lay.pidfile("courierd").exists()
    assert not lay.queue_socket.exists() and not lay.local_socket.exists()
    qid = spool(inst, "alice@example.com")  # the notice finds nobody listening
    time.sleep(0.3)
    assert list_queue(lay.spooldir) == [qid]
    inst.start("courierd")
    assert wait_for(lambda: not list_queue(lay.spooldir)), log(inst)
    assert len(new_files(inst, "alice@example.com")) == 1


def test_remote_recipient_stays_queued_while_dns_fails(inst):
    # No DNS server on this port: the lookup fails, which is temporary.
    import socket
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    u.close()
    with open(inst.etc / "courierd", "a") as fh:
        fh.write(f"ESMTP_RESOLVER=127.0.0.1:{port}\n")
    inst.start("authdaemond", "courierd")
    qid = spool(inst, "carol@remote.example")
    assert wait_for(lambda: "DNS lookup of remote.example/MX failed" in log(inst),
                      timeout=60), log(inst)
    assert list_queue(inst.layout.spooldir) == [qid]


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid-0 refusal needs root")
def test_root_account_is_refused(inst):
    from libcourier.userdb import compile_userdb, set_user
    inst.adduser("rooty@example.com", "pw")
    src = inst.etc / "userdb"
    home = inst.root / "mail" / "example.com" / "rooty"
    set_user(src, "rooty@example.com", {"uid": "0", "gid": "0", "home": str(home),
                                         "mail": str(home / "Maildir")})
    compile_userdb(src, inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")
    inst.start("authdaemond", "courierd")
    spool(inst, "rooty@example.com")
    assert wait_for(lambda: "status: failure" in log(inst)), log(inst)
    assert new_files(inst, "rooty@example.com") == []
