"""sendmail -bs: esmtpd's SMTP core on stdin/stdout (courier_deliver.stdiosmtp), from
transcripts fed whole, byte by byte and pipelined (STYLE.md principle 8): what a pipe
gets that the network does not (bare LF lines, long lines), what it offers as esmtpd does
(Courier's XVERP/XSECURITY, SMTPUTF8) and what it does not (STARTTLS, AUTH)."""

from __future__ import annotations

import pytest
from courier_deliver.stdiosmtp import (
    MAX_ERRORS,
    Abort,
    Begin,
    Chunk,
    Closed,
    End,
    Send,
    State,
    StdioSmtp,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.smtp.reply import Reply


def refuse_others(addr: str) -> str | None:
    return None if addr in ("me@host.test", "") else f"may not use <{addr}>"


def new_core(max_size: int = 1000) -> StdioSmtp:
    return StdioSmtp(hostname="host.test", max_size=max_size, check_sender=refuse_others)


def drive(core: StdioSmtp, pieces: list[bytes], eof: bool = True):
    """Feed the pieces; answer each End with 250; return (output, messages, events)."""
    out = bytearray(core.greeting())
    messages: list[tuple[Begin, bytes]] = []
    seen: list[object] = []
    current: list[bytes] = []
    begin: Begin | None = None

    def handle(events):
        nonlocal begin
        for ev in events:
            seen.append(ev)
            match ev:
                case Send(data):
                    out.extend(data)
                case Begin():
                    begin, current[:] = ev, []
                case Chunk(data):
                    current.append(data)
                case End():
                    messages.append((begin, b"".join(current)))
                    handle(core.data_result(Reply.make(250, "2.0.0", "Ok: queued")))
                case Abort() | Closed():
                    pass

    for p in pieces:
        handle(core.feed(p))
    if eof:
        handle(core.eof())
    return bytes(out), messages, seen


SESSION = (b"EHLO client.test\r\n"
           b"MAIL FROM:<me@host.test> RET=HDRS ENVID=abc+2Bd SIZE=100\r\n"
           b"RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40x.test\r\n"
           b"RCPT TO:<Postmaster>\r\n"
           b"DATA\r\n"
           b"Subject: t\r\n\r\n..leading dot\r\nline\n.\r\n"
           b"QUIT\r\n")
REPLIES = (b"220 host.test ESMTP courier-py sendmail -bs\r\n"
           b"250-host.test Ok.\r\n250-XVERP=Courier\r\n250-XEXDATA\r\n"
           b"250-XSECURITY=NONE,STARTTLS\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
           b"250-SMTPUTF8\r\n250-DSN\r\n"
           b"250-CHUNKING\r\n250-SIZE 1000\r\n250 ENHANCEDSTATUSCODES\r\n"
           b"250 2.1.0 Ok.\r\n250 2.1.5 Ok.\r\n250 2.1.5 Ok.\r\n"
           b"354 Ok.\r\n"
           b"250 2.0.0 Ok: queued\r\n"
           b"221 2.0.0 host.test closing connection.\r\n")


def split_whole(data: bytes) -> list[bytes]:
    return [data]


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@pytest.mark.parametrize("split", [split_whole, split_bytes, split_lines])
def test_session_transcript(split):
    core = new_core()
    out, messages, seen = drive(core, split(SESSION))
    assert out == REPLIES
    assert len(messages) == 1
    begin, data = messages[0]
    assert begin.sender == "me@host.test" and begin.ret == "HDRS" and begin.envid == "abc+d"
    assert [r.address for r in begin.recipients] == ["a@x.test", "Postmaster"]
    assert begin.recipients[0].notify == "SUCCESS,FAILURE"
    assert begin.recipients[0].orcpt == "rfc822;a@x.test"
    assert (begin.smtputf8, begin.verp, begin.security) == (False, False, None)
    assert data == b"Subject: t\n\n.leading dot\nline\n"
    assert core.state is State.CLOSED and isinstance(seen[-1], Closed)


def test_pipelined_input_after_the_dot_waits_for_the_result():
    core = new_core()
    core.feed(b"HELO c\r\nMAIL FROM:<me@host.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
    events = core.feed(b"x\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert isinstance(events[-1], End) and core.state is State.WAIT_COMMIT
    assert not any(isinstance(e, Send) and e.data.startswith(b"250 2.0.0") for e in events)
    after = core.data_result(Reply.make(451, "4.3.0", "disk full"))
    assert [e.data for e in after if isinstance(e, Send)] == [
        b"451 4.3.0 disk full\r\n", b"250 2.0.0 Ok.\r\n",
        b"221 2.0.0 host.test closing connection.\r\n"]


def test_refusals_and_sequence_errors():
    script = (b"MAIL FROM:<me@host.test>\r\n"            # before EHLO
              b"EHLO c\r\n"
              b"RCPT TO:<a@x.test>\r\n"                  # before MAIL
              b"MAIL FROM:<boss@host.test>\r\n"          # the policy hook refuses
              b"MAIL FROM:<me@host.test> SECURITY=TLS\r\n"  # not a Courier level
              b"MAIL FROM:<me@host.test> VERP=1\r\n"     # VERP takes no value
              b"MAIL FROM:<me@host.test> SIZE=5000\r\n"  # over the limit
              b"MAIL FROM:<>\r\n"
              b"DATA\r\n"                                # no recipient yet
              b"RCPT TO:<caf\xc3\xa9@x.test>\r\n"        # non-ASCII without SMTPUTF8
              b"EXPN a\r\n"
              b"VRFY a\r\nHELP\r\nRSET\r\nQUIT\r\n")
    out, messages, _ = drive(new_core(), [script])
    codes = [line[:9] for line in out.split(b"\r\n") if line and line[3:4] == b" "]
    assert codes == [b"220 host.", b"503 5.5.1", b"250 ENHAN", b"503 5.5.1", b"553 5.7.1",
                     b"501 5.5.4", b"501 5.5.4", b"552 5.3.4", b"250 2.1.0", b"554 5.5.1",
                     b"553 5.6.7", b"502 5.5.1", b"252 2.5.0", b"214 2.0.0", b"250 2.0.0",
                     b"221 2.0.0"]
    ehlo = [line for line in out.split(b"\r\n") if line.startswith(b"250-")]
    assert ehlo and not [ln for ln in ehlo if ln[4:] in (b"STARTTLS", b"AUTH")
                         or ln.startswith(b"250-AUTH ")]
    assert b"may not use <boss@host.test>" in out and messages == []


def test_courier_extensions_and_smtputf8_reach_begin():
    """MAIL FROM ... VERP SECURITY=STARTTLS SMTPUTF8 EXDATA: taken as esmtpd takes them,
    the flags on Begin for the envelope; SECURITY=NONE is no flag, as in esmtpd."""
    script = (b"EHLO c\r\n"
              b"MAIL FROM:<me@host.test> VERP SECURITY=STARTTLS SMTPUTF8 EXDATA\r\n"
              b"RCPT TO:<caf\xc3\xa9@x.test>\r\n"
              b"DATA\r\nSubject: \xc3\xa9\r\n\r\nx\r\n.\r\n"
              b"MAIL FROM:<me@host.test> SECURITY=NONE\r\nRCPT TO:<a@x.test>\r\n"
              b"BDAT 3 LAST\r\ny\r\n"
              b"QUIT\r\n")
    for split in (split_whole, split_bytes):
        out, messages, _ = drive(new_core(), split(script))
        assert out.count(b"250 2.0.0 Ok: queued\r\n") == 2, out
        (first, data), (second, _) = messages
        assert (first.smtputf8, first.verp, first.security) == (True, True, "STARTTLS")
        assert [r.address for r in first.recipients] == ["caf\u00e9@x.test"]
        assert data == b"Subject: \xc3\xa9\n\nx\n"
        assert (second.smtputf8, second.verp, second.security) == (False, False, None)


def test_long_lines_and_too_many_errors():
    core = new_core()
    out, _, _ = drive(core, [b"NOOP " + b"x" * 2000 + b"\r\nNOOP\r\n"], eof=False)
    assert out.endswith(b"500 5.5.2 Line too long.\r\n250 2.0.0 Ok.\r\n")
    out, _, seen = drive(new_core(), [b"BOGUS\r\n" * (MAX_ERRORS + 5)])
    assert out.count(b"\r\n") == MAX_ERRORS + 2       # greeting, 20 errors, the 421
    assert out.endswith(b"421 4.7.0 host.test Too many errors, closing connection.\r\n")


def test_long_data_lines_up_to_64k_and_eof_in_data_aborts():
    core = new_core(max_size=0)
    head = b"EHLO c\r\nMAIL FROM:<me@host.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
    long = b"." + b"y" * 60_000 + b"\r\n.\r\n"
    out, messages, _ = drive(core, [head, long[:30_000], long[30_000:]])
    assert b"250-SIZE\r\n" in out
    assert messages[0][1] == b"y" * 60_000 + b"\n"
    big = b"z" * 200_000 + b"\r\n.\r\nNOOP\r\n"
    out, messages, _ = drive(new_core(max_size=0), [head, big[:70_000], big[70_000:]])
    assert out.endswith(b"550 5.6.0 Message has a line longer than 65536 characters.\r\n"
                        b"250 2.0.0 Ok.\r\n") and messages == []
    out, messages, seen = drive(new_core(), [head + b"partial line"])
    assert messages == [] and isinstance(seen[-2], Abort) and isinstance(seen[-1], Closed)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 50))
def test_any_bytes_give_replies_or_events(data, step):
    core = new_core()
    pieces = [data[i:i + step] for i in range(0, len(data), step)]
    out, _, _ = drive(core, pieces)
    for line in out.split(b"\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (b" ", b"-")


def test_lf_only_input_and_bdat():
    """A script writing LF alone is understood ("." LF ends DATA); BDAT chunks reach the
    sink as one message, as esmtpd would take them."""
    script = (b"HELO c\nMAIL FROM:<me@host.test>\nRCPT TO:<a@x.test>\nDATA\n"
              b"Subject: lf\n\n..dot\n.\n"
              b"EHLO c\r\nMAIL FROM:<me@host.test>\r\nRCPT TO:<a@x.test>\r\n"
              b"BDAT 12\r\nSubject: b\r\nBDAT 8 LAST\r\n\r\nbody\r\nQUIT\r\n")
    for split in (split_whole, split_bytes):
        out, messages, _ = drive(new_core(), split(script))
        assert [m[1] for m in messages] == [b"Subject: lf\n\n.dot\n", b"Subject: b\n\nbody\n"]
        assert out.count(b"250 2.0.0 Ok: queued\r\n") == 2
