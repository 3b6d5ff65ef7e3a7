"""`maildirmake --checkutf8 / --convutf8` (libcourier.maildir.utf8conv): modified-UTF-7
folder names and subscriptions to UTF-8 as Courier's maildirmake.c convertutf8(), all or
nothing. Compared with Courier's own binary in
tests/integration/test_maildirmake_utf8_courier.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from courier_deliver import maildirmake
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import utf8conv
from libcourier.maildir.mutf7 import encode_mutf7

# -- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, want", [
    ("INBOX", "INBOX"),
    ("INBOX.Plain", "INBOX.Plain"),
    ("INBOX.Caf&AOk-", "INBOX.Café"),
    ("INBOX.Caf&AOk-.Sub", "INBOX.Café.Sub"),
    ("INBOX.A&-B", "INBOX.A&B"),
    ("INBOX.&ZeVnLIqe-", "INBOX.日本語"),
    ("shared.nick.&AOk-", "shared.nick.é"),
    ("INBOX.x&AOkA6Q-", "INBOX.xéé"),
    ("INBOX.Café", "INBOX.Café"),           # UTF-8 already: kept (Courier garbles it)
    ("INBOX.Café.&AOk-", "INBOX.Café.é"),   # a mixed name, part by part
])
def test_convert_name(name: str, want: str) -> None:
    assert utf8conv.convert_name(name) == want


@pytest.mark.parametrize("name", [
    "INBOX.x&AC8-y",      # "/" encoded: Courier makes "x/y", a path
    "INBOX.x&AC4-y",      # "." encoded: Courier makes "x.y", another hierarchy
    "INBOX.x&AGE-",       # printable ASCII encoded
    "INBOX.x&A-",         # too few bits: Courier makes "x"
    "INBOX.x&Zm9v",       # unterminated
    "INBOX.x&2D0-",       # a lone surrogate
    "INBOX.A&B",          # "&" not as "&-"
    "INBOX.Tom & Jerry",
    "INBOX.Caf\udcc3",    # a byte that is not UTF-8 (os.listdir's surrogateescape)
    "INBOX.Café&AOk-",    # UTF-8 and an "&": neither one nor the other
])
def test_bad_names(name: str) -> None:
    with pytest.raises(utf8conv.BadName):
        utf8conv.convert_name(name)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_characters=".", blacklist_categories=("Cs",)),
               max_size=40))
def test_any_encoded_part_decodes_back(part: str) -> None:
    assert utf8conv.convert_part(encode_mutf7(part)) == part


# -- the command ----------------------------------------------------------------------------

def make_v4_maildir(md: Path) -> None:
    """A Maildir as Courier-IMAP 4 left it: folder names in modified UTF-7, each with a
    message and a uiddb, and a subscription file."""
    assert maildirmake.main([str(md)]) == 0
    for f in ("Caf&AOk-", "Caf&AOk-.Sub", "A&-B", "Plain"):
        assert maildirmake.main(["-f", f, str(md)]) == 0
        (md / f".{f}" / "cur" / "1.M1.host:2,S").write_bytes(f"Subject: {f}\n\n".encode())
        (md / f".{f}" / "courierimapuiddb").write_text("1 1 2\n1.M1.host 1\n")
    (md / ".junk").mkdir()          # no cur/: not a folder, left alone
    (md / "courierimapsubscribed").write_text(
        "INBOX.Caf&AOk-\nINBOX.Plain\nINBOX.Caf&AOk-.Sub\nshared.x.&AOk-\n")
    os.chmod(md / "courierimapsubscribed", 0o640)


def snapshot(md: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for dirpath, dirs, files in os.walk(md):
        for n in [*dirs, *files]:
            p = Path(dirpath) / n
            st_ = os.lstat(p)
            out.append((str(p.relative_to(md)), stat.filemode(st_.st_mode),
                        p.read_bytes() if p.is_file() else b""))
    return sorted(out)


def test_checkutf8_says_what_convutf8_would_do_and_changes_nothing(tmp_path, capsys):
    md = tmp_path / "Maildir"
    make_v4_maildir(md)
    before = snapshot(md)
    capsys.readouterr()
    assert maildirmake.main(["--checkutf8", str(md)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Checking {md}:"
    assert out[1:4] == ["Subscription to INBOX.Caf&AOk- changed to INBOX.Café",
                        "Subscription to INBOX.Caf&AOk-.Sub changed to INBOX.Café.Sub",
                        "Subscription to shared.x.&AOk- changed to shared.x.é"]
    assert sorted(out[4:7]) == ["Rename INBOX.A&-B to INBOX.A&B",
                                "Rename INBOX.Caf&AOk- to INBOX.Café",
                                "Rename INBOX.Caf&AOk-.Sub to INBOX.Café.Sub"]
    assert out[7:] == [f"Verified {md}/courierimapsubscribed"]
    assert snapshot(md) == before           # nothing written, not even a .new file


def test_convutf8_renames_folders_and_subscriptions(tmp_path, capsys):
    md = tmp_path / "Maildir"
    make_v4_maildir(md)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8", str(md)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"Updating {md}/courierimapsubscribed"
    names = sorted(n for n in os.listdir(md) if n.startswith("."))
    assert names == [".A&B", ".Café", ".Café.Sub", ".Plain", ".junk"]
    # Each folder moved whole: its message, uiddb and maildirfolder came along.
    for f in ("Café", "Café.Sub", "A&B"):
        assert (md / f".{f}" / "maildirfolder").is_file()
        assert (md / f".{f}" / "courierimapuiddb").read_text() == "1 1 2\n1.M1.host 1\n"
        assert (md / f".{f}" / "cur" / "1.M1.host:2,S").is_file()
    subs = md / "courierimapsubscribed"
    assert subs.read_text() == "INBOX.Café\nINBOX.Plain\nINBOX.Café.Sub\nshared.x.é\n"
    assert stat.S_IMODE(subs.stat().st_mode) == 0o640
    assert os.listdir(md / "tmp") == []
    # Done: checking again finds the UTF-8 names fine, except "A&B", which is not
    # modified UTF-7 (Courier's second run stops on it the same way).
    assert maildirmake.main(["--checkutf8", str(md)]) == 1
    assert "INBOX.A&B: does not appear to be valid modified-UTF7" in capsys.readouterr().err


def test_mixed_maildir_and_nothing_to_do(tmp_path, capsys):
    """Folders our imapd made in UTF-8 beside old ones: only the old ones move; a Maildir
    without old names and without subscriptions: nothing to say, exit 0."""
    md = tmp_path / "M"
    assert maildirmake.main([str(md)]) == 0
    assert maildirmake.main(["-f", "Récent", str(md)]) == 0
    assert maildirmake.main(["--convutf8", str(md)]) == 0
    assert capsys.readouterr().out == f"Checking {md}:\n"
    assert maildirmake.main(["-f", "&ZeVnLIqe-", str(md)]) == 0
    assert maildirmake.main(["--convutf8", str(md)]) == 0
    assert sorted(n for n in os.listdir(md) if n.startswith(".")) == [".Récent", ".日本語"]


def test_invalid_name_changes_nothing(tmp_path, capsys):
    md = tmp_path / "M"
    make_v4_maildir(md)
    assert maildirmake.main(["-f", "x&AC8-y", str(md)]) == 0
    before = snapshot(md)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8", str(md)]) == 1
    cap = capsys.readouterr()
    assert cap.err == "Error: INBOX.x&AC8-y: does not appear to be valid modified-UTF7\n"
    assert cap.out == f"Checking {md}:\n"     # Courier stops before the subscriptions
    assert snapshot(md) == before


def test_invalid_subscription_changes_nothing(tmp_path, capsys):
    md = tmp_path / "M"
    make_v4_maildir(md)
    with open(md / "courierimapsubscribed", "a") as fh:
        fh.write("INBOX.bad&Zm9v\n" + "INBOX." + "x" * 3000 + "\n")
    before = snapshot(md)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8", str(md)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["Error: courierimapsubscribed: INBOX.bad&Zm9v: does not appear to be valid"
                   " modified-UTF7",
                   "Error: courierimapsubscribed: folder name too long"]
    assert snapshot(md) == before


def test_name_clash_changes_nothing(tmp_path, capsys):
    """.Caf&AOk- and .Café both there: Courier renames the others and reports a fatal
    error for this one; we say so before touching anything."""
    md = tmp_path / "M"
    make_v4_maildir(md)
    assert maildirmake.main(["-f", "Café", str(md)]) == 0
    before = snapshot(md)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8", str(md)]) == 1
    assert capsys.readouterr().err == \
        "Error: cannot rename INBOX.Caf&AOk- to INBOX.Café: INBOX.Café exists\n"
    assert snapshot(md) == before


def test_rename_failing_midway_is_undone(tmp_path, capsys, monkeypatch):
    """The second rename fails (fault injected): the first is renamed back, the new
    subscriptions are dropped, no temporary file is left."""
    md = tmp_path / "M"
    make_v4_maildir(md)
    before = snapshot(md)
    real = utf8conv._rename_noreplace
    calls: list[Path] = []

    def failing(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(utf8conv, "_rename_noreplace", failing)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8", str(md)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("FATAL ERROR RENAMING ") and "No space left" in err[0]
    assert err[1] == "Nothing changed: the renames made were undone"
    assert snapshot(md) == before


def test_rename_never_replaces_an_empty_directory(tmp_path):
    """rename(2) would replace an empty directory; ours refuses (a clash that appeared
    after the check)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("x")
    (tmp_path / "b").mkdir()
    with pytest.raises(OSError):
        utf8conv._rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "f").is_file()
    utf8conv._rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c" / "f").is_file()


def test_arguments(tmp_path, capsys):
    md = tmp_path / "M"
    make_v4_maildir(md)
    before = snapshot(md)
    capsys.readouterr()
    assert maildirmake.main(["--convutf8"]) == 1                     # Courier: usage
    assert capsys.readouterr().out.startswith("Usage: maildirmake")
    assert maildirmake.main(["--convutf8", str(md), str(tmp_path / "filter")]) == 1
    assert "not supported" in capsys.readouterr().err
    assert maildirmake.main(["--checkutf8", str(tmp_path / "none")]) == 1
    assert "not a maildir" in capsys.readouterr().err
    assert snapshot(md) == before
