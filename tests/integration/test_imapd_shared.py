"""Courier's filesystem shared folders through a real imapd: a sharable maildir made with
our `maildirmake -S` / `-s write -f Weekly`, linked into two users' Maildirs with
`maildirmake --add` (and the config directory's `maildirshared`), served as
`shared.<nick>.Weekly` with each user's own flags, as Courier's imapd does."""

from __future__ import annotations

import imaplib
import os
import re
from pathlib import Path

import pytest
from courier_deliver import maildirmake

from tests.integration.test_imapd import IO_TIMEOUT, PASSWORD, USER, deliver

BOB, BOB_PASSWORD = "bob@example.net", "bob-secret"
NAME = "shared.notices.Weekly"


@pytest.fixture
def inst(new_instance):
    with open(new_instance.etc / "imapd", "a") as f:
        f.write("\nIMAP_SPECIALUSE_CREATE=0\n")
    new_instance.adduser(USER, PASSWORD)
    new_instance.adduser(BOB, BOB_PASSWORD)
    sh = new_instance.root / "mail" / "Maildir-shared"
    assert maildirmake.main(["-S", str(sh)]) == 0
    assert maildirmake.main(["-s", "write", "-f", "Weekly", str(sh)]) == 0
    owner = os.stat(new_instance.root / "mail")
    for top, dirs, files in os.walk(sh):
        for n in [*dirs, *files]:
            os.chown(os.path.join(top, n), owner.st_uid, owner.st_gid)
    os.chown(sh, owner.st_uid, owner.st_gid)
    for user in (USER, BOB):
        assert maildirmake.main(["--add", f"notices={sh}", str(new_instance.maildir(user))]) == 0
    deliver(sh / ".Weekly", b"From: boss@example.com\nSubject: week 1\n\nfirst\n")
    deliver(sh / ".Weekly", b"From: boss@example.com\nSubject: week 2\n\nsecond\n")
    new_instance.start("authdaemond", "imapd")
    new_instance.sharable = sh
    return new_instance


def login(inst, user: str = USER, password: str = PASSWORD) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(user, password)[0] == "OK"
    return c


def listing(c: imaplib.IMAP4, cmd: str = "list") -> dict[str, str]:
    typ, data = getattr(c, cmd)('""', "*")
    assert typ == "OK", data
    out = {}
    for line in data:
        if line is None:
            continue            # imaplib's "no responses"
        m = re.match(rb'\(([^)]*)\) "\." "?([^"]*)"?', line)
        assert m, line
        out[m.group(2).decode()] = m.group(1).decode()
    return out


def flags(c: imaplib.IMAP4) -> dict[int, str]:
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    out = {}
    for line in data:
        m = re.match(rb"\d+ \(UID (\d+) FLAGS \(([^)]*)\)\)", line)
        assert m, line
        out[int(m.group(1))] = " ".join(f for f in m.group(2).decode().split() if f != "\\Recent")
    return out


def test_shared_folder_lifecycle(inst) -> None:
    sh: Path = inst.sharable
    alice, bob = login(inst), login(inst, BOB, BOB_PASSWORD)
    try:
        boxes = listing(alice)
        assert boxes["shared"] == "\\Noselect \\HasChildren"
        assert boxes["shared.notices"] == "\\Noselect \\HasChildren"
        assert boxes[NAME] == "\\HasNoChildren"
        assert NAME not in listing(alice, "lsub")
        # SELECT makes the private copy (Courier subscribes on first use).
        typ, data = alice.select(NAME)
        assert typ == "OK" and data == [b"2"]
        assert NAME in listing(alice, "lsub")
        priv = inst.maildir(USER) / "shared-folders" / "notices" / "Weekly"
        assert os.readlink(priv / "shared") == f"{sh}/.Weekly"
        assert alice.uid("STORE", "1", "+FLAGS", "(\\Flagged \\Seen)")[0] == "OK"
        # Courier-IMAP 5.0.13's answers for the legacy shared namespace's fixed ACL.
        assert alice.myrights(NAME) == ("OK", [b'"shared.notices.Weekly" "dilrsw"'])
        assert alice.setacl(NAME, "bob", "lr") == ("NO", [b"Cannot set ACLs for this mailbox"])
        assert alice.getacl(NAME)[0] == "NO"
        # Flags are each user's own.
        assert bob.select(NAME) == ("OK", [b"2"])
        assert flags(bob) == {1: "", 2: ""}
        assert flags(alice) == {1: "\\Flagged \\Seen", 2: ""}
        # A message delivered to the sharable folder reaches both on NOOP.
        deliver(sh / ".Weekly", b"Subject: week 3\n\nthird\n")
        typ, _ = alice.noop()
        assert alice.untagged_responses["EXISTS"][-1] == b"3"
        typ, data = alice.uid("FETCH", "3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"week 3" in data[0][1]
        # Expunge removes the message from the sharable folder; the others see it go.
        assert alice.uid("STORE", "2", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert alice.expunge()[0] == "OK"
        assert len(os.listdir(sh / ".Weekly" / "cur")) == 2
        bob.noop()
        assert bob.untagged_responses["EXPUNGE"][-1] == b"2"
        assert sorted(flags(bob)) == [1, 3]
        # APPEND stores into the sharable folder (as Courier); APPENDUID is the UID the
        # client sees in its own copy. Bob sees the message, without alice's flags.
        typ, data = alice.append(NAME, "(\\Seen $Work)", None, b"Subject: x\r\n\r\ny\r\n")
        assert typ == "OK", data
        m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        assert m and int(m.group(2)) == 4
        alice.noop()
        assert flags(alice)[4] == "\\Seen $Work"
        assert len(os.listdir(sh / ".Weekly" / "cur")) == 3
        assert all(os.stat(p).st_mode & 0o044 == 0o044 for p in (sh / ".Weekly" / "cur").iterdir())
        bob.noop()
        assert flags(bob)[4] == ""
        # COPY from INBOX into the shared folder, then of a shared message into INBOX.
        deliver(inst.maildir(USER), b"Subject: mine\n\nfrom my inbox\n")
        assert alice.select("INBOX")[0] == "OK"
        assert alice.uid("COPY", "1", NAME)[0] == "OK"
        assert alice.select(NAME) == ("OK", [b"4"])
        assert alice.uid("COPY", "4", "INBOX")[0] == "OK"
        assert alice.status(NAME, "(MESSAGES UNSEEN)") == \
            ("OK", [b"shared.notices.Weekly (MESSAGES 4 UNSEEN 2)"])
        assert not (priv / "maildirsize").exists()
        assert alice.close()[0] == "OK"
        # UNSUBSCRIBE drops the private copy (and its flags); the sharable folder stays.
        assert alice.unsubscribe(NAME)[0] == "OK"
        assert not priv.exists() and (sh / ".Weekly" / "cur").is_dir()
        assert NAME not in listing(alice, "lsub")
        assert alice.unsubscribe(NAME)[0] == "OK"          # Courier: "Already unsubscribed"
        assert alice.subscribe(NAME)[0] == "OK"
        assert NAME in listing(alice, "lsub")
        # DELETE of a shared folder unsubscribes it, as Courier's; not while selected.
        assert alice.select(NAME)[0] == "OK"
        assert alice.delete(NAME)[0] == "NO"
        assert alice.close()[0] == "OK"
        assert alice.delete(NAME)[0] == "OK"
        assert not priv.exists() and (sh / ".Weekly" / "cur").is_dir()
        assert alice.select('"shared.notices.Nothing"')[0] == "NO"
        assert not (inst.maildir(USER) / "shared-folders" / "notices" / "Nothing").exists()
    except Exception:
        print(inst.logs())
        raise
    finally:
        alice.logout()
        bob.logout()


def test_global_maildirshared(inst) -> None:
    (inst.etc / "maildirshared").write_text(f"firm\t{inst.sharable}\n")
    c = login(inst)
    try:
        boxes = listing(c)
        assert "shared.firm.Weekly" in boxes and NAME in boxes
        assert c.select("shared.firm.Weekly") == ("OK", [b"2"])
    finally:
        c.logout()


def test_idle_sees_the_sharable_folder(inst) -> None:
    """IDLE watches the sharable folder too: a delivery there is told within seconds,
    well before IMAP_IDLE_TIMEOUT's full rescan (60 s)."""
    import socket
    import time
    with socket.create_connection(("127.0.0.1", inst.port("imap")), timeout=IO_TIMEOUT) as s:
        f = s.makefile("rb")
        f.readline()
        for line in (f"a LOGIN {USER} {PASSWORD}".encode(), f"b SELECT {NAME}".encode()):
            s.sendall(line + b"\r\n")
            tag = line[:1]
            while not f.readline().startswith(tag + b" "):
                pass
        s.sendall(b"c IDLE\r\n")
        assert f.readline().startswith(b"+ ")
        deliver(inst.sharable / ".Weekly", b"Subject: during idle\n\nnews\n")
        deadline = time.monotonic() + 20
        got = b""
        while time.monotonic() < deadline and b"3 EXISTS" not in got:
            got += f.readline()
        assert b"* 3 EXISTS" in got
        s.sendall(b"DONE\r\n")
        while not (line := f.readline()).startswith(b"c "):
            assert line
        assert line.startswith(b"c OK")


def test_quota_moving_out_of_a_shared_folder(inst) -> None:
    """Shared folders count toward no quota: a message moved from one into INBOX is
    added to maildirsize (not netted out as a move between counted folders)."""
    md = inst.maildir(USER)
    owner = os.stat(md)
    assert maildirmake.main(["-q", "100000S,100C", str(md)]) == 0
    os.chown(md / "maildirsize", owner.st_uid, owner.st_gid)
    c = login(inst)
    try:
        assert c.select(NAME)[0] == "OK"
        assert c.uid("MOVE", "1", "INBOX")[0] == "OK"
    finally:
        c.logout()
    lines = (md / "maildirsize").read_text().splitlines()
    # Courier's maildirsize: the quota line, the usage lines; the move added one message.
    assert sum(int(ln.split()[1]) for ln in lines[1:]) == 1, lines
