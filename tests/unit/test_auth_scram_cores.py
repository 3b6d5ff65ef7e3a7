"""SCRAM-SHA-1/SCRAM-SHA-256 through the sans-I/O POP3 and SMTP cores (RFC 5802 §5,
RFC 7677 §3 exchanges): authd's two requests are events the driver answers
(ScramKeys/ScramProofCheck in pop3d, AuthScramKeys/AuthScramProof in esmtpd), fed
whole, byte by byte and pipelined. The stand-in authd below does the arithmetic
courier-authd does with stored keys (libcourier.sasl.scram)."""

from __future__ import annotations

import base64

import pytest
from courier_pop3d import core as pop
from courier_smtpd import core as smtp
from hypothesis import given, settings
from hypothesis import strategies as st

# The RFC 5802 / RFC 7677 example exchanges, as test_sasl_scram.py holds them.
from test_sasl_scram import HASH, RFC

from libcourier.proto import NEED_DATA
from libcourier.sasl import (
    ScramKeysWanted,
    ScramProofToCheck,
    ServerExchange,
    VerifiedCredentials,
)
from libcourier.sasl.scram import derive_keys, verify_proof

MECHS = sorted(RFC)
MODES = ["whole", "bytes", "pipelined"]


def b64(x: bytes) -> str:
    return base64.b64encode(x).decode()


def server_first(mech: str) -> bytes:
    first, snonce, salt, _final, _sf = RFC[mech]
    return b"r=" + first.split(b"r=")[1] + snonce.encode() + b",s=" + salt.encode() + b",i=4096"


def wrong_final(mech: str) -> bytes:
    final = RFC[mech][3]
    return final[:final.index(b",p=") + 3] + base64.b64encode(b"\0" * (20 if mech ==
                                                                      "SCRAM-SHA-1" else 32))


class Authd:
    """What courier-authd answers: the salt of user "user" (password "pencil") and the
    proof check with the stored keys; `down` = it cannot be reached."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.calls: list[str] = []
        self.keys = {m: derive_keys(HASH[m], "pencil", base64.b64decode(RFC[m][2]), 4096)
                     for m in RFC}

    def salt(self, mech: str, user: str) -> tuple[bytes, int] | None:
        self.calls.append(f"salt {mech} {user}")
        if user != "user":
            return None
        return self.keys[mech].salt, self.keys[mech].iterations

    def verify(self, proof) -> tuple[dict, bytes] | None:
        self.calls.append(f"verify {proof.mech} {proof.user}")
        sig = verify_proof(HASH[proof.mech], self.keys[proof.mech], proof.auth_message,
                           proof.proof)
        return None if sig is None else ({"account": proof.user}, sig)


# -- libcourier.sasl: the two SCRAM steps as events -------------------------------------------

@pytest.mark.parametrize("mech", MECHS)
def test_exchange_gives_events_and_takes_answers(mech):
    first, snonce, _salt, final, sf = RFC[mech]
    authd = Authd()
    ex = ServerExchange(mech, hostname="h", nonce=snonce.encode(), scram_events=True)
    step = ex.start(first)
    assert step == ScramKeysWanted(mech, "user")
    with pytest.raises(RuntimeError):
        ex.step(b"")                        # the driver must answer authd's part first
    step = ex.scram_keys(authd.salt(mech, "user"))
    assert step.data == server_first(mech)
    step = ex.step(base64.b64encode(final))
    assert isinstance(step, ScramProofToCheck) and step.proof.user == "user"
    assert "p=" not in repr(step)
    step = ex.scram_verdict(authd.verify(step.proof))
    assert step.data == sf
    assert ex.step(b"") == VerifiedCredentials(mech, "user", {"account": "user"})
    assert ex.done


def test_exchange_without_backend_or_events_refuses_scram():
    from libcourier.sasl import UnknownMechanism
    with pytest.raises(UnknownMechanism):
        ServerExchange("SCRAM-SHA-256", hostname="h")


def test_exchange_unavailable_keys_skip_the_proof_check():
    first, snonce, _salt, final, _sf = RFC["SCRAM-SHA-256"]
    ex = ServerExchange("SCRAM-SHA-256", hostname="h", nonce=snonce.encode(), scram_events=True)
    ex.start(first)
    assert ex.scram_keys(None, "authd down").data.endswith(b",i=4096")   # made-up salt
    res = ex.step(base64.b64encode(final))
    assert res == VerifiedCredentials("SCRAM-SHA-256", "user", None, "authd down")


# -- POP3 (RFC 5034) ----------------------------------------------------------------------------

def pop3_options(mech: str, scram: bool = True) -> pop.Options:
    snonce = RFC[mech][1].encode()
    return pop.Options(sasl=("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"), hostname="pop.example.net",
                       nonce=lambda: snonce, scram=scram)


class Pop3Driver:
    """login.py's part: answers ScramKeys/ScramProofCheck from `authd`, logs in on SaslAuth."""

    def __init__(self, options: pop.Options, authd: Authd) -> None:
        self.core = pop.Pop3Server(options)
        self.authd = authd
        self.out = bytearray(self.core.data_to_send())
        self.logins: list[VerifiedCredentials] = []

    def feed(self, data: bytes) -> None:
        self.core.receive_data(data)
        while True:
            ev = self.core.next_event()
            self.out += self.core.data_to_send()
            match ev:
                case pop.ScramKeys(mech=mech, user=user):
                    if self.authd.down:
                        self.core.scram_keys(None, "authd down")
                    else:
                        self.core.scram_keys(self.authd.salt(mech, user))
                case pop.ScramProofCheck(proof=proof):
                    self.core.scram_verdict(self.authd.verify(proof))
                case pop.SaslAuth(credentials=VerifiedCredentials() as cred):
                    self.logins.append(cred)
                    if cred.unavailable:
                        self.core.login_unavailable()
                    elif cred.info is None:
                        self.core.login_failed()
                    else:
                        self.core.login_ok(pop.DropView((), ()))
                case pop.Update():
                    self.core.update_done(0)
                case pop.Closed():
                    self.out += self.core.data_to_send()
                    return
                case _:
                    assert ev is NEED_DATA, ev
                    return


def transcript(text: str) -> tuple[bytes, bytes]:
    client, server = bytearray(), bytearray()
    for raw in text.strip("\n").split("\n"):
        who, _, rest = raw.strip().partition(":")
        target = client if who == "C" else server
        assert who in ("C", "S"), raw
        target += rest[1:].replace("<SP>", " ").encode() + b"\r\n"
    return bytes(client), bytes(server)


def feed_all(driver, client: bytes, mode: str) -> None:
    if mode == "whole":
        driver.feed(client)
    elif mode == "bytes":
        for i in range(len(client)):
            driver.feed(client[i:i + 1])
    else:
        driver.feed(client + b"NOO")       # trailing bytes of a command never finished


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mech", MECHS)
def test_pop3_scram_rfc_exchange(mech, mode):
    first, _sn, _salt, final, sf = RFC[mech]
    client, server = transcript(f"""
S: +OK Hello there.
C: AUTH {mech}
S: +<SP>
C: {b64(first)}
S: + {b64(server_first(mech))}
C: {b64(final)}
S: + {b64(sf)}
C:
S: +OK logged in.
C: STAT
S: +OK 0 0
C: QUIT
S: +OK Bye-bye.
""")
    d = Pop3Driver(pop3_options(mech), Authd())
    feed_all(d, client, mode)
    assert bytes(d.out).decode() == server.decode()
    assert d.logins == [VerifiedCredentials(mech, "user", {"account": "user"})]


@pytest.mark.parametrize("mode", MODES)
def test_pop3_scram_initial_response_wrong_proof_unknown_user(mode):
    mech = "SCRAM-SHA-256"
    first, _sn, _salt, final, _sf = RFC[mech]
    ghost_first = b"n,,n=ghost,r=rOprNGfwEbeRWgbNEkqO"
    ghost_final = final.replace(b",p=", b",p=").replace(b"dHzb", b"AAAA")
    client, server = transcript(f"""
S: +OK Hello there.
C: CAPA
S: +OK Here's what I can do:
S: SASL SCRAM-SHA-256 SCRAM-SHA-1 PLAIN
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
C: AUTH {mech} {b64(first)}
S: + {b64(server_first(mech))}
C: {b64(wrong_final(mech))}
S: -ERR [AUTH] Login failed.
C: AUTH {mech} {b64(ghost_first)}
S: + PLACEHOLDER
C: {b64(ghost_final)}
S: -ERR [AUTH] Login failed.
C: AUTH {mech}
S: +<SP>
C: *
S: -ERR Authentication aborted.
C: QUIT
S: +OK Bye-bye.
""")
    authd = Authd()
    d = Pop3Driver(pop3_options(mech), authd)
    feed_all(d, client, mode)
    out = bytes(d.out).decode()
    # The unknown user gets a made-up salt: any server-first, same shape.
    lines = out.split("\r\n")
    ghost_line = lines[lines.index("-ERR [AUTH] Login failed.") + 1]
    fake = base64.b64decode(ghost_line[2:])
    assert fake.startswith(b"r=rOprNGfwEbeRWgbNEkqO%hvY") and fake.endswith(b",i=4096")
    assert out == server.decode().replace("+ PLACEHOLDER", ghost_line)
    assert "verify SCRAM-SHA-256 ghost" in authd.calls     # asked like any user
    assert [c.info for c in d.logins] == [None, None]


def test_pop3_scram_authd_down_is_a_temporary_failure():
    mech = "SCRAM-SHA-1"
    first, _sn, _salt, final, _sf = RFC[mech]
    d = Pop3Driver(pop3_options(mech), Authd(down=True))
    d.feed(f"AUTH {mech} {b64(first)}\r\n".encode())
    assert d.out.endswith(b"\r\n") and d.out.split(b"\r\n")[-2].startswith(b"+ ")
    d.feed(f"{b64(final)}\r\n".encode())
    assert d.out.endswith(b"-ERR [SYS/TEMP] Temporary problem, please try again later.\r\n")
    assert d.authd.calls == []                   # never asked to check a proof


def test_pop3_scram_not_offered_without_a_driver_that_answers():
    d = Pop3Driver(pop3_options("SCRAM-SHA-1", scram=False), Authd())
    assert d.core.sasl_mechanisms() == ("PLAIN",)
    d.feed(b"AUTH SCRAM-SHA-1\r\n")
    assert d.out.endswith(b"-ERR Unsupported authentication mechanism.\r\n")


def test_pop3_scram_driver_must_answer_before_the_next_event():
    d = pop.Pop3Server(pop3_options("SCRAM-SHA-1"))
    d.receive_data(b"AUTH SCRAM-SHA-1 " + base64.b64encode(RFC["SCRAM-SHA-1"][0]) + b"\r\n")
    assert isinstance(d.next_event(), pop.ScramKeys)
    with pytest.raises(RuntimeError):
        d.next_event()
    with pytest.raises(RuntimeError):
        d.scram_verdict(None)                    # answering the wrong question


# -- SMTP (RFC 4954) ----------------------------------------------------------------------------

class Policy:
    def check_sender(self, sender, session):
        return smtp.Verdict.accept()

    def check_recipient(self, address, session):
        return smtp.Verdict.accept()


class SmtpDriver:
    """session.py's part, with `authd` for the SCRAM requests."""

    def __init__(self, mech: str, authd: Authd, scram: bool = True) -> None:
        info = smtp.SessionInfo("foo.com", auth_plain=("SCRAM-SHA-256", "SCRAM-SHA-1", "LOGIN"),
                                nonce=lambda: RFC[mech][1].encode(), scram=scram)
        self.core = smtp.SmtpServer(info, Policy())
        self.authd = authd
        self.out = bytearray(self.core.greeting())
        self.verified: list[VerifiedCredentials] = []

    def run(self, events) -> None:
        queue = list(events)
        while queue:
            ev = queue.pop(0)
            match ev:
                case smtp.Send(data):
                    self.out += data
                case smtp.AuthScramKeys(mechanism=mech, user=user):
                    if self.authd.down:
                        queue += self.core.scram_keys(None, "authd down")
                    else:
                        queue += self.core.scram_keys(self.authd.salt(mech, user))
                case smtp.AuthScramProof(proof=proof):
                    queue += self.core.scram_verdict(self.authd.verify(proof))
                case smtp.AuthVerify(credentials=VerifiedCredentials() as cred):
                    self.verified.append(cred)
                    queue += self.core.auth_result(
                        cred.user if cred.info is not None else None,
                        temporary=bool(cred.unavailable))
                case smtp.Close():
                    pass
                case _:
                    raise AssertionError(ev)

    def feed(self, data: bytes) -> None:
        self.run(self.core.feed(data))


def ehlo(d: SmtpDriver) -> None:
    d.feed(b"EHLO client.example\r\n")
    assert "250-AUTH SCRAM-SHA-256 SCRAM-SHA-1 LOGIN\r\n" in d.out.decode()   # RFC 4954 §3
    d.out.clear()


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize("mech", MECHS)
def test_smtp_scram_rfc_exchange(mech, mode):
    first, _sn, _salt, final, sf = RFC[mech]
    client, server = transcript(f"""
C: AUTH {mech}
S: 334<SP>
C: {b64(first)}
S: 334 {b64(server_first(mech))}
C: {b64(final)}
S: 334 {b64(sf)}
C:
S: 235 2.7.0 Authentication successful.
C: QUIT
S: 221 2.0.0 foo.com closing connection.
""")
    d = SmtpDriver(mech, Authd())
    ehlo(d)
    feed_all(d, client, mode)
    assert bytes(d.out).decode() == server.decode()
    assert d.core.session.authenticated == "user"
    assert d.core.session.auth_mechanism == mech


def test_smtp_scram_pipelined_quit_waits_for_authd():
    mech = "SCRAM-SHA-256"
    first, _sn, _salt, final, sf = RFC[mech]
    d = SmtpDriver(mech, Authd())
    d.feed(b"EHLO c\r\n")
    # Everything the client would send at once (not allowed by RFC 4954, but must not
    # break the exchange: lines wait in the buffer until authd answered).
    d.feed(f"AUTH {mech} {b64(first)}\r\n{b64(final)}\r\n\r\nQUIT\r\n".encode())
    out = bytes(d.out).decode()
    assert f"334 {b64(sf)}\r\n235 2.7.0 Authentication successful.\r\n221 " in out


def test_smtp_scram_wrong_proof_unknown_user_down_and_cancel():
    mech = "SCRAM-SHA-1"
    first, _sn, _salt, _final, _sf = RFC[mech]
    d = SmtpDriver(mech, Authd())
    d.feed(b"EHLO c\r\n")
    d.feed(f"AUTH {mech} {b64(first)}\r\n".encode())
    assert d.out.endswith(f"334 {b64(server_first(mech))}\r\n".encode())
    d.feed(f"{b64(wrong_final(mech))}\r\n".encode())
    assert d.out.endswith(b"535 5.7.8 Authentication credentials invalid.\r\n")
    d.feed(f"AUTH {mech} {b64(first.replace(b'n=user', b'n=ghost'))}\r\n".encode())
    assert d.out.split(b"\r\n")[-2].startswith(b"334 ")
    d.feed(f"{b64(wrong_final(mech))}\r\n".encode())
    assert d.out.endswith(b"535 5.7.8 Authentication credentials invalid.\r\n")
    d.feed(f"AUTH {mech}\r\n*\r\n".encode())
    assert d.out.endswith(b"501 5.0.0 AUTH aborted.\r\n")
    assert not d.core.session.authenticated
    down = SmtpDriver(mech, Authd(down=True))
    down.feed(b"EHLO c\r\n")
    down.feed(f"AUTH {mech} {b64(first)}\r\n{b64(RFC[mech][3])}\r\n".encode())
    assert down.out.endswith(b"454 4.7.0 Temporary authentication failure.\r\n")
    assert down.authd.calls == []


def test_smtp_scram_needs_a_driver_that_answers():
    d = SmtpDriver("SCRAM-SHA-1", Authd(), scram=False)
    d.feed(b"EHLO c\r\nAUTH SCRAM-SHA-1\r\n")
    assert d.out.endswith(b"504 5.5.4 Unrecognized authentication type.\r\n")


# -- any bytes inside a SCRAM exchange: replies, never an exception ----------------------------

_lines = st.lists(st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"*", b"", b"=", base64.b64encode(RFC["SCRAM-SHA-1"][0]),
                     base64.b64encode(RFC["SCRAM-SHA-1"][3]),
                     base64.b64encode(b"n,,n=user,r=x"), base64.b64encode(b"c=biws,r=x,p=AA==")]),
    st.binary(max_size=40).map(base64.b64encode)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(lines=_lines)
def test_fuzz_pop3_scram_lines(lines):
    d = Pop3Driver(pop3_options("SCRAM-SHA-1"), Authd())
    d.feed(b"AUTH SCRAM-SHA-1\r\n" + b"".join(line.replace(b"\n", b"") + b"\r\n"
                                             for line in lines) + b"CAPA\r\n")
    assert d.out.endswith(b".\r\n") or b"-ERR" in d.out     # CAPA answered, or closed


@settings(max_examples=150, deadline=None)
@given(lines=_lines)
def test_fuzz_smtp_scram_lines(lines):
    d = SmtpDriver("SCRAM-SHA-1", Authd())
    d.feed(b"EHLO c\r\nAUTH SCRAM-SHA-1\r\n" + b"".join(line.replace(b"\n", b"") + b"\r\n"
                                                        for line in lines) + b"NOOP\r\n")
    assert d.out.endswith(b"\r\n")
    assert d.core.state in (smtp.State.AUTH, smtp.State.READY, smtp.State.CLOSED)
