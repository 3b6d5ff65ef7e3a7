"""Password hash checking as courier-authlib's checkpassword.c, plus userdbpw's hashing.

Recognised forms of a stored password:
  {MD5}<base64 md5>  {MD5RAW}<hex md5>  {SHA}<base64 sha1>  {SSHA}<base64 sha1+salt>
  {SHA256}<base64>   {SHA512}<base64>   {CRYPT}<crypt string>
  $1$ $5$ $6$        MD5/SHA-256/SHA-512 crypt, via passlib (no libc needed)
  anything else      crypt(3), as Courier falls back to it: $2b$ (bcrypt), $y$ (yescrypt)
                     and DES work as far as the C library supports them.
Every comparison of secrets is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import warnings

from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

with warnings.catch_warnings():
    # The stdlib crypt module is deprecated (gone in 3.13); it is only the fallback
    # for hash kinds passlib cannot do without extra packages (bcrypt, yescrypt).
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as _crypt
    except ImportError:  # Python 3.13+
        _crypt = None  # type: ignore[assignment]

MAX_PASSWORD = 1024  # longer "passwords" are refused outright: no hashing cost for them

_PASSLIB = {"$1$": md5_crypt, "$5$": sha256_crypt, "$6$": sha512_crypt}


def _eq(a: bytes | str, b: bytes | str) -> bool:
    if isinstance(a, str):
        a = a.encode("utf-8", "surrogateescape")
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(a, b)


def _b64(data: str) -> bytes | None:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_crypt(password: str, stored: str) -> bool:
    for prefix, handler in _PASSLIB.items():
        if stored.startswith(prefix):
            try:
                # passlib's verify compares the checksums in constant time (consteq).
                return bool(handler.verify(password, stored))
            except (ValueError, TypeError):
                return False
    if _crypt is None or not stored:
        return False
    try:
        computed = _crypt.crypt(password, stored)
    except (OSError, ValueError):
        return False
    # crypt(3) returns "*0"/"*1" or None for salts it does not know: never a match.
    if not computed or computed.startswith("*"):
        return False
    return _eq(computed, stored)


def check_password(password: str, stored: str) -> bool:
    """Does `password` match the stored hash? Unknown or empty hashes never match."""
    if not stored or len(password) > MAX_PASSWORD:
        return False
    pw = password.encode("utf-8")
    upper = stored[:9].upper()
    if upper.startswith("{MD5RAW}"):
        return _eq(hashlib.md5(pw).hexdigest(), stored[8:].strip().lower())
    if upper.startswith("{MD5}"):
        want = _b64(stored[5:])
        return want is not None and _eq(hashlib.md5(pw).digest(), want)
    if upper.startswith("{SHA}"):
        want = _b64(stored[5:])
        return want is not None and _eq(hashlib.sha1(pw).digest(), want)
    if upper.startswith("{SSHA}"):
        # RFC 2307-style salted SHA-1: base64(sha1(password + salt) + salt)
        raw = _b64(stored[6:])
        if raw is None or len(raw) <= 20:
            return False
        digest, salt = raw[:20], raw[20:]
        return _eq(hashlib.sha1(pw + salt).digest(), digest)
    if upper.startswith("{SHA256}"):
        want = _b64(stored[8:])
        return want is not None and _eq(hashlib.sha256(pw).digest(), want)
    if upper.startswith("{SHA512}"):
        want = _b64(stored[8:])
        return want is not None and _eq(hashlib.sha512(pw).digest(), want)
    if upper.startswith("{CRYPT}"):
        return _check_crypt(password, stored[7:])
    if stored.startswith("{"):
        return False  # a scheme we do not know
    return _check_crypt(password, stored)


def hash_password(password: str, scheme: str = "sha512") -> str:
    """What userdbpw prints: SHA-512 crypt with glibc's default 5000 rounds unless asked."""
    if scheme == "sha512":
        return sha512_crypt.using(rounds=5000).hash(password)
    if scheme == "sha256":
        return sha256_crypt.using(rounds=5000).hash(password)
    if scheme == "md5":
        return md5_crypt.hash(password)
    raise ValueError(f"unknown scheme {scheme!r}")
