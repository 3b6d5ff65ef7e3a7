"""courier_smtpd.core fed RFC 5321-style transcripts: whole, byte by byte, and pipelined."""

from __future__ import annotations

import pytest
from courier_smtpd.core import (
    Close,
    DataChunk,
    DataStart,
    Limits,
    MessageAborted,
    MessageReady,
    Send,
    SessionInfo,
    SmtpServer,
    StartTLS,
    State,
    Verdict,
)
from hypothesis import given, settings
from hypothesis import strategies as st


class Policy:
    """Green is unknown (RFC 5321 D.1), busy@ is a temporary failure."""

    def check_sender(self, sender, session):
        if sender.startswith("spammer@"):
            return Verdict.reject(550, "5.7.1", "Go away.")
        return Verdict.accept()

    def check_recipient(self, address, session):
        local = address.lower()
        if local.startswith("green@"):
            return Verdict.reject(550, "5.1.1", "No such user here.")
        if local.startswith("busy@"):
            return Verdict.tempfail(451, "4.4.3", "Try later.")
        return Verdict.accept()


class Driver:
    """What session.py does, minus the socket: runs events, records everything."""

    def __init__(self, limits=None, tls=False):
        self.core = SmtpServer(SessionInfo("foo.com", tls_available=tls), Policy(), limits)
        self.out = bytearray(self.core.greeting())
        self.messages: list[tuple[object, bytes]] = []
        self.aborted: list[str] = []
        self.closed = False
        self.tls_count = 0
        self._data: bytearray | None = None

    def run(self, events):
        queue = list(events)
        while queue:
            ev = queue.pop(0)
            match ev:
                case Send(data):
                    assert not self.closed
                    self.out += data
                case DataStart():
                    assert self._data is None
                    self._data = bytearray()
                case DataChunk(data):
                    self._data += data
                case MessageReady(txn):
                    self.messages.append((txn, bytes(self._data)))
                    self._data = None
                    queue += self.core.message_accepted(f"Q{len(self.messages)}")
                case MessageAborted(reason):
                    self.aborted.append(reason)
                    self._data = None
                case StartTLS():
                    self.tls_count += 1
                    queue += self.core.tls_started()
                case Close():
                    self.closed = True
                case _:
                    raise AssertionError(ev)

    def feed(self, data: bytes):
        self.run(self.core.feed(data))


def parse_transcript(text: str) -> tuple[bytes, bytes]:
    client, server = bytearray(), bytearray()
    for line in text.strip("\n").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("C: "):
            client += line[3:].encode() + b"\r\n"
        elif line == "C:":
            client += b"\r\n"
        elif line.startswith("S: "):
            server += line[3:].encode() + b"\r\n"
        else:
            raise ValueError(line)
    return bytes(client), bytes(server)


def run_three_ways(text: str, **kw) -> list[Driver]:
    client, expected = parse_transcript(text)
    drivers = []
    whole = Driver(**kw)
    whole.feed(client)
    drivers.append(whole)
    one = Driver(**kw)
    for i in range(len(client)):
        one.feed(client[i:i + 1])
    drivers.append(one)
    # Pipelined with trailing bytes: the transcript ends in QUIT, so what
    # follows must be ignored entirely.
    trail = Driver(**kw)
    trail.feed(client + b"NOOP\r\nMAIL FROM:<x@y>\r\n")
    drivers.append(trail)
    for d in drivers:
        assert d.out.decode() == expected.decode()
        assert d.closed
    assert whole.messages == one.messages == trail.messages
    return drivers


EHLO_REPLY = """
S: 250-foo.com Ok.
S: 250-XVERP=Courier
S: 250-XEXDATA
S: 250-XSECURITY=NONE,STARTTLS
S: 250-PIPELINING
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-DSN
S: 250-CHUNKING
S: 250-SIZE 10485760
S: 250 ENHANCEDSTATUSCODES
"""


def test_rfc5321_d1_example():
    d = run_three_ways("""
S: 220 foo.com ESMTP
C: EHLO bar.com
""" + EHLO_REPLY + """
C: MAIL FROM:<Smith@bar.com>
S: 250 2.1.0 Ok.
C: RCPT TO:<Jones@foo.com>
S: 250 2.1.5 Ok.
C: RCPT TO:<Green@foo.com>
S: 550 5.1.1 No such user here.
C: RCPT TO:<Brown@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: Blah blah blah...
C: ...etc. etc. etc.
C: .
S: 250 2.0.0 Ok. Q1
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")[0]
    (txn, data), = d.messages
    assert txn.sender == "Smith@bar.com"
    assert [r.address for r in txn.recipients] == ["Jones@foo.com", "Brown@foo.com"]
    assert data == b"Blah blah blah...\r\n..etc. etc. etc.\r\n"   # one dot removed (§4.5.2)
    assert d.core.session.helo == "bar.com"


def test_pipelined_two_messages_in_one_batch():
    d = run_three_ways("""
S: 220 foo.com ESMTP
C: HELO bar.com
S: 250 foo.com Ok.
C: MAIL FROM:<>
S: 250 2.1.0 Ok.
C: RCPT TO:<a@foo.com>
S: 250 2.1.5 Ok.
C: RCPT TO:<busy@foo.com>
S: 451 4.4.3 Try later.
C: DATA
S: 354 Ok.
C: Subject: one
C:
C: first
C: .
S: 250 2.0.0 Ok. Q1
C: RSET
S: 250 2.0.0 Ok.
C: MAIL FROM:<"quoted local"@[192.0.2.1]>
S: 250 2.1.0 Ok.
C: RCPT TO:<postmaster>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: ..
C: .x
C: .
S: 250 2.0.0 Ok. Q2
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")[0]
    assert [m[1] for m in d.messages] == [b"Subject: one\r\n\r\nfirst\r\n", b".\r\nx\r\n"]
    assert d.messages[0][0].sender == ""
    assert d.messages[1][0].sender == '"quoted local"@[192.0.2.1]'
    assert d.messages[1][0].recipients[0].address == "postmaster"


def test_errors_and_sequencing():
    run_three_ways("""
S: 220 foo.com ESMTP
C: MAIL FROM:<a@b.c>
S: 503 5.5.1 Send EHLO/HELO first.
C: EHLO
S: 501 5.5.4 EHLO requires a domain or address literal
C: FROB
S: 500 5.5.2 Syntax error, command unrecognized.
C: EHLO bar.com
""" + EHLO_REPLY + """
C: RCPT TO:<a@foo.com>
S: 503 5.5.1 Need MAIL before RCPT.
C: DATA
S: 503 5.5.1 Need RCPT before DATA.
C: MAIL FROM:a@b.c
S: 501 5.5.4 Syntax error, address must be in <angle brackets>
C: MAIL FROM:<a@@b>
S: 501 5.1.3 Invalid domain name
C: MAIL FROM:<a@b.c> SIZE=big
S: 501 5.5.4 Invalid SIZE value.
C: MAIL FROM:<a@b.c> BODY=BINARYMIME
S: 501 5.5.4 BODY must be 7BIT or 8BITMIME.
C: MAIL FROM:<a@b.c> FROB=1
S: 555 5.5.4 Unsupported parameter FROB.
C: MAIL FROM:<a@b.c> SIZE=99999999999
S: 552 5.3.4 Message size exceeds fixed maximum message size.
C: MAIL FROM:<spammer@b.c>
S: 550 5.7.1 Go away.
C: MAIL FROM:<ü@b.c>
S: 553 5.6.7 Non-ASCII address needs SMTPUTF8.
C: MAIL FROM:<a@b.c> BODY=8bitmime SIZE=100
S: 250 2.1.0 Ok.
C: MAIL FROM:<a@b.c>
S: 503 5.5.1 Nested MAIL command.
C: DATA
S: 554 5.5.1 No valid recipients.
C: RCPT TO:<Green@foo.com>
S: 550 5.1.1 No such user here.
C: RCPT TO:<x@foo.com> NOTIFY=NEVER,SUCCESS
S: 555 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY.
C: RCPT TO:<x@foo.com> XFOO=1
S: 555 5.5.4 Unsupported parameter XFOO.
C: RCPT TO:<>
S: 501 5.1.3 Empty recipient address
C: DATA extra
S: 501 5.5.4 DATA takes no parameters.
C: VRFY
S: 501 5.5.4 VRFY needs an argument.
C: VRFY joe
S: 252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery.
C: EXPN list
S: 502 5.5.1 EXPN not available.
C: STARTTLS
S: 503 5.5.1 STARTTLS not allowed now.
C: NOOP whatever
S: 250 2.0.0 Ok.
C: HELP
S: 214-2.0.0 courier-py ESMTP server. Commands:
S: 214 2.0.0 EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH
C: rset
S: 250 2.0.0 Ok.
C: STARTTLS
S: 502 5.5.1 STARTTLS not available.
C: quit
S: 221 2.0.0 foo.com closing connection.
""", limits=Limits(max_errors=100))


def test_smtputf8_transaction():
    d = run_three_ways("""
S: 220 foo.com ESMTP
C: EHLO bar.com
""" + EHLO_REPLY + """
C: MAIL FROM:<jöran@bär.de> SMTPUTF8 BODY=8BITMIME
S: 250 2.1.0 Ok.
C: RCPT TO:<ünï@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: Sübject: ü
C: .
S: 250 2.0.0 Ok. Q1
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")[0]
    txn, data = d.messages[0]
    assert txn.smtputf8 and txn.body == "8BITMIME" and txn.sender == "jöran@bär.de"
    assert data == "Sübject: ü\r\n".encode()


def test_params_after_helo_are_refused():
    run_three_ways("""
S: 220 foo.com ESMTP
C: HELO bar.com
S: 250 foo.com Ok.
C: MAIL FROM:<a@b.c> SIZE=10
S: 555 5.5.4 MAIL parameters need EHLO.
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")


def test_command_line_too_long_then_goes_on():
    d = Driver()
    d.feed(b"EHLO " + b"x" * 600 + b"\r\nNOOP\r\n")
    assert d.out.decode().endswith("500 5.5.2 Line too long.\r\n250 2.0.0 Ok.\r\n")
    d2 = Driver()
    for b in b"NOOP " + b"y" * 2000 + b"\r\nNOOP\r\n":
        d2.feed(bytes([b]))
    assert d2.out.decode().endswith("500 5.5.2 Line too long.\r\n250 2.0.0 Ok.\r\n")


def start_data(d: Driver) -> None:
    d.feed(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@foo.com>\r\nDATA\r\n")
    assert d.out.endswith(b"354 Ok.\r\n")
    del d.out[:]


def test_message_too_big_is_read_to_the_end():
    d = Driver(Limits(max_size=100))
    start_data(d)
    d.feed(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\nNOOP\r\n")
    assert d.out == b"552 5.3.4 Message size exceeds fixed maximum message size.\r\n250 2.0.0 Ok.\r\n"
    assert d.messages == [] and len(d.aborted) == 1
    assert d.core.state is State.READY


def test_long_text_line_refused_after_the_dot():
    d = Driver()
    start_data(d)
    d.feed(b"ok\r\n" + b"z" * 1200 + b"\r\n")
    assert d.out == b""          # never answered mid-stream
    d.feed(b"tail\r\n.\r\n")
    assert d.out == b"550 5.6.0 Message has a line longer than 1000 characters.\r\n"
    assert d.messages == []
    # a line of exactly 1000 octets including CRLF is fine
    d.out.clear()
    d.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<r@foo.com>\r\nDATA\r\n" + b"w" * 998 + b"\r\n.\r\n")
    assert d.out.endswith(b"250 2.0.0 Ok. Q1\r\n")


def test_huge_line_does_not_lose_step():
    d = Driver()
    start_data(d)
    d.feed(b"q" * 200_000 + b"\r\n.\r\nNOOP\r\n")
    assert d.out == b"550 5.6.0 Message has a line longer than 1000 characters.\r\n250 2.0.0 Ok.\r\n"


@pytest.mark.parametrize("smuggle", [
    b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n",
])
def test_smtp_smuggling_is_not_an_end_of_data(smuggle):
    """CVE-2023-51766-style: a second message hidden behind a fake end of data."""
    d = Driver()
    start_data(d)
    d.feed(b"Subject: real\r\n\r\nhello" + smuggle +
           b"MAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@foo.com>\r\nDATA\r\nsmuggled\r\n"
           b"\r\n.\r\nQUIT\r\n")
    # exactly one reply for the one message, then the QUIT
    text = d.out.decode()
    assert text.count("\r\n") == 2, text
    assert "354" not in text and "2.1.0" not in text
    assert text.endswith("221 2.0.0 foo.com closing connection.\r\n")
    if b"\x00" in smuggle:
        # Not an end of data; the NUL refuses the whole (one) message.
        assert text.startswith("550 5.6.0 Message contains NUL characters."), text
        assert d.messages == []
    else:
        assert text.startswith("550 5.6.2 Message contains bare CR or LF"), text
        assert d.messages == []


def test_bare_lf_rejected_but_in_step():
    d = Driver()
    start_data(d)
    d.feed(b"line one\nline two\r\n.\r\nNOOP\r\n")
    assert d.out == (b"550 5.6.2 Message contains bare CR or LF characters "
                     b"(RFC 5321 section 2.3.8).\r\n250 2.0.0 Ok.\r\n")


def test_disconnect_mid_data_aborts():
    d = Driver()
    start_data(d)
    d.feed(b"partial message\r\n")
    d.feed(b"")
    assert d.aborted == ["connection closed during DATA"] and d.closed and d.messages == []


def test_too_many_recipients():
    d = Driver(Limits(max_recipients=2))
    d.feed(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n" + b"RCPT TO:<r@foo.com>\r\n" * 3)
    assert d.out.decode().endswith("250 2.1.5 Ok.\r\n250 2.1.5 Ok.\r\n452 4.5.3 Too many recipients.\r\n")


def test_too_many_errors_closes():
    d = Driver(Limits(max_errors=3))
    d.feed(b"A\r\nB\r\nC\r\nD\r\nNOOP\r\n")
    lines = d.out.decode().splitlines()
    assert lines[1:] == ["500 5.5.2 Syntax error, command unrecognized."] * 3 + [
        "421 4.7.0 foo.com Too many errors, closing connection."]
    assert d.closed


def test_starttls_discards_pipelined_plaintext_and_resets():
    d = Driver(tls=True)
    d.feed(b"EHLO x\r\n")
    assert b"250-STARTTLS\r\n" in d.out
    d.out.clear()
    # Injected command after STARTTLS (CVE-2011-0411) must be ignored.
    d.feed(b"STARTTLS\r\nMAIL FROM:<inject@x>\r\n")
    assert d.out == b"220 2.0.0 Ready to start TLS.\r\n" and d.tls_count == 1
    d.out.clear()
    d.feed(b"MAIL FROM:<a@b.c>\r\nEHLO x\r\nSTARTTLS\r\n")
    text = d.out.decode()
    assert text.startswith("503 5.5.1 Send EHLO/HELO first.\r\n")
    # not advertised again (XSECURITY=NONE,STARTTLS names the level, not the verb)
    assert "250-STARTTLS\r\n" not in text.split("\r\n", 1)[1].split("503")[0]
    assert text.endswith("503 5.5.1 TLS already active.\r\n")


def test_timeout_in_data():
    d = Driver()
    start_data(d)
    d.run(d.core.timeout())
    assert d.out == b"421 4.4.2 foo.com Timeout, closing connection.\r\n"
    assert d.aborted and d.closed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"EHLO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<r@foo.com>\r\n",
                     b"DATA\r\n", b".\r\n", b"\r\n", b"\n", b"STARTTLS\r\n", b"RSET\r\n"])),
    max_size=30))
def test_fuzz_any_bytes_give_replies_never_exceptions(chunks):
    d = Driver(Limits(max_size=500, max_errors=1000), tls=True)
    for c in chunks:
        if d.closed:
            break
        d.feed(c)
    for line in d.out.decode("utf-8", "replace").split("\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (" ", "-"), line


def test_commands_without_a_transaction_are_bounded():
    """NOOP/RSET loops hold a slot without sending mail: 421 after the limit. Commands
    inside a transaction (a long RCPT list) do not count, and MAIL starts over."""
    d = Driver(Limits(max_idle_commands=5, max_recipients=50))
    d.feed(b"EHLO a.example\r\nNOOP\r\nRSET\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n"
           + b"RCPT TO:<x@c.example>\r\n" * 20 + b"RSET\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    d.feed(b"NOOP\r\n")                # the fifth since MAIL (RSET in the transaction is free)
    assert not d.closed
    d.feed(b"NOOP\r\n")
    assert d.closed
    assert d.out.endswith(b"421 4.7.0 foo.com Too many commands without a mail transaction, "
                          b"closing connection.\r\n")


@pytest.mark.parametrize("bdat", [False, True])
def test_nul_refused_and_undeclared_8bit_recorded(bdat):
    def send(d, body):
        if bdat:
            d.feed(b"BDAT %d LAST\r\n" % len(body) + body)
        else:
            d.feed(b"DATA\r\n" + body + b".\r\n")
    d = Driver()
    d.feed(b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@c.example>\r\n")
    send(d, b"Subject: nul\r\n\r\na\x00b\r\n")
    assert d.messages == [] and d.out.endswith(b"550 5.6.0 Message contains NUL characters.\r\n")
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@c.example>\r\n")
    send(d, b"Subject: \xc3\xa4\r\n\r\nbody\r\n")
    [(txn, data)] = d.messages
    assert txn.body == "8BITMIME" and data == b"Subject: \xc3\xa4\r\n\r\nbody\r\n"
    d.feed(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@c.example>\r\n")
    send(d, b"Subject: plain\r\n\r\nbody\r\n")
    assert d.messages[1][0].body == "7BIT"
