"""authd's CRAM-*, SCRAM-* and failed-login throttling and result cache (core.Authenticator)
over a real compiled userdb with Courier's field names."""

from __future__ import annotations

import base64
import hmac
import mmap

import pytest
from courier_authd.core import Authenticator
from courier_authd.modules import UserdbModule
from courier_authd.passwords import hash_password
from courier_authd.throttle import ThrottlePolicy, ThrottleTable, table_size

from libcourier.authproto import FAIL, AuthRequest, login_authdata
from libcourier.sasl.scram import ScramServer, derive_keys
from libcourier.userdb import compile_userdb, set_user

CH = b"<1896.697170952@postoffice.reston.mci.net>"


@pytest.fixture
def etc(tmp_path):
    src = tmp_path / "userdb"
    base = {"uid": "1000", "gid": "1000", "home": "/m/x"}
    # As Courier's admin does it: userdbpw -hmac-md5 | userdb tim set hmac-md5pw
    set_user(src, "tim", {**base, "systempw": hash_password("tanstaaftanstaaf"),
                          "hmac-md5pw": hash_password("tanstaaftanstaaf", "hmac-md5"),
                          "imap-hmac-sha1pw": hash_password("imap-only", "hmac-sha1"),
                          "hmac-sha256pw": hash_password("tanstaaftanstaaf", "hmac-sha256")})
    set_user(src, "dove", {**base, "systempw": "{CRAM-MD5}" + hash_password("dovepw", "hmac-md5")})
    set_user(src, "plain", {**base, "systempw": "{PLAIN}pencil"})
    set_user(src, "user", {**base, "systempw": hash_password("pencil"),
                           "scram-sha-256pw": hash_password("pencil", "scram-sha-256")})
    set_user(src, "cryptonly", {**base, "systempw": hash_password("pw")})
    compile_userdb(src, tmp_path / "userdb.dat", tmp_path / "userdbshadow.dat")
    return tmp_path


def cram(a, service, mech, user, secret, challenge=CH, ip=None, now=0.0):
    digest = hmac.new(secret.encode(), challenge, mech[5:]).hexdigest()
    data = base64.b64encode(challenge) + b"\n" + base64.b64encode(f"{user} {digest}".encode()) + b"\n"
    meta = {"TCPREMOTEIP": ip} if ip else {}
    return a.handle(AuthRequest(service, mech, data, meta), now)


def test_cram_rfc2195_through_userdb_hmac_field(etc):
    a = Authenticator([UserdbModule(etc)])
    # RFC 2195 §2's own response.
    data = (base64.b64encode(CH) + b"\n"
            + base64.b64encode(b"tim b913a602c7eda7a495b4e6e7334d3890") + b"\n")
    assert a.handle(AuthRequest("imap", "cram-md5", data)).reply.startswith(b"UID=1000\n")
    assert cram(a, "imap", "cram-md5", "tim", "wrong").reply == FAIL
    assert cram(a, "imap", "cram-sha256", "tim", "tanstaaftanstaaf").reply != FAIL


def test_cram_service_field_first(etc):
    a = Authenticator([UserdbModule(etc)])
    assert cram(a, "imap", "cram-sha1", "tim", "imap-only").reply != FAIL
    # pop3 has no hmac-sha1pw: crypt systempw cannot answer CRAM.
    assert cram(a, "pop3", "cram-sha1", "tim", "imap-only").reply == FAIL
    assert cram(a, "pop3", "cram-sha1", "tim", "tanstaaftanstaaf").reply == FAIL


def test_cram_from_doveadm_context_and_plain(etc):
    a = Authenticator([UserdbModule(etc)])
    assert cram(a, "imap", "cram-md5", "dove", "dovepw").reply != FAIL
    assert cram(a, "imap", "cram-sha1", "dove", "dovepw").reply == FAIL
    for mech in ("cram-md5", "cram-sha1", "cram-sha256"):
        assert cram(a, "esmtp", mech, "plain", "pencil").reply != FAIL
        assert cram(a, "esmtp", mech, "plain", "pencil2").reply == FAIL
    assert cram(a, "imap", "cram-md5", "cryptonly", "pw").reply == FAIL


@pytest.mark.parametrize("data", [b"", b"x\n", b"!!\n!!\n", base64.b64encode(b"c") + b"\n"
                                  + base64.b64encode(b"nospace") + b"\n"])
def test_cram_malformed(etc, data):
    assert Authenticator([UserdbModule(etc)]).handle(AuthRequest("imap", "cram-md5", data)).reply \
        == FAIL


def scram_login(a, mech, user, password, service="imap"):
    """A whole SCRAM exchange: our ScramServer core, authd for the keys, a client in the test."""
    h = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[mech]
    srv = ScramServer(mech, "srvnonce")
    srv.client_first(f"n,,n={user},r=clinonce".encode())
    first = a.handle(AuthRequest(service, mech.lower(), base64.b64encode(user.encode()) + b"\n"))
    if first.reply == FAIL:
        return first.reply, None
    f = dict(line.split(b"=", 1) for line in first.reply.splitlines()[:-1])
    salt, iters = base64.b64decode(f[b"SALT"]), int(f[b"ITERATIONS"])
    sf = srv.server_first(salt, iters)
    keys = derive_keys(h, password, salt, iters)
    final_wo = b"c=biws,r=clinonce" + b"srvnonce"
    auth_message = f"n={user},r=clinonce".encode() + b"," + sf + b"," + final_wo
    client_key = hmac.new(derive_keys_salted(h, password, salt, iters), b"Client Key", h).digest()
    sig = hmac.new(keys.stored_key, auth_message, h).digest()
    proof = bytes(x ^ y for x, y in zip(client_key, sig, strict=True))
    p = srv.client_final(final_wo + b",p=" + base64.b64encode(proof))
    data = b"\n".join(base64.b64encode(x) for x in (p.client_first_bare, p.server_first,
                                                    p.client_final_without_proof, p.proof))
    out = a.handle(AuthRequest(service, mech.lower(), data + b"\n"))
    if out.reply == FAIL:
        return out.reply, None
    fields = dict(line.split(b"=", 1) for line in out.reply.splitlines()[:-1])
    server_key = keys.server_key
    assert base64.b64decode(fields[b"SCRAM_SIGNATURE"]) == hmac.new(server_key, auth_message,
                                                                    h).digest()
    return out.reply, srv.server_final(base64.b64decode(fields[b"SCRAM_SIGNATURE"]))


def derive_keys_salted(h, password, salt, iters):
    import hashlib
    return hashlib.pbkdf2_hmac(h, password.encode(), salt, iters)


def test_scram_with_stored_keys_and_plain(etc):
    a = Authenticator([UserdbModule(etc)])
    reply, final = scram_login(a, "SCRAM-SHA-256", "user", "pencil")
    assert reply.startswith(b"UID=1000\n") and final.startswith(b"v=")
    assert scram_login(a, "SCRAM-SHA-256", "user", "pencil2")[0] == FAIL
    assert scram_login(a, "SCRAM-SHA-1", "plain", "pencil")[0] != FAIL
    assert scram_login(a, "SCRAM-SHA-1", "plain", "pencil!")[0] == FAIL
    # crypt-only accounts cannot do SCRAM: the salt request already fails.
    assert scram_login(a, "SCRAM-SHA-256", "cryptonly", "pw")[0] == FAIL


def make_throttle(**kw):
    buf = mmap.mmap(-1, table_size())
    return ThrottleTable(buf, ThrottlePolicy(**kw))


def login(a, user, pw, ip="192.0.2.1", now=0.0):
    return a.handle(AuthRequest("imap", "login", login_authdata(user, pw),
                                {"TCPREMOTEIP": ip}), now).reply


def test_throttle_grows_and_success_resets(etc):
    a = Authenticator([UserdbModule(etc)], throttle=make_throttle(after=3, base=2, cap=60))
    for i in range(3):
        assert login(a, "cryptonly", "bad", now=float(i)) == FAIL
    # Third failure at t=2: blocked for 2 s, even with the right password.
    assert login(a, "cryptonly", "pw", now=3.0) == FAIL
    assert login(a, "cryptonly", "pw", ip="192.0.2.9", now=3.5) == FAIL  # the user is blocked
    assert login(a, "plain", "x", ip="192.0.2.9", now=3.6) == FAIL
    assert login(a, "cryptonly", "pw", ip="192.0.2.7", now=4.1) != FAIL   # delay over
    # A success cleared the user; the address 192.0.2.1 still has its 3 failures.
    assert login(a, "cryptonly", "bad", now=10.0) == FAIL    # 4th failure for .1: 4 s
    assert login(a, "plain", "pencil", now=13.0) == FAIL     # .1 blocked until 14
    assert login(a, "plain", "pencil", now=14.5) != FAIL


def test_throttle_delays_double_up_to_cap():
    p = ThrottlePolicy(after=3, base=2, cap=60)
    assert [p.delay(n) for n in range(1, 10)] == [0, 0, 2, 4, 8, 16, 32, 60, 60]
    assert ThrottlePolicy(after=0).delay(100) == 0


def test_throttle_table_shared_and_bounded():
    t = make_throttle(after=1, base=1, cap=10, forget=100)
    for i in range(20000):        # more keys than slots: the oldest are evicted
        t.failed(f"u{i}", None, float(i))
    assert t.blocked_for("u19999", None, 19999.5) > 0
    assert t.blocked_for("u19999", None, 20200.0) == 0  # forgotten after 100 s idle


def test_result_cache_off_by_default_and_ttl(etc, tmp_path):
    a = Authenticator([UserdbModule(etc)], cache_ttl=60)
    assert login(a, "cryptonly", "pw", now=0) != FAIL
    # Change the password under authd: the cached reply answers until the TTL ends.
    src = etc / "userdb"
    set_user(src, "cryptonly", {"uid": "1000", "gid": "1000", "home": "/m/x",
                                "systempw": hash_password("new")})
    compile_userdb(src, etc / "userdb.dat", etc / "userdbshadow.dat")
    assert login(a, "cryptonly", "pw", now=30) != FAIL
    assert login(a, "cryptonly", "pw", now=61) == FAIL
    assert login(a, "cryptonly", "new", now=61) != FAIL
    b = Authenticator([UserdbModule(etc)])
    assert login(b, "cryptonly", "new", now=0) != FAIL and not b._cache


def test_mechanisms_follow_the_modules(etc):
    a = Authenticator([UserdbModule(etc)])
    assert {"PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"} <= a.mechanisms()


def test_throttle_ignores_loopback_addresses():
    t = make_throttle(after=1, base=10, cap=10)
    for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        t.failed(None, ip, 0.0)
        assert t.blocked_for("someone", ip, 1.0) == 0
    t.failed(None, "192.0.2.1", 0.0)
    assert t.blocked_for(None, "192.0.2.1", 1.0) > 0
