"""courierd's DEFAULTDELIVERY beyond ./Maildir, through the real courierd +
courierlocal + authd: for an account with no .courier file and no Maildir of
its own (Courier's module.local: the account's maildir, else DEFAULTDELIVERY),
a program line with Courier's environment, an mbox file, and a quoted value
over two lines as Courier's own courierd file shows it."""

from __future__ import annotations

import time

import pytest
from waiting import wait_for

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify
from libcourier.userdb import compile_userdb, parse_userdb, set_user

BODY = b"Received: from client\nSubject: dd\n\nhello\n"


def without_own_maildir(inst, address: str) -> None:
    # adduser gives every account mail=; Courier's DEFAULTDELIVERY is for
    # accounts without one.
    etc = inst.etc
    [entry] = [e for e in parse_userdb(etc / "userdb") if e.name == address]
    fields = {k: v for k, v in entry.fields.items() if k != "mail"}
    set_user(etc / "userdb", address, fields)
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")


def start(inst, defaultdelivery: str):
    inst.adduser("alice@example.com", "pw")
    without_own_maildir(inst, "alice@example.com")
    with open(inst.etc / "courierd", "a") as fh:
        fh.write(f"RETRYFIRST=1\nRETRYMAX=1\nDEFAULTDELIVERY={defaultdelivery}\n")
    inst.start("authdaemond", "courierd")
    return inst.maildir("alice@example.com").parent


def spool(inst, rcpt: str) -> str:
    w = SpoolWriter(inst.layout.spooldir, 1 << 20)
    w.write(BODY)
    qid = w.commit(Envelope("carol@example.net", (Recipient(rcpt),), time.time()))
    notify(inst.layout.queue_socket, qid)
    return qid


def done(inst) -> bool:
    return not list_queue(inst.layout.spooldir)


def test_program_default_delivery(new_instance):
    home = start(new_instance, "'| (echo \"$RECIPIENT|$HOME\"; cat) > $HOME/prog.out'")
    out = home / "prog.out"
    spool(new_instance, "alice@example.com")
    assert wait_for(lambda: out.exists() and done(new_instance)), new_instance.logs()
    first, rest = out.read_text().split("\n", 1)
    assert first == f"alice@example.com|{home}"          # $HOME is the user's, at delivery
    assert rest == BODY.decode()
    assert not list((home / "Maildir" / "new").iterdir())


def test_mbox_and_maildir_over_two_lines(new_instance):
    home = start(new_instance, '"./mbox\n./Maildir"')
    spool(new_instance, "alice@example.com")
    mbox = home / "mbox"
    assert wait_for(lambda: mbox.exists() and done(new_instance)), new_instance.logs()
    text = mbox.read_bytes()
    assert text.startswith(b"From carol@example.net ")
    assert b"Return-Path: <carol@example.net>\nDelivered-To: alice@example.com\n" in text
    [f] = (home / "Maildir" / "new").iterdir()
    assert f.read_bytes().endswith(BODY)


def test_a_dot_courier_file_still_wins(new_instance):
    home = start(new_instance, "'| cat > $HOME/never'")
    (home / ".courier").write_text("./Maildir/\n")
    (home / ".courier").chmod(0o644)
    spool(new_instance, "alice@example.com")
    assert wait_for(lambda: done(new_instance)), new_instance.logs()
    assert len(list((home / "Maildir" / "new").iterdir())) == 1
    assert not (home / "never").exists()


@pytest.mark.parametrize("bad", ["'|'", '""', "'./x\n|'"])
def test_bad_defaultdelivery_stops_courierd_with_file_and_line(new_instance, bad):
    from courier_deliver.config import load_config

    from libcourier.config.errors import ConfigError

    with open(new_instance.etc / "courierd", "a") as fh:
        fh.write(f"DEFAULTDELIVERY={bad}\n")
    with pytest.raises(ConfigError) as e:
        load_config(new_instance.etc)
    assert "courierd:" in str(e.value) and "DEFAULTDELIVERY" in str(e.value)
