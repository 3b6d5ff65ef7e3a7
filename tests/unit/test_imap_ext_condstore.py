"""CONDSTORE and QRESYNC (RFC 7162) through whole sessions over a socketpair against a
real Maildir: HIGHESTMODSEQ, FETCH MODSEQ / CHANGEDSINCE, STORE UNCHANGEDSINCE with
[MODIFIED], SEARCH MODSEQ, STATUS HIGHESTMODSEQ, another session's changes, QRESYNC
SELECT with VANISHED (EARLIER), VANISHED instead of EXPUNGE, [CLOSED]."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from tests.unit.test_imap_ext import maildir, run_server


class Client:
    def __init__(self, tmp_path: Path):
        etc = tmp_path / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "imapd").write_text("PORT=143\nIMAP_SPECIALUSE_CREATE=0\n")
        self.sock, server = socket.socketpair()
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=run_server,
                                       args=(server, tmp_path / "Maildir", etc))
        self.thread.start()
        self.file = self.sock.makefile("rb")
        self.file.readline()
        assert self.cmd("LOGIN alice pw")[-1].startswith(b"t1 OK")
        self.n = 1

    def cmd(self, text: str) -> list[bytes]:
        self.n = getattr(self, "n", 0) + 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        out = []
        for _ in range(100000):
            line = self.file.readline()
            assert line, b"".join(out)
            out.append(line.rstrip(b"\r\n"))
            if line.startswith(tag + b" "):
                return out
        raise AssertionError("no tagged reply")

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.thread.join(10)
        self.file.close()
        self.sock.close()


def modseq_of(lines: list[bytes], code: bytes = b"HIGHESTMODSEQ") -> int:
    for ln in lines:
        m = re.search(code + rb" \(?(\d+)", ln)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


@pytest.fixture
def two(tmp_path: Path):
    maildir(tmp_path, 4)
    a, b = Client(tmp_path), Client(tmp_path)
    yield a, b
    a.close()
    b.close()


def test_condstore(two) -> None:
    a, b = two
    out = a.cmd("SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in x for x in out)      # not asked for: not computed
    out = a.cmd("SELECT INBOX (CONDSTORE)")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed"
    top = modseq_of(out)
    out = a.cmd("FETCH 1:* (FLAGS MODSEQ)")
    seqs = [int(x) for x in re.findall(rb"MODSEQ \((\d+)\)", b"\n".join(out))]
    assert len(seqs) == 4 and max(seqs) == top and len(set(seqs)) == 4
    # STORE: a new modseq, reported with UID and MODSEQ.
    out = a.cmd(f"STORE 2 (UNCHANGEDSINCE {top}) +FLAGS (\\Seen)")
    m2 = modseq_of(out, b"MODSEQ")
    assert m2 > top and re.match(rb"\* 2 FETCH \(FLAGS \(\\Seen\) UID 2 MODSEQ \(\d+\)\)", out[0])
    assert out[-1].endswith(b"OK STORE completed.")
    # Another session changes message 3; a conditional store from before fails for it.
    b.cmd("SELECT INBOX")
    b.cmd("STORE 3 +FLAGS (\\Flagged)")
    out = a.cmd(f"UID STORE 1:3 (UNCHANGEDSINCE {m2}) +FLAGS.SILENT (\\Answered)")
    assert out[-1].startswith(b"t") and b"OK [MODIFIED 3] Conditional STORE failed" in out[-1]
    assert [x for x in out if b"FETCH" in x and b"UID 3" in x] == []
    assert re.match(rb"\* 1 FETCH \(UID 1 MODSEQ \(\d+\)\)", out[0])   # .SILENT: no FLAGS
    # CHANGEDSINCE: only what changed after m2; NOOP tells a about message 3 with MODSEQ.
    out = a.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m2})")
    assert sorted(re.findall(rb"UID (\d+)", b"\n".join(out[:-1]))) == [b"1", b"2", b"3"]
    out = a.cmd("NOOP")
    assert any(re.match(rb"\* 3 FETCH \(FLAGS \(\\Flagged\) UID 3 MODSEQ \(\d+\)\)", x) for x in out)
    out = a.cmd(f"SEARCH MODSEQ {m2 + 1}")
    hits = re.match(rb"\* SEARCH ([\d ]+) \(MODSEQ (\d+)\)", out[0])
    assert hits and sorted(hits.group(1).split()) == [b"1", b"2", b"3"]
    out = a.cmd('SEARCH MODSEQ "/flags/\\\\draft" all 1 UNSEEN')
    assert out[0].startswith(b"* SEARCH 1 3 4 (MODSEQ")
    out = b.cmd("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", out[-2]).group(1)) == int(hits.group(2))


def test_qresync(two) -> None:
    a, b = two
    assert a.cmd("SELECT INBOX (QRESYNC (1 2))")[-1].startswith(b"t2 BAD")
    assert a.cmd("ENABLE QRESYNC")[0] == b"* ENABLED CONDSTORE QRESYNC"
    out = a.cmd("SELECT INBOX")
    top = modseq_of(out)
    validity = modseq_of(out, b"UIDVALIDITY")
    a.cmd("UNSELECT")
    # While a is away: b flags 2 and expunges 3.
    b.cmd("SELECT INBOX")
    b.cmd("STORE 2 +FLAGS (\\Flagged)")
    b.cmd("STORE 3 +FLAGS (\\Deleted)")
    b.cmd("EXPUNGE")
    out = a.cmd(f"SELECT INBOX (QRESYNC ({validity} {top} 1:4))")
    assert b"* VANISHED (EARLIER) 3" in out
    assert any(re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", x) for x in out)
    assert not any(b"UID 1 " in x for x in out)
    # A stale UIDVALIDITY: nothing extra.
    out = a.cmd(f"SELECT INBOX (QRESYNC ({validity + 1} {top}))")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert not any(b"VANISHED" in x or b"FETCH" in x for x in out)
    # UID FETCH ... (CHANGEDSINCE n VANISHED) and VANISHED instead of EXPUNGE.
    out = a.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top} VANISHED)")
    assert out[0] == b"* VANISHED (EARLIER) 3" and b"UID 2" in out[1]
    a.cmd("STORE 1 +FLAGS (\\Deleted)")
    out = a.cmd("EXPUNGE")
    assert out[0] == b"* VANISHED 1" and b"EXPUNGE" not in b"".join(out[:-1])
    out = b.cmd("NOOP")
    assert b"* 1 EXPUNGE" in out         # b did not enable QRESYNC


def test_plain_select_says_highestmodseq_once_the_folder_has_them(two) -> None:
    a, b = two
    assert not any(b"HIGHESTMODSEQ" in x for x in b.cmd("SELECT INBOX"))
    top = modseq_of(a.cmd("SELECT INBOX (CONDSTORE)"))
    after = modseq_of(a.cmd("STORE 1 +FLAGS (\\Seen)"), b"MODSEQ")
    # b never enabled CONDSTORE: its SELECT reads the folder's highest from the log.
    out = b.cmd("SELECT INBOX")
    assert modseq_of(out) == after > top
    assert not any(b"MODSEQ (" in x for x in b.cmd("FETCH 1:* FLAGS"))


def test_peek_highest_after_rewrite(tmp_path: Path) -> None:
    from courier_imapd.modseq import Tracker, peek_highest

    from tests.unit.test_imap_ext_modseq import folder, msg
    f = folder(tmp_path)
    t = Tracker(f, 3)
    assert peek_highest(f, 3) is None
    t.update([msg(2), msg(1)], complete=True)
    t.update([msg(2, "S"), msg(1)], complete=True)
    assert peek_highest(f, 3) == t.highest and peek_highest(f, 4) is None
    import os
    os.close(t._rewrite(t._open_locked()))
    assert peek_highest(f, 3) == t.highest
