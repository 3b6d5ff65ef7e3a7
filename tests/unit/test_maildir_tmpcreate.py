"""libcourier.maildir.tmpcreate: the one tmp/-then-cur/ writer of APPEND and COPY
(folders.append_message, folders._copy_one, shared.store)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from libcourier.maildir import tmpcreate
from libcourier.maildir.tmpcreate import write_tmp


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_bytes_are_written_fsynced_and_renamed_into_cur(folder: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(tmpcreate.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    msg = write_tmp(folder, "1.M1P1.host", b"Subject: x\n\nbody\n")
    assert synced, "the file is fsync'd before it is handed back"
    assert msg.path == folder / "tmp" / "1.M1P1.host"
    assert msg.path.read_bytes() == b"Subject: x\n\nbody\n"
    assert (msg.stat.st_dev, msg.stat.st_ino) == (os.stat(msg.path).st_dev,
                                                  os.stat(msg.path).st_ino)
    assert stat.S_IMODE(os.stat(msg.path).st_mode) == 0o600
    target = folder / "cur" / "1.M1P1.host:2,S"
    msg.rename(target, mtime=1_000_000_000.0)
    assert not msg.path.exists()
    assert target.read_bytes() == b"Subject: x\n\nbody\n"
    assert os.stat(target).st_mtime == 1_000_000_000.0


def test_the_date_is_set_only_after_the_rename(folder: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # An old mtime in tmp/ lets a concurrent scan purge the file (commit 340d235).
    msg = write_tmp(folder, "n", b"x")
    target = folder / "cur" / "n:2,"
    calls: list[tuple[str, Path]] = []
    real_rename, real_utime = os.rename, os.utime
    monkeypatch.setattr(tmpcreate.os, "rename",
                        lambda a, b: (calls.append(("rename", Path(b))), real_rename(a, b)))
    monkeypatch.setattr(tmpcreate.os, "utime",
                        lambda p, t: (calls.append(("utime", Path(p))), real_utime(p, t)))
    msg.rename(target, mtime=1.0)
    assert calls == [("rename", target), ("utime", target)]


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
    assert stat.S_IMODE(os.stat(msg.path).st_mode) == 0o644


def test_an_existing_name_is_never_overwritten(folder: Path) -> None:
    (folder / "tmp" / "taken").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        write_tmp(folder, "taken", b"mine")
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
