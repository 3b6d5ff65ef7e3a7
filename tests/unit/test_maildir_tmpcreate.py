"""libcourier.maildir.tmpcreate: the one tmp/-then-cur/ writer of APPEND and COPY
(folders.append_message, folders._copy_one, shared.store). Every test runs twice:
with unnamed files (O_TMPFILE, this kernel's) and with named tmp/ files (the
fallback, switched on as a system without O_TMPFILE would leave it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from libcourier.maildir import tmpcreate, unnamed
from libcourier.maildir.tmpcreate import write_tmp


@pytest.fixture(autouse=True, params=["unnamed", "named"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(unnamed.state, "usable", request.param == "unnamed")
    return request.param


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_bytes_are_written_fsynced_and_renamed_into_cur(folder: Path, kind: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(tmpcreate.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    msg = write_tmp(folder, "1.M1P1.host", b"Subject: x\n\nbody\n")
    assert synced, "the file is fsync'd before it is handed back"
    if kind == "unnamed":
        assert msg.fd is not None and os.listdir(folder / "tmp") == []
        written = os.fstat(msg.fd)
        assert os.pread(msg.fd, 100, 0) == b"Subject: x\n\nbody\n"
    else:
        assert msg.fd is None and msg.path == folder / "tmp" / "1.M1P1.host"
        assert msg.path.read_bytes() == b"Subject: x\n\nbody\n"
        written = os.stat(msg.path)
    assert (msg.stat.st_dev, msg.stat.st_ino) == (written.st_dev, written.st_ino)
    assert stat.S_IMODE(written.st_mode) == 0o600
    target = folder / "cur" / "1.M1P1.host:2,S"
    msg.rename(target, mtime=1_000_000_000.0)
    assert not msg.path.exists() and msg.fd is None
    assert target.read_bytes() == b"Subject: x\n\nbody\n"
    assert os.stat(target).st_ino == msg.stat.st_ino and os.stat(target).st_nlink == 1
    assert os.stat(target).st_mtime == 1_000_000_000.0
    assert os.listdir(folder / "tmp") == []


def test_the_date_is_set_only_after_the_rename(folder: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # An old mtime in tmp/ lets a concurrent scan purge the file (commit 340d235).
    msg = write_tmp(folder, "n", b"x")
    target = folder / "cur" / "n:2,"
    calls: list[tuple[str, Path]] = []
    real_rename, real_link, real_utime = os.rename, os.link, os.utime
    monkeypatch.setattr(tmpcreate.os, "rename",
                        lambda a, b: (calls.append(("name", Path(b))), real_rename(a, b)))
    monkeypatch.setattr(tmpcreate.os, "link",     # the unnamed file's way (same os module)
                        lambda a, b, **kw: (calls.append(("name", Path(b))),
                                            real_link(a, b, **kw)))
    monkeypatch.setattr(tmpcreate.os, "utime",
                        lambda p, t: (calls.append(("utime", Path(p))), real_utime(p, t)))
    msg.rename(target, mtime=1.0)
    assert calls == [("name", target), ("utime", target)]


def test_no_mtime_keeps_the_time_of_writing(folder: Path) -> None:
    msg = write_tmp(folder, "n", b"x")
    written = msg.stat.st_mtime
    msg.rename(folder / "cur" / "n:2,")
    assert os.stat(folder / "cur" / "n:2,").st_mtime == written


def test_a_file_is_streamed_and_its_dates_and_mode_copied(folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmpcreate, "CHUNK", 7)       # several reads
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 5)
    os.chmod(src, 0o640)
    os.utime(src, (1_500_000_000, 1_600_000_000))
    with write_tmp(folder, "c.copy", src) as msg:
        msg.rename(folder / "cur" / "c:2,", stat_from=src)
    out = folder / "cur" / "c:2,"
    assert out.read_bytes() == bytes(range(256)) * 5
    st = os.stat(out)
    assert st.st_mtime == 1_600_000_000      # (reading it may have moved its atime)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert os.listdir(folder / "tmp") == []


def test_mode_bits_beyond_the_umask(folder: Path) -> None:
    old = os.umask(0o077)
    try:
        msg = write_tmp(folder, "s", b"x", mode=0o644)
    finally:
        os.umask(old)
    msg.rename(folder / "cur" / "s:2,")
    assert stat.S_IMODE(os.stat(folder / "cur" / "s:2,").st_mode) == 0o644


def test_an_existing_name_is_never_overwritten(folder: Path, kind: str) -> None:
    (folder / "tmp" / "taken").write_bytes(b"someone else's")
    if kind == "named":
        with pytest.raises(FileExistsError):
            write_tmp(folder, "taken", b"mine")
    else:
        # No name in tmp/ at all; and the name in cur/ is never replaced.
        (folder / "cur" / "taken:2,").write_bytes(b"theirs")
        with pytest.raises(FileExistsError), write_tmp(folder, "taken", b"mine") as msg:
            msg.rename(folder / "cur" / "taken:2,")
        assert (folder / "cur" / "taken:2,").read_bytes() == b"theirs"
        assert msg.fd is None                     # closed: the unnamed file is gone
    assert (folder / "tmp" / "taken").read_bytes() == b"someone else's"


def test_a_vanished_source_creates_nothing(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_tmp(folder, "gone.copy", tmp_path / "no-such-file")
    assert os.listdir(folder / "tmp") == []


def test_a_failed_write_leaves_nothing_in_tmp(folder: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tmpcreate.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_tmp(folder, "full", b"x" * 100)
    assert os.listdir(folder / "tmp") == []


def test_a_failing_block_discards_the_tmp_file(folder: Path) -> None:
    with pytest.raises(RuntimeError), write_tmp(folder, "n", b"x"):
        raise RuntimeError("the caller's step failed before the rename")
    assert os.listdir(folder / "tmp") == []
    assert os.listdir(folder / "cur") == []


def test_a_failed_rename_discards_the_tmp_file(folder: Path) -> None:
    with pytest.raises(FileNotFoundError), write_tmp(folder, "n", b"x") as msg:
        msg.rename(folder / "no-such-dir" / "n:2,")
    assert os.listdir(folder / "tmp") == []


def test_a_block_that_never_renames_drops_the_unnamed_file(folder: Path, kind: str) -> None:
    with write_tmp(folder, "n", b"x") as msg:
        pass
    assert msg.fd is None
    assert os.listdir(folder / "tmp") == ([] if kind == "unnamed" else ["n"])
    assert os.listdir(folder / "cur") == []


def test_a_failure_setting_the_date_withdraws_the_message(folder: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller answers the failure (APPEND's NO, no UID recorded): the file must not
    stay in cur/ as a message nobody was told of (for an unnamed one, not fsync'd
    with its link either)."""
    def utime(p, t):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(tmpcreate.os, "utime", utime)
    with pytest.raises(OSError), write_tmp(folder, "n", b"x") as msg:
        msg.rename(folder / "cur" / "n:2,", mtime=1.0)
    assert os.listdir(folder / "cur") == [] and os.listdir(folder / "tmp") == []
