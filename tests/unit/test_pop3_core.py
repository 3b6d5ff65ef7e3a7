"""The sans-I/O POP3 core fed RFC-style transcripts: whole, byte by byte, pipelined."""

from __future__ import annotations

import pytest
from courier_pop3d import core as c
from courier_pop3d.core import NEED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.sasl import CramCredentials, ExternalCredentials, LoginCredentials

MSG1 = b"From: a@example.com\nSubject: one\n\nHello\n.dot line\n..two dots\n"
MSG2 = b"From: b@example.com\nSubject: two\n\nline 1\nline 2\nline 3\nno final newline"
USERS = {"mrose": "tanstaaf"}
DEFAULT = c.Options()


class Harness:
    """Plays the driver with in-memory messages: what session.py does with files."""

    def __init__(self, msgs: list[bytes], options: c.Options = DEFAULT):
        self.msgs = msgs
        self.core = c.Pop3Server(options)
        self.out = bytearray(self.core.data_to_send())
        self.deleted: tuple[int, ...] | None = None
        self.closed: str | None = None
        self.auth_calls = 0

    def view(self) -> c.DropView:
        return c.DropView(tuple(c.wire_size([m]) for m in self.msgs),
                          tuple(f"UID{i + 1}-1700000000" for i in range(len(self.msgs))))

    def feed(self, data: bytes) -> None:
        self.core.receive_data(data)
        while self.closed is None:
            ev = self.core.next_event()
            self.out += self.core.data_to_send()
            if ev is NEED_DATA:
                return
            match ev:
                case c.AuthRequest(user=u, password=p) | c.SaslAuth(
                        credentials=LoginCredentials(user=u, password=p)):
                    self.auth_calls += 1
                    if USERS.get(u) == p:
                        self.core.login_ok(self.view())
                    else:
                        self.core.login_failed()
                case c.Retrieve(index=i, lines=k):
                    self.core.respond_retrieve(True)
                    self.out += self.core.data_to_send()
                    enc = c.WireEncoder(k)
                    # Feed in small chunks so state carried across chunks is exercised.
                    data_ = self.msgs[i]
                    for j in range(0, len(data_), 7):
                        self.out += enc.feed(data_[j:j + 7])
                        if enc.done:
                            break
                    self.out += enc.finish()
                case c.Update(deleted=d):
                    self.deleted = d
                    self.core.update_done(0)
                    self.out += self.core.data_to_send()
                case c.Closed(reason=r):
                    self.closed = r
                    self.out += self.core.data_to_send()
                case _:
                    raise AssertionError(ev)


def parse_transcript(text: str) -> tuple[bytes, bytes]:
    """RFC notation: "C: " lines are the client's, "S: " lines the server's (CRLF added)."""
    client, server = bytearray(), bytearray()
    for raw in text.strip("\n").split("\n"):
        who, _, rest = raw.strip().partition(": ")
        if raw.strip() in ("S:", "C:"):
            who, rest = raw.strip()[0], ""
        target = client if who == "C" else server
        assert who in ("C", "S"), raw
        # "<SP>" spells a trailing space, which the strip() above would lose.
        target += rest.replace("<SP>", " ").encode() + b"\r\n"
    return bytes(client), bytes(server)


def run(transcript: str, mode: str, msgs: list[bytes] | None = None,
        options: c.Options = DEFAULT) -> Harness:
    client, server = parse_transcript(transcript)
    h = Harness([MSG1, MSG2] if msgs is None else msgs, options)
    if mode == "whole":
        h.feed(client)
    elif mode == "bytes":
        for i in range(len(client)):
            h.feed(client[i:i + 1])
    elif mode == "pipelined":
        # Everything at once plus the start of a command that never completes.
        h.feed(client + b"NOO")
    else:
        raise ValueError(mode)
    assert bytes(h.out).decode() == server.decode()
    return h


MODES = ["whole", "bytes", "pipelined"]

# RFC 1939 §10's example session, with USER/PASS instead of APOP and Courier's texts.
RFC1939_SESSION = """
S: +OK Hello there.
C: USER mrose
S: +OK Password required.
C: PASS tanstaaf
S: +OK logged in.
C: STAT
S: +OK 2 144
C: LIST
S: +OK 2 messages (144 octets)
S: 1 67
S: 2 77
S: .
C: RETR 1
S: +OK 67 octets follow.
S: From: a@example.com
S: Subject: one
S:
S: Hello
S: ..dot line
S: ...two dots
S: .
C: DELE 1
S: +OK Deleted.
C: RETR 2
S: +OK 77 octets follow.
S: From: b@example.com
S: Subject: two
S:
S: line 1
S: line 2
S: line 3
S: no final newline
S: .
C: DELE 2
S: +OK Deleted.
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
def test_rfc1939_example_session(mode: str) -> None:
    h = run(RFC1939_SESSION, mode)
    assert h.deleted == (0, 1)
    assert h.closed == "quit"


def test_sizes_are_courier_octets() -> None:
    # Courier's calcsize(): octets + one per LF; the CRLF after an unterminated last
    # line is sent but not counted (checked against Courier's own pop3d).
    assert c.wire_size([MSG1]) == len(MSG1.replace(b"\n", b"\r\n"))
    assert c.wire_size([MSG2]) == len(MSG2.replace(b"\n", b"\r\n"))
    assert c.wire_size([b"a\r\n"]) == 4


LIST_UIDL_TOP = """
S: +OK Hello there.
C: user mrose
S: +OK Password required.
C: pass tanstaaf
S: +OK logged in.
C: LIST 2
S: +OK 2 77
C: UIDL
S: +OK
S: 1 UID1-1700000000
S: 2 UID2-1700000000
S: .
C: UIDL 1
S: +OK 1 UID1-1700000000
C: DELE 1
S: +OK Deleted.
C: LIST
S: +OK 1 messages (77 octets)
S: 2 77
S: .
C: LIST 1
S: -ERR Message 1 has been deleted.
C: RETR 1
S: -ERR Message 1 has been deleted.
C: STAT
S: +OK 1 77
C: RSET
S: +OK Resurrected.
C: STAT
S: +OK 2 144
C: TOP 2 1
S: +OK headers follow.
S: From: b@example.com
S: Subject: two
S:
S: line 1
S: .
C: TOP 1 0
S: +OK headers follow.
S: From: a@example.com
S: Subject: one
S:
S: .
C: TOP 2 99
S: +OK headers follow.
S: From: b@example.com
S: Subject: two
S:
S: line 1
S: line 2
S: line 3
S: no final newline
S: .
C: NOOP
S: +OK Yup.
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
def test_list_uidl_top_rset(mode: str) -> None:
    h = run(LIST_UIDL_TOP, mode)
    assert h.deleted == ()     # RSET undid the DELE


ERRORS = """
S: +OK Hello there.
C: STAT
S: -ERR STAT is not valid in the AUTHORIZATION state.
C: PASS nouser
S: -ERR USER first.
C: FROB
S: -ERR Invalid command.
C:
S: -ERR Invalid command.
C: USER
S: -ERR Syntax error: USER needs one name.
C: APOP mrose c4c9334bac560ecc979e58001b3e22fb
S: -ERR APOP is not supported.
C: USER mrose
S: +OK Password required.
C: PASS with spaces in it
S: -ERR [AUTH] Login failed.
C: USER mrose
S: +OK Password required.
C: PASS tanstaaf
S: +OK logged in.
C: USER mrose
S: -ERR USER is not valid in the TRANSACTION state.
C: RETR
S: -ERR Syntax error: RETR needs one message number.
C: RETR 0
S: -ERR Invalid message number.
C: RETR 3
S: -ERR Invalid message number.
C: RETR -1
S: -ERR Invalid message number.
C: RETR 99999999999
S: -ERR Invalid message number.
C: LIST 1 2
S: -ERR Syntax error: LIST [msg].
C: TOP 1
S: -ERR Syntax error: TOP msg n.
C: TOP 1 x
S: -ERR Syntax error: TOP msg n with numbers.
C: DELE  1
S: -ERR Syntax error: arguments are separated by one space.
C: STAT now
S: -ERR Syntax error: STAT takes no arguments.
C: STLS
S: -ERR STLS is not valid in the TRANSACTION state.
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
def test_errors_keep_the_session_going(mode: str) -> None:
    h = run(ERRORS, mode, options=c.Options(max_bad_commands=100))
    assert h.deleted == ()


CAPA = """
S: +OK Hello there.
C: CAPA
S: +OK Here's what I can do:
S: STLS
S: TOP
S: USER
S: LOGIN-DELAY 10
S: PIPELINING
S: UIDL
S: UTF8 USER
S: RESP-CODES
S: AUTH-RESP-CODE
S: IMPLEMENTATION courier-py
S: .
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
def test_capa(mode: str) -> None:
    h = run(CAPA, mode, options=c.Options(stls=True))
    assert h.closed == "quit"


def test_capa_without_stls_and_when_tls_required() -> None:
    h = Harness([], c.Options(stls=False))
    h.feed(b"CAPA\r\n")
    assert b"STLS" not in h.out and b"\r\nUSER\r\n" in h.out
    h = Harness([], c.Options(stls=True, tls_required=True))
    h.feed(b"CAPA\r\nUSER mrose\r\n")
    assert b"STLS" in h.out and b"\r\nUSER\r\n" not in h.out
    assert h.out.endswith(b"-ERR [AUTH] TLS required to log in.\r\n")


def test_stls_discards_pipelined_plaintext() -> None:
    h = Harness([], c.Options(stls=True))
    h.core.receive_data(b"STLS\r\nUSER injected\r\n")
    assert isinstance(h.core.next_event(), c.StartTLS)
    assert h.core.data_to_send() == b"+OK Begin SSL/TLS negotiation now.\r\n"
    h.core.tls_started()
    assert h.core.next_event() is NEED_DATA      # "USER injected" is gone
    h.core.receive_data(b"STLS\r\nCAPA\r\n")
    assert h.core.next_event() is NEED_DATA
    out = h.core.data_to_send()
    assert out.startswith(b"-ERR Already using TLS.\r\n") and b"STLS" not in out[20:]


def test_stls_not_configured() -> None:
    h = Harness([])
    h.feed(b"STLS\r\n")
    assert h.out.endswith(b"-ERR STLS is not available.\r\n")


def test_three_failed_logins_close() -> None:
    h = Harness([])
    h.feed(b"USER mrose\r\nPASS a\r\nUSER mrose\r\nPASS b\r\nUSER mrose\r\nPASS c\r\n"
           b"USER mrose\r\nPASS tanstaaf\r\n")
    assert h.closed == "too many failed logins"
    assert h.auth_calls == 3
    assert h.out.endswith(b"-ERR Too many failed logins, closing the connection.\r\n")


def test_too_many_bad_commands_close() -> None:
    h = Harness([], c.Options(max_bad_commands=10))
    h.feed(b"BOGUS\r\n" * 12)
    assert h.closed == "too many bad commands"
    assert h.out.count(b"-ERR Invalid command.\r\n") == 10


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_long_line_answered_without_buffering(mode: str) -> None:
    h = Harness([MSG1])
    data = b"USER " + b"x" * 100_000 + b"\r\nUSER mrose\r\nPASS tanstaaf\r\nSTAT\r\n"
    if mode == "whole":
        h.feed(data)
    else:
        for i in range(0, len(data), 1000):
            h.feed(data[i:i + 1000])
    assert h.out.startswith(b"+OK Hello there.\r\n-ERR Command line too long.\r\n"
                            b"+OK Password required.\r\n+OK logged in.\r\n+OK 1 67\r\n")
    assert len(h.core._in) < 300


def test_line_limit_is_255_octets_with_crlf() -> None:
    h = Harness([])
    ok_line = b"USER " + b"u" * (255 - 7) + b"\r\n"
    assert len(ok_line) == 255
    h.feed(ok_line)
    assert h.out.endswith(b"+OK Password required.\r\n")
    h.feed(b"USER " + b"u" * (256 - 7) + b"\r\n")
    assert h.out.endswith(b"-ERR Command line too long.\r\n")


def test_bare_lf_and_invalid_bytes() -> None:
    h = Harness([])
    h.feed(b"CAPA\n")
    assert b"Here's what" in h.out
    h.feed(b"USER \xff\xfe\r\nUSER a\x00b\r\n")
    assert h.out.endswith(b"-ERR Invalid characters in command.\r\n" * 2)


def test_password_hidden_in_repr() -> None:
    assert "secret" not in repr(c.parse_command(b"PASS secret\r\n"))
    assert "secret" not in repr(c.AuthRequest("u", "secret"))


def test_quit_before_login_and_after_close() -> None:
    h = Harness([])
    h.feed(b"QUIT\r\nUSER mrose\r\n")
    assert h.closed == "quit"
    assert h.out == b"+OK Hello there.\r\n+OK Bye-bye.\r\n"


def test_driver_must_answer_events() -> None:
    core = c.Pop3Server()
    core.receive_data(b"USER a\r\nPASS b\r\nCAPA\r\n")
    assert isinstance(core.next_event(), c.AuthRequest)
    with pytest.raises(RuntimeError):
        core.next_event()
    with pytest.raises(RuntimeError):
        core.respond_retrieve(True)


def test_unremovable_messages_answer_err_at_quit() -> None:
    core = c.Pop3Server()
    core.receive_data(b"USER a\r\nPASS b\r\n")
    core.next_event()
    core.login_ok(c.DropView((10,), ("UID1-1",)))
    core.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert core.next_event() == c.Update((0,))
    core.update_done(failed=1)
    assert core.data_to_send().endswith(b"-ERR [SYS/TEMP] 1 message(s) could not be deleted.\r\n")
    assert isinstance(core.next_event(), c.Closed)


@pytest.mark.parametrize("stored,sent", [
    (b"a\nb\n", b"a\r\nb\r\n"),
    (b"a\r\nb\r\n", b"a\r\r\nb\r\r\n"),          # as Courier: every LF gets a CR
    (b"a\rb\n", b"a\rb\r\n"),                    # a lone CR is data
    (b".\n..\n.x", b"..\r\n...\r\n..x\r\n"),
    (b"", b"\r\n"),                               # Courier sends one CRLF for an empty file
    (b"x", b"x\r\n"),
    (b"a\r", b"a\r\r\n"),
])
def test_wire_encoder(stored: bytes, sent: bytes) -> None:
    for step in (1, 2, 3, len(stored) or 1):
        enc = c.WireEncoder()
        out = b"".join(enc.feed(stored[i:i + step]) for i in range(0, len(stored), step))
        out += enc.finish()
        assert out == sent + b".\r\n"
        # The size: what is sent minus stuffing, minus the CRLF added to an unterminated end.
        added = 0 if stored.endswith(b"\n") else 2
        assert enc.octets == len(sent) - enc.stuffed - added == c.wire_size([stored])


def test_top_without_blank_line_sends_whole_message() -> None:
    enc = c.WireEncoder(0)
    assert enc.feed(b"Subject: x\nFrom: y\n") + enc.finish() == b"Subject: x\r\nFrom: y\r\n.\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_fuzz_any_bytes_give_replies_never_exceptions(chunks: list[bytes], login: bool) -> None:
    h = Harness([MSG1, MSG2], c.Options(stls=False, max_bad_commands=1000))
    if login:
        h.feed(b"USER mrose\r\nPASS tanstaaf\r\n")
    for ch in chunks:
        h.feed(ch)
        if h.closed:
            break
    # Every reply line the core made starts like a POP3 response or is listing data.
    assert h.out.startswith(b"+OK Hello there.\r\n")
    assert h.out.endswith(b"\r\n")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=50),
       st.sampled_from([b"", b"S: x\n\n", b"S: x\r\n\r\n", b"\n"]),
       st.lists(st.sampled_from([b".", b"\r", b"\n", b"x"]), max_size=40))
def test_fuzz_encoder_unstuffs_to_the_same_lines(raw: bytes, step: int, header: bytes,
                                                  tricky: list[bytes]) -> None:
    # A header first, so the body goes through the fast path; dots, CRs, LFs on chunk edges.
    msg = header + b"".join(tricky) + raw
    enc = c.WireEncoder()
    out = b"".join(enc.feed(msg[i:i + step]) for i in range(0, len(msg), step)) + enc.finish()
    assert out.endswith(b".\r\n")
    body = out[:-3]
    assert enc.octets == len(body) - enc.stuffed - (0 if msg.endswith(b"\n") else 2)
    # Undo stuffing and CRLF: we get the stored lines back (RFC 1939 §3).
    lines = body.split(b"\r\n")[:-1] if body else []
    unstuffed = [ln[1:] if ln.startswith(b".") else ln for ln in lines]
    # Every line that was sent starting with "." was stuffed.
    assert all(ln.startswith(b"..") for ln in lines if ln.startswith(b"."))
    expect = msg + b"\n" if not msg.endswith(b"\n") else msg
    assert b"\n".join(unstuffed) + (b"\n" if lines else b"") == expect


# -- RFC 5034 AUTH, RFC 6856 UTF8 --------------------------------------------------------------

SASL_OPTS = c.Options(stls=True, sasl=("PLAIN", "LOGIN", "CRAM-MD5"),
                      sasl_tls=("PLAIN", "LOGIN"), hostname="pop.example.net")

# RFC 5034 §6 example, PLAIN with an initial response ("mrose\0tanstaaf" base64'd by hand).
AUTH_PLAIN_IR = """
S: +OK Hello there.
C: CAPA
S: +OK Here's what I can do:
S: SASL PLAIN LOGIN CRAM-MD5
S: STLS
S: TOP
S: USER
S: LOGIN-DELAY 10
S: PIPELINING
S: UIDL
S: UTF8 USER
S: RESP-CODES
S: AUTH-RESP-CODE
S: IMPLEMENTATION courier-py
S: .
C: AUTH PLAIN AG1yb3NlAHRhbnN0YWFm
S: +OK logged in.
C: STAT
S: +OK 2 144
C: QUIT
S: +OK Bye-bye.
"""

AUTH_LOGIN = """
S: +OK Hello there.
C: AUTH LOGIN
S: + VXNlcm5hbWU6
C: bXJvc2U=
S: + UGFzc3dvcmQ6
C: dGFuc3RhYWY=
S: +OK logged in.
C: QUIT
S: +OK Bye-bye.
"""

AUTH_PLAIN_EMPTY_CHALLENGE = """
S: +OK Hello there.
C: AUTH plain
S: +<SP>
C: AG1yb3NlAHdyb25n
S: -ERR [AUTH] Login failed.
C: AUTH PLAIN
S: +<SP>
C: *
S: -ERR Authentication aborted.
C: AUTH PLAIN
S: +<SP>
C: !!!not base64
S: -ERR Authentication aborted.
C: AUTH PLAIN =
S: -ERR Authentication aborted.
C: AUTH SCRAM-SHA-1
S: -ERR Unsupported authentication mechanism.
C: AUTH
S: -ERR Syntax error: AUTH mechanism [initial-response].
C: AUTH PLAIN AG1yb3NlAHRhbnN0YWFm
S: +OK logged in.
C: AUTH PLAIN AG1yb3NlAHRhbnN0YWFm
S: -ERR AUTH is not valid in the TRANSACTION state.
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transcript", [AUTH_PLAIN_IR, AUTH_LOGIN, AUTH_PLAIN_EMPTY_CHALLENGE])
def test_auth_transcripts(mode: str, transcript: str) -> None:
    h = run(transcript, mode, options=SASL_OPTS)
    assert h.closed == "quit" and h.deleted == ()


def test_auth_cram_hands_over_challenge_and_response() -> None:
    h = Harness([], SASL_OPTS)
    h.core.receive_data(b"AUTH CRAM-MD5\r\n")
    assert h.core.next_event() is NEED_DATA
    line = h.core.data_to_send()
    assert line.startswith(b"+ ") and line.endswith(b"\r\n")
    import base64
    challenge = base64.b64decode(line[2:-2])
    assert challenge.startswith(b"<") and challenge.endswith(b"@pop.example.net>")
    resp = b"mrose " + b"a" * 32
    h.core.receive_data(base64.b64encode(resp) + b"\r\n")
    ev = h.core.next_event()
    assert isinstance(ev, c.SaslAuth) and isinstance(ev.credentials, CramCredentials)
    assert ev.credentials.challenge == challenge and ev.credentials.response == resp
    assert "aaaa" not in repr(ev)
    h.core.login_failed()
    assert h.core.data_to_send() == b"-ERR [AUTH] Login failed.\r\n"


def test_auth_mechanisms_follow_tls_and_tls_required() -> None:
    # In the clear the POP3AUTH list, under TLS the POP3AUTH_TLS list (FORMATS.md §2.2).
    opts = c.Options(stls=True, sasl=("CRAM-MD5", "PLAIN"), sasl_tls=("PLAIN", "LOGIN"))
    assert c.Pop3Server(opts).sasl_mechanisms() == ("CRAM-MD5", "PLAIN")
    srv = c.Pop3Server(c.Options(stls=True, tls=True, sasl=opts.sasl, sasl_tls=opts.sasl_tls))
    assert srv.sasl_mechanisms() == ("PLAIN", "LOGIN")
    # POP3_TLS_REQUIRED: no password-carrying mechanism before STLS; CAPA shows no SASL line.
    req = c.Options(stls=True, tls_required=True, sasl=("PLAIN", "LOGIN"), sasl_tls=("PLAIN",))
    h = Harness([], req)
    h.feed(b"CAPA\r\nAUTH PLAIN AG1yb3NlAHRhbnN0YWFm\r\n")
    assert b"SASL" not in h.out and h.auth_calls == 0
    assert h.out.endswith(b"-ERR [AUTH] Unsupported authentication mechanism.\r\n")
    # After STLS the TLS list is offered.
    h = Harness([], req)
    h.core.receive_data(b"STLS\r\n")
    assert isinstance(h.core.next_event(), c.StartTLS)
    h.core.tls_started()
    h.out.clear()
    h.core.data_to_send()
    h.feed(b"CAPA\r\nAUTH PLAIN AG1yb3NlAHRhbnN0YWFm\r\n")
    assert b"\r\nSASL PLAIN\r\n" in h.out and h.out.endswith(b"+OK logged in.\r\n")
    # Nothing configured: no SASL line, every AUTH refused.
    h = Harness([])
    h.feed(b"CAPA\r\nAUTH PLAIN\r\n")
    assert b"SASL" not in h.out
    assert h.out.endswith(b"-ERR Unsupported authentication mechanism.\r\n")


def test_auth_external_only_with_certificate() -> None:
    opts = c.Options(tls=True, sasl_tls=("EXTERNAL", "PLAIN"), external_identity="mrose")
    h = Harness([], opts)
    h.core.receive_data(b"AUTH EXTERNAL =\r\n")
    ev = h.core.next_event()
    assert ev == c.SaslAuth(ExternalCredentials("mrose"))
    assert c.Pop3Server(c.Options(tls=True, sasl_tls=("EXTERNAL", "PLAIN"))
                        ).sasl_mechanisms() == ("PLAIN",)


def test_auth_response_may_exceed_255_but_not_the_sasl_limit() -> None:
    h = Harness([], SASL_OPTS)
    # A long (valid) response: 300 octets of base64 are fine inside AUTH (RFC 5034 §4) ...
    import base64
    long_pw = "p" * 400
    h.feed(b"AUTH PLAIN\r\n" + base64.b64encode(b"\0mrose\0" + long_pw.encode()) + b"\r\n")
    assert h.out.endswith(b"-ERR [AUTH] Login failed.\r\n") and h.auth_calls == 1
    # ... and the 255-octet limit is back for the next command.
    h.feed(b"NOOP " + b"x" * 300 + b"\r\n")
    assert h.out.endswith(b"-ERR Command line too long.\r\n")
    # A response over MAX_SASL_LINE aborts the exchange without being buffered whole.
    h.feed(b"AUTH PLAIN\r\n" + b"A" * 20000)
    assert h.out.endswith(b"+ \r\n-ERR Authentication aborted.\r\n")
    assert len(h.core._in) < 13000
    h.feed(b"A" * 20000 + b"\r\nNOOP\r\n")
    assert h.out.endswith(b"-ERR NOOP is not valid in the AUTHORIZATION state.\r\n")


UTF8 = """
S: +OK Hello there.
C: UTF8
S: +OK UTF8 enabled
C: USER mrosé
S: +OK Password required.
C: PASS tanstaaf
S: -ERR [AUTH] Login failed.
C: USER mrose
S: +OK Password required.
C: PASS tanstaaf
S: +OK logged in.
C: UTF8
S: -ERR UTF8 is not valid in the TRANSACTION state.
C: LANG
S: -ERR LANG is not supported.
C: QUIT
S: +OK Bye-bye.
"""


@pytest.mark.parametrize("mode", MODES)
def test_utf8(mode: str) -> None:
    h = run(UTF8, mode)
    assert h.core.utf8 and h.closed == "quit"
