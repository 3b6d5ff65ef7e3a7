"""`courierimapacl` (libcourier.maildir.acl) against files Courier-IMAP 5.0.13 wrote
(tests/data/courier-acl/), rights computation (ACL2=UNION), Courier's wire letters,
the ACL commands' grammar in the core, and parse/format fuzzed for stability."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_imapd import acl as aclmod
from courier_imapd.core import AclCommand, BadCommand, State, parse_command
from hypothesis import given
from hypothesis import strategies as st

from libcourier.maildir import acl

DATA = Path(__file__).resolve().parent.parent / "data" / "courier-acl"


def parse(line: bytes, state: State = State.AUTHENTICATED):
    return parse_command([(line, None)], state)


def test_courier_file_round_trip() -> None:
    data = (DATA / "after-transcript.Foo").read_bytes()
    entries = acl.parse(data)
    assert entries == [("owner", "aceilrstwx"), ("administrators", "aceilrstwx"),
                       ("user=bob", "elrsx"), ("anyone", "l"), ("user=alice", "ilrsw"),
                       ("-user=alice", "w")]
    assert acl.format_acl(entries) == data


def test_rights_on_the_courier_file() -> None:
    entries = acl.parse((DATA / "after-transcript.Foo").read_bytes())
    # alice owns the folder: everything, less the w her -user=alice entry takes.
    assert acl.my_rights(entries, "alice", "user=alice") == "aceilrstx"
    assert acl.rights_out(acl.my_rights(entries, "alice", "user=alice")) == "acdilrs"
    # bob: his entry plus anyone's l.
    assert acl.my_rights(entries, "bob", "user=alice") == "elrsx"
    # carol: only anyone's.
    assert acl.my_rights(entries, "carol", "user=alice") == "l"
    # an administrator by OPTIONS group=administrators: all rights.
    assert acl.my_rights(entries, "carol", "user=alice", ["administrators"]) == acl.ALL


def test_union_and_negative_rights() -> None:
    entries = [("owner", acl.ALL), ("administrators", acl.ALL), ("group=staff", "lrs"),
               ("user=dave", "iw"), ("-group=staff", "s"), ("-anyone", "")]
    assert acl.my_rights(entries, "dave", "user=alice", ["staff"]) == "ilrw"
    # The owner keeps a even when a negative entry takes it.
    entries.append(("-owner", "al"))
    assert acl.my_rights(entries, "alice", "user=alice") == "aceirstwx"


def test_lenient_reading_as_courier() -> None:
    data = b"owner  aceilrstwx\n\n bad\nuser=x\tl r\nuser=bob lr\nuser=bob srrl\n-administrators l\n"
    entries = acl.parse(data)
    # Spaces after the identifier skipped; a tab in an identifier: line skipped;
    # a repeated identifier replaces in place; rights sorted once each; the
    # administrators get added with all rights; -administrators dropped.
    assert entries == [("owner", "aceilrstwx"), ("user=bob", "lrs"),
                       ("administrators", "aceilrstwx")]


def test_inheritance_and_hier_dir(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for d in ("", ".A", ".A.B"):
        (root / d / "cur").mkdir(parents=True)
    assert acl.read(root, root) == acl.default_inbox()
    assert not (root / acl.ACLFILE).exists()        # INBOX's default is not written
    acl.write(root, root / ".A", acl.default_inbox() + [("user=bob", "lr")], "user=alice")
    # .A.B has no file: it takes .A's and keeps a copy, as Courier does.
    assert acl.read(root, root / ".A.B")[-1] == ("user=bob", "lr")
    assert (root / ".A.B" / acl.ACLFILE).read_bytes() == (root / ".A" / acl.ACLFILE).read_bytes()
    # A list in courierimaphieracl/ moves into the folder that has none.
    (root / ".C" / "cur").mkdir(parents=True)
    (root / acl.ACLHIERDIR).mkdir()
    (root / acl.ACLHIERDIR / "C").write_bytes(b"owner aceilrstwx\nanyone lr\n")
    assert ("anyone", "lr") in acl.read(root, root / ".C")
    assert (root / ".C" / acl.ACLFILE).exists() and not (root / acl.ACLHIERDIR / "C").exists()


def test_writes_that_courier_refuses(tmp_path: Path) -> None:
    base = acl.default_inbox()
    for bad in ([("owner", "lr"), ("administrators", acl.ALL)],           # owner loses a
                base + [("-anyone", "w")],                                 # admins lose w
                base + [("-user=alice", "a")],                             # the owner by name
                base + [("group=administrators", "lr")]):                  # admins short
        with pytest.raises(acl.AclError):
            acl.write(tmp_path, tmp_path, bad, "user=alice")
    assert not (tmp_path / acl.ACLFILE).exists()


def test_modify_and_wire_letters() -> None:
    base = acl.default_inbox()
    got = acl.modify(base, "user=bob", "lrsd")
    assert got is not None and got[-1] == ("user=bob", "elrstx")
    assert acl.rights_out("elrstx") == "dlrs" and acl.rights_out("elrsx") == "lrs"
    assert acl.rights_out_all(acl.ALL) == "acdilrsw" and acl.rights_out_all("elr") == "elr"
    got = acl.modify(got, "user=bob", "-t")
    assert got is not None and got[-1] == ("user=bob", "elrsx")
    got = acl.modify(got, "user=bob", "-elrsx")
    assert got == base                              # emptied: the entry goes
    assert acl.modify(base, "user=bob", "+") is None
    assert acl.imap_to_stored("bob") == "user=bob"
    assert acl.imap_to_stored("-bob") == "-user=bob"
    assert acl.imap_to_stored("administrators") == "group=administrators"
    assert acl.imap_to_stored("anyone") == "anyone" and acl.imap_to_stored("user=bob") is None
    assert acl.stored_to_imap("group=staff") is None and acl.stored_to_imap("-user=b") == "-b"


def test_flags_allowed() -> None:
    assert aclmod.flags_allowed("s", "DFRST", frozenset({"k"})) == ("S", frozenset())
    assert aclmod.flags_allowed("tw", "DFRST", frozenset({"k"})) == ("DFRT", frozenset({"k"}))


def test_core_grammar() -> None:
    assert parse(b'a SETACL INBOX.Foo "Fred Smith" +rk') == \
        AclCommand("a", "SETACL", "INBOX.Foo", "Fred Smith", "+rc")
    assert parse(b"b DELETEACL INBOX bob") == AclCommand("b", "DELETEACL", "INBOX", "bob")
    assert parse(b"c GETACL INBOX") == AclCommand("c", "GETACL", "INBOX")
    assert parse(b"d LISTRIGHTS INBOX -anyone") == \
        AclCommand("d", "LISTRIGHTS", "INBOX", "-anyone")
    assert parse(b"e MYRIGHTS INBOX") == AclCommand("e", "MYRIGHTS", "INBOX")
    for line in (b"f SETACL INBOX bob", b"f SETACL INBOX bob lrz", b"f GETACL",
                 b"f MYRIGHTS INBOX extra", b'f DELETEACL INBOX ""', b"f SETACL INBOX bob 1"):
        assert isinstance(parse(line), BadCommand), line
    assert isinstance(parse(b"g GETACL INBOX", State.NOT_AUTHENTICATED), BadCommand)


@given(st.lists(st.tuples(st.text(alphabet="abc=-xyz@.", min_size=1, max_size=12),
                          st.text(alphabet=acl.ALL + "pz", max_size=12)), max_size=20))
def test_parse_after_format_is_stable(entries) -> None:
    once = acl.parse(acl.format_acl(entries))
    assert acl.parse(acl.format_acl(once)) == once


@given(st.binary(max_size=400))
def test_any_bytes_parse(data: bytes) -> None:
    for ident, rights in acl.parse(data):
        assert acl.valid_identifier(ident) and rights == acl.rights_set(rights)
