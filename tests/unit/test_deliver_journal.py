"""courierlocal's journal of finished deliveries (courier_deliver.localjournal)."""

from __future__ import annotations

import os
import time

from courier_deliver.localjournal import KEEP, MAX_BYTES, Journal, file_key


def test_seen_only_for_the_same_file_and_recipient(tmp_path):
    j = Journal(tmp_path / "journal")
    spool = tmp_path / "a.dat"
    spool.write_bytes(b"message")
    fd = os.open(spool, os.O_RDONLY)
    try:
        assert not j.seen(file_key(fd), "alice@example.com", None)
        j.record_many([(file_key(fd), "alice@example.com", None)])
        assert j.seen(file_key(fd), "alice@example.com", None)
        assert not j.seen(file_key(fd), "bob@example.com", None)
        assert not j.seen(file_key(fd), "alice@example.com", "alice")      # another lookup key
        assert not j.seen(file_key(fd), "alice@example.co", None)          # no prefix matches
    finally:
        os.close(fd)
    # The same path rewritten (a new message, maybe the same inode): not seen.
    time.sleep(0.01)
    spool.write_bytes(b"another")
    fd = os.open(spool, os.O_RDONLY)
    try:
        assert not j.seen(file_key(fd), "alice@example.com", None)
    finally:
        os.close(fd)


def test_prune_keeps_recent_entries_and_bounds_the_size(tmp_path):
    j = Journal(tmp_path / "journal")
    spool = tmp_path / "a.dat"
    spool.write_bytes(b"m")
    fd = os.open(spool, os.O_RDONLY)
    try:
        now = time.time()
        j.record_many([(file_key(fd), "old@example.com", None)], now=now - KEEP - 10)
        j.record_many([(file_key(fd), "new@example.com", None)], now=now)
        j.prune(now)
        assert not j.seen(file_key(fd), "old@example.com", None)
        assert j.seen(file_key(fd), "new@example.com", None)
        with open(j.path, "ab") as f:          # a huge journal of recent entries
            f.write((b"%d 1:2:3:4 x@y -\n" % int(now)) * (MAX_BYTES // 16))
        j.record_many([(file_key(fd), "last@example.com", None)], now=now)
        assert j.path.stat().st_size <= MAX_BYTES
        assert j.seen(file_key(fd), "last@example.com", None)
    finally:
        os.close(fd)
    assert not Journal(tmp_path / "missing").seen("1:2:3:4", "a@b", None)


def test_an_entry_another_connection_child_appended_is_seen(tmp_path):
    # Each connection child reads the journal incrementally: an entry appended
    # by another child after this one's last look must still be found, and a
    # journal replaced by a prune is read again from its start.
    mine, other = Journal(tmp_path / "journal"), Journal(tmp_path / "journal")
    spool = tmp_path / "a.dat"
    spool.write_bytes(b"message")
    fd = os.open(spool, os.O_RDONLY)
    try:
        other.record_many([(file_key(fd), "bob@example.com", None)])
        assert not mine.seen(file_key(fd), "alice@example.com", None)
        other.record_many([(file_key(fd), "alice@example.com", None)])
        assert mine.seen(file_key(fd), "alice@example.com", None)
        other.prune()
        other.record_many([(file_key(fd), "carol@example.com", None)])
        assert mine.seen(file_key(fd), "carol@example.com", None)
        assert mine.seen(file_key(fd), "alice@example.com", None)
        with open(mine.path, "ab") as f:            # a line being appended: not yet whole
            f.write(b"%d " % int(time.time()))
        assert not mine.seen(file_key(fd), "dave@example.com", None)
    finally:
        os.close(fd)


def test_a_batch_records_in_one_write_and_reads_once(tmp_path):
    mine, other = Journal(tmp_path / "journal"), Journal(tmp_path / "journal")
    fds = []
    for i in range(3):
        p = tmp_path / f"{i}.dat"
        p.write_bytes(b"message %d" % i)
        fds.append(os.open(p, os.O_RDONLY))
    try:
        mine.refresh()                                  # no journal yet: nothing, no error
        other.record_many([(file_key(fds[0]), "a@x", None), (file_key(fds[1]), "b@x", "b")])
        assert (tmp_path / "journal").read_bytes().count(b"\n") == 2
        # As of the last refresh (before the other child's write): not seen yet.
        assert not mine.seen(file_key(fds[0]), "a@x", None, refresh=False)
        mine.refresh()
        assert mine.seen(file_key(fds[0]), "a@x", None, refresh=False)
        assert mine.seen(file_key(fds[1]), "b@x", "b", refresh=False)
        assert not mine.seen(file_key(fds[2]), "a@x", None, refresh=False)
        other.record_many([])                           # nothing done: nothing written
        assert (tmp_path / "journal").read_bytes().count(b"\n") == 2
    finally:
        for fd in fds:
            os.close(fd)


def test_a_reused_entry_file_with_the_same_stat_identity_is_not_seen(tmp_path):
    # The spool reuses delivered entries' files (spool/pool.py); where mtimes
    # are whole seconds (ext4 with 128-byte inodes) a same-size message in the
    # same inode within one second has its former message's dev:ino:size:mtime.
    # The entry's own envelope stamp (acceptance time) still tells them apart.
    from libcourier.spool.entry import format_header
    from libcourier.spool.envelope import Envelope, Recipient, format_envelope

    def entry(received: float) -> bytes:
        env = format_envelope(Envelope("bob@example.net", (Recipient("alice@example.com"),),
                                       received))
        body = b"Subject: x\n\nsame size\n"
        return format_header(len(body), len(env)) + body + env

    j = Journal(tmp_path / "journal")
    path = tmp_path / "entry"
    first, second = entry(1700000000.000001), entry(1700000000.000002)
    assert len(first) == len(second)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, first)
        os.utime(fd, ns=(1700000000 * 10**9, 1700000000 * 10**9))
        j.record_many([(file_key(fd), "alice@example.com", None)])
        assert j.seen(file_key(fd), "alice@example.com", None)
        ino = os.fstat(fd).st_ino
        os.pwrite(fd, second, 0)                         # the file reused in place
        os.utime(fd, ns=(1700000000 * 10**9, 1700000000 * 10**9))
        assert os.fstat(fd).st_ino == ino
        assert not j.seen(file_key(fd), "alice@example.com", None)
    finally:
        os.close(fd)
