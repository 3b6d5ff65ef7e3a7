"""IMAP_KEYWORDS=0 through a real imapd, and the same lines from Courier-IMAP 5.0.13's imapd
with IMAP_KEYWORDS=0 on the same folder (skipped where its binary is not unpacked):
keywords on disk are not read, PERMANENTFLAGS has no \\*, a STORE or APPEND naming a
keyword is refused whole with Courier's words, and the keyword files are left alone."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest

from libcourier.maildir.folder import Maildir
from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, deliver
from tests.integration.test_maildir_courier import COURIER_IMAPD, TIMEOUT, needs_courier

REFUSED = b"NO Error in IMAP command received by server."
SCRIPT = [b"a SELECT INBOX", b"b FETCH 1:* (FLAGS)", b"c STORE 1 +FLAGS (\\Seen Other)",
          b"d STORE 2 FLAGS (\\Flagged)", b"e SEARCH KEYWORD Work", b"f FETCH 1:2 (FLAGS)"]


@pytest.fixture
def inst(new_instance):
    with open(new_instance.etc / "imapd", "a") as f:
        f.write("\nIMAP_KEYWORDS=0\nIMAP_SPECIALUSE_CREATE=0\n")
    new_instance.adduser(USER, PASSWORD)
    md = new_instance.maildir(USER)
    for m in MSGS[:2]:
        deliver(md, m)
    box = Maildir(md)
    msgs = box.scan().messages
    box.change_keywords(list(msgs), "+", frozenset({"Work"}))
    new_instance.start("authdaemond", "imapd")
    return new_instance


def converse(sock: socket.socket, lines: list[bytes]) -> dict[bytes, list[bytes]]:
    """Each command's response lines (untagged ones and its tagged one), by tag."""
    f = sock.makefile("rb")
    out: dict[bytes, list[bytes]] = {}
    for line in lines:
        tag = line.split(b" ", 1)[0]
        sock.sendall(line + b"\r\n")
        got: list[bytes] = []
        while True:
            resp = f.readline()
            assert resp, got
            got.append(resp.rstrip(b"\r\n"))
            if resp.startswith(tag + b" "):
                break
        out[tag] = got
    return out


def our_answers(inst) -> dict[bytes, list[bytes]]:
    with socket.create_connection(("127.0.0.1", inst.port("imap")), timeout=IO_TIMEOUT) as s:
        s.recv(4096)
        return converse(s, [f"l LOGIN {USER} {PASSWORD}".encode(), *SCRIPT, b"z LOGOUT"])


def test_keywords_off(inst) -> None:
    got = our_answers(inst)
    sel = got[b"a"]
    assert b"* FLAGS (\\Draft \\Answered \\Flagged \\Deleted \\Seen \\Recent)" in sel
    assert b"* OK [PERMANENTFLAGS (\\Draft \\Answered \\Flagged \\Deleted \\Seen)] Limited" in sel
    assert not any(b"Work" in ln for ln in got[b"b"])
    assert got[b"c"] == [b"c " + REFUSED]
    assert got[b"d"][-1].startswith(b"d OK")
    assert got[b"e"] == [b"* SEARCH", got[b"e"][-1]]
    assert [re.sub(rb"^\* \d+ FETCH ", b"", ln) for ln in got[b"f"][:-1]] == \
        [b"(FLAGS ())", b"(FLAGS (\\Flagged))"]
    # The keyword files are left as they were: nothing was read or written.
    assert {m.keywords for m in Maildir(inst.maildir(USER)).scan().messages} == {frozenset({"Work"})}
    # APPEND with a keyword: refused, its literal read, the session goes on.
    with socket.create_connection(("127.0.0.1", inst.port("imap")), timeout=IO_TIMEOUT) as s:
        s.recv(4096)
        converse(s, [f"l LOGIN {USER} {PASSWORD}".encode()])
        s.sendall(b"g APPEND INBOX (Tag) {3+}\r\nabc\r\nh NOOP\r\n")
        f = s.makefile("rb")
        assert f.readline() == b"g " + REFUSED + b"\r\n"
        assert f.readline().startswith(b"h OK")


@needs_courier
def test_same_lines_as_courier(inst, tmp_path) -> None:
    ours = our_answers(inst)
    md = tmp_path / "Maildir"
    shutil.copytree(inst.maildir(USER), md)     # ours: Courier wants its own uid's Maildir
    env = {"AUTHENTICATED": "test", "HOME": str(tmp_path), "IMAP_KEYWORDS": "0",
           "PATH": "/usr/bin:/bin"}
    script = b"".join(line + b"\r\n" for line in SCRIPT) + b"z LOGOUT\r\n"
    r = subprocess.run([str(COURIER_IMAPD), str(md)], input=script, capture_output=True,
                       env=env, timeout=TIMEOUT, check=False)
    theirs = r.stdout.decode("latin-1")
    for line in (ours[b"a"][0], ours[b"a"][1], b"c " + REFUSED, b"* SEARCH"):
        assert line.decode() + "\r\n" in theirs, (line, theirs)
