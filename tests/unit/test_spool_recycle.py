"""Spool file recycling (libcourier/spool/pool.py): courierd's delivered entries
go into a bounded pool in tmp/ once their removal is durable, SpoolWriter
claims them instead of creating a file, and the committed entry is exactly the
new message (nothing of the former one survives)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolWriter,
    ensure_spool,
    list_queue,
    open_data,
    pool,
    purge_tmp,
    read_envelope,
    retire,
    rewrite_envelope,
)
from libcourier.spool.dirsync import DelayedDirSync
from libcourier.spool.entry import format_header
from libcourier.spool.envelope import format_envelope
from libcourier.spool.queue import STALE
from tests.unit.test_maildir_unnamed import ext4_without_journal  # noqa: F401 - a fixture

ENV = Envelope("bob@example.net", (Recipient("alice@example.com"),), 1700000000.0,
               client="test")


@pytest.fixture(autouse=True)
def fresh_pool_state(monkeypatch):
    # The pool's per-process state is module-wide: each test starts without it.
    monkeypatch.setattr(pool, "_candidates", {})
    monkeypatch.setattr(pool, "_counts", {})
    # Tests fill the pool right after a writer found it empty: list again at once.
    monkeypatch.setattr(pool, "LIST_INTERVAL", 0.0)


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    ensure_spool(d)
    return d


def commit(spool, body: bytes, env: Envelope = ENV) -> str:
    w = SpoolWriter(spool, 0)
    w.write(body)
    return w.commit(env)


def pool_files(spool, prefix: str = pool.FREE) -> list[str]:
    return sorted(n for n in os.listdir(spool / "tmp") if n.startswith(prefix))


def retire_now(spool, *qids: str) -> None:
    """courierd's path: retire, then the delayed fsync (flushed at once here)."""
    sync = DelayedDirSync(spool / "msgs", delay=3600)
    for qid in qids:
        retire(spool, qid, sync)
    sync.flush()


def test_a_retired_entry_is_held_until_the_msgs_fsync_then_claimable(spool):
    qid = commit(spool, b"Subject: one\n\nbody\n")
    rewrite_envelope(spool, qid, ENV)                   # a .st goes as before
    sync = DelayedDirSync(spool / "msgs", delay=3600)
    retire(spool, qid, sync)
    assert list_queue(spool) == []
    assert os.listdir(spool / "msgs") == []
    assert pool_files(spool, pool.HELD) == [f"{pool.HELD}{qid}"]
    assert pool_files(spool) == []
    # Not claimable before the fsync: a new message gets a new file.
    held_ino = os.stat(spool / "tmp" / f"{pool.HELD}{qid}").st_ino
    other = commit(spool, b"Subject: two\n\nbody\n")
    assert os.stat(spool / "msgs" / other).st_ino != held_ino
    sync.flush()
    assert pool_files(spool, pool.HELD) == []
    assert pool_files(spool) == [f"{pool.FREE}{qid}"]


def test_a_writer_reuses_a_pool_file_and_nothing_of_the_former_message_survives(spool):
    big = b"Subject: big\n\n" + b"SECRET-OLD-LINE " * 12500 + b"\n"     # 200 KB, past the buffer
    old = commit(spool, big)
    ino = os.stat(spool / "msgs" / old).st_ino
    retire_now(spool, old)
    small = b"Subject: small\n\nnew\n"
    new = commit(spool, small)
    path = spool / "msgs" / new
    assert os.stat(path).st_ino == ino                  # the same inode, reused
    env = format_envelope(ENV)
    assert path.read_bytes() == format_header(len(small), len(env)) + small + env
    assert oct(os.stat(path).st_mode & 0o7777) == "0o640"
    with open_data(spool, new) as d:
        assert d.read() == small
    assert read_envelope(spool, new) == ENV
    assert pool_files(spool) == [] and os.listdir(spool / "tmp") == []


def test_a_large_message_into_a_small_pool_file(spool):
    old = commit(spool, b"Subject: s\n\nx\n")
    retire_now(spool, old)
    big = b"Subject: big\n\n" + b"".join(b"%06d " % i + b"y" * 70 + b"\n" for i in range(3000))
    new = commit(spool, big)
    with open_data(spool, new) as d:
        assert d.read() == big
    env = format_envelope(ENV)
    assert os.path.getsize(spool / "msgs" / new) == len(format_header(len(big), len(env))) \
        + len(big) + len(env)


def test_the_pool_is_bounded(spool, monkeypatch):
    monkeypatch.setattr(pool, "POOL_MAX", 3)
    monkeypatch.setattr(pool, "RELIST_EVERY", 2)
    qids = [commit(spool, b"Subject: %d\n\nx\n" % i) for i in range(12)]
    retire_now(spool, *qids)
    # Counted approximately (relisted every RELIST_EVERY): at most that many over.
    assert 3 <= len(pool_files(spool)) <= 3 + 2
    assert os.listdir(spool / "msgs") == []             # the rest was unlinked
    # Writers take from it, and a later relisting makes room again.
    for i in range(3):
        commit(spool, b"Subject: again %d\n\nx\n" % i)
    monkeypatch.setattr(pool, "RELIST_EVERY", 1)
    more = [commit(spool, b"Subject: more %d\n\nx\n" % i) for i in range(2)]
    before = len(pool_files(spool))
    retire_now(spool, *more)
    assert len(pool_files(spool)) == min(3, before + 2)


def test_entries_with_two_links_are_unlinked_not_pooled(spool, tmp_path):
    qid = commit(spool, b"Subject: linked\n\nx\n")
    os.link(spool / "msgs" / qid, tmp_path / "elsewhere")
    retire_now(spool, qid)
    assert pool_files(spool) == [] and os.listdir(spool / "msgs") == []
    assert (tmp_path / "elsewhere").read_bytes().endswith(format_envelope(ENV))


def test_a_writer_never_writes_through_a_bad_pool_file(spool, tmp_path):
    tmp = spool / "tmp"
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    os.symlink(target, tmp / f"{pool.FREE}symlink")
    linked = tmp_path / "linked"
    linked.write_bytes(b"keep me too")
    os.link(linked, tmp / f"{pool.FREE}hardlink")
    os.mkfifo(tmp / f"{pool.FREE}fifo")
    os.mkdir(tmp / f"{pool.FREE}dir")
    os.mkdir(tmp / f"{pool.FREE}fulldir")
    (tmp / f"{pool.FREE}fulldir" / "x").write_bytes(b"")
    qids = [commit(spool, b"Subject: %d\n\nx\n" % i) for i in range(8)]   # each claims one
    assert target.read_bytes() == b"keep me"
    assert linked.read_bytes() == b"keep me too" and os.stat(linked).st_nlink == 1
    for q in qids:
        with open_data(spool, q) as d:
            assert d.read() == b"Subject: %d\n\nx\n" % qids.index(q)
    # Claimed and found wrong: unlinked; a directory that cannot be removed stays
    # under the name it was claimed as, and the writer took another.
    assert pool_files(spool) == []
    left = list(tmp.iterdir())
    assert len(left) == 1 and (left[0] / "x").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
def test_the_daemon_account_never_takes_a_pool_file_it_does_not_own(spool, monkeypatch):
    qid = commit(spool, b"Subject: x\n\nx\n")
    retire_now(spool, qid)
    f = spool / "tmp" / f"{pool.FREE}{qid}"
    os.chown(f, 4242, 4242)
    monkeypatch.setattr(pool.os, "geteuid", lambda: 65534)
    new = commit(spool, b"Subject: y\n\ny\n")
    assert pool_files(spool) == []                  # unlinked, not used
    assert os.stat(spool / "msgs" / new).st_uid == 0   # created anew


def test_a_claim_that_lost_the_race_creates_a_file(spool):
    qids = [commit(spool, b"Subject: %d\n\nx\n" % i) for i in range(3)]
    retire_now(spool, *qids)
    w = SpoolWriter(spool, 0)                 # lists the pool, claims one
    w.abort()
    assert len(pool_files(spool)) == 2
    for n in pool_files(spool):              # another process takes the rest
        os.unlink(spool / "tmp" / n)
    new = commit(spool, b"Subject: late\n\nx\n")
    with open_data(spool, new) as d:
        assert d.read() == b"Subject: late\n\nx\n"
    assert os.listdir(spool / "tmp") == []


def test_abort_of_a_claimed_file_leaves_nothing_in_tmp(spool):
    retire_now(spool, commit(spool, b"Subject: x\n\nx\n"))
    w = SpoolWriter(spool, 10)
    w.write(b"Subject: too big\n\n" + b"z" * 100)
    assert w.too_big
    w.abort()
    assert os.listdir(spool / "tmp") == [] and list_queue(spool) == []


def test_an_empty_pool_is_not_listed_for_every_message(spool, monkeypatch):
    calls = []
    real = pool._pool_names
    monkeypatch.setattr(pool, "_pool_names", lambda d: calls.append(d) or real(d))
    monkeypatch.setattr(pool, "LIST_INTERVAL", 3600.0)
    for i in range(5):
        commit(spool, b"Subject: %d\n\nx\n" % i)
    assert len(calls) == 1
    monkeypatch.setattr(pool, "LIST_INTERVAL", 0.0)
    commit(spool, b"Subject: later\n\nx\n")
    assert len(calls) == 2


def test_purge_tmp_removes_old_pool_files_but_never_a_claimed_one(spool):
    a, b = (commit(spool, b"Subject: %d\n\nx\n" % i) for i in range(2))
    retire_now(spool, a, b)
    old = 100 * 3600
    for n in pool_files(spool):
        os.utime(spool / "tmp" / n, (time.time() - old, time.time() - old))
    w = SpoolWriter(spool, 0)                # claims one: its mtime is now
    w.write(b"Subject: in flight\n\nx\n")
    assert purge_tmp(spool) == 1             # the other pool file
    assert pool_files(spool) == []
    qid = w.commit(ENV)
    with open_data(spool, qid) as d:
        assert d.read() == b"Subject: in flight\n\nx\n"


def test_a_failed_msgs_fsync_unlinks_the_held_files(spool):
    qid = commit(spool, b"Subject: x\n\nx\n")
    sync = DelayedDirSync(spool / "no-such-dir", delay=3600)
    retire(spool, qid, sync)
    sync.flush()
    assert os.listdir(spool / "tmp") == [] and list_queue(spool) == []


def test_concurrent_writers_each_get_their_own_file(spool):
    qids = [commit(spool, b"Subject: %d\n\nold\n" % i) for i in range(40)]
    retire_now(spool, *qids)
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(10):
            body = b"Subject: w%d-%d\n\n" % (n, i) + b"n" * (n * 97 + i)
            q = commit(spool, body)
            with lock:
                got.append((q, body))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 60 and len({q for q, _ in got}) == 60
    for q, body in got:
        with open_data(spool, q) as d:
            assert d.read() == body
    assert len(pool_files(spool)) < 40       # the pool served some of them


def test_purge_tmp_removes_held_files_of_a_former_run_whatever_their_age(spool):
    qid = commit(spool, b"Subject: x\n\nx\n")
    sync = DelayedDirSync(spool / "msgs", delay=3600)
    retire(spool, qid, sync)                 # courierd killed before its fsync
    assert pool_files(spool, pool.HELD) == [f"{pool.HELD}{qid}"]
    assert purge_tmp(spool) == 1
    sync.flush()                             # nothing left to release: no error
    assert os.listdir(spool / "tmp") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_takes_a_pool_file_of_the_spool_owner(spool):
    qid = commit(spool, b"Subject: x\n\nx\n")
    retire_now(spool, qid)
    f = spool / "tmp" / f"{pool.FREE}{qid}"
    ino = os.stat(f).st_ino
    os.chown(spool / "tmp", 4242, 4242)
    os.chown(f, 4242, 4242)
    new = commit(spool, b"Subject: y\n\ny\n")
    assert os.stat(spool / "msgs" / new).st_ino == ino
    assert os.stat(spool / "msgs" / new).st_uid == 4242



def test_a_stale_list_of_names_is_replaced_by_a_fresh_listing(spool):
    retire_now(spool, *[commit(spool, b"Subject: a%d\n\nx\n" % i) for i in range(12)])
    commit(spool, b"Subject: lists\n\nx\n")          # this process now holds 11 names
    for n in pool_files(spool):                      # ... all taken by other writers,
        os.unlink(spool / "tmp" / n)
    inodes = set()
    for i in range(3):                               # ... and others freed meanwhile
        f = spool / "tmp" / f"{pool.FREE}other{i}"
        f.write_bytes(b"old message %d\n" % i * 100)
        inodes.add(os.stat(f).st_ino)
    new = commit(spool, b"Subject: after\n\nx\n")
    assert os.stat(spool / "msgs" / new).st_ino in inodes
    assert len(pool_files(spool)) == 2


def test_a_held_file_is_released_even_when_removing_the_st_fails(spool):
    # A failure between retire's two steps (the entry moved, its .st not
    # removable): the entry is out of msgs/ all the same, so its file must
    # still be released after the fsync, not stay held until courierd restarts.
    qid = commit(spool, b"Subject: x\n\nx\n")
    st = spool / "msgs" / f"{qid}.st"
    st.mkdir()
    (st / "x").write_bytes(b"")                  # unlink() fails with EISDIR
    sync = DelayedDirSync(spool / "msgs", delay=3600)
    with pytest.raises(OSError):
        retire(spool, qid, sync)
    assert list_queue(spool) == []
    sync.flush()
    assert pool_files(spool, pool.HELD) == []
    assert pool_files(spool) == [f"{pool.FREE}{qid}"]


def test_a_large_message_into_a_larger_pool_file_is_cut_to_its_length(spool):
    # Both past the buffer: the new one is drained in pieces, its header
    # written last, and the file still ends exactly where its envelope ends.
    old = commit(spool, b"Subject: old\n\n" + b"OLD-OCTETS " * 20000)     # 220 KB
    ino = os.stat(spool / "msgs" / old).st_ino
    retire_now(spool, old)
    body = b"Subject: new\n\n" + b"n" * 150000
    new = commit(spool, body)
    assert os.stat(spool / "msgs" / new).st_ino == ino
    env = format_envelope(ENV)
    assert (spool / "msgs" / new).read_bytes() == format_header(len(body), len(env)) + body + env


def test_a_reused_file_never_gets_its_former_messages_journal_key(spool):
    # courierlocal's journal names a delivered spool file by dev:ino:size:
    # mtime_ns (courier_deliver.localjournal.file_key) and answers a request
    # for a known key and recipient OK without delivering. A reused inode with
    # a message of the same size must therefore get a later mtime than its
    # former message, whatever the clock says: with a coarse clock (kernels
    # before 6.13: one tick, 4 ms) or one stepped back, "now" can be that mtime.
    old = commit(spool, b"Subject: x\n\n" + b"a" * 4000)
    p = spool / "msgs" / old
    future = time.time_ns() + 3600 * 10**9          # the clock went back an hour since
    os.utime(p, ns=(future, future))
    st_old = os.stat(p)
    retire_now(spool, old)
    new = commit(spool, b"Subject: x\n\n" + b"b" * 4000)
    st_new = os.stat(spool / "msgs" / new)
    assert (st_new.st_ino, st_new.st_size) == (st_old.st_ino, st_old.st_size)
    assert st_new.st_mtime_ns > st_old.st_mtime_ns


def test_after_a_crash_no_stale_pool_name_serves_a_file_before_its_removal_is_durable(spool):
    # tmp/ is never fsync'd: after a power loss (journal-less ext4, then fsck)
    # tmp/ can still hold free.<x> for an inode that is now a queued entry
    # (two names, two links). Kept, it would become claimable the moment
    # courierd unlinks that entry, before the msgs/ fsync covering the unlink:
    # a second crash then brings the entry back over another message.
    qid = commit(spool, b"Subject: queued\n\nx\n")
    ino = os.stat(spool / "msgs" / qid).st_ino
    os.link(spool / "msgs" / qid, spool / "tmp" / f"{pool.FREE}stale")
    purge_tmp(spool)                                 # courierd's start
    sync = DelayedDirSync(spool / "msgs", delay=3600)
    retire(spool, qid, sync)                         # delivered; fsync not yet
    new = commit(spool, b"Subject: next\n\ny\n")
    assert os.stat(spool / "msgs" / new).st_ino != ino
    sync.flush()


def test_a_large_delivered_file_is_unlinked_not_kept_in_the_pool(spool):
    # The pool saves inodes, not disk space: 512 kept files of a 10 MB size
    # limit would hold 5 GB of a file system the Maildirs share.
    big = commit(spool, b"Subject: big\n\n" + b"z" * (pool.MAX_FILE + 1))
    small = commit(spool, b"Subject: small\n\nx\n")
    retire_now(spool, big, small)
    assert pool_files(spool) == [f"{pool.FREE}{small}"]
    assert os.listdir(spool / "msgs") == []


def test_a_free_file_of_another_boot_is_never_claimed(spool):
    # A power loss can bring back an old tmp/ with a free. name for an inode
    # that is a queued entry now; without fsck its link count still says 1, so
    # only the boot in the name tells it apart (esmtpd may take mail before
    # courierd's purge_tmp runs). Here: a pool file that passes every other
    # check, named by another boot.
    assert pool.BOOT and pool.FREE.startswith(pool.FREE_ANY)
    qid = commit(spool, b"Subject: old\n\nx\n")
    other = spool / "tmp" / f"{pool.FREE_ANY}{'0' * 12}.{qid}"
    os.rename(spool / "msgs" / qid, other)
    ino = os.stat(other).st_ino
    for _ in range(3):
        new = commit(spool, b"Subject: next\n\ny\n")
        assert os.stat(spool / "msgs" / new).st_ino != ino
    assert other.exists()
    assert purge_tmp(spool) >= 1 and not other.exists()          # courierd's start



def _remount(mnt) -> str:
    """Unmount and mount again (nothing of it left in the caches); its device."""
    dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    subprocess.run(["umount", str(mnt)], timeout=60, check=True)
    subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], timeout=60, check=True)
    return dev


def _one_link_on_disk(mnt, ino: int) -> None:
    """Set inode `ino`'s on-disk link count back to 1 (debugfs on the unmounted
    device): two names for one file as an unchecked crash leaves them."""
    os.sync()
    dev = _remount(mnt)
    subprocess.run(["umount", str(mnt)], timeout=60, check=True)
    subprocess.run(["debugfs", "-w", "-R", f"sif <{ino}> links_count 1", dev],
                   capture_output=True, timeout=60, check=True)
    subprocess.run(["mount", "-t", "ext4", dev, str(mnt)], timeout=60, check=True)


def _crash_left_name(mnt, stale: str) -> tuple:
    """A queued entry whose file tmp/ also names `stale` ({qid}: the entry's
    qid), with a link count of 1 for the two names: what a power loss on ext4
    without a journal leaves when fsck does not run after it (tmp/ is never
    fsync'd, and renames never change the count). Made with a hard link
    whose count debugfs sets back to 1. (spool, qid, message)."""
    spool = mnt / "spool"
    ensure_spool(spool)
    body = b"Subject: queued\n\nkept\n"
    qid = commit(spool, body)
    stale = stale.format(qid=qid)
    os.link(spool / "msgs" / qid, spool / "tmp" / stale)
    ino = os.stat(spool / "msgs" / qid).st_ino
    old = time.time() - 100 * 3600
    os.utime(spool / "msgs" / qid, (old, old))                   # past purge's age too
    _one_link_on_disk(mnt, ino)
    assert os.stat(spool / "msgs" / qid).st_nlink == 1
    return spool, qid, body


@pytest.mark.parametrize("stale", [f"{pool.FREE_ANY}{'0' * 12}.old", f"{pool.HELD}old",
                                   "0000000000000001.1.1"])
def test_purge_tmp_never_frees_a_queued_entry_through_a_crash_left_name(
        ext4_without_journal, stale):  # noqa: F811 - the imported fixture
    # Unlinking such a name frees the entry's inode: the message lost,
    # msgs/<qid> naming a freed inode (EUCLEAN).
    spool, qid, body = _crash_left_name(ext4_without_journal[0], stale)
    purge_tmp(spool)                                             # courierd's start
    _remount(ext4_without_journal[0])
    assert list_queue(spool) == [qid]
    with open_data(spool, qid) as d:
        assert d.read() == body


def test_a_crash_left_held_name_of_the_entry_itself_is_set_aside(
        ext4_without_journal):  # noqa: F811 - the imported fixture
    # Kept as tmp/held.<qid>, the entry's own retirement would rename msgs/<qid>
    # onto a name of the same file: rename(2) then does nothing, msgs/<qid>
    # stays queued, and once released its file is a free pool file that is
    # also a queued entry (a writer would overwrite it).
    spool, qid, _body = _crash_left_name(ext4_without_journal[0], f"{pool.HELD}{{qid}}")
    purge_tmp(spool)                                             # courierd's start
    assert not (spool / "tmp" / f"{pool.HELD}{qid}").exists()
    retire_now(spool, qid)
    assert list_queue(spool) == []
    new = commit(spool, b"Subject: next\n\ny\n")
    assert list_queue(spool) == [new]
    with open_data(spool, new) as d:
        assert d.read() == b"Subject: next\n\ny\n"


def test_purge_tmp_leaves_a_set_aside_name_to_the_admin(spool):
    # A stale.<name> (a name a crash left, set aside by an earlier purge) may
    # name a freed inode that another file (a Maildir message) has now: an
    # unlink by age would free that file. fsck and the admin deal with it.
    aside = spool / "tmp" / f"{STALE}{pool.HELD}old"
    aside.write_bytes(b"x")
    old = time.time() - 100 * 3600
    os.utime(aside, (old, old))
    assert purge_tmp(spool) == 0
    assert aside.exists()


def test_purge_tmp_never_frees_another_file_through_a_crash_left_pool_name(
        ext4_without_journal):  # noqa: F811 - the imported fixture
    # A crash-left free. name can name an inode that was freed and is now
    # another file of the same file system, a Maildir message (all share
    # one inode group), with a link count of 1. The pool's names are removed
    # whatever their age: unlinked, the message would be lost. A pool file
    # is always an entry file (it starts with the entry header); this is not.
    mnt = ext4_without_journal[0]
    spool = mnt / "spool"
    ensure_spool(spool)
    (mnt / "new").mkdir()
    mail = mnt / "new" / "1.2.host"
    mail.write_bytes(b"Return-Path: <a@b>\nSubject: mine\n\nkept\n")
    stale = spool / "tmp" / f"{pool.FREE_ANY}{'0' * 12}.0000000000000001.1.1"
    os.link(mail, stale)
    ino = os.stat(mail).st_ino
    _one_link_on_disk(mnt, ino)
    purge_tmp(spool)                                             # courierd's start
    _remount(mnt)
    assert mail.read_bytes() == b"Return-Path: <a@b>\nSubject: mine\n\nkept\n"
    assert not stale.exists()                                    # set aside
