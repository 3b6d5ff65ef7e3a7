"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, without I/O.

Two halves, because only authd may hold password material:

- `ScramServer`: the message grammar a protocol daemon runs. client-first in,
  `SaltRequest(user)` out; the daemon asks authd for the user's salt and
  iteration count and calls `server_first()`; client-final in, `ScramProof` out;
  the daemon sends that to authd, which checks the proof and returns the
  server signature for `server_final()`.
- `derive_keys`, `verify_proof`, `parse_stored`, `format_stored`: the
  arithmetic authd does with what it stores. The stored form is Dovecot's
  `{SCRAM-SHA-256}<iter>,<b64 salt>,<b64 StoredKey>,<b64 ServerKey>` (what
  `doveadm pw -s SCRAM-SHA-256` prints; courier-authlib has no SCRAM and so no
  format of its own).

Channel binding is not offered (no -PLUS mechanisms): a client-first with
"p=" is refused, "y" and "n" are accepted (RFC 5802 §6).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import stringprep
import unicodedata
from dataclasses import dataclass

MECHANISMS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
MAX_MESSAGE = 2048           # any one SCRAM message; real ones are under 300 bytes
MIN_ITERATIONS = 4096        # RFC 7677 §4: at least 4096
MAX_ITERATIONS = 1_000_000   # a stored count above this is refused (CPU bound per login)
NONCE_CHARS = 64


class ScramError(ValueError):
    """A malformed SCRAM message or stored value (the exchange fails; the session goes on)."""


# ---- SASLprep (RFC 4013), as RFC 5802 §2.2 Normalize() needs ---------------------------

def saslprep(text: str) -> str:
    """RFC 4013 profile of stringprep for passwords and user names; ScramError if prohibited."""
    # §2.1 mapping: non-ASCII spaces to SPACE, "commonly mapped to nothing" removed.
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    # §2.2 normalization: NFKC.
    out = unicodedata.normalize("NFKC", mapped)
    if not out:
        return out
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
                  stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
                  stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
                  stringprep.in_table_c9, stringprep.in_table_a1)
    for c in out:
        if any(t(c) for t in prohibited):
            raise ScramError("prohibited character in SASLprep input")
    # §2.4 bidi (RFC 3454 §6).
    if any(stringprep.in_table_d1(c) for c in out):
        if any(stringprep.in_table_d2(c) for c in out):
            raise ScramError("mixed bidirectional text")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise ScramError("RandALCat text must start and end with RandALCat")
    return out


# ---- key arithmetic (RFC 5802 §3) --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredKeys:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # key material stays out of logs
        return f"StoredKeys(iterations={self.iterations}, <hidden>)"


def derive_keys(hash_name: str, password: str, salt: bytes, iterations: int) -> StoredKeys:
    """SaltedPassword = Hi(Normalize(password), salt, i); StoredKey, ServerKey from it."""
    try:
        norm = saslprep(password)
    except ScramError:
        norm = password  # RFC 5802 §2.2 lets us use the password as is when SASLprep fails
    salted = hashlib.pbkdf2_hmac(hash_name, norm.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    return StoredKeys(iterations, salt, hashlib.new(hash_name, client_key).digest(), server_key)


def verify_proof(hash_name: str, keys: StoredKeys, auth_message: bytes,
                 proof: bytes) -> bytes | None:
    """The ServerSignature if `proof` is right for `auth_message`, else None (constant time)."""
    signature = hmac.new(keys.stored_key, auth_message, hash_name).digest()
    if len(proof) != len(signature):
        return None
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    if not hmac.compare_digest(hashlib.new(hash_name, client_key).digest(), keys.stored_key):
        return None
    return hmac.new(keys.server_key, auth_message, hash_name).digest()


def format_stored(mech: str, keys: StoredKeys) -> str:
    b = base64.b64encode
    return (f"{{{mech}}}{keys.iterations},{b(keys.salt).decode()},"
            f"{b(keys.stored_key).decode()},{b(keys.server_key).decode()}")


def parse_stored(mech: str, text: str) -> StoredKeys | None:
    """`{SCRAM-SHA-256}iter,salt,storedkey,serverkey` (the {...} prefix optional); None if not."""
    prefix = "{" + mech + "}"
    if text[:len(prefix)].upper() == prefix:
        text = text[len(prefix):]
    parts = text.strip().split(",")
    if len(parts) != 4 or not parts[0].isdigit() or len(parts[0]) > 7:
        return None
    size = hashlib.new(MECHANISMS[mech]).digest_size
    try:
        salt, stored, server = (base64.b64decode(p, validate=True) for p in parts[1:])
    except (binascii.Error, ValueError):
        return None
    n = int(parts[0])
    if not salt or len(stored) != size or len(server) != size or not 1 <= n <= MAX_ITERATIONS:
        return None
    return StoredKeys(n, salt, stored, server)


# ---- the message exchange (RFC 5802 §5, §7) ---------------------------------------------

def _attrs(msg: str) -> list[tuple[str, str]]:
    out = []
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError(f"bad attribute {part[:20]!r}")
        out.append((part[0], part[2:]))
    return out


def _saslname(value: str) -> str:
    # RFC 5802 §5.1: "=2C" is ',' and "=3D" is '='; any other '=' is an error.
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i:i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                raise ScramError("bad escape in user name")
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _printable_nonce(n: str) -> bool:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ',').
    return bool(n) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in n)


@dataclass(frozen=True, slots=True)
class SaltRequest:
    user: str          # ask authd for this user's salt and iteration count


@dataclass(frozen=True, slots=True)
class ScramProof:
    """What authd needs to check the proof: the three messages of AuthMessage and the proof."""

    mech: str
    user: str
    client_first_bare: bytes
    server_first: bytes
    client_final_without_proof: bytes
    proof: bytes

    @property
    def auth_message(self) -> bytes:
        return b",".join((self.client_first_bare, self.server_first,
                          self.client_final_without_proof))

    def __repr__(self) -> str:
        return f"ScramProof({self.mech!r}, user={self.user!r}, <hidden>)"


class _St(enum.Enum):
    CLIENT_FIRST = enum.auto()
    WANT_SALT = enum.auto()
    CLIENT_FINAL = enum.auto()
    WANT_SIGNATURE = enum.auto()
    DONE = enum.auto()


class ScramServer:
    """One SCRAM exchange. `server_nonce` must be fresh and unpredictable (the driver's
    secrets.token_urlsafe); the core does no I/O and draws no randomness itself."""

    def __init__(self, mech: str, server_nonce: str) -> None:
        mech = mech.upper()
        if mech not in MECHANISMS:
            raise ScramError(f"not a SCRAM mechanism: {mech}")
        if not _printable_nonce(server_nonce):
            raise ScramError("server nonce must be printable without ','")
        self.mech = mech
        self.hash_name = MECHANISMS[mech]
        self._snonce = server_nonce
        self._state = _St.CLIENT_FIRST
        self._gs2 = b""
        self._bare = b""
        self._nonce = ""
        self._server_first = b""
        self.user = ""

    def client_first(self, data: bytes) -> SaltRequest:
        """RFC 5802 §7 client-first-message; ScramError when malformed."""
        if self._state is not _St.CLIENT_FIRST:
            raise ScramError("client-first out of order")
        if len(data) > MAX_MESSAGE:
            raise ScramError("client-first too long")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("client-first is not UTF-8") from None
        flag, sep1, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep1 or not sep2:
            raise ScramError("client-first lacks the GS2 header")
        if flag.startswith("p="):
            raise ScramError("channel binding requested but not offered")
        if flag not in ("n", "y"):
            raise ScramError("bad GS2 channel-binding flag")
        attrs = _attrs(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            # A leading "m=" (reserved-mext) is a mandatory extension we do not know.
            raise ScramError("client-first must start with n= and r=")
        user = saslprep(_saslname(attrs[0][1]))
        if not user or any(c in user for c in "\0\r\n\t "):
            raise ScramError("bad user name")
        if authzid:
            if not authzid.startswith("a=") or saslprep(_saslname(authzid[2:])) != user:
                raise ScramError("authorization identity differs from the user")
        if not _printable_nonce(attrs[1][1]):
            raise ScramError("bad client nonce")
        self._gs2 = f"{flag},{authzid},".encode()
        self._bare = bare.encode()
        self._nonce = attrs[1][1] + self._snonce
        self.user = user
        self._state = _St.WANT_SALT
        return SaltRequest(user)

    def server_first(self, salt: bytes, iterations: int) -> bytes:
        """The server-first-message to send (not yet base64)."""
        if self._state is not _St.WANT_SALT:
            raise ScramError("server-first out of order")
        self._server_first = (f"r={self._nonce},s={base64.b64encode(salt).decode()},"
                              f"i={iterations}").encode()
        self._state = _St.CLIENT_FINAL
        return self._server_first

    def client_final(self, data: bytes) -> ScramProof:
        """RFC 5802 §7 client-final-message: channel binding and nonce checked here."""
        if self._state is not _St.CLIENT_FINAL:
            raise ScramError("client-final out of order")
        if len(data) > MAX_MESSAGE:
            raise ScramError("client-final too long")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ScramError("client-final is not ASCII") from None
        without, sep, proof_attr = text.rpartition(",")
        if not sep or not proof_attr.startswith("p="):
            raise ScramError("client-final must end with p=")
        attrs = _attrs(without)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramError("client-final must start with c= and r=")
        try:
            cbind = base64.b64decode(attrs[0][1], validate=True)
            proof = base64.b64decode(proof_attr[2:], validate=True)
        except (binascii.Error, ValueError):
            raise ScramError("bad base64 in client-final") from None
        if not hmac.compare_digest(cbind, self._gs2):
            raise ScramError("channel binding does not match the GS2 header")
        if attrs[1][1] != self._nonce:
            raise ScramError("nonce does not match")
        self._state = _St.WANT_SIGNATURE
        return ScramProof(self.mech, self.user, self._bare, self._server_first,
                          without.encode(), proof)

    def server_final(self, server_signature: bytes) -> bytes:
        """The server-final-message once authd accepted the proof."""
        if self._state is not _St.WANT_SIGNATURE:
            raise ScramError("server-final out of order")
        self._state = _St.DONE
        return b"v=" + base64.b64encode(server_signature)
