"""A cold FETCH 1:* of a folder larger than fetch.COLD_LEAST through the real imapd:
its records are built by worker processes forked from the session (after the switch
to the user; one at a time on a single CPU), and the answers are byte for byte what
the long way gives for the same folder, with no process left behind."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import psutil
import pytest
from courier_imapd import fetch as fetchmod
from courier_imapd.core import FetchItem, fetch_response
from courier_imapd.mailbox import flags_text

from libcourier.maildir import index as mindex
from libcourier.maildir.folder import Maildir

USER, PASSWORD = "cold@example.com", "cold-secret"
ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
COUNT = fetchmod.COLD_LEAST + 300
COMMANDS = [("UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)",
             ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
            ("FETCH 1:* (BODYSTRUCTURE)", ("BODYSTRUCTURE",))]


def _messages() -> list[bytes]:
    own = [b"From: a@example.com\nTo: Bench <b@example.net>\nSubject: s %d\nDate: Sun, 01 Jan"
           b" 2023 19:57:53 +0100\nMessage-ID: <%d@x>\n\nbody %d\n" % (k, k, k) for k in range(7)]
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))] if CORPUS.is_dir() else []
    return own + corpus


def _deliver(maildir: Path) -> None:
    st = maildir.stat()
    msgs = _messages()
    for n in range(COUNT):
        msg = msgs[n % len(msgs)]
        base = f"{1700000000 + n}.M{n}P{os.getpid()}.cold.test,S={len(msg)}"
        tmp = maildir / "tmp" / base
        tmp.write_bytes(msg)
        os.utime(tmp, (1_700_000_000 + 3_599 * n,) * 2)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, maildir / "new" / base)


class _Client:
    """Commands and their untagged answers as raw bytes (literals followed)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""
        self.n = 0
        self._line()

    def _take(self, n: int) -> bytes:
        deadline = time.monotonic() + 300
        while len(self.buf) < n:
            assert time.monotonic() < deadline, "no answer"
            data = self.sock.recv(1 << 16)
            assert data, "connection closed"
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        """One response line, with the literals it carries."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(1 << 16)
                assert data, "connection closed"
                self.buf += data
            i = self.buf.index(b"\r\n") + 2
            line, self.buf = self.buf[:i], self.buf[i:]
            out += line
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m is None:
                return out
            out += self._take(int(m[1]))

    def cmd(self, line: str) -> bytes:
        self.n += 1
        tag = b"c%d " % self.n
        self.sock.sendall(tag + line.encode() + b"\r\n")
        out = b""
        while True:
            got = self._line()
            if got.startswith(tag):
                assert got[len(tag):].startswith(b"OK"), (line, got)
                return out
            out += got


def _session_children(inst) -> list[psutil.Process]:
    imapd = psutil.Process(inst.pid("imapd"))
    return [g for c in imapd.children() for g in c.children(recursive=True)]


@pytest.fixture
def inst(new_instance):
    new_instance.adduser(USER, PASSWORD)
    _deliver(new_instance.maildir(USER))
    new_instance.start("authdaemond", "imapd")
    return new_instance


def test_cold_fetch_same_as_one_at_a_time(inst, tmp_path: Path) -> None:
    first = _Client(inst.port("imap"))        # takes the new messages' \\Recent
    first.cmd(f"LOGIN {USER} {PASSWORD}")
    first.cmd("SELECT INBOX")
    first.cmd("LOGOUT")
    c = _Client(inst.port("imap"))
    c.cmd(f"LOGIN {USER} {PASSWORD}")
    c.cmd("SELECT INBOX")
    maildir = inst.maildir(USER)
    got = [c.cmd(line) for line, _ in COMMANDS]
    deadline = time.monotonic() + 30
    while _session_children(inst):                  # workers are reaped with the command
        assert time.monotonic() < deadline, _session_children(inst)
        time.sleep(0.05)
    idx = mindex.FolderIndex(maildir)
    assert idx.unknown([]) == [] and len(idx) == COUNT        # every message recorded
    idx.close()
    c.cmd("LOGOUT")
    if len(os.sched_getaffinity(0)) >= 2:
        assert f"cold FETCH: {COUNT} records made by" in inst.logs()

    # the long way, one message at a time, on a copy without the index
    copy = tmp_path / "copy"
    shutil.copytree(maildir, copy)
    (copy / mindex.INDEX_NAME).unlink()
    md = Maildir(copy)
    saved = fetchmod.COLD_LEAST
    fetchmod.COLD_LEAST = 1 << 60
    try:
        for (_, names), wire in zip(COMMANDS, got, strict=True):
            items = tuple(FetchItem(n) for n in names)
            want = []
            for seq, m in enumerate(md.scan().messages, 1):
                with open(fetchmod.message_path(md, m), "rb") as fh:
                    parts, _ = fetchmod.message_parts(
                        items, m, fh, flags_text(m.flags, False, m.keywords), None)
                want.append(fetch_response(seq, parts))
            assert wire == b"".join(want)
    finally:
        fetchmod.COLD_LEAST = saved
        for i in fetchmod._indexes.values():
            i.close()
        fetchmod._indexes.clear()
