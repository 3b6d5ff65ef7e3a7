"""pop3d as real processes: `courier start authdaemond pop3d pop3d-ssl`, driven by poplib."""

from __future__ import annotations

import os
import poplib
import socket
import ssl
import time
from pathlib import Path

import pytest

USER, PASSWORD = "alice@example.com", "alice-secret"
MSGS = [
    b"From: a@example.net\nSubject: one\n\nHello\n.leading dot\n",
    b"From: b@example.net\nSubject: two\n\nline 1\nline 2\nline 3\n",
    b"From: c@example.net\nSubject: three\n\nno newline at the end",
]


def deliver(maildir: Path, msgs: list[bytes]) -> None:
    st = maildir.stat()
    for i, m in enumerate(msgs):
        tmp = maildir / "tmp" / f"t{i}"
        tmp.write_bytes(m)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, maildir / "new" / f"{1700000000 + i}.M{i}P9.mx.test,S={len(m)}")


def wire(m: bytes) -> bytes:
    return m.replace(b"\n", b"\r\n") + (b"" if m.endswith(b"\n") else b"\r\n")


def size(m: bytes) -> int:
    """Courier's LIST size: octets + LFs (the CRLF after an unterminated end not counted)."""
    return len(m) + m.count(b"\n")


@pytest.fixture
def pop3(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    deliver(inst.maildir(USER), MSGS)
    inst.start("authdaemond", "pop3d", "pop3d-ssl")
    return inst


def login(inst) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", inst.port("pop3"), timeout=10)
    p.user(USER)
    p.pass_(PASSWORD)
    return p


def files(maildir: Path) -> list[str]:
    return sorted(n for sub in ("new", "cur") for n in os.listdir(maildir / sub))


def test_pop3d_session(pop3) -> None:
    inst = pop3
    maildir = inst.maildir(USER)
    p = poplib.POP3("127.0.0.1", inst.port("pop3"), timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    caps = p.capa()
    assert {"TOP", "USER", "UIDL", "PIPELINING", "STLS", "RESP-CODES"} <= set(caps)
    assert caps["IMPLEMENTATION"] == ["courier-py"] and "SASL" not in caps
    p.user(USER)
    p.pass_(PASSWORD)
    count, total = p.stat()
    assert count == 3 and total == sum(map(size, MSGS))
    _, listing, _ = p.list()
    assert listing == [f"{i + 1} {size(m)}".encode() for i, m in enumerate(MSGS)]
    _, uidls, _ = p.uidl()
    for i, m in enumerate(MSGS):
        # poplib undoes the dot-stuffing; the raw octets are checked below.
        _, lines, octets = p.retr(i + 1)
        assert b"\r\n".join(lines) + b"\r\n" == wire(m)
    _, top, _ = p.top(2, 1)
    assert top == [b"From: b@example.net", b"Subject: two", b"", b"line 1"]
    p.dele(1)
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(1)
    assert p.quit().startswith(b"+OK")
    assert len(files(maildir)) == 2
    # RETR set \Seen on what is left (Courier's pop3d does the same).
    assert all(n.endswith(":2,S") for n in os.listdir(maildir / "cur"))
    # The session ran as the mailbox owner, not root: what it wrote is the user's.
    if os.geteuid() == 0:
        assert maildir.stat().st_uid != 0
    for name in ("courierpop3dsizelist", "courierpop3dlock"):
        assert (maildir / name).stat().st_uid == maildir.stat().st_uid, name
    # As Courier's pop3d: its own UID counter, IMAP's courierimapuiddb is not touched.
    assert not (maildir / "courierimapuiddb").exists()
    assert (maildir / "courierpop3dsizelist").read_text().startswith("/3 4 ")

    # UIDLs are stable across sessions; numbers are per session.
    p = login(inst)
    _, again, _ = p.uidl()
    old = [ln.split()[1] for ln in uidls][1:]
    assert [ln.split()[1] for ln in again] == old
    p.quit()
    log = (inst.root / "var/log/pop3d.log").read_text()
    assert f"LOGIN, user={USER}, ip=[127.0.0.1], port=[" in log
    assert f"LOGOUT, user={USER}, ip=[127.0.0.1], port=[" in log and ", top=" in log


def test_raw_bytes_dot_stuffing_and_pipelining(pop3) -> None:
    with socket.create_connection(("127.0.0.1", pop3.port("pop3")), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(f"USER {USER}\r\nPASS {PASSWORD}\r\nLIST 1\r\nRETR 1\r\nQUIT\r\n".encode())
        out = b""
        deadline = time.monotonic() + 10
        while not out.endswith(b"+OK Bye-bye.\r\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    w = wire(MSGS[0])
    assert out == (b"+OK Password required.\r\n+OK logged in.\r\n"
                   + f"+OK 1 {len(w)}\r\n+OK {len(w)} octets follow.\r\n".encode()
                   + w.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\n+OK Bye-bye.\r\n")
    assert len(files(pop3.maildir(USER))) == 3      # QUIT without DELE removes nothing


def test_dropped_connection_deletes_nothing_and_lock(pop3) -> None:
    maildir = pop3.maildir(USER)
    p = login(pop3)
    p.dele(1)
    p.dele(2)
    # A second session while the first holds the maildrop: RFC 2449 [IN-USE].
    q = poplib.POP3("127.0.0.1", pop3.port("pop3"), timeout=10)
    q.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        q.pass_(PASSWORD)
    q.close()
    p.sock.close()          # dropped, no QUIT
    p.file.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:   # the child exits and the flock goes with it
        try:
            r = login(pop3)
            break
        except poplib.error_proto as e:
            assert b"IN-USE" in e.args[0]
            time.sleep(0.05)
    else:
        raise AssertionError("the lock outlived the dropped session")
    assert r.stat()[0] == 3
    r.quit()
    assert len(files(maildir)) == 3


def test_failed_logins_and_errors(pop3) -> None:
    p = poplib.POP3("127.0.0.1", pop3.port("pop3"), timeout=10)
    with pytest.raises(poplib.error_proto, match="STAT is not valid"):
        p._shortcmd("STAT")
    p.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.user(USER)
    p.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto, match="Invalid command"):
        p._shortcmd("XYZZY")
    with pytest.raises(poplib.error_proto, match="too long"):
        p._shortcmd("NOOP " + "x" * 300)
    assert p.noop().startswith(b"+OK")
    p.quit()
    log = (pop3.root / "var/log/pop3d.log").read_text()
    assert f"LOGIN FAILED, user={USER}, ip=[127.0.0.1]" in log


def test_stls_and_pop3s(pop3) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3("127.0.0.1", pop3.port("pop3"), timeout=10)
    p.stls(ctx)
    assert "STLS" not in p.capa()
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 3
    p.quit()
    s = poplib.POP3_SSL("127.0.0.1", pop3.port("pop3s"), timeout=10, context=ctx)
    s.user(USER)
    s.pass_(PASSWORD)
    assert s.stat()[0] == 3
    s.quit()


def test_sasl_auth_after_stls_and_on_pop3s(pop3) -> None:
    """RFC 5034 AUTH against the real authd: none offered in the clear (POP3AUTH=""),
    PLAIN and LOGIN after STLS and on pop3d-ssl (POP3AUTH_TLS, the default file)."""
    import base64
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3("127.0.0.1", pop3.port("pop3"), timeout=10)
    assert "SASL" not in p.capa()
    with pytest.raises(poplib.error_proto, match="Unsupported authentication mechanism"):
        p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode())
    p.stls(ctx)
    assert p.capa()["SASL"] == ["PLAIN", "LOGIN"]
    bad = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Login failed"):
        p._shortcmd("AUTH PLAIN " + bad)
    # LOGIN, with the server's two challenges.
    assert p._shortcmd("AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
    assert p._shortcmd(base64.b64encode(USER.encode()).decode()) == \
        b"+ " + base64.b64encode(b"Password:")
    assert p._shortcmd(base64.b64encode(PASSWORD.encode()).decode()).startswith(b"+OK")
    assert p.stat()[0] == 3
    p.quit()
    s = poplib.POP3_SSL("127.0.0.1", pop3.port("pop3s"), timeout=10, context=ctx)
    assert s._shortcmd("AUTH PLAIN").startswith(b"+")
    assert s._shortcmd(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
                       ).startswith(b"+OK")
    assert s.stat()[0] == 3
    s.quit()
    log = (pop3.root / "var/log/pop3d.log").read_text()
    assert f"LOGIN FAILED, user={USER}, ip=[127.0.0.1]" in log


def test_configured_limits_close_the_connection(new_instance) -> None:
    """POP3_MAX_BAD_COMMANDS / POP3_MAX_FAILED_LOGINS from etc/pop3d; a 255+ line is one
    bad command, answered before the rest of it is read."""
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    with open(inst.etc / "pop3d", "a") as f:
        f.write("\nPOP3_MAX_BAD_COMMANDS=3\nPOP3_MAX_FAILED_LOGINS=2\n")
    inst.start("authdaemond", "pop3d")

    def until_closed(s: socket.socket) -> bytes:
        out = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
        raise AssertionError(f"still open: {out!r}")

    with socket.create_connection(("127.0.0.1", inst.port("pop3")), timeout=20) as s:
        assert s.recv(512).startswith(b"+OK")
        # 1 MB without a line end: refused at once, not buffered until the LF.
        s.sendall(b"NOOP " + b"x" * 300)
        assert s.recv(512) == b"-ERR Command line too long.\r\n"
        s.sendall(b"x" * 1_000_000 + b"\r\nXYZZY\r\nSTAT\r\n")
        out = until_closed(s)
    assert out == (b"-ERR Invalid command.\r\n-ERR STAT is not valid in the AUTHORIZATION "
                   b"state.\r\n-ERR Too many bad commands, closing the connection.\r\n")
    with socket.create_connection(("127.0.0.1", inst.port("pop3")), timeout=20) as s:
        assert s.recv(512).startswith(b"+OK")
        s.sendall(f"USER {USER}\r\nPASS no\r\nUSER {USER}\r\nPASS no2\r\nNOOP\r\n".encode())
        out = until_closed(s)
    assert out.count(b"-ERR [AUTH] Login failed.\r\n") == 2
    assert out.endswith(b"-ERR Too many failed logins, closing the connection.\r\n")


def test_8bit_headers_wrapped_unless_utf8(pop3) -> None:
    """RFC 6856 as Courier's pop3d 5.0.13: a client that did not send UTF8 gets a
    message with 8-bit headers inside a notice (message/global attached), the size
    announced by RETR including the notice; after UTF8 the message as stored."""
    msg = "Subject: grüße\nFrom: Jürgen <j@example.de>\n\nhallo, Welt\n".encode()
    md = pop3.maildir(USER)
    deliver(md, [msg])
    # deliver() names by index: give it a later name, so it is the fourth message.
    (first,) = [n for n in os.listdir(md / "new") if n.endswith(f",S={len(msg)}")]
    os.rename(md / "new" / first, md / "new" / "1800000000.M9P9.mx.test")
    p = login(pop3)
    assert p.list(4).split()[2] == str(size(msg)).encode()
    resp, lines, octets = p.retr(4)
    body = b"\r\n".join(lines) + b"\r\n"
    assert lines[0] == b"From: Mail Delivery Subsystem <postmaster>"
    assert b"Content-Type: message/global\r\n\r\n" + wire(msg) in body
    boundary = lines[3].split(b'"')[1]
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    # Courier's size: the message's plus the notice's octets as stored (LF ends).
    announced = int(resp.split()[1])
    assert announced == size(msg) + len(body.replace(b"\r\n", b"\n")) - len(msg)
    p.quit()
    q = poplib.POP3("127.0.0.1", pop3.port("pop3"), timeout=10)
    assert q._shortcmd("UTF8").startswith(b"+OK")
    q.user(USER)
    q.pass_(PASSWORD)
    resp, lines, _ = q.retr(4)
    assert b"\r\n".join(lines) + b"\r\n" == wire(msg)
    assert int(resp.split()[1]) == size(msg)
    q.quit()
