"""libcourier.sasl: RFC examples, every mechanism's exchange, bad input, fuzz."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.sasl import (
    MAX_SASL_LINE,
    Challenge,
    CramCredentials,
    ExternalCredentials,
    Failed,
    LoginCredentials,
    ServerExchange,
    UnknownMechanism,
    cram_nonce,
    decode_initial_response,
    offered_mechanisms,
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- PLAIN (RFC 4616) -------------------------------------------------------

def test_rfc4616_example_tim():
    # RFC 4616 §4: "C: a<NUL>tim<NUL>tanstaaftanstaaf" style, no authzid.
    ex = ServerExchange("PLAIN", hostname="h")
    assert ex.start(None) == Challenge(b"")
    assert ex.step(b64(b"\0tim\0tanstaaftanstaaf")) == LoginCredentials("tim", "tanstaaftanstaaf", "")
    assert ex.done


def test_rfc4616_example_proxy_authzid_refused():
    # RFC 4616 §4: "Ursel<NUL>Kurt<NUL>xipj3plmq" asks to act as Ursel: we allow no proxying.
    ex = ServerExchange("plain", hostname="h")
    step = ex.start(b"Ursel\0Kurt\0xipj3plmq")
    assert isinstance(step, Failed)
    assert "authorization" in step.reason


def test_plain_authzid_equal_to_authcid_accepted():
    ex = ServerExchange("PLAIN", hostname="h")
    assert ex.start(b"alice@example.com\0alice@example.com\0s") == \
        LoginCredentials("alice@example.com", "s", "alice@example.com")


def test_plain_utf8_password():
    ex = ServerExchange("PLAIN", hostname="h")
    assert ex.start("\0jürgen\0pässwörd".encode()) == LoginCredentials("jürgen", "pässwörd", "")


@pytest.mark.parametrize("msg", [
    b"", b"tim", b"\0tim", b"\0tim\0pw\0extra", b"\0\0pw", b"\0tim\0", b"\0t\xffm\0pw",
    b"\0tim\0pw\r\n", b"\0" + b"u" * 2000 + b"\0pw",
])
def test_plain_malformed(msg):
    assert isinstance(ServerExchange("PLAIN", hostname="h").start(msg), Failed)


def test_plain_cancel_and_bad_base64():
    ex = ServerExchange("PLAIN", hostname="h")
    ex.start(None)
    assert ex.step(b"*") == Failed("authentication cancelled")
    ex = ServerExchange("PLAIN", hostname="h")
    ex.start(None)
    assert isinstance(ex.step(b"not base64!"), Failed)
    ex = ServerExchange("PLAIN", hostname="h")
    ex.start(None)
    assert isinstance(ex.step(b"A" * (MAX_SASL_LINE + 4)), Failed)


def test_finished_exchange_refuses_more():
    ex = ServerExchange("PLAIN", hostname="h")
    ex.start(b"\0a\0b")
    with pytest.raises(RuntimeError):
        ex.step(b"")
    with pytest.raises(RuntimeError):
        ex.start(None)


# -- LOGIN (draft-murchison-sasl-login) --------------------------------------

def test_login_exchange():
    ex = ServerExchange("LOGIN", hostname="h")
    assert ex.start(None) == Challenge(b"Username:")
    assert ex.step(b64(b"bob@example.net")) == Challenge(b"Password:")
    assert ex.step(b64(b"bob-secret")) == LoginCredentials("bob@example.net", "bob-secret", "")


def test_login_initial_response_is_user_name():
    ex = ServerExchange("LOGIN", hostname="h")
    assert ex.start(b"bob") == Challenge(b"Password:")
    assert ex.step(b"cHc=") == LoginCredentials("bob", "pw", "")


def test_login_empty_password_fails():
    ex = ServerExchange("LOGIN", hostname="h")
    ex.start(None)
    ex.step(b64(b"bob"))
    assert isinstance(ex.step(b""), Failed)


# -- CRAM (RFC 2195) ----------------------------------------------------------

RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"


def test_rfc2195_example():
    ex = ServerExchange("CRAM-MD5", hostname="postoffice.reston.mci.net", nonce=b"1896.697170952")
    step = ex.start(None)
    assert step == Challenge(RFC2195_CHALLENGE)
    # The RFC's wire form of the challenge and of the client's answer.
    assert b64(step.data) == b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    creds = ex.step(b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
    assert creds == CramCredentials("CRAM-MD5", RFC2195_CHALLENGE,
                                    b"tim b913a602c7eda7a495b4e6e7334d3890")
    # ... which is HMAC-MD5 keyed with the shared secret over the challenge.
    digest = hmac.new(b"tanstaaftanstaaf", RFC2195_CHALLENGE, hashlib.md5).hexdigest()
    assert creds.response == b"tim " + digest.encode()


@pytest.mark.parametrize("mech, algo", [("CRAM-SHA1", hashlib.sha1), ("CRAM-SHA256", hashlib.sha256)])
def test_cram_sha(mech, algo):
    ex = ServerExchange(mech, hostname="mail.example.com")
    chal = ex.start(None)
    assert isinstance(chal, Challenge)
    assert chal.data.startswith(b"<") and chal.data.endswith(b"@mail.example.com>")
    resp = b"alice " + hmac.new(b"k", chal.data, algo).hexdigest().encode()
    assert ex.step(b64(resp)) == CramCredentials(mech, chal.data, resp)


def test_cram_challenges_differ():
    a = ServerExchange("CRAM-MD5", hostname="h").start(None)
    b = ServerExchange("CRAM-MD5", hostname="h").start(None)
    assert a != b
    assert cram_nonce(1700000000).endswith(b".1700000000")


@pytest.mark.parametrize("resp", [b"tim", b"tim xyz", b" " + b"a" * 32, b"tim " + b"g" * 32,
                                  b"tim " + b"a" * 40])
def test_cram_malformed(resp):
    ex = ServerExchange("CRAM-MD5", hostname="h")
    ex.start(None)
    assert isinstance(ex.step(b64(resp)), Failed)


def test_cram_refuses_initial_response():
    assert isinstance(ServerExchange("CRAM-MD5", hostname="h").start(b"x"), Failed)


# -- EXTERNAL (RFC 4422 Appendix A) ------------------------------------------

def test_external():
    ex = ServerExchange("EXTERNAL", hostname="h", external_identity="alice@example.com")
    assert ex.start(b"") == ExternalCredentials("alice@example.com")
    ex = ServerExchange("EXTERNAL", hostname="h", external_identity="alice@example.com")
    assert ex.start(None) == Challenge(b"")
    assert ex.step(b64(b"alice@example.com")) == ExternalCredentials("alice@example.com")
    ex = ServerExchange("EXTERNAL", hostname="h", external_identity="alice@example.com")
    assert isinstance(ex.start(b"bob@example.net"), Failed)


def test_external_needs_certificate_and_unknown_mechanisms():
    with pytest.raises(UnknownMechanism):
        ServerExchange("EXTERNAL", hostname="h")
    for name in ("SCRAM-SHA-1", "GSSAPI", "", "PLAIN "):
        with pytest.raises(UnknownMechanism):
            ServerExchange(name, hostname="h")


# -- helpers ------------------------------------------------------------------

def test_decode_initial_response():
    assert decode_initial_response(b"=") == b""
    assert decode_initial_response(b"AGEAYg==") == b"\0a\0b"
    assert isinstance(decode_initial_response(b"AGEAYg"), Failed)  # padding required


def test_offered_mechanisms():
    conf = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "plain", "AUTH=CRAM-SHA1"]
    assert offered_mechanisms(conf, tls=True, allow_plaintext=False) == \
        ("PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1")
    assert offered_mechanisms(conf, tls=False, allow_plaintext=False) == ("CRAM-MD5", "CRAM-SHA1")
    assert offered_mechanisms(conf, tls=False, allow_plaintext=True)[:2] == ("PLAIN", "LOGIN")
    assert offered_mechanisms(["EXTERNAL"], tls=True, allow_plaintext=False) == ()
    assert offered_mechanisms(["EXTERNAL"], tls=True, allow_plaintext=False, external=True) == \
        ("EXTERNAL",)


# -- fuzz: any client bytes give a Step, never an exception --------------------

MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", "EXTERNAL"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MECHS), st.one_of(st.none(), st.binary(max_size=64)),
       st.lists(st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(b64)), max_size=4))
def test_fuzz_any_input_gives_a_step(mech, initial, lines):
    ex = ServerExchange(mech, hostname="h", external_identity="x@y")
    step = ex.start(initial)
    for line in lines:
        if not isinstance(step, Challenge):
            break
        step = ex.step(line)
    assert isinstance(step, Challenge | LoginCredentials | CramCredentials
                      | ExternalCredentials | Failed)
    if isinstance(step, LoginCredentials):
        assert step.user and step.password
        assert not any(c in step.user + step.password for c in "\0\r\n")
    assert ex.done == (not isinstance(step, Challenge))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda s: not any(c in s for c in "\0\r\n")),
       st.text(min_size=1, max_size=40).filter(lambda s: not any(c in s for c in "\0\r\n")))
def test_fuzz_plain_roundtrip(user, password):
    ex = ServerExchange("PLAIN", hostname="h")
    ex.start(None)
    assert ex.step(b64(f"\0{user}\0{password}".encode())) == LoginCredentials(user, password, "")
