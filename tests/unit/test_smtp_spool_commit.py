"""The accept path's commit (libcourier.spool.SpoolWriter.commit, what esmtpd runs
before each 250): the order of its durable steps, the files it leaves, cleanup on
failure, and purge_tmp for what a crash between its renames could leave."""

from __future__ import annotations

import os
import stat

import pytest

from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolError,
    SpoolWriter,
    ensure_spool,
    list_queue,
    open_data,
    purge_tmp,
    read_envelope,
)

ENV = Envelope(sender="a@example.net", recipients=(Recipient("b@example.com"),),
               received=1700000000.5, client="[127.0.0.1] helo=x")


@pytest.fixture
def spool(tmp_path):
    ensure_spool(tmp_path)
    return tmp_path


def files(spool) -> list[str]:
    return sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())


def test_commit_order_both_fsyncs_before_the_renames(spool, monkeypatch):
    """Both files are on disk before either name appears in msgs/, the .dat before
    the .env (the commit point), and the directory fsync'd after both: 3 fsyncs."""
    steps: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        steps.append("fsync " + ("msgs/" if target.endswith("/msgs") else
                                 os.path.basename(target).rpartition(".")[2]))
        real_fsync(fd)

    def rename(src, dst):
        steps.append("rename " + str(dst).rpartition(".")[2])
        real_rename(src, dst)

    w = SpoolWriter(spool, 0)
    w.write(b"Subject: x\n\nbody\n")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    qid = w.commit(ENV)
    monkeypatch.undo()
    # fsync_both: the .env's writeback is started first, then both are fsync'd in turn.
    assert steps == ["fsync dat", "fsync env", "rename dat", "rename env", "fsync msgs/"]
    assert files(spool) == [f"msgs/{qid}.dat", f"msgs/{qid}.env"]
    assert list_queue(spool) == [qid]
    assert read_envelope(spool, qid) == ENV
    with open_data(spool, qid) as fh:
        assert fh.read() == b"Subject: x\n\nbody\n"
    for suffix in ("dat", "env"):
        assert stat.S_IMODE((spool / "msgs" / f"{qid}.{suffix}").stat().st_mode) == 0o640


def test_failed_commit_leaves_nothing(spool, monkeypatch):
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")
    real_rename = os.rename

    def rename(src, dst):
        if str(dst).endswith(".env"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(SpoolError, match="No space left"):
        w.commit(ENV)
    monkeypatch.undo()
    assert files(spool) == []
    assert list_queue(spool) == []


def test_too_big_is_never_committed(spool):
    w = SpoolWriter(spool, 10)
    w.write(b"x" * 11)
    assert w.too_big
    with pytest.raises(SpoolError):
        w.commit(ENV)
    assert files(spool) == []


def test_purge_removes_a_lone_envelope_only_when_old(spool):
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")
    qid = w.commit(ENV)
    kept = SpoolWriter(spool, 0)
    kept.write(b"y\n")
    kept_qid = kept.commit(ENV)
    os.unlink(spool / "msgs" / f"{qid}.dat")        # what the crash left: the .env alone
    assert purge_tmp(spool) == 0                     # young: maybe a writer at work
    os.utime(spool / "msgs" / f"{qid}.env", (1, 1))
    assert purge_tmp(spool) == 1
    assert list_queue(spool) == [kept_qid]


def test_big_message_is_written_whole(spool):
    """Our own buffer: chunks past BUFFER go out as they come, the rest at commit."""
    from libcourier.spool.writer import BUFFER
    w = SpoolWriter(spool, 0)
    parts = [bytes([65 + i % 26]) * 10_000 + b"\n" for i in range(3 * BUFFER // 10_000)]
    for p in parts:
        w.write(p)
    qid = w.commit(ENV)
    with open_data(spool, qid) as fh:
        assert fh.read() == b"".join(parts)
    assert w.size == sum(map(len, parts))


def test_fsync_both_raises_the_error_of_either(spool):
    from libcourier.spool.writer import fsync_both
    r, w = os.pipe()        # fsync on a pipe is EINVAL
    f = os.open(spool / "tmp" / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fsync_both(f, f)
        for pair in ((f, r), (r, f)):
            with pytest.raises(OSError):
                fsync_both(*pair)
    finally:
        for fd in (r, w, f):
            os.close(fd)
