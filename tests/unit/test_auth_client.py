"""authclient's temporary failures: no daemon, hang-up without a reply, a silent daemon."""

from __future__ import annotations

import socket
import threading

import pytest

from libcourier.authclient import AuthTempFail, auth_login, auth_pre, parse_options


def serve_once(path, reply: bytes | None, *, hold: float = 0.0):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    got: list[bytes] = []

    def run():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            got.append(conn.recv(4096))
            if reply is not None:
                conn.sendall(reply)
            elif hold:
                threading.Event().wait(hold)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


def test_no_daemon_is_tempfail(tmp_path):
    with pytest.raises(AuthTempFail):
        auth_pre(tmp_path / "nosocket", "courier", "bob")


def test_hangup_without_reply_is_tempfail(tmp_path):
    t, got = serve_once(tmp_path / "s", None)
    with pytest.raises(AuthTempFail):
        auth_login(tmp_path / "s", "imap", "bob", "pw", remote_ip="::1")
    t.join(5)
    assert got == [b"TCPREMOTEIP=::1\nAUTH 18\nimap\nlogin\nbob\npw\n"]


def test_silent_daemon_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMEOUT_READ", "0.3")
    t, _ = serve_once(tmp_path / "s", None, hold=2)
    with pytest.raises(AuthTempFail):
        auth_pre(tmp_path / "s", "courier", "bob")
    t.join(5)


def test_reply_missing_mandatory_fields_is_tempfail(tmp_path):
    t, _ = serve_once(tmp_path / "s", b"UID=5\nGID=5\n.\n")
    with pytest.raises(AuthTempFail):
        auth_pre(tmp_path / "s", "courier", "bob")
    t.join(5)


def test_fail_and_success(tmp_path):
    t, _ = serve_once(tmp_path / "s", b"FAIL\n")
    assert auth_pre(tmp_path / "s", "courier", "bob") is None
    t.join(5)
    t, _ = serve_once(tmp_path / "s2", b"USERNAME=vmail\nGID=8\nHOME=/h\nADDRESS=bob\n"
                                         b"PASSWD=$6$x\nJUNK\nOPTIONS=a=1,group=x,group=y\n.\n")
    info = auth_pre(tmp_path / "s2", "courier", "bob")
    t.join(5)
    assert info.uid is None and info.username == "vmail" and info.gid == 8
    assert info.options == {"a": "1", "group": "x,y"}
    assert not hasattr(info, "passwd")


def test_unsendable_input_is_fail_without_asking(tmp_path):
    assert auth_login(tmp_path / "nosocket", "imap", "bob", "pass\nword") is None
    assert auth_pre(tmp_path / "nosocket", "courier", "bo b") is None


def test_parse_options():
    assert parse_options("disableimap=1,,b") == {"disableimap": "1", "b": ""}
