"""Password hash checking as courier-authlib's checkpassword.c (plus Dovecot's scheme
names, so a `doveadm pw` hash works too), and userdbpw's hashing.

Recognised forms of a stored password:
  {MD5}<base64 md5>       Courier/LDAP; {MD5}$1$... is Dovecot's name for MD5-crypt
  {MD5RAW}<hex md5>       also {PLAIN-MD5} (Dovecot);  {LDAP-MD5}<base64 md5>
  {SMD5} {SHA} {SSHA} {SHA256} {SSHA256} {SHA512} {SSHA512}   base64 of hash[+salt]
  {CRYPT}<crypt string>   also {SHA512-CRYPT} {SHA256-CRYPT} {MD5-CRYPT} {BLF-CRYPT}
                          {DES-CRYPT} (Dovecot)
  {CRAM-MD5} {CRAM-SHA1} {CRAM-SHA256} / {HMAC-MD5}   precomputed HMAC contexts, hex
                          (userdbpw -hmac-*, doveadm pw -s CRAM-MD5); a login password
                          is checked by computing its contexts
  {SCRAM-SHA-1} {SCRAM-SHA-256}  iter,salt,StoredKey,ServerKey (doveadm pw -s SCRAM-*)
  {PLAIN} {CLEAR} {CLEARTEXT}   plain text, only when the admin wrote that prefix
  anything else           crypt(3) as Courier falls back to it, through libxcrypt: $1$ $5$
                          $6$, $2b$/$2y$ (bcrypt), $y$ (yescrypt), DES; libpass does
                          $1$ $5$ $6$ where the C library cannot.
Every comparison of secrets is constant-time (hmac.compare_digest or libpass's consteq).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import warnings

from courier_authd.hmacctx import HASHES, cram_matches, key_contexts, parse_contexts
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from libcourier.sasl.scram import MECHANISMS as SCRAM_MECHS
from libcourier.sasl.scram import (
    MIN_ITERATIONS,
    StoredKeys,
    derive_keys,
    format_stored,
    parse_stored,
)

with warnings.catch_warnings():
    # The stdlib crypt module is deprecated (gone in 3.13); without it we call
    # libxcrypt (Debian's libcrypt.so.1) through ctypes, which does the same.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as _crypt
    except ImportError:  # Python 3.13+
        _crypt = None  # type: ignore[assignment]

MAX_PASSWORD = 1024  # longer "passwords" are refused outright: no hashing cost for them

_PASSLIB = {"$1$": md5_crypt, "$5$": sha256_crypt, "$6$": sha512_crypt}
_DIGESTS = {"SHA": "sha1", "SHA256": "sha256", "SHA512": "sha512", "MD5": "md5"}
_CRYPT_PREFIXES = ("{CRYPT}", "{SHA512-CRYPT}", "{SHA256-CRYPT}", "{MD5-CRYPT}",
                   "{BLF-CRYPT}", "{DES-CRYPT}")
_CRAM_PREFIXES = {"{CRAM-MD5}": "md5", "{HMAC-MD5}": "md5", "{CRAM-SHA1}": "sha1",
                  "{CRAM-SHA256}": "sha256"}
_PLAIN_PREFIXES = ("{PLAIN}", "{CLEAR}", "{CLEARTEXT}")


def _libcrypt():
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    return lib


_LIBCRYPT = _libcrypt() if _crypt is None else None


def _crypt3(password: str, salt: str) -> str | None:
    if _crypt is not None:
        return _crypt.crypt(password, salt)
    if _LIBCRYPT is None:
        return None
    # Each worker is single-threaded, so crypt()'s static buffer is safe here.
    out = _LIBCRYPT.crypt(password.encode("utf-8"), salt.encode("utf-8"))
    return out.decode("utf-8", "replace") if out else None


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
    if not stored or "\0" in password:
        return False
    # libxcrypt first: C, twice as fast as libpass's pure-Python SHA-crypt.
    try:
        computed = _crypt3(password, stored)
    except (OSError, ValueError):
        computed = None
    # crypt(3) returns "*0"/"*1" or None for salts it does not know: never a match.
    if computed and not computed.startswith("*"):
        return _eq(computed, stored)
    for prefix, handler in _PASSLIB.items():
        if stored.startswith(prefix):
            try:
                # passlib's verify compares the checksums in constant time (consteq).
                return bool(handler.verify(password, stored))
            except (ValueError, TypeError):
                return False
    return False


def _check_digest(pw: bytes, algo: str, b64: str, salted: bool) -> bool:
    raw = _b64(b64)
    size = hashlib.new(algo).digest_size
    if raw is None or len(raw) < size or (not salted and len(raw) != size) \
            or (salted and len(raw) == size):
        return False
    digest, salt = raw[:size], raw[size:]
    return _eq(hashlib.new(algo, pw + salt).digest(), digest)


def _scheme(stored: str) -> tuple[str, str]:
    """("{NAME}", rest) for a {NAME} prefix (upper-cased), else ("", stored)."""
    if stored.startswith("{"):
        end = stored.find("}", 1, 24)
        if end > 0:
            return stored[:end + 1].upper(), stored[end + 1:]
    return "", stored


def check_password(password: str, stored: str) -> bool:
    """Does `password` match the stored hash? Unknown or empty hashes, and an empty
    password, never match."""
    if not stored or not password or len(password) > MAX_PASSWORD:
        return False
    pw = password.encode("utf-8")
    scheme, rest = _scheme(stored)
    if not scheme:
        return _check_crypt(password, stored)
    name = scheme[1:-1]
    if scheme in ("{MD5RAW}", "{PLAIN-MD5}"):
        return _eq(hashlib.md5(pw).hexdigest(), rest.strip().lower())
    if scheme == "{MD5}" and rest.startswith("$1$"):
        return _check_crypt(password, rest)   # Dovecot's {MD5} is MD5-crypt
    if scheme == "{LDAP-MD5}":
        return _check_digest(pw, "md5", rest, False)
    if name in _DIGESTS:
        return _check_digest(pw, _DIGESTS[name], rest, False)
    if name.startswith("S") and name[1:] in _DIGESTS:   # {SSHA} {SSHA256} {SSHA512} {SMD5}
        return _check_digest(pw, _DIGESTS[name[1:]], rest, True)
    if scheme in _CRYPT_PREFIXES:
        return _check_crypt(password, rest)
    if scheme in _CRAM_PREFIXES:
        want = parse_contexts(_CRAM_PREFIXES[scheme], rest)
        return want is not None and _eq(key_contexts(_CRAM_PREFIXES[scheme], pw), want)
    if name in SCRAM_MECHS:
        keys = parse_stored(name, rest)
        if keys is None:
            return False
        mine = derive_keys(SCRAM_MECHS[name], password, keys.salt, keys.iterations)
        return _eq(mine.stored_key, keys.stored_key)
    if scheme in _PLAIN_PREFIXES:
        return _eq(pw, rest.encode("utf-8", "surrogateescape"))
    return False  # a scheme we do not know


def clear_password(stored: str) -> str | None:
    """The plain text of a {PLAIN}/{CLEAR}/{CLEARTEXT} value, else None."""
    scheme, rest = _scheme(stored)
    return rest if scheme in _PLAIN_PREFIXES else None


def check_cram(hash_name: str, challenge: bytes, digest_hex: str, stored: str) -> bool:
    """A CRAM-<hash> response against one stored value: a bare hex HMAC context (Courier's
    hmac-<hash>pw fields), the same with a {CRAM-*} prefix, or a plain-text password."""
    if hash_name not in HASHES or not stored:
        return False
    scheme, rest = _scheme(stored)
    clear = clear_password(stored)
    if clear is not None:
        return cram_matches(hash_name, challenge=challenge, digest_hex=digest_hex,
                            secret=clear.encode("utf-8"))
    if scheme and _CRAM_PREFIXES.get(scheme) != hash_name:
        return False
    ctx = parse_contexts(hash_name, rest)
    return ctx is not None and cram_matches(hash_name, challenge=challenge,
                                            digest_hex=digest_hex, contexts=ctx)


def scram_keys(mech: str, stored: str, user: str) -> StoredKeys | None:
    """The SCRAM keys a stored value yields: a {SCRAM-*} entry, or derived from plain text
    with a salt fixed per user (the two authd requests of one exchange must agree)."""
    scheme, rest = _scheme(stored)
    if scheme == "{" + mech + "}":
        return parse_stored(mech, rest)
    clear = clear_password(stored)
    if clear is None:
        return None
    salt = hashlib.sha256(b"courier-py scram salt\0" + user.encode("utf-8")).digest()[:16]
    return derive_keys(SCRAM_MECHS[mech], clear, salt, MIN_ITERATIONS)


def hash_password(password: str, scheme: str = "sha512") -> str:
    """What userdbpw prints: SHA-512 crypt with glibc's default 5000 rounds unless asked.
    hmac-md5/-sha1/-sha256 give the bare hex contexts Courier's userdbpw prints;
    scram-sha-1/-256 give Dovecot's {SCRAM-SHA-*} form (4096 iterations, 16-byte salt)."""
    if scheme == "sha512":
        return sha512_crypt.using(rounds=5000).hash(password)
    if scheme == "sha256":
        return sha256_crypt.using(rounds=5000).hash(password)
    if scheme == "md5":
        return md5_crypt.hash(password)
    if scheme.startswith("hmac-") and scheme[5:] in HASHES:
        return key_contexts(scheme[5:], password.encode("utf-8")).hex()
    mech = scheme.upper()
    if mech in SCRAM_MECHS:
        keys = derive_keys(SCRAM_MECHS[mech], password, os.urandom(16), MIN_ITERATIONS)
        return format_stored(mech, keys)
    raise ValueError(f"unknown scheme {scheme!r}")
