"""The IMAP driver over a real socketpair and a real Maildir (authd replaced by a function)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from types import SimpleNamespace

from courier_imapd import login
from courier_imapd.config import load_config
from courier_imapd.core import ImapConnection
from courier_imapd.session import Session

MSG = b"From: a@example.com\nSubject: hi\n\nline 1\nline 2\n"


class Pair:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_ip, self.peer_port, self.tls = "127.0.0.1", 4242, False

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        return self.sock.recv(n)

    def starttls(self, ctx: ssl.SSLContext) -> None:
        raise ssl.SSLError("no TLS here")


def run_server(sock: socket.socket, root: Path, etc: Path) -> None:
    cfg, _ = load_config(etc, "imapd")
    conn, core, counters = Pair(sock), ImapConnection(), login.Counters()
    auth = {"alice": "pw"}

    def authenticate(user: str, pw: str, ip: str):
        return SimpleNamespace(options={}) if auth.get(user) == pw else None

    ok = login.prelogin(conn, core, cfg, authenticate, None, counters, sleep=lambda s: None)
    if ok:
        login.send(conn, f"{ok.tag} OK LOGIN Ok.\r\n".encode(), counters)
        Session(conn, core, root, cfg, ok.user, counters).run()
    sock.close()


def session(tmp_path: Path, script: bytes) -> bytes:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "imapd").write_text("PORT=143\n")
    root = tmp_path / "Maildir"
    a, b = socket.socketpair()
    t = threading.Thread(target=run_server, args=(b, root, etc))
    t.start()
    a.sendall(script)
    a.settimeout(10)
    out = bytearray()
    while chunk := a.recv(65536):
        out += chunk
    t.join(10)
    a.close()
    return bytes(out)


def setup_maildir(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    (root / "new" / "1000.M1P1.h").write_bytes(MSG)
    (root / "new" / "1001.M1P1.h").write_bytes(b"Subject: two\n\nx\n")
    return root


def test_login_select_fetch_store(tmp_path: Path) -> None:
    root = setup_maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN alice wrong\r\nb LOGIN alice pw\r\n"
                  b"c SELECT INBOX\r\nd FETCH 1 (RFC822.SIZE BODY[])\r\n"
                  b"e UID STORE 2 +FLAGS (\\Flagged \\Deleted)\r\nf UID SEARCH UNSEEN\r\n"
                  b"g EXPUNGE\r\nh LIST \"\" *\r\ni NAMESPACE\r\nj LOGOUT\r\n")
    crlf = MSG.replace(b"\n", b"\r\n")
    assert out.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"a NO Login failed.\r\n" in out and b"b OK LOGIN Ok.\r\n" in out
    assert b"* 2 EXISTS\r\n* 2 RECENT\r\n" in out and b"* OK [UNSEEN 1]" in out
    assert b"c OK [READ-WRITE] Ok\r\n" in out
    assert b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n" % (len(crlf), len(crlf)) + crlf + \
        b" FLAGS (\\Seen \\Recent))\r\n" in out
    assert b"* 2 FETCH (FLAGS (\\Flagged \\Deleted \\Recent) UID 2)\r\n" in out
    assert b"* SEARCH 2\r\n" in out
    assert b"* 2 EXPUNGE\r\ng OK" in out
    # INBOX has children: the special-use folders made at login (RFC 6154).
    assert b'* LIST (\\HasChildren) "." INBOX\r\n' in out
    assert b'* NAMESPACE (("INBOX." ".")) NIL (("#shared." ".")("shared." "."))\r\n' in out
    assert out.endswith(b"* BYE Courier-IMAP server shutting down\r\nj OK LOGOUT completed\r\n")
    assert sorted(p.name for p in (root / "cur").iterdir()) == ["1000.M1P1.h:2,S"]
    # A new session sees the same UID and flag; nothing is recent any more.
    out2 = session(tmp_path, b"a LOGIN alice pw\r\nb EXAMINE INBOX\r\n"
                   b"c UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (subject)]<0.9>)\r\n"
                   b"d STORE 1 FLAGS ()\r\ne LOGOUT\r\n")
    assert b"* 0 RECENT\r\n" in out2 and b"b OK [READ-ONLY]" in out2
    assert b"* 1 FETCH (UID 1 FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)]<0> {9}\r\nSubject: )" in out2
    assert b"d NO Mailbox is read-only" in out2


def test_three_failures_close(tmp_path: Path) -> None:
    setup_maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN x y\r\nb LOGIN x y\r\nc LOGIN x y\r\nd NOOP\r\n")
    assert out.count(b"NO Login failed.") == 3
    assert out.endswith(b"* BYE Too many failed logins\r\n")


def test_bad_and_limits_prelogin(tmp_path: Path) -> None:
    setup_maildir(tmp_path)
    out = session(tmp_path, b"a SELECT INBOX\r\nb LOGIN {5000}\r\nc AUTHENTICATE PLAIN\r\n"
                  b"d STARTTLS\r\ne LOGOUT\r\n")
    assert b"a BAD SELECT is not valid in the not authenticated state\r\n" in out
    assert b"b BAD Literal too large" in out and b"+ go ahead" not in out
    assert b"c NO " in out and b"d NO STARTTLS not available" in out
    assert b"e OK LOGOUT completed" in out
