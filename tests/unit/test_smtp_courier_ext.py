"""Courier's private ESMTP extensions: XVERP=Courier, XEXDATA, XSECURITY=NONE,STARTTLS.

The server core (courier_smtpd.core) from transcripts, the VERP encoding
against the draft's examples and Courier's comverp.c rules, and the envelope
lines that carry the flags into the spool (old envelopes still read).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_smtp_core import EHLO_REPLY, Driver, run_three_ways

from libcourier.smtp.verp import verp_encode, verp_sender
from libcourier.spool.envelope import (
    Envelope,
    Recipient,
    SpoolError,
    format_envelope,
    parse_envelope,
)

GREETING = "S: 220 foo.com ESMTP\nC: EHLO bar.com\n" + EHLO_REPLY


def test_ehlo_offers_courier_extensions_in_courier_order():
    lines = [line[7:] for line in EHLO_REPLY.strip().splitlines()]
    assert lines[1:5] == ["XVERP=Courier", "XEXDATA", "XSECURITY=NONE,STARTTLS", "PIPELINING"]


def test_mail_parameters_reach_the_transaction():
    drivers = run_three_ways(GREETING + """
C: MAIL FROM:<list@bar.com> VERP EXDATA SECURITY=STARTTLS SIZE=10
S: 250 2.1.0 Ok.
C: RCPT TO:<a@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: Subject: x
C:
C: hi
C: .
S: 250 2.0.0 Ok. Q1
C: MAIL FROM:<plain@bar.com> security=none
S: 250 2.1.0 Ok.
C: RCPT TO:<a@foo.com>
S: 250 2.1.5 Ok.
C: DATA
S: 354 Ok.
C: .
S: 250 2.0.0 Ok. Q2
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")
    (first, _), (second, _) = drivers[0].messages
    assert first.verp and first.security == "STARTTLS"
    assert not second.verp and second.security is None       # NONE = no parameter


@pytest.mark.parametrize("params,reply", [
    ("VERP=1", "501 5.5.4 VERP takes no value."),
    ("EXDATA=yes", "501 5.5.4 EXDATA takes no value."),
    ("SECURITY=TLS", "501 5.5.4 SECURITY must be NONE or STARTTLS."),
    ("SECURITY", "501 5.5.4 SECURITY must be NONE or STARTTLS."),
])
def test_bad_courier_parameters_are_501_and_the_session_goes_on(params, reply):
    run_three_ways(GREETING + f"""
C: MAIL FROM:<a@bar.com> {params}
S: {reply}
C: MAIL FROM:<a@bar.com> VERP
S: 250 2.1.0 Ok.
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")


def test_parameters_after_helo_are_refused():
    d = Driver()
    d.feed(b"HELO bar.com\r\nMAIL FROM:<a@bar.com> VERP\r\n")
    assert d.out.decode().endswith("555 5.5.4 MAIL parameters need EHLO.\r\n")


# --- VERP encoding -------------------------------------------------------

@pytest.mark.parametrize("sender,rcpt,expected", [
    # draft-varshavchik-verp-smtpext §9
    ("itny-out@domain.com", "alex@example.com", "itny-out-alex=example.com@domain.com"),
    ("itny-out@domain.com", "node42!ann@old.example.com",
     "itny-out-node42+21ann=old.example.com@domain.com"),
    ("itny-out@domain.com", "tom@old.example.com", "itny-out-tom=old.example.com@domain.com"),
    # comverp.c: "=" kept before the last "@", encoded after it; other "@" encoded
    ("l@d.example", "a=b@c=d", "l-a=b=c+3Dd@d.example"),
    ("l@d.example", "a@b@c", "l-a+40b=c@d.example"),
    ("l@d.example", "j+x-y%z:q@[192.0.2.4]", "l-j+2Bx+2Dy+25z+3Aq=+5B192.0.2.4+5D@d.example"),
    ("l@d.example", "uucp!x=y", "l-uucp+21x+3Dy@d.example"),      # no "@": "=" encoded
    ("a@b@host", "r@x", "a@b-r=x@host"),                           # the sender's last "@"
    ("", "r@x", ""),                                               # the null sender
    ("postmaster", "r@x", "postmaster"),                           # no "@": unchanged
])
def test_verp_sender(sender, rcpt, expected):
    assert verp_sender(sender, rcpt) == expected


def _decode(encoded: str) -> str:
    """The draft's §8 decoding, to check that encoding loses nothing."""
    local, _, domain = encoded.rpartition("=")
    out = []
    for part in (local, domain):
        i, chars = 0, []
        while i < len(part):
            if part[i] == "+":
                chars.append(chr(int(part[i + 1:i + 3], 16)))
                i += 3
            else:
                chars.append(part[i])
                i += 1
        out.append("".join(chars))
    return "@".join(out)


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
       st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20))
def test_verp_encoding_round_trips(local, domain):
    rcpt = f"{local}@{domain}"
    encoded = verp_encode(rcpt)
    assert "@" not in encoded          # the last "=" separates local part and domain
    assert _decode(encoded) == rcpt


# --- the spool envelope --------------------------------------------------

OLD_ENVELOPE = (b"courier-py-envelope 1\nreceived 1700000000.000000\nsender a@b\nbody 7BIT\n"
                b"smtputf8 0\nclient x\nrcpt c@d\t\t\nend\n")


def test_old_envelopes_read_without_the_new_fields():
    env = parse_envelope(OLD_ENVELOPE)
    assert not env.verp and env.security is None
    # and an envelope without the flags is written exactly as before
    assert format_envelope(env) == OLD_ENVELOPE


def test_verp_and_security_round_trip():
    env = Envelope("list@b", (Recipient("c@d"),), 1700000000.0, client="x", verp=True,
                   security="STARTTLS")
    data = format_envelope(env)
    assert b"\nverp 1\n" in data and b"\nsecurity STARTTLS\n" in data
    assert parse_envelope(data) == env


@pytest.mark.parametrize("line", [b"verp 2\n", b"security SOMETIMES\n", b"verp 1\nverp 1\n"])
def test_bad_flag_lines_are_refused(line):
    with pytest.raises(SpoolError):
        parse_envelope(OLD_ENVELOPE.replace(b"client x\n", b"client x\n" + line))
