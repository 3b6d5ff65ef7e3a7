"""libcourier.aliases: Courier's aliases source, the compiled table, lookups and expansion."""

from __future__ import annotations

import pytest

from libcourier.aliases import (
    AliasError,
    AliasTable,
    compile_aliases,
    parse_compiled,
    parse_source,
)

SOURCE = """# system aliases
Postmaster: root
root: alice@example.com,
    bob
staff: :include:{inc}
@virtual.test: carol
loop1: loop2, dave
loop2: loop1
self: self, erin
"""


@pytest.fixture
def etc(tmp_path):
    inc = tmp_path / "staff.list"
    inc.write_text("# members\nfrank, gina@example.org\n")
    (tmp_path / "aliases").mkdir()
    (tmp_path / "aliases" / "system").write_text(SOURCE.format(inc=inc))
    (tmp_path / "aliases" / "extra~").write_text("ignored: x\n")
    (tmp_path / "aliases" / "more").write_text("staff: harry\n")
    return tmp_path


def table(etc) -> AliasTable:
    compile_aliases(etc)
    return AliasTable(etc / "aliases.dat", "mx.test", lambda d: d in ("mx.test", "localhost"))


def test_compile_and_lookup(etc):
    t = table(etc)
    data = (etc / "aliases.dat").read_bytes()
    assert b"ignored" not in data and parse_compiled(data)["root"] == ("alice@example.com", "bob")
    assert t.lookup("POSTMASTER@mx.test") == ("root",)
    assert t.lookup("postmaster") == ("root",)
    assert t.lookup("postmaster@remote.example") is None
    assert t.lookup("x@virtual.test") == ("carol-x@mx.test",)
    assert t.lookup("nobody@mx.test") is None
    assert t.lookup("staff@localhost") == ("harry", "frank", "gina@example.org")


def test_expand_recursive_dedup_and_loops(etc):
    t = table(etc)
    assert t.expand("postmaster@mx.test") == ["alice@example.com", "bob@mx.test"]
    assert t.expand("loop1@mx.test") == ["dave@mx.test"]
    assert t.expand("self@mx.test") == ["erin@mx.test"]
    assert t.expand("alice@example.com") is None


def test_table_follows_a_new_compile(etc):
    t = table(etc)
    assert t.lookup("new@mx.test") is None
    with open(etc / "aliases" / "more", "a") as fh:
        fh.write("new: alice@example.com\n")
    compile_aliases(etc)
    assert t.lookup("new@mx.test") == ("alice@example.com",)


@pytest.mark.parametrize("text", ["novalue\n", "a:\n", "a b: c\n", "a: | prog\n",
                                  "a: /var/mail/x\n", "@v.test: a, b\n", "a: b c\n"])
def test_source_errors_name_the_line(text):
    with pytest.raises(AliasError, match="aliases:1"):
        parse_source(text)


def test_missing_source_compiles_empty(tmp_path):
    _, n = compile_aliases(tmp_path)
    assert n == 0 and parse_compiled((tmp_path / "aliases.dat").read_bytes()) == {}
