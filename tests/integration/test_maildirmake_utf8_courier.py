"""`maildirmake --checkutf8 / --convutf8`: ours against Courier's own (Debian courier-base's
/usr/bin/maildirmake.courier, skipped where it is not installed). On the same Courier-IMAP 4
style Maildir both print the same lines in the same order, exit the same, and leave the same
tree; on a name that is not modified UTF-7 both refuse with the same words. Where we differ
on purpose (libcourier/maildir/utf8conv.py: a clash, --checkutf8's leftover .new file) the
test says what each does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from maildirmake_pair import needs_courier, ours, theirs, tree

pytestmark = needs_courier


FOLDERS = ["Caf&AOk-", "Caf&AOk-.Sub", "A&-B", "Plain", "&ZeVnLIqe-", "&ZeVnLIqe-.&AOk-x",
           "Sent.2024"]
SUBSCRIBED = "INBOX.Caf&AOk-\nINBOX.Plain\nINBOX.&ZeVnLIqe-.&AOk-x\nshared.nick.&AOk-\n"


def make(md: Path, folders: list[str], subscribed: str | None = SUBSCRIBED) -> None:
    """The same Maildir for both, made by Courier's maildirmake in the same order (so the
    directory is read back in the same order, which decides the order of Rename lines)."""
    assert theirs(str(md)).returncode == 0
    for f in folders:
        assert theirs("-f", f, str(md)).returncode == 0
        (md / f".{f}" / "cur" / "1.M1.host:2,S").write_bytes(b"Subject: x\n\nbody\n")
    (md / ".notafolder").mkdir()
    if subscribed is not None:
        (md / "courierimapsubscribed").write_text(subscribed)
        os.chmod(md / "courierimapsubscribed", 0o640)


def both(tmp_path: Path, folders: list[str], *opts: str) -> dict[str, tuple]:
    results = {}
    for who, run in (("courier", theirs), ("ours", ours)):
        md = tmp_path / who / "Maildir"
        md.parent.mkdir()
        make(md, folders)
        r = run(*opts, str(md))
        results[who] = (r.returncode, r.stdout.replace(str(md), "MD"),
                        r.stderr.replace(str(md), "MD"), tree(md), md)
    return results


def test_convutf8_same_words_and_tree(tmp_path: Path) -> None:
    res = both(tmp_path, FOLDERS, "--convutf8")
    c, o = res["courier"], res["ours"]
    assert c[0] == o[0] == 0
    assert o[1] == c[1]
    assert "Rename INBOX.&ZeVnLIqe-.&AOk-x to INBOX.日本語.éx" in o[1]
    assert o[2] == c[2] == ""
    assert o[3] == c[3]
    # And Courier's --checkutf8 is happy with what we left, as we are with its result
    # (only "A&B", which neither reads as modified UTF-7 now, is removed first).
    for who in ("courier", "ours"):
        md = res[who][4]
        os.rename(md / ".A&B", md / ".AandB")
        assert theirs("--checkutf8", str(md)).returncode == 0
        assert ours("--checkutf8", str(md)).returncode == 0


def test_checkutf8_same_words(tmp_path: Path) -> None:
    res = both(tmp_path, FOLDERS, "--checkutf8")
    c, o = res["courier"], res["ours"]
    assert c[0] == o[0] == 0
    assert o[1] == c[1] and "Verified MD/courierimapsubscribed" in o[1]
    # Courier leaves the converted subscriptions behind as courierimapsubscribed.new;
    # we write nothing. Apart from that both trees are as they were.
    assert [e for e in c[3] if e[0] != "courierimapsubscribed.new"] == o[3]
    assert any(e[0] == "courierimapsubscribed.new" for e in c[3])


@pytest.mark.parametrize("bad", ["x&Zm9v", "x&2D0-"])
def test_same_refusal_of_a_bad_name(tmp_path: Path, bad: str) -> None:
    res = both(tmp_path, [*FOLDERS, bad], "--convutf8")
    c, o = res["courier"], res["ours"]
    assert c[0] == o[0] == 1
    assert o[1] == c[1] == "Checking MD:\n"
    assert o[2] == c[2] == f"Error: INBOX.{bad}: does not appear to be valid modified-UTF7\n"
    assert o[3] == c[3]          # neither changed anything


def test_clash(tmp_path: Path) -> None:
    """Two names for one UTF-8 name (a non-canonical spelling, which Courier accepts and
    we refuse as not modified UTF-7; and a UTF-8 folder beside its old spelling): Courier
    renames what it can and reports the rest; we change nothing."""
    res = both(tmp_path, [*FOLDERS, "Caf&AOk,-"], "--convutf8")
    c, o = res["courier"], res["ours"]
    assert c[0] == o[0] == 1
    assert "FATAL ERROR RENAMING" in c[2]
    assert o[2] == "Error: INBOX.Caf&AOk,-: does not appear to be valid modified-UTF7\n"
    md = res["ours"][4]
    assert ".Caf&AOk-" in os.listdir(md) and ".Café" not in os.listdir(md)

    top = tmp_path / "utf8"
    top.mkdir()
    md = top / "Maildir"
    make(md, [*FOLDERS, "Café"])
    before = tree(md)
    r = ours("--convutf8", str(md))
    assert r.returncode == 1
    assert r.stderr == "Error: cannot rename INBOX.Caf&AOk- to INBOX.Café: INBOX.Café exists\n"
    assert tree(md) == before
