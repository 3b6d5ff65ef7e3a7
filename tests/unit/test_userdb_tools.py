"""The userdb admin tools in-process: userdb, userdbpw, makeuserdb."""

from __future__ import annotations

import io
import sys

from courier_authd.makeuserdb import main as makeuserdb
from courier_authd.passwords import check_password
from courier_authd.userdbpw import main as userdbpw
from courier_authd.userdbtool import main as userdb

from libcourier.userdb import load_compiled, parse_userdb


def test_userdb_set_unset_del_show(tmp_path, monkeypatch, capsys):
    f = tmp_path / "userdb"
    assert userdb(["-f", str(f), "bob", "set", "uid=1", "gid=1", "home=/h", "quota=5S"]) == 0
    assert userdb(["-f", str(f), "bob", "unset", "quota"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("$6$hash\n"))
    assert userdb(["-f", str(f), "bob", "set", "systempw"]) == 0
    [e] = parse_userdb(f)
    assert e.fields == {"uid": "1", "gid": "1", "home": "/h", "systempw": "$6$hash"}
    capsys.readouterr()
    assert userdb(["-f", str(f), "-show"]) == 0
    assert capsys.readouterr().out == "bob\n"
    assert userdb(["-f", str(f), "-show", "bob"]) == 0
    assert "home=/h\n" in capsys.readouterr().out
    assert userdb(["-f", str(f), "bob", "set", "x=a|b"]) == 1
    assert userdb(["-f", str(f), "bob", "del"]) == 0
    assert userdb(["-f", str(f), "bob", "del"]) == 1
    assert userdb(["-f", str(f), "bob", "frob"]) == 1


def test_userdb_directory_paths(tmp_path):
    d = tmp_path / "userdb"
    d.mkdir()
    assert userdb(["-f", str(d), "bob", "set", "uid=1"]) == 1      # needs path/name
    assert userdb(["-f", str(d), "../evil/bob", "set", "uid=1"]) == 1
    assert userdb(["-f", str(d), "users/bob", "set", "uid=1", "gid=1", "home=/h"]) == 0
    assert (d / "users").exists()


def test_userdbpw_and_makeuserdb(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert userdbpw([]) == 0
    h = capsys.readouterr().out.strip()
    assert h.startswith("$6$") and check_password("s3cret", h)
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert userdbpw(["-md5"]) == 0
    assert capsys.readouterr().out.startswith("$1$")
    # Courier's userdbpw -hmac-md5 prints these exact bytes for alice-secret
    # (tests/data/passwords/vectors.txt).
    monkeypatch.setattr(sys, "stdin", io.StringIO("alice-secret\n"))
    assert userdbpw(["-hmac-md5"]) == 0
    assert capsys.readouterr().out == \
        "24be3e1bf5a2ae6f2161a80bf43c7757e98e65152b5a61a699e23e5d1c11efbf\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert userdbpw(["-scram-sha-256"]) == 0
    sc = capsys.readouterr().out.strip()
    assert sc.startswith("{SCRAM-SHA-256}4096,") and check_password("s3cret", sc)
    assert userdbpw(["-bogus"]) == 1
    src = tmp_path / "userdb"
    src.write_text(f"bob\tuid=1|gid=1|home=/h|systempw={h}\n")
    src.chmod(0o600)
    assert makeuserdb(["-f", str(src)]) == 0
    users = load_compiled(tmp_path / "userdb.dat", tmp_path / "userdbshadow.dat")
    assert users["bob"]["systempw"] == h
    src.write_text("bad line\n")
    assert makeuserdb(["-f", str(src)]) == 1
    assert f"{src}:1:" in capsys.readouterr().err
