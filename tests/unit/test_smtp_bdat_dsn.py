"""courier_smtpd.core: DSN parameters (RFC 3461) and CHUNKING/BDAT (RFC 3030).

Transcripts run three ways (whole, byte by byte, pipelined with trailing
input after QUIT). BDAT chunks are raw octets, so those transcripts are bytes.
"""

from __future__ import annotations

import pytest
from courier_smtpd.core import Limits, State
from hypothesis import given, settings
from hypothesis import strategies as st
from test_smtp_core import EHLO_REPLY, Driver, run_three_ways

from libcourier.proto import ClientError
from libcourier.smtp.grammar import parse_bdat, parse_envid, parse_notify, parse_orcpt, parse_ret

HELLO = b"EHLO bar.com\r\n"
HELLO_REPLY = ("220 foo.com ESMTP\r\n" + "".join(
    line[3:] + "\r\n" for line in EHLO_REPLY.strip().splitlines())).encode()
ENVELOPE = b"MAIL FROM:<a@bar.com>\r\nRCPT TO:<b@foo.com>\r\n"
ENVELOPE_REPLY = b"250 2.1.0 Ok.\r\n250 2.1.5 Ok.\r\n"
QUIT = b"QUIT\r\n"
QUIT_REPLY = b"221 2.0.0 foo.com closing connection.\r\n"


def run_raw(client: bytes, expected: bytes, **kw) -> Driver:
    """Feed a byte transcript whole, one byte at a time, and with junk after QUIT."""
    drivers = []
    for mode in ("whole", "bytes", "trail"):
        d = Driver(**kw)
        if mode == "bytes":
            for i in range(len(client)):
                d.feed(client[i:i + 1])
        else:
            d.feed(client + (b"NOOP\r\nBDAT 3 LAST\r\nabc" if mode == "trail" else b""))
        hello = HELLO_REPLY
        if "limits" in kw:
            hello = hello.replace(b"SIZE 10485760", f"SIZE {kw['limits'].max_size}".encode())
        assert d.out.decode() == (hello + expected).decode()
        assert d.closed
        drivers.append(d)
    assert drivers[0].messages == drivers[1].messages == drivers[2].messages
    assert drivers[0].aborted == drivers[1].aborted == drivers[2].aborted
    return drivers[0]


def bdat(data: bytes, last: bool = False) -> bytes:
    return f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode() + data


# --- DSN ------------------------------------------------------------------

def test_dsn_parameters_are_carried():
    d = run_three_ways("""
S: 220 foo.com ESMTP
C: EHLO bar.com
""" + EHLO_REPLY + """
C: MAIL FROM:<a@bar.com> RET=hdrs ENVID=QQ314159+2Bx
S: 250 2.1.0 Ok.
C: RCPT TO:<b@foo.com> NOTIFY=success,Failure ORCPT=rfc822;b+2Bext@foo.com
S: 250 2.1.5 Ok.
C: RCPT TO:<c@foo.com> NOTIFY=NEVER
S: 250 2.1.5 Ok.
C: RCPT TO:<d@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: x
C: .
S: 250 2.0.0 Ok. Q1
C: MAIL FROM:<a@bar.com>
S: 250 2.1.0 Ok.
C: RCPT TO:<b@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: y
C: .
S: 250 2.0.0 Ok. Q2
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")[0]
    (t1, _), (t2, _) = d.messages
    assert (t1.ret, t1.envid) == ("HDRS", "QQ314159+x")
    assert [(r.address, r.orcpt, r.notify) for r in t1.recipients] == [
        ("b@foo.com", "rfc822;b+ext@foo.com", "SUCCESS,FAILURE"),
        ("c@foo.com", None, "NEVER"),
        ("d@foo.com", None, None)]
    # A new transaction starts clean (RFC 5321 §4.1.1.5 / §3.3).
    assert (t2.ret, t2.envid, t2.recipients[0].notify, t2.recipients[0].orcpt) == (
        None, None, None, None)


def test_dsn_bad_values_are_555_and_rset_clears():
    d = run_three_ways("""
S: 220 foo.com ESMTP
C: EHLO bar.com
""" + EHLO_REPLY + """
C: MAIL FROM:<a@bar.com> RET=BODY
S: 555 5.5.4 RET must be FULL or HDRS.
C: MAIL FROM:<a@bar.com> RET
S: 555 5.5.4 RET must be FULL or HDRS.
C: MAIL FROM:<a@bar.com> ENVID=a+2b
S: 555 5.5.4 Invalid xtext in ENVID.
C: MAIL FROM:<a@bar.com> ENVID=a+0D+0AX-Evil:+20y
S: 555 5.5.4 Control characters in ENVID.
C: MAIL FROM:<a@bar.com> ENVID=""" + "x" * 101 + """
S: 555 5.5.4 ENVID too long.
C: MAIL FROM:<a@bar.com> RET=FULL ENVID=e1
S: 250 2.1.0 Ok.
C: RCPT TO:<b@foo.com> NOTIFY=NEVER,DELAY
S: 555 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY.
C: RCPT TO:<b@foo.com> NOTIFY=DELAY,DELAY
S: 555 5.5.4 NOTIFY lists a keyword twice.
C: RCPT TO:<b@foo.com> NOTIFY=
S: 501 5.5.4 Invalid value for NOTIFY
C: RCPT TO:<b@foo.com> ORCPT=b@foo.com
S: 555 5.5.4 ORCPT must be addr-type;xtext.
C: RCPT TO:<b@foo.com> ORCPT=rfc822;
S: 555 5.5.4 ORCPT must be addr-type;xtext.
C: RCPT TO:<b@foo.com> ORCPT=rfc(822);b@foo.com
S: 555 5.5.4 ORCPT must be addr-type;xtext.
C: RCPT TO:<b@foo.com> ORCPT=rfc822;b+FF@foo.com
S: 555 5.5.4 Invalid UTF-8 in ORCPT.
C: RCPT TO:<b@foo.com> NOTIFY=FAILURE NOTIFY=DELAY
S: 501 5.5.4 Duplicate parameter NOTIFY
C: RSET
S: 250 2.0.0 Ok.
C: MAIL FROM:<a@bar.com>
S: 250 2.1.0 Ok.
C: RCPT TO:<b@foo.com> ORCPT=UTF-8;b+C3+BC@foo.com
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: x
C: .
S: 250 2.0.0 Ok. Q1
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""", limits=Limits(max_errors=100))[0]
    (txn, _), = d.messages
    assert (txn.ret, txn.envid) == (None, None)          # RSET dropped RET=FULL ENVID=e1
    assert txn.recipients[0].orcpt == "utf-8;bü@foo.com"


def test_dsn_parameters_need_ehlo():
    run_three_ways("""
S: 220 foo.com ESMTP
C: HELO bar.com
S: 250 foo.com Ok.
C: MAIL FROM:<a@bar.com> RET=FULL
S: 555 5.5.4 MAIL parameters need EHLO.
C: MAIL FROM:<a@bar.com>
S: 250 2.1.0 Ok.
C: RCPT TO:<b@foo.com> NOTIFY=NEVER
S: 555 5.5.4 RCPT parameters need EHLO.
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")


def test_dsn_grammar_functions():
    assert parse_ret("full") == "FULL"
    assert parse_envid("a+3Db") == "a=b"
    assert parse_notify("delay,success") == "DELAY,SUCCESS"
    assert parse_orcpt("RFC822;x+2By@z") == "rfc822;x+y@z"
    for fn, bad in ((parse_ret, None), (parse_envid, ""), (parse_notify, "NEVER,NEVER"),
                    (parse_notify, None), (parse_orcpt, "rfc822;a+4"), (parse_orcpt, ";a")):
        with pytest.raises(ClientError) as e:
            fn(bad)
        assert e.value.code == "555 5.5.4"


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda t: all(" " <= c != "\x7f" for c in t)))
def test_orcpt_xtext_round_trip(address):
    from libcourier.smtp.grammar import xtext_encode
    encoded = "".join(c if "!" <= c <= "~" and c not in "+=" else
                      "".join(f"+{b:02X}" for b in c.encode()) for c in address)
    assert encoded.isascii()
    if len(encoded) <= 490:
        assert parse_orcpt("rfc822;" + encoded) == "rfc822;" + address
    assert xtext_encode("a+b") == "a+2Bb"


# --- BDAT -----------------------------------------------------------------

def test_bdat_parse():
    assert (parse_bdat("10").size, parse_bdat("10").last) == (10, False)
    assert (parse_bdat("0 last").size, parse_bdat("0 last").last) == (0, True)
    assert parse_bdat("10 LAST x").size == 10 and parse_bdat("10 LAST x").error
    assert parse_bdat("10 FIRST").error and parse_bdat("10 FIRST").size == 10
    assert parse_bdat("").size is None and parse_bdat("-1").size is None
    assert parse_bdat("١٢").size is None                       # non-ASCII digits
    assert parse_bdat("9" * 19).size is None


def test_bdat_chunks_exact_bytes_with_crlf_split_across_chunks():
    body = b"Subject: chunks\r\n\r\n.leading dot stays\r\n.\r\nline\r\n"
    # Split inside a CRLF and inside a line, one chunk empty.
    parts = [body[:16], body[16:17], b"", body[17:30], body[30:]]
    client = HELLO + ENVELOPE + b"".join(bdat(p) for p in parts[:-1]) + bdat(parts[-1], True)
    total, replies = 0, b""
    for p in parts[:-1]:
        total += len(p)
        replies += f"250 2.0.0 {total} octets received.\r\n".encode()
    d = run_raw(client + QUIT, ENVELOPE_REPLY + replies + b"250 2.0.0 Ok. Q1\r\n" + QUIT_REPLY)
    (txn, data), = d.messages
    assert data == body                      # no unstuffing, no end marker
    assert txn.size == len(body)
    assert not d.aborted


def test_bdat_pipelined_two_messages_and_data_mixed_in_session():
    msg1 = b"To: b\r\n\r\none\r\n"
    client = (HELLO + ENVELOPE + bdat(msg1, True)
              + ENVELOPE + b"DATA\r\ntwo\r\n.\r\n"
              + ENVELOPE + bdat(b"", False) + bdat(b"three", True) + QUIT)
    d = run_raw(client, ENVELOPE_REPLY + b"250 2.0.0 Ok. Q1\r\n"
                + ENVELOPE_REPLY + b"354 Ok.\r\n250 2.0.0 Ok. Q2\r\n"
                + ENVELOPE_REPLY + b"250 2.0.0 0 octets received.\r\n250 2.0.0 Ok. Q3\r\n"
                + QUIT_REPLY)
    # A last line without CRLF is completed (the spool keeps whole lines).
    assert [m[1] for m in d.messages] == [msg1, b"two\r\n", b"three\r\n"]


def test_bdat_out_of_sequence_is_read_and_refused():
    client = (HELLO + bdat(b"RSET\r\n", True)                     # no MAIL: 503
              + b"MAIL FROM:<a@bar.com>\r\n" + bdat(b"QUIT\r\n")   # no RCPT: 554
              + b"RCPT TO:<b@foo.com>\r\n" + bdat(b"MAIL FROM:<x@y.z>\r\n")
              + b"DATA\r\n"                                        # mixing: 503
              + b"RCPT TO:<c@foo.com>\r\n"                         # RCPT after BDAT: 503
              + bdat(b"end\r\n", True) + QUIT)
    d = run_raw(client, b"503 5.5.1 Need MAIL and RCPT before BDAT.\r\n"
                b"250 2.1.0 Ok.\r\n554 5.5.1 No valid recipients.\r\n"
                b"250 2.1.5 Ok.\r\n250 2.0.0 19 octets received.\r\n"
                b"503 5.5.1 DATA cannot follow BDAT in one transaction.\r\n"
                b"503 5.5.1 RCPT not allowed during a BDAT transaction.\r\n"
                b"250 2.0.0 Ok. Q1\r\n" + QUIT_REPLY)
    (txn, data), = d.messages
    assert data == b"MAIL FROM:<x@y.z>\r\nend\r\n"
    assert [r.address for r in txn.recipients] == ["b@foo.com"]


def test_bdat_needs_ehlo():
    d = Driver()
    d.feed(b"HELO x\r\n" + ENVELOPE + bdat(b"abc", True) + b"NOOP\r\n")
    assert d.out.endswith(b"503 5.5.1 BDAT needs EHLO.\r\n250 2.0.0 Ok.\r\n")
    assert not d.messages


def test_bdat_over_size_limit_then_chunks_discarded_until_last():
    limits = Limits(max_size=20)
    client = (HELLO + ENVELOPE + bdat(b"0123456789\r\n") + bdat(b"x" * 30 + b"\r\n")
              + bdat(b"more\r\n") + bdat(b"end\r\n", True)
              + ENVELOPE + bdat(b"ok\r\n", True) + QUIT)
    d = run_raw(client, ENVELOPE_REPLY + b"250 2.0.0 12 octets received.\r\n"
                b"552 5.3.4 Message size exceeds fixed maximum message size.\r\n"
                b"503 5.5.1 Previous BDAT failed, chunk discarded; send RSET.\r\n"
                b"503 5.5.1 Previous BDAT failed, chunk discarded; send RSET.\r\n"
                + ENVELOPE_REPLY + b"250 2.0.0 Ok. Q1\r\n" + QUIT_REPLY, limits=limits)
    assert [m[1] for m in d.messages] == [b"ok\r\n"]
    assert len(d.aborted) == 1


def test_bdat_size_counted_across_chunks():
    d = Driver(Limits(max_size=10))
    d.feed(HELLO + ENVELOPE + bdat(b"12345\r\n") + bdat(b"12345\r\n", True) + b"RSET\r\n")
    assert d.out.endswith(b"250 2.0.0 7 octets received.\r\n"
                          b"552 5.3.4 Message size exceeds fixed maximum message size.\r\n"
                          b"250 2.0.0 Ok.\r\n")
    assert not d.messages and d.aborted and d.core.state is State.READY


@pytest.mark.parametrize("chunks", [
    [b"a\nb\r\n"],                      # bare LF
    [b"a\rb\r\n"],                      # bare CR
    [b"a\r", b"b\r\n"],                 # CR at a chunk end, no LF after it
    [b"abc\r"],                         # CR at the very end
    [b"x" * 1001 + b"\r\n"],            # line too long
    [b"x" * 600, b"x" * 600 + b"\r\n"],  # too long across chunks
])
def test_bdat_bad_content_refused_like_data(chunks):
    d = Driver()
    d.feed(HELLO + ENVELOPE + b"".join(bdat(c) for c in chunks[:-1]) + bdat(chunks[-1], True)
           + ENVELOPE + bdat(b"fine\r\n", True) + b"NOOP\r\n")
    text = d.out.decode()
    assert "550 5.6." in text
    assert text.endswith("250 2.0.0 Ok. Q1\r\n250 2.0.0 Ok.\r\n")
    assert [m[1] for m in d.messages] == [b"fine\r\n"]


def test_rset_and_ehlo_between_chunks_drop_the_message():
    for reset, reply in ((b"RSET\r\n", "250 2.0.0 Ok.\r\n"), (HELLO, None)):
        d = Driver()
        d.feed(HELLO + ENVELOPE + bdat(b"part\r\n") + reset + bdat(b"x", True) + b"NOOP\r\n")
        assert d.aborted == ["transaction reset during BDAT"]
        assert d.out.endswith(b"503 5.5.1 Need MAIL and RCPT before BDAT.\r\n250 2.0.0 Ok.\r\n")
        if reply:
            assert reply in d.out.decode()
        assert not d.messages


def test_bdat_bad_syntax():
    d = Driver()
    d.feed(HELLO + ENVELOPE + b"BDAT 3 NOTLAST\r\nabcNOOP\r\n")
    # The chunk is still read (its size was readable); the transaction failed.
    assert d.out.endswith(b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n250 2.0.0 Ok.\r\n")
    assert d.core.state is State.CHUNKING and not d.closed
    d = Driver()
    d.feed(HELLO + ENVELOPE + bdat(b"x\r\n") + b"BDAT lots\r\nNOOP\r\n")
    assert d.out.endswith(b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
                          b"421 4.5.0 foo.com Lost step after a bad BDAT, closing connection.\r\n")
    assert d.closed and d.aborted == ["bad BDAT"]


def test_disconnect_and_timeout_mid_chunk_abort():
    d = Driver()
    d.feed(HELLO + ENVELOPE + b"BDAT 100 LAST\r\nhalf")
    assert d.core.state is State.BDAT
    d.feed(b"")
    assert d.aborted and d.closed and not d.messages
    d = Driver()
    d.feed(HELLO + ENVELOPE + bdat(b"one\r\n"))
    d.run(d.core.timeout())
    assert d.aborted and d.closed


def test_big_chunk_fed_in_pieces_streams_in_bounded_events():
    line = b"y" * 998 + b"\r\n"
    body = line * 300                                # 300 kB
    d = Driver(Limits(max_size=1 << 20))
    d.feed(HELLO + ENVELOPE + f"BDAT {len(body)} LAST\r\n".encode())
    for i in range(0, len(body), 7000):
        d.feed(body[i:i + 7000])
        assert len(d.core._chunk) < 70000
    (txn, data), = d.messages
    assert data == body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"EHLO x\r\n", b"MAIL FROM:<a@b.c> RET=FULL\r\n",
                     b"RCPT TO:<r@foo.com> NOTIFY=DELAY ORCPT=rfc822;r@foo.com\r\n",
                     b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"DATA\r\n",
                     b".\r\n", b"\r\n", b"RSET\r\n", b"BDAT x\r\n"])),
    max_size=30))
def test_fuzz_bdat_dsn_replies_never_exceptions(chunks):
    d = Driver(Limits(max_size=50, max_errors=1000))
    for c in chunks:
        if d.closed:
            break
        d.feed(c)
    for line in d.out.decode("utf-8", "replace").split("\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (" ", "-"), line
    for _txn, data in d.messages:
        assert data.count(b"\n") == data.count(b"\r\n")
