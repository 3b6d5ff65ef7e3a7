"""SCRAM-SHA-1 / SCRAM-SHA-256 with the RFCs' own exchanges (RFC 5802 §5, RFC 7677 §3)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.sasl import (
    Challenge,
    Failed,
    ScramUnavailable,
    ServerExchange,
    UnknownMechanism,
    VerifiedCredentials,
    offered_mechanisms,
)
from libcourier.sasl.scram import (
    SaltRequest,
    ScramError,
    ScramServer,
    derive_keys,
    format_stored,
    parse_stored,
    saslprep,
    verify_proof,
)

RFC = {
    # mech: (client-first, server nonce part, salt b64, client-final, server-final)
    "SCRAM-SHA-1": (
        b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "QSXCR+Q6sek8bf92",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    "SCRAM-SHA-256": (
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
}
HASH = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


@pytest.mark.parametrize("mech", sorted(RFC))
def test_rfc_exchange(mech):
    first, snonce, salt, final, server_final = RFC[mech]
    s = ScramServer(mech, snonce)
    assert s.client_first(first) == SaltRequest("user")
    sf = s.server_first(base64.b64decode(salt), 4096)
    assert sf == (first.split(b"r=")[1] + snonce.encode()).join([b"r=", b",s=" + salt.encode()
                                                                 + b",i=4096"])
    proof = s.client_final(final)
    keys = derive_keys(HASH[mech], "pencil", base64.b64decode(salt), 4096)
    sig = verify_proof(HASH[mech], keys, proof.auth_message, proof.proof)
    assert sig is not None
    assert s.server_final(sig) == server_final
    # A stored entry round-trips and verifies the same proof.
    again = parse_stored(mech, format_stored(mech, keys))
    assert again == keys
    assert verify_proof(HASH[mech], keys, proof.auth_message, proof.proof[:-1] + b"\0") is None
    wrong = derive_keys(HASH[mech], "pencil2", base64.b64decode(salt), 4096)
    assert verify_proof(HASH[mech], wrong, proof.auth_message, proof.proof) is None


def test_channel_binding_refused_and_mismatch():
    with pytest.raises(ScramError):
        ScramServer("SCRAM-SHA-256", "abc").client_first(b"p=tls-unique,,n=user,r=x")
    s = ScramServer("SCRAM-SHA-256", "abc")
    s.client_first(b"y,,n=user,r=x")
    s.server_first(b"salt", 4096)
    with pytest.raises(ScramError):
        s.client_final(b"c=biws,r=xabc,p=AAAA")   # biws is "n,,", we got "y,,"
    s = ScramServer("SCRAM-SHA-256", "abc")
    s.client_first(b"n,,n=user,r=x")
    s.server_first(b"salt", 4096)
    with pytest.raises(ScramError):
        s.client_final(b"c=biws,r=xabX,p=AAAA")   # nonce changed


@pytest.mark.parametrize("msg", [b"", b"n", b"n,", b"q,,n=u,r=x", b"n,,r=x,n=u", b"n,,n=,r=x",
                                 b"n,,n=u=41,r=x", b"n,,n=u,r=", b"n,a=other,n=u,r=x",
                                 b"n,,m=ext,n=u,r=x", b"\xff,,n=u,r=x", b"n,,n=u,r=a,b"])
def test_bad_client_first(msg):
    with pytest.raises(ScramError):
        ScramServer("SCRAM-SHA-1", "abc").client_first(msg)


def test_user_name_escapes_and_authzid():
    s = ScramServer("SCRAM-SHA-1", "abc")
    assert s.client_first(b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=x") == SaltRequest("a,b=c")


def test_saslprep_rfc4013_examples():
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    with pytest.raises(ScramError):
        saslprep("\u0007")
    with pytest.raises(ScramError):
        saslprep("\u0627\u0031")


@given(st.binary(max_size=300))
def test_any_client_first_gives_request_or_error(data):
    try:
        r = ScramServer("SCRAM-SHA-256", "nonce").client_first(data)
    except ScramError:
        return
    assert isinstance(r, SaltRequest) and r.user


# -- SCRAM inside ServerExchange (what IMAP/POP3/SMTP drivers run) ------------------------

class RfcKeys:
    """A ScramBackend holding RFC 7677's user/pencil keys: the arithmetic authd does."""

    def __init__(self, available=True):
        self.keys = derive_keys("sha256", "pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="),
                                4096)
        self.available = available

    def salt(self, mech, user):
        if not self.available:
            raise ScramUnavailable("authd down")
        return (self.keys.salt, self.keys.iterations) if user == "user" else None

    def verify(self, proof):
        sig = verify_proof("sha256", self.keys, proof.auth_message, proof.proof)
        return None if sig is None else ({"account": proof.user}, sig)


def b64(x: bytes) -> bytes:
    return base64.b64encode(x)


def test_server_exchange_rfc7677():
    first, snonce, _salt, final, server_final = RFC["SCRAM-SHA-256"]
    ex = ServerExchange("SCRAM-SHA-256", hostname="h", nonce=snonce.encode(), scram=RfcKeys())
    assert ex.start(None) == Challenge(b"")
    step = ex.step(b64(first))
    assert step == Challenge(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                             b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert ex.step(b64(final)) == Challenge(server_final)
    assert ex.step(b"") == VerifiedCredentials("SCRAM-SHA-256", "user", {"account": "user"})
    assert ex.done


def test_server_exchange_scram_initial_response_and_wrong_proof():
    first, snonce, _salt, final, _sf = RFC["SCRAM-SHA-256"]
    ex = ServerExchange("SCRAM-SHA-256", hostname="h", nonce=snonce.encode(), scram=RfcKeys())
    assert isinstance(ex.start(first), Challenge)            # SASL-IR / SMTP initial response
    bad = final[:-4] + b"AAA="
    assert ex.step(b64(bad)) == VerifiedCredentials("SCRAM-SHA-256", "user", None)


def test_server_exchange_scram_unknown_user_gets_a_stable_fake_salt():
    out = []
    for _ in range(2):
        ex = ServerExchange("SCRAM-SHA-256", hostname="h", nonce=b"abc", scram=RfcKeys())
        out.append(ex.start(b"n,,n=ghost,r=x").data)
    assert out[0] == out[1] and b",i=4096" in out[0]


def test_server_exchange_scram_backend_down_is_unavailable_not_wrong():
    first, snonce, _salt, final, _sf = RFC["SCRAM-SHA-256"]
    ex = ServerExchange("SCRAM-SHA-256", hostname="h", nonce=snonce.encode(),
                        scram=RfcKeys(available=False))
    assert isinstance(ex.start(first), Challenge)
    res = ex.step(b64(final))
    assert isinstance(res, VerifiedCredentials) and res.info is None and res.unavailable


def test_scram_needs_a_backend_and_is_offered_only_with_one():
    with pytest.raises(UnknownMechanism):
        ServerExchange("SCRAM-SHA-1", hostname="h")
    conf = ["SCRAM-SHA-256", "PLAIN"]
    assert offered_mechanisms(conf, tls=True, allow_plaintext=False) == ("PLAIN",)
    assert offered_mechanisms(conf, tls=True, allow_plaintext=False, scram=True) == \
        ("SCRAM-SHA-256", "PLAIN")


def test_scram_cancel_and_garbage():
    ex = ServerExchange("SCRAM-SHA-1", hostname="h", scram=RfcKeys())
    ex.start(None)
    assert isinstance(ex.step(b"*"), Failed)
    ex = ServerExchange("SCRAM-SHA-1", hostname="h", scram=RfcKeys())
    ex.start(None)
    assert isinstance(ex.step(b64(b"p=tls-unique,,n=user,r=x")), Failed)
