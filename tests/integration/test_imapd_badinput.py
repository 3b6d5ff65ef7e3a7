"""imapd and bad input over the wire (issue 5, "Bad input"): every malformed command gets a
tagged BAD with a reason and the session goes on; commands in the wrong state; invalid
sequence sets; unknown charsets; oversized literals refused before they are read (also
LITERAL+, RFC 7888 §4); a 10 MB line without CRLF; a client that floods NOOPs and reads
nothing. Memory is measured on the session's own process (psutil RSS).
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, Raw, deliver
from tests.unit.test_imap_badinput import MALFORMED

MIB = 1024 * 1024
MAX_LITERAL = 32 * MIB          # courier_imapd.core.SESSION_LIMITS.max_literal
GROWTH_LIMIT = 24 * MIB         # what one session may grow by under any of these floods


@pytest.fixture
def imap(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(inst.maildir(USER), m)
    inst.start("authdaemond", "imapd")
    return inst


def logged_in(inst, select: bool = True) -> Raw:
    r = Raw(inst.port("imap"))
    assert r.line().startswith(b"* OK")
    assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    if select:
        assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    return r


def session_process(inst, r: Raw) -> psutil.Process:
    """The imapd child serving this connection (found by our local port)."""
    port = r.sock.getsockname()[1]
    listener = psutil.Process(inst.pid("imapd"))
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        for p in listener.children(recursive=True):
            try:
                if any(c.raddr and c.raddr.port == port for c in p.net_connections("tcp")):
                    return p
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError("no session process for our connection")


class RssWatch:
    """Samples a process's RSS in a thread until stopped; the highest value seen."""

    def __init__(self, proc: psutil.Process):
        self.proc = proc
        self.start = proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._t.join(IO_TIMEOUT)
        return self.peak - self.start


def test_malformed_commands_bad_with_reason_session_goes_on(imap) -> None:
    r = logged_in(imap)
    try:
        for line, why in MALFORMED:
            r.send(line + b"\r\n")
            reply = r.until(b"a")
            assert len(reply) == 1, (line, reply)
            assert reply[0].startswith(b"a BAD "), (line, reply)
            assert why.lower().encode() in reply[0].lower(), (line, reply)
            assert len(reply[0].strip()) > len(b"a BAD "), (line, reply)   # a reason
        assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
        assert r.cmd(b"f", b"FETCH 1:* (UID)")[-1].startswith(b"f OK")
    finally:
        r.close()


def test_wrong_state_invalid_sets_and_charsets(imap) -> None:
    r = Raw(imap.port("imap"))
    try:
        assert r.line().startswith(b"* OK")
        # Not authenticated: selected-state and authenticated-state commands are BAD.
        for cmd in (b"SELECT INBOX", b"FETCH 1 FLAGS", b"LIST \"\" *", b"IDLE"):
            assert r.cmd(b"a", cmd)[-1].startswith(b"a BAD "), cmd
        assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
        assert r.cmd(b"a", b"LOGIN x y")[-1].startswith(b"a BAD ")
        for cmd in (b"FETCH 1 FLAGS", b"EXPUNGE", b"CLOSE", b"UID SEARCH ALL"):
            assert r.cmd(b"a", cmd)[-1].startswith(b"a BAD "), cmd
        # EXAMINE: read-only, so STORE and EXPUNGE are NO (§6.3.2), not BAD.
        assert r.cmd(b"e", b"EXAMINE INBOX")[-1].startswith(b"e OK [READ-ONLY]")
        assert r.cmd(b"a", b"STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"a NO ")
        assert r.cmd(b"a", b"EXPUNGE")[-1].startswith(b"a NO ")
        # Sequence numbers past the end are BAD (§9: a number the mailbox does not
        # have); UIDs past the end are no error (§6.4.8), just nothing.
        assert r.cmd(b"a", b"FETCH 4 FLAGS")[-1].startswith(b"a BAD ")
        assert r.cmd(b"a", b"FETCH 2:9 FLAGS")[-1].startswith(b"a BAD ")
        assert r.cmd(b"a", b"UID FETCH 999 FLAGS") == [b"a OK FETCH completed.\r\n"]
        assert r.cmd(b"a", b"FETCH 3:* (UID)")[-1].startswith(b"a OK")
        # An unknown charset: NO [BADCHARSET] (§6.4.4).
        reply = r.cmd(b"a", b"SEARCH CHARSET X-NOPE-1 ALL")
        assert reply[-1].startswith(b"a NO [BADCHARSET"), reply
        assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        r.close()


def test_oversized_synchronising_literal_refused_before_read(imap) -> None:
    r = logged_in(imap, select=False)
    try:
        r.send(b"a APPEND INBOX {%d}\r\n" % (MAX_LITERAL + 1))
        reply = r.line()
        assert reply.startswith(b"a BAD Literal too large"), reply   # no "+" first
        assert r.cmd(b"n", b"NOOP") == [b"n OK NOOP completed\r\n"]
    finally:
        r.close()


def test_oversized_literal_plus_drained_in_bounded_memory(imap) -> None:
    r = logged_in(imap, select=False)
    try:
        watch = RssWatch(session_process(imap, r))
        r.send(b"a APPEND INBOX {%d+}\r\n" % (MAX_LITERAL + 1))
        # The BAD comes at once, while the literal is still on its way (RFC 7888 §4:
        # the server reads and discards it).
        assert r.line().startswith(b"a BAD Literal too large")
        chunk = b"x" * (256 * 1024)
        left = MAX_LITERAL + 1
        while left:
            piece = chunk[:left]
            r.send(piece)
            left -= len(piece)
        r.send(b"\r\n")
        assert r.cmd(b"n", b"NOOP") == [b"n OK NOOP completed\r\n"]
        grew = watch.stop()
        print(f"LITERAL+ of 32 MiB + 1 drained: session RSS grew by {grew / MIB:.2f} MiB")
        assert grew < GROWTH_LIMIT, f"session grew by {grew / MIB:.1f} MiB"
        assert b"MESSAGES 3" in b"".join(r.cmd(b"s", b"STATUS INBOX (MESSAGES)"))
        # The control: a literal under the limit is taken (held whole, by design), and
        # the same measurement sees it, so the 0 above is not a blind watch.
        watch = RssWatch(watch.proc)
        size = 16 * MIB
        r.send(b"a APPEND INBOX {%d+}\r\n" % size + b"Subject: big\r\n\r\n"
               + b"y" * (size - 17) + b"\r\n")
        assert r.until(b"a")[-1].startswith(b"a OK")
        grew = watch.stop()
        print(f"control: a 16 MiB APPEND grew the session by {grew / MIB:.2f} MiB")
        assert grew >= 8 * MIB
        assert b"MESSAGES 4" in b"".join(r.cmd(b"s", b"STATUS INBOX (MESSAGES)"))
    finally:
        r.close()


def test_ten_megabyte_line_refused_without_being_held(imap) -> None:
    r = logged_in(imap)
    try:
        watch = RssWatch(session_process(imap, r))
        r.send(b"a SEARCH TEXT ")
        chunk = b"z" * 65536
        for _ in range(10 * MIB // len(chunk)):
            r.send(chunk)
        # Refused as soon as it passed the line limit: the answer is already waiting.
        r.sock.settimeout(IO_TIMEOUT)
        assert r.line() == b"a BAD Line too long (limit 65536 bytes)\r\n"
        r.send(b"\r\n")
        assert r.cmd(b"n", b"NOOP")[-1] == b"n OK NOOP completed\r\n"
        grew = watch.stop()
        print(f"10 MiB line: session RSS grew by {grew / MIB:.2f} MiB")
        assert grew < GROWTH_LIMIT, f"session grew by {grew / MIB:.1f} MiB"
    finally:
        r.close()


def test_many_literals_in_one_command_refused(imap) -> None:
    r = logged_in(imap)
    try:
        r.send(b"a SEARCH" + b" TEXT {0+}\r\n" * 5000 + b" ALL\r\n")
        reply = r.until(b"a")
        assert reply == [b"a BAD Too many literals (limit 1000)\r\n"], reply[:3]
        assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    finally:
        r.close()


def test_noop_flood_without_reading_keeps_memory_bounded(imap) -> None:
    """50 MB of NOOPs from a client that reads nothing: the server blocks on its
    output and stops reading, so the flood waits in the kernel's socket buffers, not
    in the session; afterwards every NOOP is answered, in order."""
    r = logged_in(imap, select=False)
    proc = session_process(imap, r)
    watch = RssWatch(proc)
    noop = b"a NOOP\r\n"
    block = noop * (64 * 1024 // len(noop))
    goal = 50 * MIB
    sent = 0
    r.sock.settimeout(2.0)
    stalled = False
    try:
        while sent < goal:
            try:
                n = r.sock.send(block)
            except TimeoutError:
                stalled = True      # the server stopped reading: back-pressure
                break
            sent += n
            if n < len(block):
                rest = block[n:]
                # finish the partial block so the stream stays whole NOOP lines
                r.sock.settimeout(None)
                r.sock.sendall(rest)
                r.sock.settimeout(2.0)
                sent += len(rest)
        time.sleep(0.5)             # let the server settle at its blocked send
        grew = watch.stop()
        assert stalled, f"all {sent} bytes were taken without replies being read"
        assert grew < GROWTH_LIMIT, f"session grew by {grew / MIB:.1f} MiB ({sent} sent)"
        # Now read: every NOOP is answered and the session is still in order.
        expected = sent // len(noop)
        print(f"flood: {sent / MIB:.1f} MiB sent before the server stopped reading; "
              f"session RSS grew by {grew / MIB:.2f} MiB")
        r.sock.settimeout(IO_TIMEOUT * 6)
        # Our own send blocks until the server reads again, so it goes from a thread.
        tail = threading.Thread(target=r.send, args=(b"z NOOP\r\n",), daemon=True)
        tail.start()
        got = 0
        while True:
            ln = r.line()
            if ln.startswith(b"z "):
                assert ln == b"z OK NOOP completed\r\n"
                break
            assert ln == b"a OK NOOP completed\r\n", ln
            got += 1
        assert got == expected
    finally:
        r.close()


# Well-formed commands with odd values: each gets a tagged answer (OK, NO or BAD) in
# time, the session goes on and nothing is logged as a crash.
ODD_VALUES: list[bytes] = [
    b"FETCH 1 BODY.PEEK[99]", b"FETCH 1 BODY.PEEK[1.2.3.4.5]", b"FETCH 1 BODY.PEEK[2.MIME]",
    b"FETCH 1 BODY.PEEK[]<4294967295.4294967295>", b"FETCH 1 BODY.PEEK[HEADER.FIELDS (\"\")]",
    b"FETCH 1 BINARY[1]", b"FETCH 1:* (FLAGS) (CHANGEDSINCE 1)", b"FETCH * ENVELOPE",
    b"STORE 1 +FLAGS (\\Recent)", b"STORE 1 FLAGS (\\Bogus)", b"STORE 1 -FLAGS ()",
    b"STORE 1 +FLAGS (" + b" ".join(b"kw%d" % i for i in range(300)) + b")",
    b"STORE 1 -FLAGS (" + b" ".join(b"kw%d" % i for i in range(300)) + b")",
    b'COPY 1 ""', b"COPY 1 INBOX.", b"CREATE INBOX.", b"CREATE .", b"CREATE INBOX..x",
    b"CREATE INBOX.a/b", b"CREATE ../../etc", b"SELECT ../../etc", b'SELECT "INBOX/../.."',
    b"RENAME INBOX INBOX", b"RENAME INBOX.nope INBOX.x", b"DELETE INBOX", b"DELETE INBOX.nope",
    b'STATUS INBOX.nope (MESSAGES)', b"GETQUOTAROOT INBOX.nope", b"GETQUOTA nope",
    b"SETQUOTA \"\" (STORAGE 1)", b"ENABLE NOTHING", b'ID ("a" "b" "c" NIL)',
    b'LIST "" "' + b"%*" * 40 + b'x"', b'LIST "' + b"*" * 60 + b'" "' + b"%" * 60 + b'"',
    b'LIST "" "' + b"*." * 200 + b'"',
    b"SEARCH CHARSET UTF-8 TEXT \"\xff\xfe\"", b"SEARCH SENTBEFORE 1-Jan-0001",
    b"SEARCH SINCE 31-Dec-9999", b"SEARCH LARGER 4294967295", b"SEARCH UID 4294967295",
    b"SEARCH MODSEQ 0", b"SEARCH HEADER \"\" \"\"", b"SEARCH KEYWORD \\Seen",
    b'SEARCH TEXT "' + b"a" * 5000 + b'"', b"SORT (REVERSE REVERSE DATE) UTF-8 ALL",
    b"THREAD REFERENCES UTF-8 ALL", b"UID FETCH 4294967295:* FLAGS",
    b"UID STORE 4294967295 +FLAGS (\\Seen)", b"UID COPY 4294967295 INBOX",
    b"UID EXPUNGE 4294967295", b"UID MOVE 4294967295 INBOX",
    b'APPEND INBOX {0+}\r\n', b'APPEND INBOX (\\Recent) {1+}\r\nx',
    b'APPEND INBOX "31-Feb-2020 00:00:00 +0000" {1+}\r\nx',
    b'APPEND INBOX.nope {1+}\r\nx', b"EXAMINE INBOX", b"SELECT INBOX",
]


def test_odd_values_answered_and_session_goes_on(imap) -> None:
    r = logged_in(imap)
    try:
        for i, cmd in enumerate(ODD_VALUES):
            tag = b"o%d" % i
            reply = r.cmd(tag, cmd)
            assert reply[-1].split(b" ")[1] in (b"OK", b"NO", b"BAD"), (cmd, reply[-3:])
            assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK"), cmd
    finally:
        r.close()
    log = (imap.root / "var/log/imapd.log").read_text(errors="replace")
    assert "uncaught exception" not in log and "Traceback" not in log, log[-3000:]


def test_prelogin_literals_and_lines_limited(imap) -> None:
    """Before login (root's code) the limits are small: 1 KiB literals, 8 KiB lines."""
    r = Raw(imap.port("imap"))
    try:
        assert r.line().startswith(b"* OK")
        r.send(b"a LOGIN {5000}\r\n")
        assert r.line().startswith(b"a BAD Literal too large")
        r.send(b"b LOGIN {5000+}\r\n" + b"u" * 5000 + b" pw\r\n")
        assert r.line().startswith(b"b BAD Literal too large")
        r.send(b"c LOGIN " + b"u" * 100_000 + b" pw\r\n")
        assert r.line().startswith(b"c BAD Line too long")
        assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    finally:
        r.close()
