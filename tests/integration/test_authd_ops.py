"""authd's operation as a real process: passwords never in the log at DEBUG_LOGIN=2,
failed-login throttling across workers, the result cache, a malformed request
answered FAIL and the connection closed, and SCRAM's two requests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket

from courier_authd.passwords import hash_password
from test_authd import Daemon, make_etc, wait_for

from libcourier.authclient import (
    auth_login,
    auth_pre,
    auth_scram_salt,
    auth_scram_verify,
    verifiable_mechanisms,
)
from libcourier.sasl.scram import ScramServer
from libcourier.userdb import compile_userdb, set_user

SECRET = "Sup3r-s3cret-pw"


def add_user(etc, name, fields):
    set_user(etc / "userdb", name, {"uid": "1000", "gid": "1000", "home": "/h", **fields})
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")


def test_debug_login_2_never_logs_passwords(tmp_path):
    etc = make_etc(tmp_path, "DEBUG_LOGIN=2\nAUTH_THROTTLE_FAILURES=0\n")
    add_user(etc, "carol", {"systempw": hash_password(SECRET),
                            "hmac-md5pw": hash_password(SECRET, "hmac-md5")})
    d = Daemon(etc)
    try:
        assert auth_login(d.sock, "imap", "carol", SECRET, remote_ip="192.0.2.5") is not None
        assert auth_login(d.sock, "imap", "carol", SECRET + "-wrong") is None
        assert auth_login(d.sock, "imap", "nobody", SECRET) is None
        assert wait_for(lambda: d.logtext().count("username=carol") >= 2)
    finally:
        d.stop()
    log = d.logtext()
    assert "password matches successfully" in log      # DEBUG_LOGIN=2 did log the steps
    assert SECRET not in log
    assert "$6$" not in log and hash_password(SECRET, "hmac-md5") not in log


def test_throttle_across_workers_and_reload(tmp_path):
    etc = make_etc(tmp_path, "daemons=3\nAUTH_THROTTLE_FAILURES=3\nAUTH_THROTTLE_DELAY=60\n")
    d = Daemon(etc)
    try:
        for _ in range(3):   # the failures may land on any of the three workers
            assert auth_login(d.sock, "imap", "bob@example.com", "bad", remote_ip="192.0.2.7") \
                is None
        # Refused now even with the right password, from any address; PRE still works.
        assert auth_login(d.sock, "imap", "bob@example.com", "secret") is None
        assert auth_pre(d.sock, "courier", "bob@example.com") is not None
        # The address is blocked for other logins too.
        assert auth_login(d.sock, "imap", "someone", "x", remote_ip="192.0.2.7") is None
        assert wait_for(lambda: "throttled: bob@example.com" in d.logtext())
    finally:
        d.stop()


def test_malformed_request_gets_fail_and_close(tmp_path):
    d = Daemon(make_etc(tmp_path))
    try:
        for bad in (b"HELLO there\n", b"AUTH x\n", b"PRE onlytwo words\n", b"\xff\xfe\n",
                    b"PASSWD a\tb\n"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(d.sock))
                s.sendall(bad)
                got = b""
                while chunk := s.recv(4096):   # until the daemon closes
                    got += chunk
                assert got == b"FAIL\n", bad
        assert auth_pre(d.sock, "courier", "bob@example.com") is not None
    finally:
        d.stop()


def test_scram_through_authd(tmp_path):
    etc = make_etc(tmp_path)
    add_user(etc, "user", {"systempw": hash_password("pencil"),
                           "scram-sha-256pw": hash_password("pencil", "scram-sha-256")})
    d = Daemon(etc)
    try:
        assert "SCRAM-SHA-256" in verifiable_mechanisms(d.sock)
        for password, ok in (("pencil", True), ("pencil2", False)):
            srv = ScramServer("SCRAM-SHA-256", "srvnonce")
            srv.client_first(b"n,,n=user,r=clinonce")
            salt, iters = auth_scram_salt(d.sock, "imap", "SCRAM-SHA-256", "user")
            sf = srv.server_first(salt, iters)
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
            ck = hmac.new(salted, b"Client Key", "sha256").digest()
            wo = b"c=biws,r=clinoncesrvnonce"
            am = b"n=user,r=clinonce," + sf + b"," + wo
            sig = hmac.new(hashlib.sha256(ck).digest(), am, "sha256").digest()
            proof = srv.client_final(wo + b",p=" + base64.b64encode(
                bytes(a ^ b for a, b in zip(ck, sig, strict=True))))
            res = auth_scram_verify(d.sock, "imap", proof, remote_ip="192.0.2.9")
            if ok:
                info, server_sig = res
                assert info.address == "user"
                sk = hmac.new(salted, b"Server Key", "sha256").digest()
                assert server_sig == hmac.new(sk, am, "sha256").digest()
                assert srv.server_final(server_sig).startswith(b"v=")
            else:
                assert res is None
        assert auth_scram_salt(d.sock, "imap", "SCRAM-SHA-256", "bob@example.com") is None
        assert auth_scram_salt(d.sock, "imap", "SCRAM-SHA-256", "nobody") is None
    finally:
        d.stop()


def test_mechanisms_file_follows_a_recompile(tmp_path):
    etc = make_etc(tmp_path)
    d = Daemon(etc)
    try:
        assert verifiable_mechanisms(d.sock) == {"PLAIN", "LOGIN"}
        add_user(etc, "tim", {"systempw": hash_password("x"),
                              "hmac-md5pw": hash_password("x", "hmac-md5")})
        # No SIGHUP: the parent notices the new compile within its publish interval.
        assert wait_for(lambda: "CRAM-MD5" in verifiable_mechanisms(d.sock), timeout=30)
        assert "CRAM-SHA1" not in verifiable_mechanisms(d.sock)
    finally:
        d.stop()
