"""Mailbox management against a real imapd with imaplib (RFC 3501 §6.3, §6.4.7; RFC 4315
UIDPLUS; RFC 6851 MOVE), and the layout it leaves on disk: Courier's Maildir++ as
`maildirmake -f` makes it (FORMATS.md §3.3)."""

from __future__ import annotations

import imaplib
import os
import re
import time

import pytest

from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, deliver

MSG = b"From: x@example.net\r\nSubject: appended\r\n\r\nbody line\r\n"


@pytest.fixture
def inst(new_instance):
    # These tests make and rename INBOX.Sent themselves: no special-use folders at login.
    with open(new_instance.etc / "imapd", "a") as f:
        f.write("\nIMAP_SPECIALUSE_CREATE=0\n")
    new_instance.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(new_instance.maildir(USER), m)
    new_instance.start("authdaemond", "imapd")
    return new_instance


def client(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(USER, PASSWORD)[0] == "OK"
    return c


def names(c: imaplib.IMAP4, cmd: str = "list", pattern: str = "*") -> dict[str, str]:
    typ, data = getattr(c, cmd)('""', pattern)
    assert typ == "OK"
    out = {}
    for line in data:
        if line is None:
            continue
        m = re.match(rb'\(([^)]*)\) "\." (.*)', line)
        assert m, line
        out[m.group(2).strip(b'"').decode()] = m.group(1).decode()
    return out


def test_create_list_delete_rename_subscribe(inst) -> None:
    md = inst.maildir(USER)
    c = client(inst)
    try:
        assert b"MOVE" in c.capability()[1][0]
        assert c.create("INBOX.Sent")[0] == "OK"
        assert c.create("INBOX.Sent.2024")[0] == "OK"
        assert c.create('"INBOX.Entw&APw-rfe"')[0] == "OK"
        assert c.create("INBOX.Sent")[0] == "NO"
        # On disk exactly as maildirmake -f: .Sent.2024/{cur,new,tmp,maildirfolder}, UTF-8 name.
        assert sorted(os.listdir(md / ".Sent.2024")) == ["cur", "maildirfolder", "new", "tmp"]
        assert (md / ".Entwürfe" / "maildirfolder").is_file()
        st = os.stat(md / ".Sent")
        assert (st.st_uid, st.st_gid) == (os.stat(md).st_uid, os.stat(md).st_gid)
        assert names(c) == {"INBOX": "\\HasChildren", "INBOX.Entw&APw-rfe": "\\HasNoChildren",
                            "INBOX.Sent": "\\HasChildren \\Sent",     # RFC 6154
                            "INBOX.Sent.2024": "\\HasNoChildren"}
        assert set(names(c, pattern="INBOX.%")) == {"INBOX.Entw&APw-rfe", "INBOX.Sent"}

        assert c.subscribe("INBOX.Sent")[0] == "OK"
        assert c.subscribe("INBOX.Nope")[0] == "NO"
        assert (md / "courierimapsubscribed").read_text() == "INBOX.Sent\n"
        assert names(c, "lsub") == {"INBOX.Sent": "\\HasChildren"}

        assert c.rename("INBOX.Sent", "INBOX.Archive")[0] == "OK"
        assert sorted(p.name for p in md.iterdir() if p.name.startswith(".")) == \
            [".Archive", ".Archive.2024", ".Entwürfe"]
        assert (md / "courierimapsubscribed").read_text() == "INBOX.Archive\n"
        assert c.delete("INBOX")[0] == "NO"
        assert c.delete("INBOX.Archive")[0] == "OK"          # its child stays
        assert names(c)["INBOX.Archive"] == "\\Noselect \\HasChildren"
        assert c.select("INBOX.Archive")[0] == "NO"
        assert c.unsubscribe("INBOX.Archive")[0] == "OK"
        assert c.delete("INBOX.Missing")[0] == "NO"
        assert c.noop()[0] == "OK"
    except Exception:
        print(inst.logs())
        raise
    finally:
        c.logout()


def test_append_copy_move_uidplus(inst) -> None:
    md = inst.maildir(USER)
    c = client(inst)
    try:
        assert c.create("INBOX.Dst")[0] == "OK"
        date = imaplib.Time2Internaldate(time.mktime((2020, 5, 17, 12, 0, 0, 0, 0, -1)))
        typ, data = c.append("INBOX.Dst", "(\\Seen \\Flagged)", date, MSG)
        assert typ == "OK"
        m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
        assert m and m.group(2) == b"1", data
        uidv = int(m.group(1))
        typ, data = c.append("INBOX.Nowhere", None, None, MSG)
        assert typ == "NO" and b"TRYCREATE" in data[0]

        assert c.select("INBOX")[0] == "OK"
        typ, data = c.copy("1:2", "INBOX.Dst")
        assert typ == "OK" and re.search(rb"\[COPYUID %d 1:2 2:3\]" % uidv, data[0]), data
        typ, data = c.copy("1", "INBOX.Nowhere")
        assert typ == "NO" and b"TRYCREATE" in data[0]
        typ, data = c.uid("MOVE", "3", "INBOX.Dst")
        assert typ == "OK", data
        assert c.untagged_responses.get("EXPUNGE") == [b"3"]
        assert re.search(rb"COPYUID %d 3 4" % uidv, b" ".join(c.untagged_responses.get("OK", [])))
        assert c.select("INBOX")[1] == [b"2"]

        typ, data = c.select("INBOX.Dst")
        assert typ == "OK" and data == [b"4"]
        typ, data = c.fetch("1:4", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        assert typ == "OK"
        bodies = [d[1] for d in data if isinstance(d, tuple)]
        assert bodies[0] == MSG
        assert bodies[1:] == [m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for m in MSGS]
        assert b"\\Flagged \\Seen" in data[0][0] and b"17-May-2020 12:00:00" in data[0][0]
        # COPY shares the file (a hard link): one inode, two names.
        files = sorted(os.listdir(md / ".Dst" / "cur"))
        assert len(files) == 4 and sum(os.stat(md / ".Dst/cur" / f).st_nlink == 2 for f in files) == 2
        # APPEND to the selected mailbox announces the new message (EXISTS) with the reply.
        c.untagged_responses.pop("EXISTS", None)
        typ, data = c.append("INBOX.Dst", None, None, MSG)
        assert typ == "OK" and b"APPENDUID %d 5" % uidv in data[0]
        assert c.untagged_responses.get("EXISTS") == [b"5"]
    finally:
        c.logout()


def test_rename_inbox(inst) -> None:
    md = inst.maildir(USER)
    c = client(inst)
    try:
        assert c.rename("INBOX", "INBOX.Old")[0] == "OK"
        assert c.select("INBOX")[1] == [b"0"]
        assert c.select("INBOX.Old")[1] == [b"3"]
        assert (md / ".Old" / "maildirfolder").is_file()
    finally:
        c.logout()


def test_selected_folder_deleted_by_another_session(inst) -> None:
    a, b = client(inst), client(inst)
    try:
        assert a.create("INBOX.Tmp")[0] == "OK"
        assert a.select("INBOX.Tmp")[0] == "OK"
        assert a.rename("INBOX.Tmp", "INBOX.Other")[0] == "NO"     # our own selected folder
        assert a.delete("INBOX.Tmp")[0] == "NO"
        assert b.delete("INBOX.Tmp")[0] == "OK"
        with pytest.raises(imaplib.IMAP4.abort):
            a.noop()                                                # BYE, not a traceback
        assert "Traceback" not in (inst.root / "var/log/imapd.log").read_text()
    finally:
        b.logout()
