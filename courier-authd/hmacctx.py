"""Precomputed HMAC contexts, as courier-authlib's libhmac stores them for CRAM.

`userdbpw -hmac-md5` (and Dovecot's `doveadm pw -s CRAM-MD5`, the same bytes) do
not store the password but the two hash states HMAC reaches after its first
block: H's chaining value after (key XOR opad) and after (key XOR ipad), in hex,
outer first (libhmac's hmac_hashkey order; checked against userdbpw's output). A CRAM response is checked by resuming both states, which hashlib
cannot do (it has no way to load a chaining value), so the three compression
functions are written out here. They only ever run over a challenge and one
digest, a few blocks, so pure Python costs microseconds.

Word order of a state in the stored string is the hash's own digest encoding:
little-endian words for MD5, big-endian for SHA-1 and SHA-256 (libhmac writes
the state with the hash's "get digest" routine without the final padding).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 64
_M32 = 0xFFFFFFFF


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _M32


def _ror(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M32


# ---- MD5 (RFC 1321 §3.4) ------------------------------------------------------------

_MD5_K = [int(abs(math.sin(i + 1)) * 2**32) & _M32 for i in range(64)]
_MD5_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4


def _md5_compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _M32)), (7 * i) % 16
        f = (f + a + _MD5_K[i] + x[g]) & _M32
        a, d, c = d, c, b
        b = (b + _rol(f, _MD5_S[i])) & _M32
    return tuple((s + v) & _M32 for s, v in zip(state, (a, b, c, d), strict=True))


# ---- SHA-1 (FIPS 180-4 §6.1) ---------------------------------------------------------

def _sha1_compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    w = list(struct.unpack(">16I", block))
    for t in range(16, 80):
        w.append(_rol(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1))
    a, b, c, d, e = state
    for t in range(80):
        if t < 20:
            f, k = (b & c) | (~b & d), 0x5A827999
        elif t < 40:
            f, k = b ^ c ^ d, 0x6ED9EBA1
        elif t < 60:
            f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
        else:
            f, k = b ^ c ^ d, 0xCA62C1D6
        a, b, c, d, e = (_rol(a, 5) + (f & _M32) + e + k + w[t]) & _M32, a, _rol(b, 30), c, d
    return tuple((s + v) & _M32 for s, v in zip(state, (a, b, c, d, e), strict=True))


# ---- SHA-256 (FIPS 180-4 §6.2) -------------------------------------------------------

_SHA256_K = (
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
)


def _sha256_compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        s0 = _ror(w[t - 15], 7) ^ _ror(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _ror(w[t - 2], 17) ^ _ror(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M32)
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        t1 = (h + (_ror(e, 6) ^ _ror(e, 11) ^ _ror(e, 25)) + ((e & f) ^ (~e & g))
              + _SHA256_K[t] + w[t]) & _M32
        t2 = ((_ror(a, 2) ^ _ror(a, 13) ^ _ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & _M32
        a, b, c, d, e, f, g, h = (t1 + t2) & _M32, a, b, c, (d + t1) & _M32, e, f, g
    return tuple((s + v) & _M32 for s, v in zip(state, (a, b, c, d, e, f, g, h), strict=True))


@dataclass(frozen=True, slots=True)
class HashSpec:
    name: str                       # libhmac's hh_name: md5, sha1, sha256
    size: int                       # digest (and state) bytes: libhmac's hh_L
    iv: tuple[int, ...]
    compress: Callable[[tuple[int, ...], bytes], tuple[int, ...]]
    endian: str                     # struct byte order of state words and the length
    new: Callable[[bytes], object]  # hashlib constructor, for long keys


HASHES = {
    "md5": HashSpec("md5", 16, (0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476),
                    _md5_compress, "<", hashlib.md5),
    "sha1": HashSpec("sha1", 20, (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0),
                     _sha1_compress, ">", hashlib.sha1),
    "sha256": HashSpec("sha256", 32, (0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19),
                       _sha256_compress, ">", hashlib.sha256),
}


def _pack(spec: HashSpec, state: tuple[int, ...]) -> bytes:
    return struct.pack(f"{spec.endian}{len(state)}I", *state)


def _unpack(spec: HashSpec, data: bytes) -> tuple[int, ...]:
    return struct.unpack(f"{spec.endian}{len(data) // 4}I", data)


def _finish(spec: HashSpec, state: tuple[int, ...], done: int, msg: bytes) -> bytes:
    """Hash `msg` from a state that has already eaten `done` bytes (whole blocks)."""
    total = done + len(msg)
    tail = msg + b"\x80" + b"\0" * ((55 - total) % BLOCK)
    tail += struct.pack(f"{spec.endian}Q", total * 8)
    for i in range(0, len(tail), BLOCK):
        state = spec.compress(state, tail[i:i + BLOCK])
    return _pack(spec, state)


def key_contexts(name: str, key: bytes) -> bytes:
    """What `userdbpw -hmac-<name>` stores (binary): outer state, then inner state."""
    spec = HASHES[name]
    if len(key) > BLOCK:
        key = spec.new(key).digest()  # type: ignore[attr-defined]
    key = key.ljust(BLOCK, b"\0")
    inner = spec.compress(spec.iv, bytes(k ^ 0x36 for k in key))
    outer = spec.compress(spec.iv, bytes(k ^ 0x5C for k in key))
    return _pack(spec, outer) + _pack(spec, inner)


def parse_contexts(name: str, text: str) -> bytes | None:
    """The hex string from userdb (or after {CRAM-MD5}); None if it is not one."""
    spec = HASHES[name]
    text = text.strip()
    if len(text) != spec.size * 4:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def hmac_from_contexts(name: str, contexts: bytes, msg: bytes) -> bytes:
    """HMAC-<name>(key, msg) from the key's stored contexts (RFC 2104)."""
    spec = HASHES[name]
    if len(contexts) != spec.size * 2:
        raise ValueError("HMAC context of the wrong length")
    outer = _unpack(spec, contexts[:spec.size])
    inner = _unpack(spec, contexts[spec.size:])
    return _finish(spec, outer, BLOCK, _finish(spec, inner, BLOCK, msg))


def cram_matches(name: str, *, challenge: bytes, digest_hex: str,
                 contexts: bytes | None = None, secret: bytes | None = None) -> bool:
    """RFC 2195: is `digest_hex` HMAC(secret, challenge)? From contexts or the clear secret;
    compared in constant time."""
    spec = HASHES[name]
    if len(digest_hex) != spec.size * 2:
        return False
    try:
        got = bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if contexts is not None:
        want = hmac_from_contexts(name, contexts, challenge)
    elif secret is not None:
        want = hmac.new(secret, challenge, spec.name).digest()
    else:
        return False
    return hmac.compare_digest(got, want)
