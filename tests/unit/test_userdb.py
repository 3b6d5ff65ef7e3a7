"""userdb text format, the tool's atomic edits, and our compiled form (FORMATS.md §3.2)."""

from __future__ import annotations

import os
import stat

import pytest

from libcourier.config import ConfigError
from libcourier.userdb import (
    compile_userdb,
    delete_user,
    format_entry,
    load_compiled,
    parse_userdb,
    set_user,
)

SOURCE = (
    "# virtual users\n"
    "\n"
    "Bob@Example.com\tuid=1000|gid=1000|home=/m/bob|mail=/m/bob/Maildir|systempw=$6$x$y|imappw={SHA}abc\n"
    "1000=\tbob@example.com\n"
    "carol\tuid=1001|gid=1001|home=/m/carol|options=disableimap=1\n"
)


def test_parse_file(tmp_path):
    f = tmp_path / "userdb"
    f.write_text(SOURCE)
    entries = parse_userdb(f)
    assert [e.name for e in entries] == ["bob@example.com", "carol"]
    assert entries[0].fields["systempw"] == "$6$x$y"
    assert entries[0].line == 3 and entries[0].path == str(f)
    assert entries[1].fields["options"] == "disableimap=1"


def test_parse_directory_recursive(tmp_path):
    d = tmp_path / "userdb"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_text("alice\tuid=1|gid=1|home=/a\n")
    (d / "sub" / "b").write_text("bob\tuid=2|gid=2|home=/b\n")
    (d / ".lock.a").write_text("garbage no tab\n")
    (d / ".tmp.a").write_text("mallory\tuid=0|gid=0|home=/\n")
    assert sorted(e.name for e in parse_userdb(d)) == ["alice", "bob"]


@pytest.mark.parametrize("line, lineno", [
    ("no tab here\n", 1),
    ("ok\tuid=1\n\tuid=2\n", 2),
    ("ok\tuid=1\nok\tuid=2\n", 2),
    ("x\t=value\n", 1),
])
def test_bad_lines(tmp_path, line, lineno):
    f = tmp_path / "userdb"
    f.write_text(line)
    with pytest.raises(ConfigError) as ei:
        parse_userdb(f)
    assert ei.value.line == lineno and ei.value.path == str(f)


def test_format_entry():
    assert format_entry("bob", {"uid": "1", "home": "/h"}) == "bob\tuid=1|home=/h\n"
    for bad in [("b ob", {}), ("bob", {"x": "a|b"}), ("bob", {"x": "a\nb"}), ("bob", {"a=b": "1"})]:
        with pytest.raises(ValueError):
            format_entry(*bad)


def test_set_user_add_update_delete(tmp_path):
    f = tmp_path / "userdb"
    f.write_text(SOURCE)
    set_user(f, "dave", {"uid": "5", "gid": "5", "home": "/d"})
    set_user(f, "BOB@example.com", {"uid": "7", "gid": "7", "home": "/b"})
    text = f.read_text()
    assert "# virtual users\n" in text and "1000=\tbob@example.com\n" in text
    assert "BOB@example.com\tuid=7|gid=7|home=/b\n" in text
    assert "Bob@Example.com" not in text
    assert text.endswith("dave\tuid=5|gid=5|home=/d\n")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert not (tmp_path / ".tmp.userdb").exists()
    assert delete_user(f, "carol") is True
    assert delete_user(f, "carol") is False
    assert sorted(e.name for e in parse_userdb(f)) == ["bob@example.com", "dave"]


def test_set_user_new_file(tmp_path):
    f = tmp_path / "userdb"
    set_user(f, "x", {"uid": "1"})
    assert f.read_text() == "x\tuid=1\n"


def test_compile_roundtrip(tmp_path):
    d = tmp_path / "userdb"
    d.mkdir()
    (d / "users").write_text(SOURCE)
    dat, shadow = tmp_path / "userdb.dat", tmp_path / "userdbshadow.dat"
    assert compile_userdb(d, dat, shadow) == 2
    assert "systempw" not in dat.read_text() and "_=users" in dat.read_text()
    assert "home" not in shadow.read_text()
    assert stat.S_IMODE(os.stat(shadow).st_mode) == 0o600
    users = load_compiled(dat, shadow)
    assert users["bob@example.com"] == {"uid": "1000", "gid": "1000", "home": "/m/bob",
                                        "mail": "/m/bob/Maildir", "_": "users",
                                        "systempw": "$6$x$y", "imappw": "{SHA}abc"}
    assert users["carol"]["options"] == "disableimap=1"
    # compiling again gives the same bytes (sorted, deterministic)
    before = dat.read_bytes()
    compile_userdb(d, dat, shadow)
    assert dat.read_bytes() == before
