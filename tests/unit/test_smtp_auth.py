"""SMTP AUTH (RFC 4954) in courier_smtpd.core: transcripts whole, byte by byte, pipelined."""

from __future__ import annotations

import base64

import pytest
from courier_smtpd.core import (
    AuthVerify,
    Close,
    DataChunk,
    DataStart,
    MessageReady,
    Send,
    SessionInfo,
    SmtpServer,
    StartTLS,
    State,
    Verdict,
)
from courier_smtpd.policy import Domains, LocalPolicy
from courier_smtpd.session import received_header

from libcourier.sasl import CramCredentials, LoginCredentials

PLAIN_OK = base64.b64encode(b"\0alice\0secret").decode()
PLAIN_BAD = base64.b64encode(b"\0alice\0wrong").decode()


class Policy:
    def check_sender(self, sender, session):
        return Verdict.accept()

    def check_recipient(self, address, session):
        if address.endswith("@remote.example") and not session.authenticated:
            return Verdict.reject(550, "5.7.1", "Relaying denied.")
        return Verdict.accept()


class Driver:
    def __init__(self, *, plain=("LOGIN",), tls=("PLAIN", "LOGIN"), required=False,
                 tls_active=False, nonce=b"1.2"):
        info = SessionInfo("foo.com", tls_available=not tls_active, tls_active=tls_active,
                           auth_plain=plain, auth_tls=tls, auth_required=required,
                           nonce=(lambda: nonce) if isinstance(nonce, bytes) else nonce)
        self.core = SmtpServer(info, Policy())
        self.out = bytearray(self.core.greeting())
        self.verified: list[tuple[object, str]] = []
        self.messages = []
        self.closed = False

    def run(self, events):
        queue = list(events)
        while queue:
            ev = queue.pop(0)
            match ev:
                case Send(data):
                    self.out += data
                case AuthVerify(credentials=c, mechanism=m):
                    self.verified.append((c, m))
                    if isinstance(c, LoginCredentials) and c.password == "secret":
                        queue += self.core.auth_result(c.user)
                    elif isinstance(c, LoginCredentials) and c.password == "authd-down":
                        queue += self.core.auth_result(None, temporary=True)
                    else:
                        queue += self.core.auth_result(None)
                case DataStart() | DataChunk():
                    pass
                case MessageReady(txn):
                    self.messages.append(txn)
                    queue += self.core.message_accepted("Q1")
                case StartTLS():
                    queue += self.core.tls_started()
                case Close():
                    self.closed = True

    def feed(self, data: bytes, mode: str = "whole") -> str:
        if mode == "bytewise":
            for i in range(len(data)):
                self.run(self.core.feed(data[i:i + 1]))
        else:
            self.run(self.core.feed(data))
        return self.out.decode()


def client(transcript: str) -> bytes:
    return "".join(line[3:] + "\r\n" for line in transcript.strip().splitlines()
                   if line.startswith("C: ")).encode()


def server(transcript: str) -> str:
    return "".join(line[3:] + "\r\n" for line in transcript.strip().splitlines()
                   if line.startswith("S: "))


LOGIN_THEN_RELAY = f"""
S: 220 foo.com ESMTP
C: EHLO bar.com
S: 250-foo.com Ok.
S: 250-STARTTLS
S: 250-AUTH LOGIN
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
C: MAIL FROM:<alice@foo.com>
S: 250 2.1.0 Ok.
C: RCPT TO:<bob@remote.example>
S: 550 5.7.1 Relaying denied.
C: RSET
S: 250 2.0.0 Ok.
C: AUTH PLAIN {PLAIN_OK}
S: 538 5.7.11 Encryption required for requested authentication mechanism.
C: AUTH LOGIN
S: 334 VXNlcm5hbWU6
C: YWxpY2U=
S: 334 UGFzc3dvcmQ6
C: c2VjcmV0
S: 235 2.7.0 Authentication successful.
C: AUTH LOGIN
S: 503 5.5.1 Already authenticated.
C: MAIL FROM:<alice@foo.com> AUTH=<>
S: 250 2.1.0 Ok.
C: RCPT TO:<bob@remote.example>
S: 250 2.1.5 Ok.
C: QUIT
S: 221 2.0.0 foo.com closing connection.
"""


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_login_then_relay(mode):
    d = Driver()
    assert d.feed(client(LOGIN_THEN_RELAY), mode) == server(LOGIN_THEN_RELAY)
    assert d.core.session.authenticated == "alice"
    assert d.core.session.auth_mechanism == "LOGIN"


def test_pipelined_after_auth_is_read_after_the_verdict():
    d = Driver(tls_active=True)
    out = d.feed(f"EHLO x\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@b>\r\n"
                 "RCPT TO:<c@remote.example>\r\nQUIT\r\n".encode())
    assert "250-AUTH PLAIN LOGIN\r\n" in out
    assert out.endswith("235 2.7.0 Authentication successful.\r\n250 2.1.0 Ok.\r\n"
                        "250 2.1.5 Ok.\r\n221 2.0.0 foo.com closing connection.\r\n")


def test_failures_cancel_and_tempfail():
    d = Driver(tls_active=True)
    down = base64.b64encode(b"\0alice\0authd-down").decode()
    out = d.feed(f"EHLO x\r\nAUTH PLAIN {PLAIN_BAD}\r\nAUTH PLAIN\r\n*\r\n"
                 f"AUTH PLAIN {down}\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!\r\n"
                 "AUTH LOGIN\r\n%%%\r\nAUTH\r\nNOOP\r\n".encode())
    assert "535 5.7.8 Authentication credentials invalid.\r\n" in out
    assert "334 \r\n501 5.0.0 AUTH aborted.\r\n" in out
    assert "454 4.7.0 Temporary authentication failure.\r\n" in out
    assert "504 5.5.4 Unrecognized authentication type.\r\n" in out
    assert "501 5.5.2 initial response is not valid base64\r\n" in out
    assert "501 5.5.2 response is not valid base64\r\n" in out
    assert "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n" in out
    assert out.endswith("250 2.0.0 Ok.\r\n")
    assert d.core.state is State.READY and not d.core.session.authenticated


def test_auth_required_and_sequence():
    d = Driver(required=True, tls_active=True)
    out = d.feed(b"AUTH PLAIN\r\nHELO x\r\nAUTH LOGIN\r\nEHLO x\r\nMAIL FROM:<a@b>\r\n"
                 b"AUTH PLAIN " + PLAIN_OK.encode() + b"\r\nMAIL FROM:<a@b>\r\n"
                 b"AUTH LOGIN\r\n")
    assert out.count("530 5.7.0 Authentication required.\r\n") == 1
    assert "503 5.5.1 Send EHLO/HELO first.\r\n" in out
    assert "503 5.5.1 Send EHLO first.\r\n" in out
    assert out.endswith("235 2.7.0 Authentication successful.\r\n250 2.1.0 Ok.\r\n"
                        "503 5.5.1 AUTH not allowed now.\r\n")


def test_starttls_forgets_auth_and_no_auth_offered_when_none_configured():
    d = Driver(plain=("LOGIN",))
    d.feed(b"EHLO x\r\nAUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\nSTARTTLS\r\nEHLO x\r\n")
    assert d.core.session.tls_active and not d.core.session.authenticated
    d = Driver(plain=(), tls=())
    out = d.feed(b"EHLO x\r\nAUTH PLAIN\r\nMAIL FROM:<a@b> AUTH=<>\r\n")
    assert "AUTH" not in out.split("\r\n")[2:8]
    assert "504 5.5.4" in out and "555 5.5.4 Unsupported parameter AUTH." in out


def test_cram_challenge_uses_nonce_and_hostname():
    d = Driver(tls_active=True, tls=("CRAM-MD5",))
    out = d.feed(b"EHLO x\r\nAUTH CRAM-MD5\r\n")
    assert out.endswith("334 " + base64.b64encode(b"<1.2@foo.com>").decode() + "\r\n")
    resp = base64.b64encode(b"tim b913a602c7eda7a495b4e6e7334d3890")
    d.feed(resp + b"\r\n")
    assert d.verified == [(CramCredentials("CRAM-MD5", b"<1.2@foo.com>",
                                           b"tim b913a602c7eda7a495b4e6e7334d3890"), "CRAM-MD5")]


def test_each_auth_gets_a_fresh_challenge():
    """RFC 2195 §2: the challenge is unique per exchange, so a response seen once (a failed
    attempt, a sniffed one) is never good for a second AUTH in the same session."""
    count = iter(range(1, 100))
    d = Driver(tls_active=True, tls=("CRAM-MD5",), nonce=lambda: b"%d.7" % next(count))
    out = d.feed(b"EHLO x\r\nAUTH CRAM-MD5\r\n")
    assert out.endswith("334 " + base64.b64encode(b"<1.7@foo.com>").decode() + "\r\n")
    resp = base64.b64encode(b"tim b913a602c7eda7a495b4e6e7334d3890")
    out = d.feed(resp + b"\r\nAUTH CRAM-MD5\r\n")
    assert "535 5.7.8" in out
    assert out.endswith("334 " + base64.b64encode(b"<2.7@foo.com>").decode() + "\r\n")
    d.feed(resp + b"\r\n")
    assert [c.challenge for c, _ in d.verified] == [b"<1.7@foo.com>", b"<2.7@foo.com>"]


def test_long_sasl_line_limit():
    d = Driver(tls_active=True)
    out = d.feed(b"EHLO x\r\nAUTH PLAIN\r\n" + b"A" * 13000 + b"\r\nNOOP\r\n")
    assert "500 5.5.6 Authentication exchange line too long.\r\n" in out
    assert out.endswith("250 2.0.0 Ok.\r\n")


def test_guessing_ends_in_421():
    d = Driver(tls_active=True)
    d.feed(b"EHLO x\r\n" + f"AUTH PLAIN {PLAIN_BAD}\r\n".encode() * 25)
    assert d.closed and "421 4.7.0" in d.out.decode()


def test_authenticated_client_may_relay_with_local_policy(tmp_path):
    policy = LocalPolicy(Domains("foo.com", (), {}), tmp_path / "sock",
                         lookup=lambda *a: None)
    anon = SessionInfo("foo.com")
    assert policy.check_recipient("x@remote.example", anon).code == 550
    authed = SessionInfo("foo.com", authenticated="alice@foo.com")
    assert policy.check_recipient("x@remote.example", authed).code == 250


def test_received_notes_auth():
    from datetime import UTC, datetime
    h = received_header(helo="x", rdns=None, ip="127.0.0.1", me="foo.com", esmtp=True,
                        tls=True, auth=True, smtputf8=False,
                        when=datetime(2024, 1, 1, tzinfo=UTC), auth_user="alice@foo.com",
                        auth_mechanism="PLAIN")
    assert h.startswith(b"Received: from x ([127.0.0.1] [127.0.0.1])\n"
                        b"  (AUTH: PLAIN alice@foo.com)\n  by foo.com with ESMTPSA; ")
