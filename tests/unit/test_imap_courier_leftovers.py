"""Courier-only imapd behaviour without a server: the LIST (ACL MYRIGHTS POSTADDRESS)
options (parse and data), IMAP_KEYWORDS=0's folder and SELECT lines, and the legacy
shared namespace's rights. Each against what Courier-IMAP 5.0.13 answered (the
integration tests compare with its binary)."""

from __future__ import annotations

from pathlib import Path

from courier_imapd import acl, keywordpolicy, sharedfolders
from courier_imapd.core import BadCommand, ListMailboxes, State, parse_command

from libcourier.maildir import shared
from libcourier.maildir.folder import Maildir


def parse(line: bytes):
    return parse_command([(line, None)], State.AUTHENTICATED)


def test_list_courier_options_parse() -> None:
    cmd = parse(b'l LIST (ACL MYRIGHTS POSTADDRESS) "" "*"')
    assert isinstance(cmd, ListMailboxes)
    assert cmd.select_opts == ("ACL", "MYRIGHTS", "POSTADDRESS")
    assert not cmd.extended          # Courier's options keep \Noselect (not \NonExistent)
    assert parse(b'l LIST (SUBSCRIBED MYRIGHTS) "" "*"').extended
    assert parse(b'l LIST () "" "*"').extended
    assert isinstance(parse(b'l LIST (BOGUS) "" "*"'), BadCommand)


def test_list_data() -> None:
    stored = [("owner", "aceilrstwx"), ("administrators", "aceilrstwx"), ("user=bob", "lr")]
    all_opts = ("ACL", "MYRIGHTS", "POSTADDRESS")
    assert acl.list_data(all_opts, "aceilrstwx", stored) == (
        b' (("ACL" (("owner" "acdilrsw")("administrators" "acdilrsw")("user=bob" "lr")))'
        b'("MYRIGHTS" "acdilrsw")(POSTADDRESS NIL))')
    # No "a": no ACL; rights that cannot be listed: no MYRIGHTS; nothing left: nothing.
    assert acl.list_data(("ACL", "MYRIGHTS"), "lrsw", stored) == b' (("MYRIGHTS" "lrsw"))'
    assert acl.list_data(("ACL", "MYRIGHTS"), "w", stored) == b""
    assert acl.list_data(("POSTADDRESS",), "", None) == b" ((POSTADDRESS NIL))"


def test_shared_rights(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    assert sharedfolders.name_rights(root, "shared") == "l"
    assert sharedfolders.name_rights(root, "shared.nick") == "l"
    assert sharedfolders.name_rights(root, "shared.nick.Weekly") == "lrsw"   # no copy yet
    priv = root / shared.SHARED_FOLDERS / "nick" / "Weekly"
    for d in ("new", "cur", "tmp"):
        (priv / d).mkdir(parents=True)
    assert sharedfolders.name_rights(root, "shared.nick.Weekly") == "eilrstwx"
    assert acl.aclfile.rights_out_all("eilrstwx") == "dilrsw"               # Courier's MYRIGHTS
    assert sharedfolders.name_rights(root, "INBOX") is None
    assert sharedfolders.fixed_rights(root, priv) == "eilrstwx"
    assert sharedfolders.fixed_rights(root, root) is None


def test_keywords_off_folder(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for d in ("new", "cur", "tmp"):
        (md / d).mkdir(parents=True)
    (md / "new" / "1.M1P1.h").write_bytes(b"Subject: x\n\ny\n")
    box = Maildir(md)
    box.change_keywords(list(box.scan().messages), "+", frozenset({"Work"}))
    assert keywordpolicy.folder(box, True) is box
    off = keywordpolicy.folder(box, False)
    assert isinstance(off, Maildir) and off.open_summary() is None
    assert [m.keywords for m in off.scan().messages] == [frozenset()]
    assert [m.keywords for m in box.scan().messages] == [frozenset({"Work"})]   # untouched
    priv = keywordpolicy.folder(shared.PrivateCopy(md), False)
    assert isinstance(priv, shared.PrivateCopy)
    lines = ["FLAGS (\\Draft \\Answered \\Flagged \\Deleted \\Seen \\Recent)",
             "OK [PERMANENTFLAGS (\\* \\Draft \\Answered \\Flagged \\Deleted \\Seen)] Limited"]
    assert keywordpolicy.select_lines(lines, False)[1] == \
        "OK [PERMANENTFLAGS (\\Draft \\Answered \\Flagged \\Deleted \\Seen)] Limited"
    assert keywordpolicy.select_lines(lines, True) == lines
