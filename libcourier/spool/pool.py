"""Free spool files: a delivered entry's file kept for the next message.

Why: creating a file allocates an inode, and on ext4 without a journal that
allocation scans the inode group and skips every inode freed in the last 60 s
(kernel recently_deleted()), while holding the directory's lock. A queue frees
one inode per message, so under load each new spool file cost the SMTP server
0.35-0.7 ms of kernel CPU, and made every other creation in that inode group
(the Maildirs) slower too. Reusing the files allocates and frees nothing.

The pool lives in SPOOLDIR/tmp/, beside the files being written (no listing of
the queue looks there; purge_tmp, at courierd's start, removes old files there
by age and every pool file):

- `held.<qid>`: a delivered entry that courierd moved out of msgs/ (retire()),
  waiting for the msgs/ fsync that makes its removal durable. It is not
  claimable yet: overwritten before that fsync, a machine crash could bring
  back msgs/<qid> over another message's octets.
- `free.<boot>.<qid>`: claimable in the boot it was freed in (BOOT, below).
  A writer renames it to tmp/<its own qid> (the
  claim is that rename: ENOENT means another writer took it first), opens it
  without O_CREAT or O_TRUNC, overwrites it from offset 0 (the blocks are
  reused in place, nothing is allocated or freed) and truncates it to the new
  entry's length before its fsync, so no octet of the former message remains;
  it also sets a later mtime than the former message's (courierlocal's
  journal tells delivered files apart by dev:ino:size:mtime_ns).

Only a regular file with one link owned by the process's uid, of at most
MAX_FILE octets, enters the pool, and a claimed file is checked again (fstat:
regular, one link, owner) before a writer keeps it; anything else is unlinked
and the writer creates a file as before. The pool holds at most POOL_MAX
files (counted approximately: the remover relists every RELIST_EVERY
removals), so at most about POOL_MAX * MAX_FILE octets (128 MiB).
Privacy: a pool file holds a delivered message's octets until it is reused
(or removed by purge_tmp, at courierd's start: every pool file, see there);
the spool is 0750 and the files 0640, as when the message was queued.
"""

from __future__ import annotations

import os
import random
import stat
import threading
import time

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _boot_token() -> str:
    """This boot's id (Linux makes a new one at every boot), or "" where there
    is none: then nothing is pooled."""
    try:
        with open(BOOT_ID, "rb") as f:
            raw = f.read(64).decode("ascii").strip().replace("-", "")
    except (OSError, UnicodeDecodeError):
        return ""
    return raw[:12] if len(raw) >= 12 and all(c in "0123456789abcdef" for c in raw) else ""


# A free file's name carries the boot it was freed in, and writers claim only
# this boot's. tmp/ is never fsync'd: after a power loss an older state of it
# can come back with a free. name beside the msgs/ name of the same inode (the
# file was claimed and became a queued entry after that state was written).
# Without fsck the link count stays 1 and the one-link check cannot tell; a
# writer would overwrite a queued message. purge_tmp removes them at courierd's
# start too, but esmtpd may take mail before courierd runs.
BOOT = _boot_token()
FREE_ANY = "free."                  # any boot's: what purge_tmp removes
FREE = f"free.{BOOT}."              # claimable pool file in tmp/
HELD = "held."          # retired entry waiting for the msgs/ fsync
POOL_MAX = 512          # files in the pool (held and free), approximately
MAX_FILE = 256 * 1024   # octets: a larger delivered file is unlinked (disk space, not inodes)
RELIST_EVERY = 64       # remover: recount the pool after this many retirements
LIST_INTERVAL = 0.2     # writer: seconds between listings while the pool yields nothing
CLAIM_TRIES = 8         # writer: renames tried for one message before creating a file
STALE_AFTER = 4         # writer: misses in a row that make it list the pool again
OLD_FILE = 3600 * 10**9  # ns: a pool file older gets its mtime set at its claim (purge_tmp: 36 h)


def _pool_names(tmpdir: str, prefixes: str | tuple[str, ...] = FREE) -> list[str]:
    try:
        names = os.listdir(tmpdir)
    except OSError:
        return []
    return [n for n in names if n.startswith(prefixes)]


# -- the remover's side (courierd) --

class _Count:
    """Approximate number of pool files: retirements add one each, and a
    relisting every RELIST_EVERY calls learns what writers took meanwhile."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0
        self.calls = -1         # relist on the first call

    def take_slot(self, tmpdir: str) -> bool:
        with self.lock:
            if self.calls < 0 or self.calls >= RELIST_EVERY:
                self.n = len(_pool_names(tmpdir, (FREE, HELD)))
                self.calls = 0
            self.calls += 1
            if self.n >= POOL_MAX:
                return False
            self.n += 1
            return True


_counts: dict[str, _Count] = {}
_counts_lock = threading.Lock()


def hold(tmpdir: str, entry: str, qid: str) -> str | None:
    """Move a delivered entry file from msgs/ to tmp/held.<qid>; its path, or
    None if it may not go into the pool (pool full, not a regular file with one
    link owned by us, larger than MAX_FILE, gone, or the rename failed): then
    remove it as before. Why MAX_FILE: the pool keeps inodes, and would keep a
    large message's blocks with them (512 files of a 10 MB size limit: 5 GB
    of the file system the Maildirs share); a large message's own writing
    costs far more than its inode."""
    if not BOOT:
        return None
    with _counts_lock:
        count = _counts.get(tmpdir)
        if count is None:
            count = _counts[tmpdir] = _Count()
    try:
        st = os.lstat(entry)
    except OSError:
        return None
    if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid()
            or st.st_size > MAX_FILE):
        return None
    if not count.take_slot(tmpdir):
        return None
    held = f"{tmpdir}/{HELD}{qid}"
    try:
        os.rename(entry, held)
    except OSError:
        return None
    return held


def release(held: list[str], synced: bool) -> None:
    """After the msgs/ fsync covering their removal: make held files claimable.
    If that fsync failed, the removal may not be durable: unlink them instead."""
    for path in held:
        head, _, name = path.rpartition("/")
        try:
            if synced:
                os.rename(path, f"{head}/{FREE}{name[len(HELD):]}")
            else:
                os.unlink(path)
        except OSError:
            pass        # purged meanwhile; or left for purge_tmp


# -- the writer's side (SpoolWriter) --

class _Candidates:
    """This process's shuffled list of pool names from one listing (shuffled,
    so concurrent writers seldom race for the same file). The pool is
    released in batches (one per msgs/ fsync, DelayedDirSync.DELAY), so an
    empty one is listed again after LIST_INTERVAL, not for every message."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.listed_at = -LIST_INTERVAL
        self.fruitful = False       # the last listing found something
        self.dir_owner = -1

    def refill(self, tmpdir: str) -> bool:
        now = time.monotonic()
        if not self.fruitful and now - self.listed_at < LIST_INTERVAL:
            return False            # an empty pool is not listed for every message
        self.listed_at = now
        self.names = _pool_names(tmpdir)
        random.shuffle(self.names)
        self.fruitful = bool(self.names)
        if self.fruitful and os.geteuid() == 0:
            try:
                self.dir_owner = os.stat(tmpdir).st_uid
            except OSError:
                self.dir_owner = -1
        return self.fruitful


_candidates: dict[str, _Candidates] = {}


def _after_fork() -> None:
    # Children of one parent with the same list in the same order would all
    # try the same names; and the remover's count is the parent's.
    _candidates.clear()
    _counts.clear()


os.register_at_fork(after_in_child=_after_fork)


def claim(tmpdir: str, dest: str) -> tuple[int, int, int] | None:
    """Take a free pool file as `dest` (a new name in tmpdir) and open it for
    writing: (fd, its current size, its former message's mtime in ns), or None
    when the pool has nothing usable (the caller creates `dest` with O_EXCL;
    nothing is left at `dest`). The caller sets the mtime after its last
    write to a later one (courierlocal's journal tells files apart by it)."""
    if not BOOT:
        return None
    cands = _candidates.get(tmpdir)
    if cands is None:
        cands = _candidates[tmpdir] = _Candidates()
    relisted = False
    tries = 0
    while tries < CLAIM_TRIES:
        try:
            name = cands.names.pop()    # atomic: courierd's threads write DSNs too
        except IndexError:
            if relisted or not cands.refill(tmpdir):
                return None
            relisted = True
            continue
        tries += 1
        try:
            os.rename(f"{tmpdir}/{name}", dest)
        except FileNotFoundError:
            # Another writer's now. Every process lists the same names, so a
            # list goes stale fast while the pool is short: list again (once).
            if tries == STALE_AFTER and not relisted:
                cands.names.clear()
            continue
        except OSError:
            return None
        return _open_claimed(dest, cands.dir_owner)
    return None


def _open_claimed(path: str, dir_owner: int) -> tuple[int, int, int] | None:
    # O_NOFOLLOW: never write through a symlink; O_NONBLOCK: a FIFO fails at
    # once (ENXIO) instead of hanging the writer (no effect on a regular file).
    fd = -1
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        euid = os.geteuid()
        owner_ok = st.st_uid == euid or (euid == 0 and st.st_uid == dir_owner)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and owner_ok:
            # Its mtime is its former message's: an old one is set to now, so
            # that purge_tmp (by mtime) never takes a file being written for a
            # leftover (a small message is written only at its commit).
            if st.st_mtime_ns < time.time_ns() - OLD_FILE:
                os.utime(fd)
            return fd, st.st_size, st.st_mtime_ns
    except OSError:
        pass
    if fd >= 0:
        os.close(fd)
    try:
        os.unlink(path)
    except IsADirectoryError:
        try:
            os.rmdir(path)
        except OSError:
            pass            # SpoolWriter then takes another name
    except OSError:
        pass
    return None
