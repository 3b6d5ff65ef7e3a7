"""Every password scheme against hashes made by other implementations
(tests/data/passwords/vectors.txt: Courier's userdbpw, Dovecot's doveadm pw, openssl,
libxcrypt; its header says how), and the HMAC contexts of CRAM-* against hmac."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from courier_authd.hmacctx import cram_matches, hmac_from_contexts, key_contexts
from courier_authd.passwords import check_cram, check_password, hash_password, scram_keys

VECTORS = Path(__file__).parent.parent / "data" / "passwords" / "vectors.txt"


def _vectors() -> list[tuple[str, str, str, str]]:
    out = []
    for line in VECTORS.read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            tool, opt, pw, stored = line.split("\t")
            out.append((tool, opt, pw, stored))
    return out


VEC = _vectors()
IDS = [f"{t}{o}-{i}" for i, (t, o, _, _) in enumerate(VEC)]


def test_vector_file_covers_every_scheme_of_the_issue():
    opts = {(t, o) for t, o, _, _ in VEC}
    for want in [("userdbpw", "-md5"), ("userdbpw", "-hmac-md5"), ("userdbpw", "-hmac-sha1"),
                 ("userdbpw", "-hmac-sha256"), ("doveadm", "SSHA512"), ("doveadm", "CRAM-MD5"),
                 ("doveadm", "SCRAM-SHA-256"), ("openssl", "-6"), ("openssl", "-5"),
                 ("libxcrypt", "bcrypt")]:
        assert want in opts


@pytest.mark.parametrize("tool, opt, pw, stored", VEC, ids=IDS)
def test_foreign_hash_verifies(tool, opt, pw, stored):
    if tool == "userdbpw" and opt.startswith("-hmac-"):
        stored = "{CRAM-" + opt[6:].upper() + "}" + stored
    assert check_password(pw, stored)


@pytest.mark.parametrize("tool, opt, pw, stored", VEC, ids=IDS)
def test_foreign_hash_refuses_wrong_password(tool, opt, pw, stored):
    if tool == "userdbpw" and opt.startswith("-hmac-"):
        stored = "{CRAM-" + opt[6:].upper() + "}" + stored
    if tool == "userdbpw" and opt == "":   # DES crypt reads 8 characters only
        assert not check_password(pw[:2], stored)
    else:
        assert not check_password(pw + "x", stored)
        assert not check_password(pw[:-1], stored)
    assert not check_password("", stored)


@pytest.mark.parametrize("opt", ["-hmac-md5", "-hmac-sha1", "-hmac-sha256"])
def test_userdbpw_hmac_output_is_what_we_make(opt):
    for tool, o, pw, stored in VEC:
        if tool == "userdbpw" and o == opt:
            assert hash_password(pw, opt[1:]) == stored
            assert key_contexts(opt[6:], pw.encode()).hex() == stored


@pytest.mark.parametrize("name", ["md5", "sha1", "sha256"])
@pytest.mark.parametrize("msg", [b"", b"<1896.697170952@postoffice.reston.mci.net>",
                                 b"x" * 55, b"x" * 56, b"x" * 64, b"y" * 300])
def test_hmac_resumed_from_contexts_equals_hmac(name, msg):
    for key in (b"tanstaaftanstaaf", b"k" * 64, b"long key " * 20):
        ctx = key_contexts(name, key)
        assert hmac_from_contexts(name, ctx, msg) == hmac.new(key, msg, name).digest()


def test_rfc2195_example():
    # RFC 2195 §2: tim / tanstaaftanstaaf.
    ch = b"<1896.697170952@postoffice.reston.mci.net>"
    digest = "b913a602c7eda7a495b4e6e7334d3890"
    ctx = key_contexts("md5", b"tanstaaftanstaaf")
    assert cram_matches("md5", challenge=ch, digest_hex=digest, contexts=ctx)
    assert cram_matches("md5", challenge=ch, digest_hex=digest.upper(), contexts=ctx)
    assert check_cram("md5", ch, digest, ctx.hex())
    assert check_cram("md5", ch, digest, "{CRAM-MD5}" + ctx.hex())
    assert check_cram("md5", ch, digest, "{PLAIN}tanstaaftanstaaf")
    assert not check_cram("md5", ch, digest, "{CRAM-SHA1}" + ctx.hex())
    assert not check_cram("md5", ch + b"x", digest, ctx.hex())
    assert not check_cram("md5", ch, digest[:-1] + "1", ctx.hex())
    assert not check_cram("md5", ch, digest, "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/")
    assert not check_cram("md5", ch, "zz" * 16, ctx.hex())


@pytest.mark.parametrize("tool, opt, pw, stored", [v for v in VEC if v[0] == "userdbpw"
                                                   and v[1].startswith("-hmac-")])
def test_cram_against_userdbpw_contexts(tool, opt, pw, stored):
    name = opt[6:]
    ch = b"<12345.1700000000@mail.example.com>"
    digest = hmac.new(pw.encode(), ch, name).hexdigest()
    assert check_cram(name, ch, digest, stored)
    assert not check_cram(name, ch, hmac.new(b"wrong", ch, name).hexdigest(), stored)


def test_made_hashes_round_trip():
    for scheme in ("sha512", "sha256", "md5", "hmac-md5", "hmac-sha1", "hmac-sha256",
                   "scram-sha-1", "scram-sha-256"):
        h = hash_password("s3cret pw", scheme)
        if scheme.startswith("hmac-"):
            h = "{CRAM-" + scheme[5:].upper() + "}" + h
        assert check_password("s3cret pw", h), scheme
        assert not check_password("s3cret pX", h), scheme


def test_scram_keys_from_doveadm_and_plain():
    for _tool, opt, _pw, stored in VEC:
        if opt == "SCRAM-SHA-256":
            keys = scram_keys("SCRAM-SHA-256", stored, "alice")
            assert keys is not None and keys.iterations == 4096
    a = scram_keys("SCRAM-SHA-1", "{PLAIN}pencil", "user")
    b = scram_keys("SCRAM-SHA-1", "{PLAIN}pencil", "user")
    assert a == b and a is not None
    assert scram_keys("SCRAM-SHA-1", "{PLAIN}pencil", "other") != a
    assert scram_keys("SCRAM-SHA-256", "$6$x$y", "user") is None


@pytest.mark.parametrize("stored", ["{CRAM-MD5}abc", "{CRAM-MD5}" + "zz" * 32,
                                    "{SCRAM-SHA-256}4096,,,", "{SCRAM-SHA-1}x,y,z,w",
                                    "{SSHA512}AAAA", "{SHA512}AAAA", "{PLAIN}", "{LDAP-MD5}!",
                                    "{BLF-CRYPT}", "{MD5}$1$"])
def test_malformed_stored_values_never_match(stored):
    assert not check_password("", stored)
    assert not check_password("alice-secret", stored)


def test_libxcrypt_through_ctypes_as_on_python_313(monkeypatch):
    """Python 3.13 has no crypt module: the same vectors through ctypes' libcrypt."""
    import courier_authd.passwords as pw
    lib = pw._libcrypt()
    if lib is None:
        pytest.skip("no libcrypt.so.1")
    monkeypatch.setattr(pw, "_crypt", None)
    monkeypatch.setattr(pw, "_LIBCRYPT", lib)
    for tool, opt, p, stored in VEC:
        if stored.startswith(("$", "{BLF-CRYPT}", "{SHA512-CRYPT}")) or tool == "userdbpw" and opt == "":
            assert check_password(p, stored), (tool, opt)
            assert not check_password(p[:2], stored), (tool, opt)
