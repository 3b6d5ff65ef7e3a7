"""libcourier.durable: whole-file replacement that is never seen half-written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from libcourier import durable


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_new_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "f"
    durable.write_atomic(target, b"one\n")
    assert target.read_bytes() == b"one\n"
    durable.write_atomic(target, "twö\n", mode=0o600)
    assert target.read_text(encoding="utf-8") == "twö\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert listing(tmp_path) == ["f"]          # no temporary file left behind


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        durable.write_atomic(tmp_path / "a", b"x", mode=0o644)
    finally:
        os.umask(old)
    old = os.umask(0)
    try:
        durable.write_atomic(tmp_path / "b", b"x", mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o640


def test_failure_keeps_the_old_file_and_removes_tmp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "f"
    durable.write_atomic(target, b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(durable.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        durable.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["f"]


def test_rename_failure_removes_tmp(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        durable.write_atomic(tmp_path / "d", b"x")     # rename over a directory fails
    assert listing(tmp_path) == ["d"]


def test_explicit_tmp_and_exclusive_create(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "msgs").mkdir()
    tmp, final = tmp_path / "tmp" / "q.env", tmp_path / "msgs" / "q.env"
    durable.write_atomic(final, b"env", mode=0o640, tmp=tmp)
    assert final.read_bytes() == b"env" and not tmp.exists()
    # Someone else's tmp file is never written into or removed: O_EXCL refuses it.
    tmp.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        durable.write_atomic(final, b"mine", tmp=tmp)
    assert final.read_bytes() == b"env"


def test_fsyncs_file_then_directory(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)
    monkeypatch.setattr(durable.os, "fsync", spy_fsync)
    durable.write_atomic(tmp_path / "f", b"x")
    assert calls == ["file", "dir"]


def test_short_writes_are_completed(tmp_path: Path, monkeypatch) -> None:
    real_write = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    durable.write_atomic(tmp_path / "f", b"0123456789" * 10)
    assert (tmp_path / "f").read_bytes() == b"0123456789" * 10


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner(tmp_path: Path) -> None:
    durable.write_atomic(tmp_path / "f", b"x", owner=(1, 2))
    st = (tmp_path / "f").stat()
    assert (st.st_uid, st.st_gid) == (1, 2)


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    durable.fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")
