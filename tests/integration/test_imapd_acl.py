"""IMAP ACL (RFC 4314, ACL2=UNION) against the real imapd, on `courierimapacl` as
Courier-IMAP 5.0.13 writes it: the replies of tests/data/courier-acl/transcript.txt
(recorded from Courier's imapd on the same commands), the files it leaves, and the
rights checks of RFC 4314 §4 (SELECT needs r, APPEND/COPY i, EXPUNGE e, CREATE c on
the parent, DELETE x, STORE s/t/w) with the owner cutting its own rights."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_imapd import MSGS, PASSWORD, USER, Raw, deliver

DATA = Path(__file__).resolve().parent.parent / "data" / "courier-acl"


def configure(inst, text: str) -> None:
    with open(inst.etc / "imapd", "a") as f:
        f.write("\n" + text + "\n")


@pytest.fixture
def raw(new_instance):
    new_instance.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(new_instance.maildir(USER), m)
    configure(new_instance, "IMAP_ACL=1")
    new_instance.start("authdaemond", "imapd")
    r = Raw(new_instance.port("imap"))
    r.line()
    assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    r.maildir = new_instance.maildir(USER)
    yield r
    r.close()


def transcript() -> list[tuple[bytes, list[bytes]]]:
    """(command line, reply lines) pairs of the recorded Courier session; Courier's
    login name "alice" is ours, alice@example.com."""
    pairs: list[tuple[bytes, list[bytes]]] = []
    for line in (DATA / "transcript.txt").read_bytes().splitlines():
        line = line.replace(b"alice", USER.encode())
        if line.startswith(b"C: "):
            pairs.append((line[3:], []))
        elif line.startswith(b"S: "):
            pairs[-1][1].append(line[3:] + b"\r\n")
    return pairs


def test_capability_advertises_acl(raw) -> None:
    out = raw.cmd(b"a", b"CAPABILITY")
    words = out[0].split()
    assert b"ACL" in words and b"ACL2=UNION" in words
    # Courier's place: after the IMAP_CAPABILITY list, before ID.
    assert words.index(b"ACL2=UNION") == words.index(b"ACL") + 1 < words.index(b"ID")


def test_courier_transcript(raw) -> None:
    """Every reply equals Courier's on the same commands, and the file equals the one
    Courier left (golden copy)."""
    assert raw.cmd(b"c", b"CREATE INBOX.Foo")[-1].startswith(b"c OK")
    for line, expected in transcript():
        tag = line.split(b" ", 1)[0]
        got = raw.cmd(tag, line.split(b" ", 1)[1])
        assert got == expected, line
    assert (raw.maildir / ".Foo" / "courierimapacl").read_bytes() == \
        (DATA / "after-transcript.Foo").read_bytes().replace(b"alice", USER.encode())
    assert not (raw.maildir / "courierimapacl").exists()   # INBOX kept its default


@pytest.mark.parametrize("how", ["pipelined", "bytewise"])
def test_courier_transcript_pipelined_and_bytewise(raw, how) -> None:
    """The same transcript sent in one write, and one byte per write."""
    assert raw.cmd(b"c", b"CREATE INBOX.Foo")[-1].startswith(b"c OK")
    pairs = transcript()
    data = b"".join(line + b"\r\n" for line, _ in pairs)
    if how == "pipelined":
        raw.send(data)
    else:
        for i in range(len(data)):
            raw.send(data[i:i + 1])
    for line, expected in pairs:
        assert raw.until(line.split(b" ", 1)[0]) == expected, line


def test_rfc4314_examples(raw) -> None:
    # RFC 4314 §3.1-3.5 examples, on our folder names; rights in Courier's letters.
    assert raw.cmd(b"A001", b"CREATE INBOX.Foo")[-1].startswith(b"A001 OK")
    assert raw.cmd(b"A002", b'SETACL INBOX.Foo Fred rwipslxetad')[-1] == \
        b"A002 OK ACLs updated.\r\n"
    out = raw.cmd(b"A003", b"GETACL INBOX.Foo")
    assert out[0] == (b'* ACL "INBOX.Foo" "owner" "acdilrsw" "administrators" "acdilrsw" '
                      b'"Fred" "adilprsw"\r\n')
    out = raw.cmd(b"A004", b"SETACL INBOX.Foo Fred -ws")
    assert out[-1] == b"A004 OK ACLs updated.\r\n"
    assert raw.cmd(b"A005", b"GETACL INBOX.Foo")[0].endswith(b'"Fred" "adilpr"\r\n')
    assert raw.cmd(b"A006", b"DELETEACL INBOX.Foo Fred")[-1] == b"A006 OK ACLs updated.\r\n"
    assert b"Fred" not in raw.cmd(b"A007", b"GETACL INBOX.Foo")[0]
    out = raw.cmd(b"a", b"LISTRIGHTS INBOX.Foo smith")
    assert out[0] == b'* LISTRIGHTS "INBOX.Foo" "smith" "" a c d i l p r s w\r\n'
    out = raw.cmd(b"b", b"MYRIGHTS INBOX")
    assert out == [b'* MYRIGHTS "INBOX" "acdilrsw"\r\n', b"b OK MYRIGHTS completed.\r\n"]
    # RFC 4314 §2.1: an unknown right is BAD, not silently dropped.
    assert raw.cmd(b"c", b"SETACL INBOX.Foo Fred rz")[-1].startswith(b"c BAD")
    assert raw.cmd(b"d", b"SETACL INBOX.Foo")[-1].startswith(b"d BAD")
    assert raw.cmd(b"e", b"GETACL INBOX.Nope")[-1] == \
        b"e NO Mailbox does not exist, or must be subscribed to.\r\n"
    # Courier refuses Courier's own key=value names from clients.
    assert raw.cmd(b"f", b"SETACL INBOX.Foo group=staff lr")[-1] == \
        b"f NO Invalid ACL identifier.\r\n"


def test_owner_and_administrators_keep_their_rights(raw) -> None:
    raw.cmd(b"a", b"CREATE INBOX.Foo")
    raw.cmd(b"b", b"MYRIGHTS INBOX.Foo")    # the first look saves the inherited list
    before = (raw.maildir / ".Foo" / "courierimapacl").read_bytes()
    for n, cmd in enumerate([b"SETACL INBOX.Foo owner lr", b"SETACL INBOX.Foo -anyone w",
                             b"DELETEACL INBOX.Foo owner", b"SETACL INBOX.Foo -owner a"]):
        tag = b"x%d" % n
        assert raw.cmd(tag, cmd)[-1] == tag + b" NO Cannot modify ACLs on this mailbox.\r\n"
    assert (raw.maildir / ".Foo" / "courierimapacl").read_bytes() == before


def test_rights_are_enforced(raw) -> None:
    assert raw.cmd(b"a", b"CREATE INBOX.Box")[-1].startswith(b"a OK")
    # Only lookup and administer left for the owner: no r, no i, no c, no x.
    assert raw.cmd(b"c", b"SETACL INBOX.Box owner al")[-1] == b"c OK ACLs updated.\r\n"
    assert raw.cmd(b"d", b"MYRIGHTS INBOX.Box")[0] == b'* MYRIGHTS "INBOX.Box" "al"\r\n'
    assert raw.cmd(b"e", b"SELECT INBOX.Box")[-1] == \
        b'e NO Access denied for SELECT/EXAMINE on INBOX.Box (ACL "r" required)\r\n'
    assert raw.cmd(b"e2", b"STATUS INBOX.Box (MESSAGES)")[-1] == \
        b'e2 NO Access denied for STATUS on INBOX.Box (ACL "r" required)\r\n'
    out = raw.cmd(b"e3", b'LIST "" "INBOX*" RETURN (STATUS (MESSAGES))')
    assert any(x.startswith(b'* STATUS "INBOX" ') or x.startswith(b"* STATUS INBOX ")
               for x in out) and not any(b"INBOX.Box (" in x for x in out), out
    assert raw.cmd(b"f", b"APPEND INBOX.Box {5+}\r\nhello")[-1] == \
        b'f NO Access denied for APPEND on INBOX.Box (ACL "i" required)\r\n'
    assert raw.cmd(b"g", b"CREATE INBOX.Box.Sub")[-1] == \
        b'g NO Access denied for CREATE on INBOX.Box (ACL "c" required)\r\n'
    assert raw.cmd(b"h", b"DELETE INBOX.Box")[-1] == \
        b'h NO Access denied for DELETE on INBOX.Box (ACL "x" required)\r\n'
    assert raw.cmd(b"i", b"SELECT INBOX")[-1].startswith(b"i OK [READ-WRITE]")
    assert raw.cmd(b"j", b"COPY 1 INBOX.Box")[-1] == \
        b'j NO Access denied for COPY on INBOX.Box (ACL "i" required)\r\n'
    # Read and see only: the folder opens read-only; flags it may not set are left.
    assert raw.cmd(b"k", b"SETACL INBOX.Box owner alrsi")[-1] == b"k OK ACLs updated.\r\n"
    assert raw.cmd(b"l", b"COPY 1 INBOX.Box")[-1].startswith(b"l OK")
    assert raw.cmd(b"m", b"SELECT INBOX.Box")[-1].startswith(b"m OK [READ-WRITE]")
    out = raw.cmd(b"n", b"STORE 1 +FLAGS (\\Seen \\Flagged \\Deleted)")
    assert out[-1].startswith(b"n OK")
    assert re.search(rb"FLAGS \(([^)]*)\)", b"".join(out)).group(1).split() == [b"\\Seen"]
    assert raw.cmd(b"o", b"EXPUNGE")[-1] == \
        b'o NO Access denied for EXPUNGE on current mailbox (ACL "e" required)\r\n'
    # FLAGS replaces only what the user may change: \Seen goes, \Answered is not set.
    out = raw.cmd(b"p", b"STORE 1 FLAGS (\\Answered)")
    assert out[-1].startswith(b"p OK")
    assert re.search(rb"FLAGS \(([^)]*)\)", b"".join(out)).group(1) == b""
    assert raw.cmd(b"p2", b"SETACL INBOX.Box owner alrsiwt")[-1].startswith(b"p2 OK")
    assert raw.cmd(b"p3", b"SELECT INBOX.Box")[-1].startswith(b"p3 OK")
    assert raw.cmd(b"p4", b"STORE 1 +FLAGS (\\Deleted \\Flagged)")[-1].startswith(b"p4 OK")
    assert raw.cmd(b"p5", b"SETACL INBOX.Box owner alrsiw")[-1].startswith(b"p5 OK")
    assert raw.cmd(b"p5a", b"SELECT INBOX.Box")[-1].startswith(b"p5a OK")
    out = raw.cmd(b"p5b", b"STORE 1 FLAGS (\\Seen)")   # \Deleted is held: no t right
    assert re.search(rb"FLAGS \(([^)]*)\)", b"".join(out)).group(1).split() == \
        [b"\\Deleted", b"\\Seen"]
    assert raw.cmd(b"p5c", b"UNSELECT")[-1].startswith(b"p5c OK")
    assert raw.cmd(b"p6", b"RENAME INBOX.Box INBOX.Box2")[-1] == \
        b'p6 NO Access denied for RENAME on INBOX.Box (ACL "x" required)\r\n'
    raw.cmd(b"p7", b"CREATE INBOX.Other")
    assert raw.cmd(b"p8", b"RENAME INBOX.Other INBOX.Box.Other")[-1] == \
        b'p8 NO Access denied for RENAME on INBOX.Box (ACL "c" required)\r\n'
    assert raw.cmd(b"q", b"SETACL INBOX.Box owner alr")[-1] == b"q OK ACLs updated.\r\n"
    assert raw.cmd(b"r", b"EXAMINE INBOX")[-1].startswith(b"r OK")
    assert raw.cmd(b"s", b"SELECT INBOX.Box")[-1].startswith(b"s OK [READ-ONLY]")


COURIER_IMAPD = Path(os.environ.get("COURIER_IMAPD",
                                    "/var/tmp/mail-anchors/courier/usr/bin/imapd"))


@pytest.mark.skipif(not os.access(COURIER_IMAPD, os.X_OK),
                    reason=f"Courier's imapd not unpacked at {COURIER_IMAPD}")
def test_courier_reads_what_we_wrote(raw, tmp_path) -> None:
    """Our courierimapacl files, read by Courier's own imapd, give its same answers."""
    script = [b"SETACL INBOX.Foo bob lrsd", b"SETACL INBOX.Foo -anyone p",
              b"SETACL INBOX.Foo " + USER.encode() + b" +lrsiw",
              b"SETACL INBOX.Foo -" + USER.encode() + b" w", b"SETACL INBOX.Foo.Sub carol lr"]
    raw.cmd(b"a", b"CREATE INBOX.Foo")
    raw.cmd(b"b", b"CREATE INBOX.Foo.Sub")
    for n, line in enumerate(script):
        assert raw.cmd(b"s%d" % n, line)[-1] == b"s%d OK ACLs updated.\r\n" % n
    queries = [b"GETACL INBOX.Foo", b"MYRIGHTS INBOX.Foo", b"GETACL INBOX.Foo.Sub",
               b"MYRIGHTS INBOX.Foo.Sub", b"GETACL INBOX"]
    ours = b"".join(b"".join(raw.cmd(b"q%d" % n, q)) for n, q in enumerate(queries))
    # A copy owned by us: Courier insists that the Maildir is its process's own.
    md = tmp_path / "Maildir"
    shutil.copytree(raw.maildir, md, symlinks=True)
    env = {"AUTHENTICATED": USER, "HOME": str(tmp_path), "IMAP_ACL": "1",
           "PATH": "/usr/bin:/bin", "HOSTNAME": "courier.test"}
    stdin = b"".join(b"q%d %s\r\n" % (n, q) for n, q in enumerate(queries))
    r = subprocess.run([str(COURIER_IMAPD), str(md)], input=stdin,
                       capture_output=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert r.stdout.startswith(b"* PREAUTH"), (r.stdout, r.stderr)
    theirs = r.stdout.split(b"\r\n", 1)[1]      # after * PREAUTH
    assert theirs == ours, (theirs, ours)


def test_myrights_code_at_select_and_on_change(raw) -> None:
    # Courier's `* OK [MYRIGHTS "..."] ACL` at SELECT and when the selected folder's
    # rights change; the session then checks the new rights.
    out = raw.cmd(b"a", b"SELECT INBOX")
    assert b'* OK [MYRIGHTS "acdilrsw"] ACL\r\n' in out
    out = raw.cmd(b"b", b"SETACL INBOX owner alrswi")
    assert out == [b'* OK [MYRIGHTS "ailrsw"] ACL\r\n', b"b OK ACLs updated.\r\n"]
    assert raw.cmd(b"c", b"EXPUNGE")[-1] == \
        b'c NO Access denied for EXPUNGE on current mailbox (ACL "e" required)\r\n'
    assert raw.cmd(b"d", b"SETACL INBOX bob lr") == [b"d OK ACLs updated.\r\n"]   # mine unchanged
    assert raw.cmd(b"e", b"SETACL INBOX owner +cetx")[0] == b'* OK [MYRIGHTS "acdilrsw"] ACL\r\n'
    assert raw.cmd(b"f", b"EXPUNGE")[-1].startswith(b"f OK")


def test_deleted_parent_keeps_its_acl(raw) -> None:
    # Courier: INBOX.P deleted while INBOX.P.C exists; P's list moves to
    # courierimaphieracl/P, and a new child of P inherits it.
    for n, line in enumerate([b"CREATE INBOX.P", b"SETACL INBOX.P bob lr", b"CREATE INBOX.P.C",
                              b"DELETE INBOX.P", b"CREATE INBOX.P.D"]):
        assert raw.cmd(b"t%d" % n, line)[-1].startswith(b"t%d OK" % n)
    assert b"user=bob lr\n" in (raw.maildir / "courierimaphieracl" / "P").read_bytes()
    assert raw.cmd(b"g", b"GETACL INBOX.P.D")[0].endswith(b'"bob" "lr"\r\n')
