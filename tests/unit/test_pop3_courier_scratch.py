"""Our pop3d against Courier's own pop3d on a Maildir Courier had never seen.

tests/data/pop3-golden/courier-scratch.json was recorded by running Debian's
courierpop3d (courier-pop 5.0.13) on a scratch Maildir (record_courier_scratch.py
beside it): odd names for its sort, 8-bit headers, a message without a final
newline, CRLF, an empty file; then deletions, later arrivals, a restart. Here
the same sessions run through our core and Maildrop (the clock set to the
UIDVALIDITY Courier took from its clock) and must give the same STAT, LIST,
UIDL, RETR and TOP bytes (to a client without UTF8: Courier's RFC 6856 notice
around 8-bit headers, boundary aside), leave the same file names, and write a
courierpop3dsizelist byte-identical to Courier's, only when Courier rewrote
its own. Each side also starts from the other's list. When Courier's binary is
on this machine, it is run on the Maildir we left, too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from courier_pop3d import core as c
from courier_pop3d.maildrop import Maildrop

from libcourier.maildir import pop3sizelist
from libcourier.proto import NEED_DATA

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "pop3-golden"
DATA = json.loads((GOLDEN / "courier-scratch.json").read_text())
COURIERPOP3D = "/var/tmp/mail-anchors/courier/usr/lib/courier/courier/courierpop3d"
UIDV = int(DATA["sessions"][0]["sizelist"].split("\n", 1)[0].split()[2])
MULTI = {"LIST", "UIDL", "RETR", "TOP", "CAPA"}


def build(root: Path) -> Path:
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for name_hex, data_hex in DATA["messages"]:
        (root / os.fsdecode(bytes.fromhex(name_hex))).write_bytes(bytes.fromhex(data_hex))
    return root


def add_files(root: Path, session: dict) -> None:
    for name_hex, data_hex in session["add"]:
        (root / os.fsdecode(bytes.fromhex(name_hex))).write_bytes(bytes.fromhex(data_hex))


def split_replies(commands: list[str], reply: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, multi-line body) per command; the greeting/login line first removed."""
    lines = reply.split(b"\r\n")
    assert lines[0].startswith(b"+OK"), lines[0]
    i, out = 1, []
    for cmd in commands:
        status = lines[i]
        i += 1
        body: list[bytes] = []
        verb = cmd.split()[0]
        if status.startswith(b"+OK") and verb in MULTI and (verb in ("RETR", "TOP")
                                                            or len(cmd.split()) == 1):
            while lines[i] != b".":
                body.append(lines[i])
                i += 1
            i += 1
        out.append((status, b"\r\n".join(body)))
    return out


def run_ours(root: Path, commands: list[str], utf8: bool = True) -> bytes:
    """A logged-in session of our core over our Maildrop, as session.py drives it.

    utf8: the client sends UTF8 first (what courierpop3login tells Courier's pop3d
    with UTF8=1)."""
    core = c.Pop3Server(c.Options())
    out = bytearray()
    core.data_to_send()                       # our greeting: Courier's binary has none
    drop = Maildrop(root)
    drop.lock()
    core.receive_data((b"UTF8\r\n" if utf8 else b"") + b"USER golden\r\nPASS x\r\n"
                      + "".join(x + "\r\n" for x in commands).encode())
    try:
        while True:
            ev = core.next_event()
            out += core.data_to_send()
            if ev is NEED_DATA:
                break
            match ev:
                case c.AuthRequest():
                    core.login_ok(drop.open(now=UIDV))
                case c.Retrieve(index=i, lines=k, wrap=wrap):
                    f = drop.open_message(i)
                    wrapper = c.unicode_wrapper(f"=_{os.getpid()}-1") if wrap else None
                    core.respond_retrieve(f is not None, sum(map(len, wrapper or ())))
                    out += core.data_to_send()
                    assert f is not None
                    with f:
                        out += b"".join(drop.stream(f, k, wrapper))
                    if k is None:
                        drop.mark_seen(i)
                case c.Update(deleted=d):
                    core.update_done(drop.commit(d))
                case c.Closed():
                    out += core.data_to_send()
                    break
    finally:
        drop.unlock()
    # Drop UTF8's and USER's "+OK" so the reply starts, as Courier's, with the login line.
    return bytes(out).split(b"\r\n", 2 if utf8 else 1)[-1]


def files(root: Path) -> list[str]:
    return [os.fsencode(f"{d}/{n}").hex() for d in ("new", "cur") for n in sorted(
        os.listdir(root / d), key=os.fsencode)]


BOUNDARY = re.compile(rb"=_\d+-\d+")


def unbound(status: bytes, body: bytes) -> tuple[bytes, bytes]:
    """Courier's notice carries "=_<pid>-<time>" four times, and its length is in RETR's
    size: put a fixed boundary in both so the two servers' replies compare."""
    m = BOUNDARY.search(body)
    if m is None:
        return status, body
    if status.endswith(b"octets follow."):
        n = int(status.split()[1]) - 4 * len(m.group()) + 4 * len(b"=_B")
        status = b"+OK %d octets follow." % n
    return status, BOUNDARY.sub(b"=_B", body)


def compare(session: dict, ours: bytes) -> None:
    theirs = [unbound(*r) for r in
              split_replies(session["commands"], bytes.fromhex(session["reply_hex"]))]
    mine = [unbound(*r) for r in split_replies(session["commands"], ours)]
    for cmd, (ts, tb), (ms, mb) in zip(session["commands"], theirs, mine, strict=True):
        verb = cmd.split()[0]
        assert ms[:3] == ts[:3], (cmd, ms, ts)
        if verb == "STAT" or (verb == "RETR" and ts.startswith(b"+OK")):
            assert ms == ts, cmd                  # "+OK n size", "+OK size octets follow."
        assert mb == tb, cmd


def sizelist_bytes(root: Path) -> bytes | None:
    try:
        return (root / pop3sizelist.FILENAME).read_bytes()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("start_from_courier_list", [False, True])
def test_same_uidl_list_retr_and_sizelist_as_courier(tmp_path: Path,
                                                     start_from_courier_list: bool) -> None:
    root = build(tmp_path / "Maildir")
    prev_list: str | None = None
    for n, session in enumerate(DATA["sessions"]):
        add_files(root, session)
        if start_from_courier_list and prev_list is not None:
            # Take over from Courier: its list, as it left it.
            (root / pop3sizelist.FILENAME).write_bytes(os.fsencode(prev_list))
        before = (root / pop3sizelist.FILENAME).stat().st_ino if n else None
        compare(session, run_ours(root, session["commands"], bool(session.get("utf8", 1))))
        assert sizelist_bytes(root) == bytes.fromhex(session["sizelist_hex"]), n
        if n:
            rewrote = (root / pop3sizelist.FILENAME).stat().st_ino != before
            assert rewrote == session["rewrote_sizelist"], n
        assert files(root) == session["files_after"], n
        prev_list = session["sizelist"]


@pytest.mark.skipif(not os.access(COURIERPOP3D, os.X_OK),
                    reason=f"Courier's pop3d is not unpacked at {COURIERPOP3D}")
def test_courier_reads_the_list_we_wrote(tmp_path: Path) -> None:
    root = build(tmp_path / "Maildir")
    first, second = DATA["sessions"][:2]
    run_ours(root, first["commands"])
    add_files(root, second)
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": "0", "AUTHENTICATED": "golden",
           "MAILDIR": ".", "UTF8": "1", "PATH": "/usr/bin:/bin"}
    stdin = "".join(x + "\r\n" for x in second["commands"]).encode()
    r = subprocess.run([COURIERPOP3D], input=stdin, cwd=root, env=env, capture_output=True,
                       timeout=60, check=True)
    assert r.stdout == bytes.fromhex(second["reply_hex"])
    assert sizelist_bytes(root) == bytes.fromhex(second["sizelist_hex"])
    shutil.rmtree(root)
