"""Password schemes of checkpassword.c with published vectors (Drepper's SHA-crypt spec,
the classic MD5-crypt and LDAP {SHA}/{MD5} examples)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from courier_authd.passwords import check_password, hash_password

GOOD = [
    ("password", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    ("Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("password", "$2b$04$abcdefghijklmnopqrstuughE8Ev8uGFaUgY2cNEySvxngrb/Jzdm"),
    ("password", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
    ("password", "{MD5}X03MO1qnZdYdgyfeuILPmQ=="),
    ("password", "{MD5RAW}5f4dcc3b5aa765d61d8327deb882cf99"),
    ("password", "{SHA256}XohImNooBHFR0OVvjcYpJ3NgPQ1qq73WKhHvch0VQtg="),
    ("password", "{SHA512}" + base64.b64encode(hashlib.sha512(b"password").digest()).decode()),
    ("password", "{SSHA}" + base64.b64encode(hashlib.sha1(b"passwordNaCl").digest() + b"NaCl").decode()),
    ("password", "{CRYPT}$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
    ("password", "abJnggxhB/yWI"),
]


@pytest.mark.parametrize("pw, stored", GOOD)
def test_vectors_match(pw, stored):
    assert check_password(pw, stored)


@pytest.mark.parametrize("pw, stored", GOOD)
def test_vectors_reject_wrong(pw, stored):
    assert not check_password(pw[:-1], stored)
    assert not check_password("", stored)


@pytest.mark.parametrize("stored", ["", "{SHA}not base64!", "{SSHA}AAAA", "{UNKNOWN}abc",
                                    "$6$", "*", "!locked", "$9$weird$thing"])
def test_garbage_never_matches(stored):
    assert not check_password("", stored)
    assert not check_password("password", stored)


def test_too_long_password_refused():
    h = hash_password("x" * 2000)
    assert not check_password("x" * 2000, h)


@pytest.mark.parametrize("scheme, prefix", [("sha512", "$6$"), ("sha256", "$5$"), ("md5", "$1$")])
def test_hash_password_roundtrip(scheme, prefix):
    h = hash_password("s3cret pw", scheme)
    assert h.startswith(prefix) and "rounds=" not in h  # glibc default rounds: not spelled out
    assert check_password("s3cret pw", h) and not check_password("s3cret", h)
