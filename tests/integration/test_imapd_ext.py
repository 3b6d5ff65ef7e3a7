"""IMAP extensions against the real imapd (`courier start authdaemond imapd`), driven by
imaplib and raw bytes: CAPABILITY and LOGINDISABLED from the imapd file as Courier
builds them, ID before login, ENABLE UTF8=ACCEPT, UNSELECT, QUOTA from maildirsize
(and APPEND refused over quota), SPECIAL-USE folders made at login,
IMAP_MOVE_EXPUNGE_TO_TRASH and IMAP_EMPTYTRASH, in the child that runs as the user."""

from __future__ import annotations

import imaplib
import os
import re

import pytest

from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, Raw, deliver, unverified


def configure(inst, text: str) -> None:
    with open(inst.etc / "imapd", "a") as f:
        f.write("\n" + text + "\n")


@pytest.fixture
def inst(new_instance):
    new_instance.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(new_instance.maildir(USER), m)
    return new_instance


def client(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(USER, PASSWORD)[0] == "OK"
    return c


def test_capability_logindisabled_and_id_before_login(inst) -> None:
    configure(inst, 'IMAP_TLS_REQUIRED=1\nIMAP_CAPABILITY="IMAP4rev1 UIDPLUS IDLE ACL QUOTA"\n'
                    'IMAP_CAPABILITY_TLS="$IMAP_CAPABILITY AUTH=PLAIN"')
    inst.start("authdaemond", "imapd")
    r = Raw(inst.port("imap"))
    try:
        # Courier's order: the list (ACL dropped: not implemented), ID, STARTTLS
        # LOGINDISABLED, ENABLE UTF8=ACCEPT; no AUTH= in the clear.
        assert r.line() == (b"* OK [CAPABILITY IMAP4rev1 UIDPLUS IDLE QUOTA ID STARTTLS "
                            b"LOGINDISABLED ENABLE UTF8=ACCEPT] courier-py IMAP ready\r\n")
        out = r.cmd(b"a", b'ID ("name" "raw test" "version" NIL)')
        assert out[0].startswith(b'* ID ("name" "courier-py" "version" "') and \
            out[-1] == b"a OK ID completed\r\n"
        out = r.cmd(b"b", f"LOGIN {USER} {PASSWORD}".encode())
        assert out[-1].startswith(b"b NO [PRIVACYREQUIRED]")
        assert r.cmd(b"c", b"STARTTLS")[-1].startswith(b"c OK")
        r.sock = unverified().wrap_socket(r.sock, server_hostname="mx.test")
        r.file = r.sock.makefile("rb")
        out = r.cmd(b"d", b"CAPABILITY")
        assert out[0] == (b"* CAPABILITY IMAP4rev1 UIDPLUS IDLE QUOTA AUTH=PLAIN ID "
                          b"ENABLE UTF8=ACCEPT\r\n")
        assert r.cmd(b"e", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"e OK")
    finally:
        r.close()
    text = (inst.root / "var/log/imapd.log").read_text()
    assert re.search(r"ID, user=, ip=\[127\.0\.0\.1\], port=\[\d+\], name=raw test, "
                     r"version=\(nil\)", text)


def test_extensions_as_the_user(inst) -> None:
    md = inst.maildir(USER)
    # A message in the Trash: IMAP_EMPTYTRASH=7 goes by ctime (the time it was moved
    # there, Courier's rule), which a test cannot set back: it is young and stays.
    # (The purge of old ones is in tests/unit/test_imap_ext.py with a clock.)
    for d in (".Trash", ".Trash/cur", ".Trash/new", ".Trash/tmp"):
        os.mkdir(md / d)
        os.chown(md / d, md.stat().st_uid, md.stat().st_gid)
    old = md / ".Trash" / "cur" / "1600000000.M1P1.mx.test,S=10:2,S"
    old.write_bytes(b"Subject: x")
    os.chown(old, md.stat().st_uid, md.stat().st_gid)
    sizes = sum(len(m) for m in MSGS)
    (md / "maildirsize").write_bytes(b"%dS,10C\n%12d %12d\n" % (sizes + 100, sizes, len(MSGS)))
    os.chown(md / "maildirsize", md.stat().st_uid, md.stat().st_gid)
    configure(inst, "IMAP_MOVE_EXPUNGE_TO_TRASH=1\nIMAP_EMPTYTRASH=7")
    inst.start("authdaemond", "imapd")
    c = client(inst)
    try:
        assert b"XMAGICTRASH" in c.capability()[1][0]
        assert old.exists()
        typ, data = c.list('""', "*")
        assert b'(\\HasNoChildren \\Sent) "." INBOX.Sent' in data
        assert b'(\\HasNoChildren \\Trash) "." INBOX.Trash' in data
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK" and data == [[b'INBOX "ROOT"'],
                                        [b'"ROOT" (STORAGE 1 1 MESSAGE 3 10)']]
        big = b"Subject: big\r\n\r\n" + b"y" * 200 + b"\r\n"
        typ, data = c.append("INBOX", "", None, big)
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        assert c._simple_command("ENABLE", "UTF8=ACCEPT")[0] == "OK"
        assert c.untagged_responses.pop("ENABLED") == [b"UTF8=ACCEPT"]
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Deleted)")
        assert c._simple_command("UNSELECT")[0] == "OK"
        assert c.status("INBOX", "(MESSAGES)")[1] == [b"INBOX (MESSAGES 3)"]
        c.select("INBOX")
        assert c.expunge()[1] == [b"1"]
    finally:
        c.logout()
    # The expunged message went to the Trash as the user, without \Deleted; the quota
    # lost it (the Trash does not count).
    trash = [n for n in os.listdir(md / ".Trash" / "cur") if n != old.name]
    assert len(trash) == 1 and not trash[0].split(":2,")[1].count("T")
    assert (md / ".Trash" / "cur" / trash[0]).stat().st_uid == md.stat().st_uid
    data = (md / "maildirsize").read_bytes()
    assert data.endswith(b"%12d %12d\n" % (-len(MSGS[0]), -1))
