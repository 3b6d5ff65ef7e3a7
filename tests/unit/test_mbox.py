"""libcourier.mbox: From_ line, >From quoting across chunk boundaries, locks,
and nothing half-written after a failure."""

from __future__ import annotations

import fcntl
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier import mbox
from libcourier.maildir.delivery import DeliveryError

MSG = (b"Subject: hi\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\n"
       b"Fromage\r\n From indented\r\nlast")


def quote_all(data: bytes, cuts: list[int]) -> bytes:
    q = mbox.FromQuoter()
    out, prev = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        out.append(q.feed(data[prev:c]))
        prev = c
    return b"".join(out) + q.finish()


def reference_quote(data: bytes) -> bytes:
    lines = data.split(b"\n")
    return b"\n".join((b">" + ln) if ln.lstrip(b">").startswith(b"From ") else ln
                      for ln in lines)


@given(st.lists(st.sampled_from([b"From ", b">", b"F", b"rom", b"\n", b"x", b" "]),
                max_size=40),
       st.lists(st.integers(0, 200), max_size=8))
def test_quoting_is_independent_of_chunking(parts, cuts):
    data = b"".join(parts)
    assert quote_all(data, [c for c in cuts if c <= len(data)]) == reference_quote(data)


def test_deliver_appends_from_line_quoted_message_and_blank_line(tmp_path):
    box = tmp_path / "mbox"
    n = mbox.deliver_to_mbox(box, [MSG[:20], MSG[20:]], sender="a@x",
                             prefix=b"Return-Path: <a@x>\n", now=0)
    data = box.read_bytes()
    assert len(data) == n
    first, rest = data.split(b"\n", 1)
    assert first == b"From a@x " + time.asctime(time.localtime(0)).encode()
    assert rest == (b"Return-Path: <a@x>\nSubject: hi\n\n>From the start\n>>From quoted\n"
                    b">>>From twice\nFromage\n From indented\nlast\n\n")
    assert (box.stat().st_mode & 0o777) == 0o600
    mbox.deliver_to_mbox(box, [b"Subject: 2\n\nbody\n"], sender="")
    data2 = box.read_bytes()
    assert data2.startswith(data + b"From MAILER-DAEMON ")
    assert data2.endswith(b"\nbody\n\n")
    assert not (tmp_path / "mbox.lock").exists()


def test_failure_truncates_back(tmp_path):
    box = tmp_path / "mbox"
    mbox.deliver_to_mbox(box, [b"Subject: 1\n\none\n"], sender="a@x")
    before = box.read_bytes()

    def broken():
        yield b"Subject: 2\n\n" + b"y" * 100000
        raise OSError(5, "Input/output error")

    with pytest.raises(DeliveryError) as e:
        mbox.deliver_to_mbox(box, broken(), sender="a@x")
    assert e.value.temporary
    assert box.read_bytes() == before


def test_locks_are_waited_for_then_deferred(tmp_path):
    box = tmp_path / "mbox"
    box.write_bytes(b"")
    lock = tmp_path / "mbox.lock"
    lock.write_bytes(b"123\n")                         # a live dot-lock
    with pytest.raises(DeliveryError, match="locked"):
        mbox.deliver_to_mbox(box, [b"x\n"], sender="a", lock_wait=0.3)
    old = time.time() - mbox.STALE_LOCK - 10          # a stale one is broken
    os.utime(lock, (old, old))
    mbox.deliver_to_mbox(box, [b"x\n"], sender="a", lock_wait=5)
    assert box.read_bytes().endswith(b"\nx\n\n") and not lock.exists()
    # An fcntl lock held by another process (a forked child) defers too.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        fd = os.open(box, os.O_WRONLY)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(w, b"1")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(DeliveryError, match="locked"):
            mbox.deliver_to_mbox(box, [b"y\n"], sender="a", lock_wait=0.3)
        assert not lock.exists()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    mbox.deliver_to_mbox(box, [b"y\n"], sender="a", lock_wait=5)


def test_not_a_regular_file_is_permanent(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DeliveryError) as e:
        mbox.deliver_to_mbox(tmp_path / "fifo", [b"x"], sender="a")
    assert not e.value.temporary
    with pytest.raises(DeliveryError) as e:
        mbox.deliver_to_mbox(tmp_path, [b"x"], sender="a")
    assert not e.value.temporary


def test_python_mailbox_reads_what_we_wrote(tmp_path):
    """Another mbox reader (Python's mailbox) sees exactly our messages."""
    import mailbox
    box = tmp_path / "mbox"
    bodies = [b"Subject: %d\n\nFrom line %d\nbody\n" % (i, i) for i in range(3)]
    for i, b in enumerate(bodies):
        mbox.deliver_to_mbox(box, [b], sender=f"s{i}@x")
    msgs = list(mailbox.mbox(str(box)))
    assert [m["Subject"] for m in msgs] == ["0", "1", "2"]
    assert [m.get_from().split()[0] for m in msgs] == ["s0@x", "s1@x", "s2@x"]
    # The separating blank line is the mbox's, not the message's.
    assert [m.get_payload() for m in msgs] == [f">From line {i}\nbody\n"
                                               for i in range(3)]
