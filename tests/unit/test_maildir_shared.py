"""Courier's filesystem shared folders (libcourier.maildir.shared) and `maildirmake -S / -s /
--add / --del`: the files as Courier's maildirmake.c and maildirshared.c write and read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from courier_deliver import maildirmake
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import shared


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# -- shared-maildirs lines (maildir_shared_fparse) ----------------------------------------

@pytest.mark.parametrize("line, want", [
    ("notices\t/srv/shared/notices\n", ("notices", "/srv/shared/notices")),
    ("firmwide /home/big/Maildir-shared", ("firmwide", "/home/big/Maildir-shared")),
    ("tech    /home/gear/Maildir-shared  # a comment", ("tech", "/home/gear/Maildir-shared  ")),
    ("# only a comment", None),
    ("lonely", None),
    ("lonely   ", None),
    ("", None),
])
def test_parse_line(line: str, want) -> None:
    got = shared.parse_line(line)
    assert (None if got is None else (got.nick, got.path)) == want


def test_global_list_first(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    root.mkdir()
    (root / "shared-maildirs").write_text("a /user/a\nb /user/b\n")
    glob = tmp_path / "maildirshared"
    glob.write_text("a\t/global/a\n")
    assert shared.find(root, glob, "a") == shared.Sharable("a", "/global/a")
    assert shared.find(root, glob, "b") == shared.Sharable("b", "/user/b")
    assert shared.find(root, None, "a") == shared.Sharable("a", "/user/a")
    assert shared.find(root, glob, "c") is None


@pytest.mark.parametrize("name, want", [
    ("nick.Weekly", "shared-folders/nick/Weekly"),
    ("nick.Weekly.Sub", "shared-folders/nick/Weekly.Sub"),
    ("nick", None), (".nick.x", None), ("nick..x", None), ("nick.x.", None),
    ("nick.a/b", None),
])
def test_private_dir(tmp_path: Path, name: str, want) -> None:
    got = shared.private_dir(tmp_path, name)
    assert (None if got is None else str(got.relative_to(tmp_path))) == want


# -- maildirmake ---------------------------------------------------------------------------

def test_maildirmake_sharable_and_shared_folders(tmp_path: Path) -> None:
    sh = tmp_path / "Maildir-shared"
    assert maildirmake.main(["-S", str(sh)]) == 0
    # Courier: the maildir 0755 (perm & ~022), tmp/ new/ cur/ 0700.
    assert mode(sh) == 0o755
    assert [mode(sh / d) for d in ("tmp", "new", "cur")] == [0o700] * 3
    assert maildirmake.main(["-s", "write", "-f", "Weekly", str(sh)]) == 0
    assert mode(sh / ".Weekly") == 0o1755
    assert [mode(sh / ".Weekly" / d) for d in ("tmp", "new", "cur")] == [0o1777] * 3
    assert (sh / ".Weekly" / "maildirfolder").is_file()
    assert maildirmake.main(["-sread", "-fNotes", str(sh)]) == 0
    assert mode(sh / ".Notes") == 0o755 and mode(sh / ".Notes" / "cur") == 0o755
    assert maildirmake.main(["-s", "write,group", "-f", "Team", str(sh)]) == 0
    assert mode(sh / ".Team") == 0o1750 and mode(sh / ".Team" / "new") == 0o1770
    assert maildirmake.main(["-s", "read,group", "-f", "Board", str(sh)]) == 0
    assert mode(sh / ".Board") == 0o750 and mode(sh / ".Board" / "tmp") == 0o750
    # -s needs -f (Courier's usage()).
    assert maildirmake.main(["-s", "read", str(sh)]) == 1
    # A plain maildir is still 0700.
    assert maildirmake.main([str(tmp_path / "plain")]) == 0
    assert mode(tmp_path / "plain") == 0o700


def test_maildirmake_add_del(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setenv("COURIER_CONFIG_DIR", str(etc))
    md, sh = tmp_path / "Maildir", tmp_path / "Maildir-shared"
    assert maildirmake.main([str(md)]) == 0
    assert maildirmake.main(["-S", str(sh)]) == 0
    assert maildirmake.main(["--add", f"notices={sh}", str(md)]) == 0
    # Courier's add(): fprintf(fp, "%s\t%s\n", name, path).
    assert (md / "shared-maildirs").read_text() == f"notices\t{sh}\n"
    assert maildirmake.main(["--add", f"notices={sh}", str(md)]) == 2
    assert "already defined as a sharable maildir." in capsys.readouterr().err
    (etc / "maildirshared").write_text(f"firm\t{sh}\n")
    assert maildirmake.main(["--add", f"firm={sh}", str(md)]) == 2
    assert f"in {etc / 'maildirshared'}" in capsys.readouterr().err
    assert maildirmake.main(["--add", f"bad.nick={sh}", str(md)]) == 1
    assert maildirmake.main(["--add", "rel=relative/path", str(md)]) == 1
    assert maildirmake.main(["--add", f"gone={tmp_path}/nowhere", str(md)]) == 1
    (md / "shared-maildirs").write_text(f"# mine\nother /x\nnotices\t{sh}\n")
    assert maildirmake.main(["--del", "notices", str(md)]) == 0
    assert (md / "shared-maildirs").read_text() == "# mine\nother /x\n"
    assert maildirmake.main(["--del", "notices", str(md)]) == 1
    assert "notices: not found." in capsys.readouterr().err


# -- private copies and their synchronisation ----------------------------------------------

def setup_shared(tmp_path: Path) -> tuple[Path, Path]:
    md, sh = tmp_path / "Maildir", tmp_path / "Maildir-shared"
    assert maildirmake.main([str(md)]) == 0
    assert maildirmake.main(["-S", str(sh)]) == 0
    assert maildirmake.main(["-s", "write", "-f", "Weekly", str(sh)]) == 0
    (md / "shared-maildirs").write_text(f"notices\t{sh}\n")
    return md, sh


def put(folder: Path, name: str, body: bytes = b"Subject: s\n\nbody\n") -> None:
    (folder / name).write_bytes(body)


def test_list_subscribe_sync(tmp_path: Path) -> None:
    md, sh = setup_shared(tmp_path)
    assert shared.list_sharable(md, None) == ["notices.Weekly"]
    assert shared.list_subscribed(md) == []
    put(sh / ".Weekly" / "new", "100.M1P1.h,S=17")
    put(sh / ".Weekly" / "cur", "101.M1P1.h,S=17:2,S")
    priv = shared.open_private(md, None, "notices.Weekly")
    assert priv == md / "shared-folders" / "notices" / "Weekly"
    assert os.readlink(priv / "shared") == f"{sh}/.Weekly"
    assert [mode(priv / d) for d in ("tmp", "new", "cur")] == [0o700] * 3
    assert shared.list_subscribed(md) == ["notices.Weekly"]
    # The first opener moved the sharable folder's new/ to cur/; links arrive in our new/
    # without the owner's flags.
    assert sorted(os.listdir(sh / ".Weekly" / "cur")) == ["100.M1P1.h,S=17:2,", "101.M1P1.h,S=17:2,S"]
    assert sorted(os.listdir(priv / "new")) == ["100.M1P1.h,S=17:2,", "101.M1P1.h,S=17:2,"]
    assert os.readlink(priv / "new" / "101.M1P1.h,S=17:2,") == f"{sh}/.Weekly/cur/101.M1P1.h,S=17:2,S"
    box = shared.PrivateCopy(priv)
    st = box.scan()
    assert [(m.uid, m.flags, m.size) for m in st.messages] == [(1, "", 17), (2, "", 17)]
    # Our flags are ours; the owner renaming the file re-points our link, flags kept.
    box.change_flags(st.messages[0], add="F")
    os.rename(sh / ".Weekly" / "cur" / "100.M1P1.h,S=17:2,", sh / ".Weekly" / "cur" / "100.M1P1.h,S=17:2,RS")
    (priv / "shared-timestamp").unlink()
    st = box.scan()
    assert [(m.uid, m.flags) for m in st.messages] == [(1, "F"), (2, "")]
    assert os.readlink(box.path_of(st.messages[0])).endswith("100.M1P1.h,S=17:2,RS")
    assert box.path_of(st.messages[0]).read_bytes() == b"Subject: s\n\nbody\n"
    # A message removed from the sharable folder goes; a new one comes with the next UID.
    os.unlink(sh / ".Weekly" / "cur" / "101.M1P1.h,S=17:2,S")
    os.utime(sh / ".Weekly" / "cur", (0, 0))          # older than the last sync ...
    os.utime(sh / ".Weekly" / "new", (0, 0))
    assert not shared.sync(priv)                      # ... so Courier's shortcut skips
    assert os.path.lexists(priv / "cur" / "101.M1P1.h,S=17:2,")   # the link stays ...
    assert [m.uid for m in box.scan().messages] == [1]             # ... but lists nothing
    put(sh / ".Weekly" / "new", "102.M1P1.h,S=17")    # a delivery changes new/
    st = box.scan()
    assert [m.uid for m in st.messages] == [1, 3]
    # Expunge removes the sharable folder's file (ours to remove here).
    box.remove(st.messages[1])
    assert not any(n.startswith("102.") for n in os.listdir(sh / ".Weekly" / "cur"))
    shared.unsubscribe(md, "notices.Weekly")
    assert not (md / "shared-folders" / "notices").exists()
    assert (sh / ".Weekly" / "cur").is_dir()        # the sharable folder is untouched


def test_open_unknown_leaves_nothing(tmp_path: Path) -> None:
    md, _sh = setup_shared(tmp_path)
    assert shared.open_private(md, None, "notices.Nothing") is None
    assert shared.open_private(md, None, "nobody.Weekly") is None
    assert not (md / "shared-folders").exists()


def test_unlink_refused_keeps_message_without_deleted(tmp_path: Path) -> None:
    """Courier's maildir_unlinksharedmsg: a message the user may not remove stays, and
    loses its T flag. The refusal is made with a target unlink(2) always refuses, even
    for root (a directory: EISDIR), where permissions would not stop root."""
    priv = tmp_path / "copy"
    for d in ("tmp", "new", "cur"):
        (priv / d).mkdir(parents=True)
    target = tmp_path / "not-removable"
    target.mkdir()
    os.symlink(target, priv / "cur" / "200.M1P1.h:2,ST")
    assert shared.unlink_message(priv / "cur" / "200.M1P1.h:2,ST") is False
    assert os.listdir(priv / "cur") == ["200.M1P1.h:2,S"]
    assert target.is_dir()
    # A target already gone: our link goes too.
    os.symlink(tmp_path / "gone", priv / "cur" / "201.M1P1.h:2,T")
    assert shared.unlink_message(priv / "cur" / "201.M1P1.h:2,T") is True
    assert os.listdir(priv / "cur") == ["200.M1P1.h:2,S"]


def _hammer(priv: str, sh: str, worker: int, rounds: int) -> None:
    """One session of the user: synchronise and scan, flag its own messages (noting
    each flag it set), while the sharable folder gets new mail from every worker."""
    box = shared.PrivateCopy(Path(priv))
    done = []
    for r in range(rounds):
        (Path(sh) / "new" / f"{1_800_000_000 + r}.M{worker}P{worker}.w,S=3").write_bytes(b"x\n\n")
        for m in box.scan().messages:
            if m.base.endswith(f"P{worker}.w,S=3") and "F" not in m.flags:
                try:
                    box.change_flags(m, add="F")
                    done.append(m.base)
                except FileNotFoundError:
                    pass
    Path(priv, f"flagged.{worker}").write_text("\n".join(done))


def test_sessions_syncing_at_once_lose_nothing(tmp_path: Path) -> None:
    import multiprocessing
    md, sh = setup_shared(tmp_path)
    priv = shared.open_private(md, None, "notices.Weekly")
    assert priv is not None
    ctx = multiprocessing.get_context("fork")
    workers, rounds = 4, 20
    procs = [ctx.Process(target=_hammer, args=(str(priv), str(sh / ".Weekly"), w, rounds))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    st = shared.PrivateCopy(priv).scan()
    bases = [m.base for m in st.messages]
    assert len(bases) == len(set(bases)) == workers * rounds
    assert len({m.uid for m in st.messages}) == workers * rounds
    assert len(os.listdir(priv / "cur")) == workers * rounds     # one link per message
    flagged = {b for w in range(workers)
               for b in (priv / f"flagged.{w}").read_text().split() if b}
    assert len(flagged) >= workers * (rounds - 1)     # all but maybe the last round's
    assert {m.base for m in st.messages if "F" in m.flags} >= flagged   # none lost


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_line_never_raises(line: str) -> None:
    """Any text: an entry whose nick has no white space and whose path is not empty,
    or None (a shared-maildirs file is written by its user: anything may be in it)."""
    got = shared.parse_line(line)
    if got is not None:
        assert got.nick and got.path and not any(c.isspace() for c in got.nick)
        assert "\n" not in got.nick + got.path and "#" not in got.nick + got.path


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_private_dir_stays_inside(name: str) -> None:
    """A shared name never leads out of ROOT/shared-folders/<nick>/."""
    root = Path("/r")
    got = shared.private_dir(root, name)
    if got is not None:
        rel = got.relative_to(root / shared.SHARED_FOLDERS)
        assert len(rel.parts) == 2 and ".." not in rel.parts and "." not in rel.parts
