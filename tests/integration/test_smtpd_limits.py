"""esmtpd's limits over the wire (issue 7, "Bad input"), as real processes: too many
errors end in 421, SIZE is enforced while reading (552 after the dot, nothing stored,
the session goes on), an over-long text line is refused after the dot, and a client
that stalls at a command or inside DATA is cut off after ESMTPD_TIMEOUT with 421,
leaving nothing in the spool."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from libcourier.spool import list_queue

USER = "alice@example.com"
IO_TIMEOUT = 30.0      # generous: the machine is shared


def spool_files(spooldir: Path) -> list[str]:
    return sorted(p.relative_to(spooldir).as_posix() for p in spooldir.rglob("*") if p.is_file())


def wait_for(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def smtpd(new_instance):
    inst = new_instance
    with open(inst.etc / "esmtpd", "a") as f:
        f.write("SIZELIMIT=10000\nESMTPD_TIMEOUT=2\n")
    inst.adduser(USER, "alice-secret")
    inst.start("authdaemond", "esmtpd")
    return inst


class Client:
    """A raw SMTP client that reads whole (possibly multi-line) replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return b"".join(lines)
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        return self.file.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def client(smtpd):
    c = Client(smtpd.port("smtp"))
    yield c
    c.close()


def test_too_many_errors_close_with_421(client):
    client.sock.sendall(b"EHLO client.test\r\n" + b"BOGUS command\r\n" * 40)
    replies = client.rest().decode().splitlines()
    codes = [r[:3] for r in replies if r[3:4] == " "]
    assert codes[0] == "250"
    assert codes[-1] == "421" and "4.7.0" in replies[-1], replies[-3:]
    # Closed at the limit (20 errors), not after reading all 40 bad commands.
    assert 1 <= codes.count("500") < 40, codes


def test_size_enforced_while_reading(client, smtpd):
    ehlo = client.cmd(b"EHLO client.test")
    assert b"250-SIZE 10000\r\n" in ehlo
    # Declared too big: refused at MAIL (RFC 1870 §6.2).
    assert client.cmd(b"MAIL FROM:<bob@example.net> SIZE=20000").startswith(b"552 5.3.4")
    # Undeclared and too big: read to the end, then 552, nothing stored.
    assert client.cmd(b"MAIL FROM:<bob@example.net>").startswith(b"250 ")
    assert client.cmd(f"RCPT TO:<{USER}>".encode()).startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 1000     # ~72 KB
    client.sock.sendall(big + b".\r\n")
    assert client.reply().startswith(b"552 5.3.4")
    assert list_queue(smtpd.layout.spooldir) == []
    # The session goes on: a small message in the same session is taken.
    assert client.cmd(b"MAIL FROM:<bob@example.net>").startswith(b"250 ")
    assert client.cmd(f"RCPT TO:<{USER}>".encode()).startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    assert client.cmd(b"Subject: small\r\n\r\nsmall\r\n.").startswith(b"250 ")
    assert len(list_queue(smtpd.layout.spooldir)) == 1
    assert client.cmd(b"QUIT").startswith(b"221 ")


def test_long_text_line_refused_after_the_dot(client, smtpd):
    client.cmd(b"EHLO client.test")
    assert client.cmd(b"MAIL FROM:<bob@example.net>").startswith(b"250 ")
    assert client.cmd(f"RCPT TO:<{USER}>".encode()).startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    # RFC 5321 §4.5.3.1.6: 1000 octets with CRLF; this line has 2001.
    client.sock.sendall(b"Subject: long\r\n\r\n" + b"z" * 1999 + b"\r\n.\r\n")
    assert client.reply().startswith(b"550 5.6.0")
    assert client.cmd(b"NOOP").startswith(b"250 ")
    assert list_queue(smtpd.layout.spooldir) == []


def test_silent_client_is_cut_off(client):
    started = time.monotonic()
    # Send nothing: ESMTPD_TIMEOUT=2 ends the session with 421 4.4.2.
    out = client.rest()
    assert out.startswith(b"421 4.4.2"), out
    assert time.monotonic() - started < IO_TIMEOUT


def test_client_stalling_mid_data_is_cut_off_and_nothing_stored(client, smtpd):
    spooldir = smtpd.layout.spooldir
    client.cmd(b"EHLO client.test")
    assert client.cmd(b"MAIL FROM:<bob@example.net>").startswith(b"250 ")
    assert client.cmd(f"RCPT TO:<{USER}>".encode()).startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    client.sock.sendall(b"Subject: stalled\r\n\r\nsome text\r\n")
    assert wait_for(lambda: any((spooldir / "tmp").iterdir()))    # the message was begun
    out = client.rest()      # then silence: the server gives up
    assert out.startswith(b"421 4.4.2"), out
    assert wait_for(lambda: spool_files(spooldir) == []), spool_files(spooldir)
    assert wait_for(lambda: "timeout" in smtpd.logs().lower()), smtpd.logs()


@pytest.fixture
def trickle_smtpd(new_instance):
    inst = new_instance
    with open(inst.etc / "esmtpd", "a") as f:
        f.write("ESMTPD_TIMEOUT=60\nESMTPD_DATA_TIMEOUT=4\n")
    inst.adduser(USER, "alice-secret")
    inst.start("authdaemond", "esmtpd")
    return inst


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_trickling_message_is_cut_off_by_the_data_deadline(trickle_smtpd, verb):
    """A line every 0.3 s never trips the 60 s idle timeout, but the whole message
    may take only ESMTPD_DATA_TIMEOUT=4 s: then 421, and nothing is stored."""
    spooldir = trickle_smtpd.layout.spooldir
    c = Client(trickle_smtpd.port("smtp"))
    try:
        c.cmd(b"EHLO client.test")
        assert c.cmd(b"MAIL FROM:<bob@example.net>").startswith(b"250 ")
        assert c.cmd(f"RCPT TO:<{USER}>".encode()).startswith(b"250 ")
        if verb == "DATA":
            assert c.cmd(b"DATA").startswith(b"354 ")
        started = time.monotonic()
        deadline = started + IO_TIMEOUT
        c.sock.settimeout(0.3)
        out = b""
        while time.monotonic() < deadline:
            try:
                if verb == "DATA":
                    c.sock.sendall(b"a line of text\r\n")
                else:
                    c.sock.sendall(b"BDAT 16\r\na line of text\r\n")
            except OSError:
                break           # the server closed on us
            try:
                chunk = c.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            out += chunk
        elapsed = time.monotonic() - started
        c.sock.settimeout(IO_TIMEOUT)
        try:
            out += c.file.read()
        except OSError:
            pass
    finally:
        c.close()
    assert b"421 4.4.2" in out, out
    assert elapsed >= 3.5, elapsed         # not before the deadline
    assert wait_for(lambda: spool_files(spooldir) == []), spool_files(spooldir)


def test_421_reaches_a_client_still_pipelining_garbage(client):
    """A client that keeps sending after the 421 still reads it: esmtpd half-closes
    and drains its input for a while before closing, because a close with unread
    input makes the kernel answer RST, which can drop the 421 on its way (the client
    then sees ECONNRESET instead of the reply)."""
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    client.sock.setblocking(False)
    out = b""
    eof = False
    deadline = time.monotonic() + IO_TIMEOUT
    try:
        while not eof and time.monotonic() < deadline:
            try:
                # More than esmtpd reads at once: input is left unread at the 421.
                client.sock.send(b"BOGUS garbage\r\n" * 8192)
            except BlockingIOError:
                pass
            # Read what came back without waiting; EOF (our FIN from the server)
            # ends the sending.
            while True:
                try:
                    chunk = client.sock.recv(65536)
                except BlockingIOError:
                    break
                if not chunk:
                    eof = True
                    break
                out += chunk
            time.sleep(0.001)     # a pipelining client, not a busy loop
    except ConnectionResetError:
        pytest.fail(f"reset before the 421 and EOF were read; got {out[-200:]!r}")
    assert eof, out[-200:]
    assert b"\r\n421 4.7.0 " in out, out[-200:]
