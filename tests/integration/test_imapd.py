"""imapd as real processes against the real authd: `courier start authdaemond imapd
imapd-ssl` on free loopback ports, driven by imaplib and by raw bytes.

What a client sees on the wire (RFC 3501): LOGIN, SELECT, byte-exact FETCH with
LF -> CRLF, flags and UIDs that persist in the Maildir across sessions, new mail
on NOOP and in IDLE (RFC 2177), STARTTLS and IMAPS, and protocol errors that
leave the session usable.
"""

from __future__ import annotations

import imaplib
import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest

USER, PASSWORD = "alice@example.com", "alice-secret"
MSGS = [
    b"From: a@example.net\nSubject: one\n\nHello\n.leading dot\n",
    b"From: b@example.net\nSubject: two\n\nline 1\r\nline 2 stored with CRLF\r\n",
    b"From: c@example.net\nSubject: three\n\nno newline at the end",
]
IO_TIMEOUT = 10.0
_counter = iter(range(10**6))


def wire(m: bytes) -> bytes:
    """What the server must send for a stored message: every line end CRLF, nothing added."""
    return m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def deliver(maildir: Path, msg: bytes) -> str:
    """Deliver like a Maildir writer: tmp/, then rename into new/; the base name."""
    st = maildir.stat()
    n = next(_counter)
    base = f"{1700000000 + n}.M{n}P{os.getpid()}.mx.test,S={len(msg)}"
    tmp = maildir / "tmp" / base
    tmp.write_bytes(msg)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, maildir / "new" / base)
    return base


def wait_for_log(inst, pattern: str) -> str:
    path = inst.root / "var/log/imapd.log"
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        text = path.read_text()
        if re.search(pattern, text) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert re.search(pattern, text), text[-2000:]
    return text


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the instance's certificate is self-signed
    return ctx


def set_option(etc: Path, name: str, key: str, value: str) -> None:
    f = etc / name
    text = f.read_text()
    new, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
    f.write_text(new if n else text + f"\n{key}={value}\n")


@pytest.fixture
def imap(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(inst.maildir(USER), m)
    inst.start("authdaemond", "imapd", "imapd-ssl")
    return inst


def login(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(USER, PASSWORD)[0] == "OK"
    return c


def bodies(data: list) -> list[bytes]:
    return [part[1] for part in data if isinstance(part, tuple)]


def uid_map(c: imaplib.IMAP4) -> dict[int, int]:
    """sequence number -> UID for the selected mailbox."""
    c.untagged_responses.pop("FETCH", None)     # flag updates imaplib kept from before
    typ, data = c.fetch("1:*", "(UID)")
    assert typ == "OK"
    out = {}
    for line in data:
        m = re.fullmatch(rb"(\d+) \(UID (\d+)\)", line)
        assert m, line
        out[int(m.group(1))] = int(m.group(2))
    return out


class Raw:
    """A raw IMAP connection: exact bytes out, lines in, bounded waits."""

    def __init__(self, port: int, *, tls: bool = False):
        s = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        if tls:
            s = unverified().wrap_socket(s, server_hostname="mx.test")
        self.sock = s
        self.file = s.makefile("rb")

    def line(self) -> bytes:
        data = self.file.readline(1 << 20)
        if not data:
            raise EOFError("server closed the connection")
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged reply for tag."""
        out = []
        for _ in range(10000):
            ln = self.line()
            out.append(ln)
            if ln.startswith(tag + b" "):
                return out
        raise AssertionError("no tagged reply")

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# -- the session --------------------------------------------------------------------------

def test_login_select_fetch_byte_exact(imap) -> None:
    inst = imap
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    try:
        caps = c.capabilities
        assert "IMAP4REV1" in caps and "STARTTLS" in caps and "IDLE" in caps
        assert c.login(USER, PASSWORD)[0] == "OK"
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"3"]
        assert c.untagged_responses.get("RECENT") == [b"3"]   # this session moved them
        assert c.untagged_responses.get("UNSEEN") == [b"1"]
        assert re.fullmatch(rb"\d+", c.untagged_responses["UIDVALIDITY"][0])
        assert c.untagged_responses["UIDNEXT"] == [b"4"]

        # RFC822.SIZE first, on its own (computed from the file, not from a read of BODY[]).
        typ, data = c.fetch("1:3", "(RFC822.SIZE)")
        sizes = [int(re.search(rb"RFC822.SIZE (\d+)", d).group(1)) for d in data]
        assert sizes == [len(wire(m)) for m in MSGS]

        typ, data = c.fetch("1:3", "(BODY.PEEK[] RFC822.SIZE)")
        assert typ == "OK"
        got = bodies(data)
        assert got == [wire(m) for m in MSGS]
        # imaplib splits each response at its literal: (prefix, literal), then the rest.
        assert len(data) == 6
        for i, m in enumerate(MSGS):
            prefix, rest = data[2 * i][0], data[2 * i + 1]
            assert prefix == f"{i + 1} (BODY[] {{{len(wire(m))}}}".encode()
            assert rest == f" RFC822.SIZE {len(wire(m))})".encode()
        # PEEK left \Seen alone.
        typ, data = c.fetch("1:3", "(FLAGS)")
        assert all(b"\\Seen" not in d for d in data)

        # The header, the text and a partial, all over CRLF.
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<6.11>)")
        header, text, partial = bodies(data)
        w = wire(MSGS[0])
        assert header + text == w and header.endswith(b"\r\n\r\n")
        assert partial == w[6:17]

        # BODY[] (not PEEK) sets \Seen and says so in the same response (§6.4.5).
        typ, data = c.fetch("2", "(BODY[])")
        assert bodies(data) == [wire(MSGS[1])]
        assert b"\\Seen" in b"".join(p[0] if isinstance(p, tuple) else p for p in data)
        # RFC822 is the same bytes.
        typ, data = c.fetch("3", "(RFC822)")
        assert bodies(data) == [wire(MSGS[2])]
        assert c.close()[0] == "OK"
    finally:
        c.logout()
    cur = sorted(os.listdir(inst.maildir(USER) / "cur"))
    assert [n.endswith(":2,S") for n in cur] == [False, True, True]
    # The session ran as the mailbox owner: what it wrote belongs to the user.
    db = inst.maildir(USER) / "courierimapuiddb"
    assert db.stat().st_uid == inst.maildir(USER).stat().st_uid
    # The child logs LOGOUT after its last reply, so the line may lag the client.
    log = wait_for_log(inst, rf"LOGOUT, user={re.escape(USER)}, ip=\[127.0.0.1\], headers=0, "
                             r"body=[1-9]\d*, rcvd=\d+, sent=\d+, time=\d+")
    assert f"LOGIN, user={USER}, ip=[127.0.0.1], port=[" in log


def test_flags_survive_a_new_session(imap) -> None:
    c = login(imap)
    c.select("INBOX")
    typ, data = c.store("2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    typ, data = c.store("3", "+FLAGS.SILENT", "(\\Answered \\Draft)")
    assert typ == "OK" and data == [None]
    c.logout()

    d = login(imap)
    d.select("INBOX")
    typ, data = d.fetch("1:3", "(FLAGS)")
    flags = [set(re.search(rb"FLAGS \(([^)]*)\)", x).group(1).split()) for x in data]
    assert flags[0] == set()                      # \Recent went to the first session
    assert flags[1] == {b"\\Flagged"}
    assert flags[2] == {b"\\Answered", b"\\Draft"}
    # -FLAGS takes one away and leaves the rest.
    typ, data = d.store("3", "-FLAGS", "(\\Draft)")
    assert b"\\Answered" in data[0] and b"\\Draft" not in data[0]
    d.logout()
    names = sorted(os.listdir(imap.maildir(USER) / "cur"))
    assert [n.rsplit(":2,", 1)[1] for n in names] == ["", "F", "R"]


def test_uids_and_uidvalidity_persist(imap) -> None:
    maildir = imap.maildir(USER)
    c = login(imap)
    c.select("INBOX")
    uidvalidity = c.untagged_responses["UIDVALIDITY"][0]
    first = uid_map(c)
    assert first == {1: 1, 2: 2, 3: 3}
    # Expunge the middle one: its UID is never handed out again.
    c.store("2", "+FLAGS", "(\\Deleted)")
    typ, data = c.expunge()
    assert typ == "OK" and data == [b"2"]
    c.logout()

    base = deliver(maildir, b"Subject: four\n\nfour\n")
    db = (maildir / "courierimapuiddb").read_bytes().split(b"\n")
    assert db[0] == b"1 " + uidvalidity + b" 4"
    d = login(imap)
    typ, data = d.select("INBOX")
    assert data == [b"3"]
    assert d.untagged_responses["UIDVALIDITY"] == [uidvalidity]
    assert d.untagged_responses["UIDNEXT"] == [b"5"]
    assert uid_map(d) == {1: 1, 2: 3, 3: 4}
    typ, data = d.uid("FETCH", "4", "(BODY.PEEK[])")
    assert bodies(data) == [b"Subject: four\r\n\r\nfour\r\n"]
    typ, data = d.uid("SEARCH", "ALL")
    assert data == [b"1 3 4"]
    d.logout()
    # The database in Courier's format (FORMATS.md §3.4), in UID order.
    lines = (maildir / "courierimapuiddb").read_text().splitlines()
    assert lines[0] == f"1 {uidvalidity.decode()} 5"
    assert [ln.split(" ", 1)[0] for ln in lines[1:]] == ["1", "3", "4"]
    assert lines[3] == f"4 {base}"
    cur = {n.split(":2,")[0] for n in os.listdir(maildir / "cur")}
    assert {ln.split(" ", 1)[1] for ln in lines[1:]} == cur


def test_new_mail_shows_on_noop(imap) -> None:
    c = login(imap)
    try:
        c.select("INBOX")
        assert c.noop()[0] == "OK"
        c.untagged_responses.clear()
        deliver(imap.maildir(USER), b"Subject: late\n\nlate\n")
        typ, data = c.noop()
        assert typ == "OK"
        assert c.untagged_responses.get("EXISTS") == [b"4"]
        assert c.untagged_responses.get("RECENT") == [b"4"]
        typ, data = c.fetch("4", "(UID BODY.PEEK[])")
        assert bodies(data) == [b"Subject: late\r\n\r\nlate\r\n"]
        assert b"UID 4" in data[0][0]
    finally:
        c.logout()


def test_idle_sees_new_mail_quickly(imap) -> None:
    r = Raw(imap.port("imap"))
    try:
        assert r.line().startswith(b"* OK ")
        assert r.cmd(b"a1", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"a1 OK")
        assert b"* 3 EXISTS\r\n" in r.cmd(b"a2", b"SELECT INBOX")
        r.send(b"a3 IDLE\r\n")
        assert r.line().startswith(b"+ ")
        time.sleep(0.3)     # the server is idling now, not scanning on IDLE's way in
        t0 = time.monotonic()
        deliver(imap.maildir(USER), b"Subject: idle\n\nwoken\n")
        r.sock.settimeout(5)
        seen = []
        while b"* 4 EXISTS\r\n" not in seen:
            seen.append(r.line())
        assert time.monotonic() - t0 < 3.0, seen
        r.sock.settimeout(IO_TIMEOUT)
        r.send(b"DONE\r\n")
        assert r.until(b"a3")[-1].startswith(b"a3 OK")
        # The session goes on after IDLE.
        out = r.cmd(b"a4", b"FETCH 4 (BODY.PEEK[TEXT])")
        assert out[-1].startswith(b"a4 OK") and b"woken\r\n" in b"".join(out)
        assert r.cmd(b"a5", b"LOGOUT")[-1].startswith(b"a5 OK")
    finally:
        r.close()


# -- TLS ----------------------------------------------------------------------------------

def test_starttls_then_login(imap) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        assert "STARTTLS" in c.capabilities
        assert c.starttls(ssl_context=unverified())[0] == "OK"
        assert isinstance(c.sock, ssl.SSLSocket)
        typ, data = c.capability()
        assert b"STARTTLS" not in data[0] and b"IMAP4rev1" in data[0]
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX")[1] == [b"3"]
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        assert bodies(data) == [wire(MSGS[0])]
    finally:
        c.logout()


def test_starttls_drops_pipelined_plaintext(imap) -> None:
    """RFC 3501 §6.2.1 / CVE-2011-0411: what came after STARTTLS in the clear is dropped."""
    r = Raw(imap.port("imap"))
    try:
        r.line()
        r.send(b"s1 STARTTLS\r\ns2 LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
        assert r.until(b"s1")[-1].startswith(b"s1 OK")
        r.sock = unverified().wrap_socket(r.sock, server_hostname="mx.test")
        r.file = r.sock.makefile("rb")
        out = r.cmd(b"s3", b"NOOP")
        assert out == [b"s3 OK NOOP completed\r\n"]      # no reply to the injected s2
        assert r.cmd(b"s4", b"SELECT INBOX")[-1].startswith(b"s4 BAD")   # not logged in
    finally:
        r.close()


def test_imaps(imap) -> None:
    c = imaplib.IMAP4_SSL("127.0.0.1", imap.port("imaps"), ssl_context=unverified(),
                          timeout=IO_TIMEOUT)
    try:
        assert "STARTTLS" not in c.capabilities
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX")[1] == [b"3"]
        typ, data = c.fetch("1:3", "(BODY.PEEK[])")
        assert bodies(data) == [wire(m) for m in MSGS]
    finally:
        c.logout()


# -- errors: the session goes on ---------------------------------------------------------

def test_bad_login_gets_no_and_session_goes_on(imap) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=IO_TIMEOUT)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
            c.login(USER, "wrong")
        with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
            c.login("nobody@example.com", PASSWORD)
        assert c.noop()[0] == "OK"
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX")[1] == [b"3"]
    finally:
        c.logout()
    log = wait_for_log(imap, r"LOGIN FAILED, user=nobody@example\.com, ip=\[127\.0\.0\.1\]")
    assert f"LOGIN FAILED, user={USER}, ip=[127.0.0.1]" in log


def test_malformed_commands_get_bad(imap) -> None:
    r = Raw(imap.port("imap"))
    try:
        r.line()
        for text in (b"SELEKT INBOX", b"LOGIN", b'LOGIN "unterminated', b"SELECT INBOX",
                     b"FETCH 1 (FLAGS)", b"NOOP extra"):
            assert r.cmd(b"b1", text)[-1].startswith(b"b1 BAD"), text
        r.send(b"\x01 NOOP\r\n")
        assert r.line() == b"* BAD Missing tag\r\n"       # no usable tag: untagged BAD
        assert r.cmd(b"b2", b"NOOP") == [b"b2 OK NOOP completed\r\n"]
        # A synchronising literal: "+" then the bytes (RFC 3501 §7.5).
        r.send(b"b3 LOGIN {%d}\r\n" % len(USER))
        assert r.line().startswith(b"+ ")
        r.send(USER.encode() + b" {%d+}\r\n" % len(PASSWORD) + PASSWORD.encode() + b"\r\n")
        assert r.until(b"b3")[-1].startswith(b"b3 OK")
        for text in (b"FETCH 1 (BODY[", b"FETCH 0 FLAGS", b"FETCH 1:x FLAGS",
                     b"STORE 1 FLAGS (\\Seen", b"SELECT", b"LOGIN a b", b"UID COPY 1 x",
                     b"FETCH 1 (FLAGS)"):
            assert r.cmd(b"b4", text)[-1].startswith(b"b4 BAD"), text
        assert r.cmd(b"b5", b"SELECT INBOX")[-1].startswith(b"b5 OK")
        assert r.cmd(b"b6", b"FETCH 9 FLAGS")[-1].startswith(b"b6 BAD")   # beyond the mailbox
        out = r.cmd(b"b7", b"FETCH 1 (FLAGS)")
        assert out[-1].startswith(b"b7 OK") and out[0].startswith(b"* 1 FETCH (FLAGS (")
    finally:
        r.close()


def test_overlong_line_and_literal_get_bad(imap) -> None:
    r = Raw(imap.port("imap"))
    try:
        r.line()
        # Pre-login: 8 KB lines, 1 KB literals.
        out = r.cmd(b"c1", b"NOOP " + b"x" * 20000)
        assert out == [b"c1 BAD Line too long (limit 8192 bytes)\r\n"]
        assert r.cmd(b"c2", b"NOOP") == [b"c2 OK NOOP completed\r\n"]
        # A synchronising literal over the limit is refused before the client sends it.
        assert r.cmd(b"c3", b"LOGIN {5000}")[-1].startswith(b"c3 BAD Literal too large")
        # A LITERAL+ one is already on its way: the server reads past it.
        r.send(b"c4 LOGIN x {5000+}\r\n" + b"y" * 5000 + b"\r\n")
        assert r.until(b"c4")[-1].startswith(b"c4 BAD Literal too large")
        assert r.cmd(b"c5", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"c5 OK")
        # Logged in: 64 KB lines.
        assert r.cmd(b"c6", b"SELECT INBOX")[-1].startswith(b"c6 OK")
        out = r.cmd(b"c7", b"FETCH 1 (FLAGS) " + b"z" * 200_000)
        assert out == [b"c7 BAD Line too long (limit 65536 bytes)\r\n"]
        out = r.cmd(b"c8", b"FETCH 1 (BODY.PEEK[HEADER])")
        assert out[-1].startswith(b"c8 OK") and b"Subject: one\r\n" in b"".join(out)
    finally:
        r.close()


def test_maxperip_busy_reply(new_instance) -> None:
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    set_option(inst.etc, "imapd", "MAXPERIP", "2")
    inst.start("authdaemond", "imapd")
    held = [Raw(inst.port("imap")) for _ in range(2)]
    try:
        for r in held:
            assert r.line().startswith(b"* OK ")
        extra = Raw(inst.port("imap"))
        try:
            assert extra.line().startswith(b"* BYE ")
            with pytest.raises(EOFError):
                extra.line()
        finally:
            extra.close()
        # The held sessions still work; when one ends its slot is free again.
        assert held[0].cmd(b"d1", b"LOGOUT")[-1].startswith(b"d1 OK")
        held[0].close()
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            again = Raw(inst.port("imap"))
            first = again.line()
            if first.startswith(b"* OK ") or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.05)
        assert first.startswith(b"* OK ")
        assert again.cmd(b"d2", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"d2 OK")
        again.close()
    finally:
        for r in held:
            r.close()


# -- two sessions on one mailbox ----------------------------------------------------------

def test_two_sessions_see_each_others_changes(imap) -> None:
    a, b = login(imap), login(imap)
    try:
        a.select("INBOX")
        b.select("INBOX")
        # b's flag change shows up in a as an untagged FETCH on NOOP (RFC 3501 §7.4.2).
        b.store("1", "+FLAGS", "(\\Flagged)")
        a.untagged_responses.clear()
        a.noop()
        assert any(b"\\Flagged" in x for x in a.untagged_responses.get("FETCH", []))
        # b expunges message 2; a learns of it on NOOP, not during FETCH (§7.4.1).
        b.store("2", "+FLAGS", "(\\Deleted)")
        assert b.expunge()[1] == [b"2"]
        typ, data = a.fetch("2", "(BODY.PEEK[])")
        assert typ == "NO"                      # RFC 2180 §4.1.2: gone meanwhile
        a.untagged_responses.clear()
        typ, data = a.fetch("1,3", "(UID)")
        assert typ == "OK" and data == [b"1 (UID 1)", b"3 (UID 3)"]
        a.untagged_responses.clear()
        a.noop()
        assert a.untagged_responses.get("EXPUNGE") == [b"2"]
        assert uid_map(a) == {1: 1, 2: 3}
        # Both see one new delivery, with one UID.
        deliver(imap.maildir(USER), b"Subject: both\n\nboth\n")
        a.noop()
        b.noop()
        assert uid_map(a) == uid_map(b) == {1: 1, 2: 3, 3: 4}
        # \Deleted set by b is expunged by a's EXPUNGE without a NOOP first (§6.4.3:
        # "all messages that have the \Deleted flag set").
        b.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        a.untagged_responses.clear()
        typ, data = a.expunge()
        assert typ == "OK" and data == [b"2"]
        assert uid_map(a) == {1: 1, 2: 4}
        # And by CLOSE.
        b.noop()
        assert uid_map(b) == {1: 1, 2: 4}
        assert b.store("2", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert a.close()[0] == "OK"
        b.noop()
        assert uid_map(b) == {1: 1}
    finally:
        a.logout()
        b.logout()


def test_examine_is_read_only(imap) -> None:
    c = login(imap)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK" and data == [b"3"]
        assert c.untagged_responses.get("READ-ONLY") is not None
        typ, data = c.fetch("1", "(BODY[])")
        assert bodies(data) == [wire(MSGS[0])]
        typ, data = c.store("1", "+FLAGS", "(\\Seen)")
        assert typ == "NO" and b"read-only" in data[0]
    finally:
        c.logout()
    assert all(n.endswith(":2,") for n in os.listdir(imap.maildir(USER) / "cur"))


def test_list_status_namespace(imap) -> None:
    sub = imap.maildir(USER) / ".Sent"
    for d in ("tmp", "new", "cur"):
        (sub / d).mkdir(parents=True)
    st = imap.maildir(USER).stat()
    for p in (sub, sub / "tmp", sub / "new", sub / "cur"):
        os.chown(p, st.st_uid, st.st_gid)
    c = login(imap)
    try:
        typ, data = c.list('""', "*")
        assert typ == "OK"
        # The special-use folders (RFC 6154) are made at login; .Sent was there already.
        assert sorted(data) == [b'(\\HasChildren) "." INBOX',
                                b'(\\HasNoChildren \\Drafts) "." INBOX.Drafts',
                                b'(\\HasNoChildren \\Junk) "." INBOX.Junk',
                                b'(\\HasNoChildren \\Sent) "." INBOX.Sent',
                                b'(\\HasNoChildren \\Trash) "." INBOX.Trash']
        typ, data = c.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
        assert data == [b"INBOX (MESSAGES 3 UNSEEN 3 UIDNEXT 4)"]
        typ, data = c.select("INBOX.Sent")
        assert typ == "OK" and data == [b"0"]
        typ, data = c.namespace()
        assert data == [b'(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))']
        typ, data = c.select("INBOX.Nope")
        assert typ == "NO"
    finally:
        c.logout()


def test_large_message_streamed_byte_exact(imap) -> None:
    # ~3 MB, LF line ends, with a CRLF that straddles the server's 64 KB read boundary.
    head = b"Subject: big\n\n"
    filler = b"y" * (65536 - len(head) - 1)
    line = b"z" * 99 + b"\n"
    big = head + filler + b"\r\n" + line * 30000 + b"last line without end"
    deliver(imap.maildir(USER), big)
    w = wire(big)
    c = imaplib.IMAP4_SSL("127.0.0.1", imap.port("imaps"), ssl_context=unverified(),
                          timeout=IO_TIMEOUT)
    try:
        assert c.login(USER, PASSWORD)[0] == "OK"
        assert c.select("INBOX")[1] == [b"4"]
        typ, data = c.fetch("4", "(RFC822.SIZE)")
        assert data == [b"4 (RFC822.SIZE %d)" % len(w)]
        typ, data = c.fetch("4", "(BODY.PEEK[])")
        assert bodies(data) == [w]
        typ, data = c.fetch("4", "(BODY.PEEK[]<2000000.100> BODY.PEEK[TEXT]<65530.20>)")
        assert bodies(data) == [w[2000000:2000100], w[len(head) + 2 + 65530:][:20]]
        typ, data = c.fetch("4", "(RFC822)")           # sets \Seen, streams again
        assert bodies(data) == [w]
        assert b"\\Seen" in data[-1] or b"\\Seen" in data[0][0]
    finally:
        c.logout()


def test_status_of_the_selected_mailbox_keeps_recent(imap) -> None:
    c = login(imap)
    try:
        c.select("INBOX")
        deliver(imap.maildir(USER), b"Subject: s\n\ns\n")
        typ, data = c.status("INBOX", "(MESSAGES RECENT)")
        assert data == [b"INBOX (MESSAGES 4 RECENT 4)"]
        c.untagged_responses.clear()
        c.noop()
        assert c.untagged_responses.get("EXISTS") == [b"4"]
        assert c.untagged_responses.get("RECENT") == [b"4"]
        typ, data = c.fetch("4", "(FLAGS)")
        assert data == [b"4 (FLAGS (\\Recent))"]
    finally:
        c.logout()
