"""SCRAM-SHA-1 / SCRAM-SHA-256 with the RFCs' own exchanges (RFC 5802 §5, RFC 7677 §3)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
