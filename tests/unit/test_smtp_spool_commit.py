"""The accept path's commit (libcourier.spool.SpoolWriter.commit, what esmtpd runs
before each 250): the order of its durable steps, the one file it leaves, cleanup on
failure, and purge_tmp for what a crash inside remove() could leave."""

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
    remove,
    rewrite_envelope,
)
from libcourier.spool.entry import HEADER_LEN, parse_header

ENV = Envelope(sender="a@example.net", recipients=(Recipient("b@example.com"),),
               received=1700000000.5, client="[127.0.0.1] helo=x")


@pytest.fixture
def spool(tmp_path):
    ensure_spool(tmp_path)
    return tmp_path


def files(spool) -> list[str]:
    return sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())


def test_commit_is_one_write_one_fsync_one_rename(spool, monkeypatch):
    """A small message: header, message and envelope in one write; the file
    complete and fsync'd before its name appears in msgs/; msgs/ fsync'd after."""
    steps: list[str] = []
    real_fsync, real_rename, real_write = os.fsync, os.rename, os.write

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith("/msgs"):
            steps.append("fsync msgs/")
        else:
            with open(target, "rb") as f:          # complete when made durable
                parse_header(f.read(HEADER_LEN))
            steps.append("fsync " + os.path.basename(os.path.dirname(target)))
        real_fsync(fd)

    def rename(src, dst):
        steps.append(f"rename {os.path.basename(os.path.dirname(src))} -> "
                     f"{os.path.basename(os.path.dirname(dst))}")
        real_rename(src, dst)

    def write(fd, data):
        steps.append("write")
        return real_write(fd, data)

    w = SpoolWriter(spool, 0)
    w.write(b"Subject: x\n\nbody\n")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "write", write)
    qid = w.commit(ENV)
    monkeypatch.undo()
    assert steps == ["write", "fsync tmp", "rename tmp -> msgs", "fsync msgs/"]
    assert files(spool) == [f"msgs/{qid}"]
    assert list_queue(spool) == [qid]
    assert read_envelope(spool, qid) == ENV
    with open_data(spool, qid) as fh:
        assert fh.read() == b"Subject: x\n\nbody\n"
    assert stat.S_IMODE((spool / "msgs" / qid).stat().st_mode) == 0o640


@pytest.mark.parametrize("step", ["rename", "fsync_dir"])
def test_failed_commit_leaves_nothing(spool, monkeypatch, step):
    import libcourier.spool.writer as writer
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os if step == "rename" else writer, step, boom)
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


def test_an_uncommitted_file_is_never_queued(spool):
    """A writer killed before commit leaves tmp/<qid> (a placeholder header):
    never listed, and purge_tmp takes it once old."""
    w = SpoolWriter(spool, 0)
    w.write(b"y" * 200_000)             # past the buffer: on disk already
    assert (spool / "tmp" / w.qid).stat().st_size > 0
    assert list_queue(spool) == []
    os.utime(spool / "tmp" / w.qid, (1, 1))
    assert purge_tmp(spool) == 1
    assert files(spool) == []


def test_purge_removes_a_lone_state_file_only_when_old(spool):
    """remove() unlinks the entry, then its .st: a crash between the two leaves
    the .st alone, which never makes the message queued again."""
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")
    qid = w.commit(ENV)
    rewrite_envelope(spool, qid, ENV)
    kept = SpoolWriter(spool, 0)
    kept.write(b"y\n")
    kept_qid = kept.commit(ENV)
    os.unlink(spool / "msgs" / qid)                 # what the crash left: the .st alone
    assert list_queue(spool) == [kept_qid]
    assert purge_tmp(spool) == 0                     # young
    os.utime(spool / "msgs" / f"{qid}.st", (1, 1))
    assert purge_tmp(spool) == 1
    assert files(spool) == [f"msgs/{kept_qid}"]


def test_remove_takes_the_entry_before_its_state(spool, monkeypatch):
    w = SpoolWriter(spool, 0)
    w.write(b"x\n")
    qid = w.commit(ENV)
    rewrite_envelope(spool, qid, ENV)
    order: list[str] = []
    real_unlink = os.unlink

    def unlink(p):
        order.append(os.path.basename(p))
        real_unlink(p)

    monkeypatch.setattr(os, "unlink", unlink)
    remove(spool, qid)
    monkeypatch.undo()
    assert order == [qid, f"{qid}.st"]
    assert files(spool) == []


@pytest.mark.parametrize("size", [1, 64 * 1024 - 100, 64 * 1024, 300_000])
def test_big_message_is_written_whole(spool, size):
    """Our own buffer: chunks past BUFFER go out as they come (the header's
    placeholder with them, filled in at commit), the rest at commit."""
    w = SpoolWriter(spool, 0)
    parts = [bytes([65 + i % 26]) * 999 + b"\n" for i in range(size // 1000)] + [b"z" * (size % 1000)]
    for p in parts:
        w.write(p)
    qid = w.commit(ENV)
    body = b"".join(parts)
    with open_data(spool, qid) as fh:
        assert fh.length == len(body) == w.size
        assert fh.read(7) + fh.read() == body
    assert read_envelope(spool, qid) == ENV
    raw = (spool / "msgs" / qid).read_bytes()
    assert parse_header(raw[:HEADER_LEN])[0] == len(body)
    assert raw[HEADER_LEN:HEADER_LEN + len(body)] == body
