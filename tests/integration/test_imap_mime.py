"""FETCH ENVELOPE / BODY / BODYSTRUCTURE / numbered sections from a real imapd:
corpus messages delivered with LF line ends into the Maildir, fetched over the
wire with imaplib, compared with what Dovecot answered for the same messages
(tests/data/imap-golden)."""

from __future__ import annotations

import imaplib
import os
import re
from pathlib import Path

import pytest

USER, PASSWORD = "mime@example.com", "mime-secret"
ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "imap-golden"
CORPUS = ROOT.parent / "shared" / "corpus"
NAMES = ["cpython_msg_10", "cpython_msg_29", "cpython_msg_34", "cpython_msg_25",
         "generated_03", "generated_22"]


def _escape(data: bytes) -> bytes:
    return data.replace(b"\\", b"\\\\").replace(b"\r", b"\\r").replace(b"\n", b"\\n")


def _deliver(maildir: Path, n: int, msg: bytes) -> None:
    st = maildir.stat()
    base = f"{1700000000 + n}.M{n}P{os.getpid()}.mime.test,S={len(msg)}"
    tmp = maildir / "tmp" / base
    tmp.write_bytes(msg)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, maildir / "new" / base)


def _wire(resp: list) -> bytes:
    out = b""
    for piece in resp:
        out += piece[0] + b"\r\n" + piece[1] if isinstance(piece, tuple) else piece
    return out


@pytest.fixture
def inst(new_instance):
    if not CORPUS.is_dir():
        pytest.skip("no ../shared/corpus beside the checkout")
    new_instance.adduser(USER, PASSWORD)
    for n, name in enumerate(NAMES):
        _deliver(new_instance.maildir(USER), n,
                 (CORPUS / f"{name}.eml").read_bytes().replace(b"\r\n", b"\n"))
    new_instance.start("authdaemond", "imapd")
    return new_instance


def test_fetch_views_match_dovecot(inst) -> None:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=10)
    try:
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX", readonly=True)[0] == "OK"
        checked = 0
        for seq, name in enumerate(NAMES, 1):
            for line in (GOLDEN / f"{name}.txt").read_bytes().splitlines():
                item, _, answer = line.partition(b"\t")
                typ, resp = c.fetch(str(seq), "(" + item.decode().replace("BODY[", "BODY.PEEK[")
                                    + ")")
                assert typ == "OK", (name, item, resp)
                wire = _wire(resp)
                m = re.match(rb"%d \(" % seq, wire)
                assert m and wire.endswith(b")"), wire[:100]
                got = _escape(wire[m.end():-1])
                assert got == answer, (name, item, got[:300], answer[:300])
                checked += 1
        assert checked == len(NAMES) * 17
        # the macros (RFC 3501 §6.4.5) and a partial of a numbered part
        typ, resp = c.fetch("1", "FULL")
        assert typ == "OK" and b"ENVELOPE (" in _wire(resp) and b" BODY ((" in _wire(resp)
        typ, resp = c.fetch("1", "(BODY.PEEK[3]<4.5>)")
        assert typ == "OK" and resp[0] == (b"1 (BODY[3]<4> {5}", b"cyBpc")
        with pytest.raises(imaplib.IMAP4.error, match="bad section"):
            c.fetch("1", "(BODY.PEEK[0])")
        assert c.noop()[0] == "OK"          # the session goes on
    finally:
        c.logout()
