"""courierd's pickup: messages users left in SPOOLDIR/maildrop/ into the spool.

sendmail run by a user who may not write the spool (anyone but root and the
daemon account) leaves the message in the maildrop (maildrop.py has the
format and the directory's modes). Here, as the daemon account, each complete
file is taken:

1. lstat: a regular file (a symlink, FIFO, device or directory is quarantined,
   never followed or opened), group-readable (complete; one left incomplete
   for 36 hours is quarantined);
2. open with O_NOFOLLOW|O_NONBLOCK, fstat: the same inode, one link (a hard
   link could pass another user's file off as theirs), owned by an account in
   the password database: that owner is the submitter, whatever the file says;
3. the envelope block parsed strictly, the sender checked against what the
   owner may use (localsubmit.py), the size against `sizelimit`;
4. the message written with SpoolWriter, our Received: line first, committed
   (fsync), and only then the maildrop file removed. A crash between the two
   queues the message twice, SMTP's at-least-once; never zero times.

A file failing 1-3 is moved to SPOOLDIR/quarantine/ (0700) with a log line
naming its owner and why, never deleted. A spool write that fails leaves the
file for the next scan. Pickup scans at start, whenever inotify says the
directory changed, and every RESCAN seconds (courierd's key, 60).
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import os
import pwd
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from courier_deliver.dirwatch import open_dirwatch
from courier_deliver.localsubmit import (
    TRUSTED_USERS_FILE,
    Submitter,
    is_trusted,
    received_line,
    refusal,
    sender_allowed,
)
from courier_deliver.maildrop import (
    COMPLETE_BIT,
    DIR_MODE,
    DIRNAME,
    MAX_BLOCK,
    MaildropError,
    read_block,
)

from libcourier.config import ConfigError
from libcourier.config.control import read_control_file, read_control_value
from libcourier.durable import fsync_dir
from libcourier.spool import SpoolError, SpoolWriter
from libcourier.spool.queue import QUARANTINE

logger = logging.getLogger("courier.courierd")

STALE_AFTER = 36 * 3600          # an incomplete file this old was abandoned (purge_tmp's age)
DEFAULT_SIZELIMIT = 10 * 1024 * 1024   # Courier's `sizelimit` default
HEADER_ALLOWANCE = 8192          # headers sendmail added beyond the user's message
READ_CHUNK = 64 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def shown(name: str) -> str:
    """A file name as logged: a user chose it, so no line breaks or controls."""
    return _SAFE.sub("_", name)[:80]


class Rejected(Exception):
    """A hostile or broken maildrop file: quarantine it."""


@dataclass(frozen=True, slots=True)
class Settings:
    me: str
    domains: tuple[str, ...]          # where a user's own address may be
    sizelimit: int                    # 0: none
    trusted: tuple[str, ...]          # logins from `trustedusers`


def read_settings(etc: Path) -> Settings:
    """The control files pickup needs, read at each scan (they are small)."""
    me = (read_control_value(etc / "me") or os.uname().nodename).lower()
    domain = (read_control_value(etc / "defaultdomain") or me).lower()
    raw = read_control_value(etc / "sizelimit")
    sizelimit = int(raw) if raw is not None and raw.isdigit() else DEFAULT_SIZELIMIT
    try:
        trusted = tuple(read_control_file(etc / TRUSTED_USERS_FILE))
    except ConfigError as e:
        logger.error("%s; nobody is trusted until it is fixed", e)
        trusted = ()
    return Settings(me, (me, domain), sizelimit, trusted)


def prepare_dirs(spooldir: Path) -> tuple[Path, Path]:
    """Make maildrop/ (3733) and quarantine/ (0700); let others search SPOOLDIR
    (o+x only: they still cannot list it, and tmp/ msgs/ stay 0750)."""
    spooldir = Path(spooldir)
    drop, bad = spooldir / DIRNAME, spooldir / QUARANTINE
    for d, mode in ((drop, DIR_MODE), (bad, 0o700)):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        if not stat.S_ISDIR(d.lstat().st_mode):
            raise OSError(errno.ENOTDIR, f"{d} is not a directory")
        os.chmod(d, mode)
    mode = stat.S_IMODE(spooldir.stat().st_mode)
    if not mode & 0o001:
        os.chmod(spooldir, mode | 0o001)
    return drop, bad


class Pickup:
    def __init__(self, spooldir: Path, etc: Path, *, clock: Callable[[], float] = time.time):
        self.spooldir = Path(spooldir)
        self.etc = Path(etc)
        self.dropdir = self.spooldir / DIRNAME
        self.quarantine_dir = self.spooldir / QUARANTINE
        self.clock = clock
        self._stuck: set[str] = set()   # could not be quarantined: do not log it every scan
        # Queued but the file could not be removed: never queue it a second time.
        self._taken: set[tuple[int, int]] = set()

    def scan(self, on_queued: Callable[[str], None] | None = None) -> list[str]:
        """Take every complete file; returns the queue ids made (each also passed
        to on_queued at once). The directory is streamed, not listed whole: a
        user's flood of incomplete files costs an lstat each, never a busy loop."""
        try:
            settings = read_settings(self.etc)
        except ConfigError as e:
            logger.error("maildrop: %s; files wait until it is fixed", e)
            return []
        qids: list[str] = []
        try:
            with os.scandir(self.dropdir) as entries:
                for entry in entries:
                    try:
                        qid = self.take(entry.name, settings)
                    except Exception:  # noqa: BLE001 - our bug: keep the file, log, go on
                        logger.exception("maildrop %s: pickup failed", shown(entry.name))
                        continue
                    if qid is not None:
                        qids.append(qid)
                        if on_queued is not None:
                            on_queued(qid)
        except OSError as e:
            logger.error("cannot list %s: %s", self.dropdir, e.strerror or e)
        return qids

    def take(self, name: str, settings: Settings) -> str | None:
        path = self.dropdir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if (st.st_dev, st.st_ino) in self._taken:
            return None
        uid = st.st_uid
        try:
            if not stat.S_ISREG(st.st_mode):
                raise Rejected("not a regular file (symlink, FIFO, device or directory)")
            if not st.st_mode & COMPLETE_BIT:
                if self.clock() - st.st_mtime > STALE_AFTER:
                    raise Rejected("left incomplete for 36 hours")
                return None             # still being written
            return self._spool(path, st, settings)
        except Rejected as e:
            self._quarantine(name, uid, str(e))
            return None
        except (SpoolError, OSError) as e:
            # Our trouble (disk full, spool unwritable): keep the file, try again later.
            logger.error("maildrop %s: cannot queue it now: %s", shown(name), e)
            return None

    def _spool(self, path: Path, st: os.stat_result, settings: Settings) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EACCES, errno.EPERM):
                raise Rejected(f"cannot be opened safely: {e.strerror}") from None
            raise
        with os.fdopen(fd, "rb") as fh:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or \
                    not stat.S_ISREG(fst.st_mode):
                raise Rejected("replaced while being opened")
            if fst.st_nlink != 1:
                raise Rejected(f"has {fst.st_nlink} links (a hard link is not a submission)")
            try:
                login = pwd.getpwuid(fst.st_uid).pw_name
            except KeyError:
                raise Rejected("not owned by an account in the password database") from None
            who = Submitter(fst.st_uid, login,
                            is_trusted(fst.st_uid, login, daemon_uid=os.geteuid(),
                                       trusted_logins=settings.trusted))
            limit = settings.sizelimit + HEADER_ALLOWANCE if settings.sizelimit else 0
            if limit and fst.st_size > limit + MAX_BLOCK:
                raise Rejected(f"larger than the size limit ({settings.sizelimit} bytes)")
            try:
                env = read_block(fh)
            except MaildropError as e:
                raise Rejected(f"malformed: {e}") from None
            if not sender_allowed(who, env.sender, settings.domains):
                raise Rejected(refusal(who, env.sender))
            qid = self._write(fh, who, env, settings, limit)
        logger.info("id=%s: from maildrop %s, user %s (uid %d), sender <%s>, %d recipient(s)",
                    qid, shown(path.name), who.login, who.uid, env.sender, len(env.recipients))
        try:
            os.unlink(path)
            fsync_dir(self.dropdir)
        except FileNotFoundError:
            pass
        except OSError as e:
            self._taken.add((st.st_dev, st.st_ino))
            logger.error("id=%s: maildrop %s is queued but cannot be removed: %s; "
                         "remove it by hand before courierd restarts", qid, shown(path.name),
                         e.strerror or e)
        return qid

    def _write(self, fh, who: Submitter, env, settings: Settings, limit: int) -> str:
        now = datetime.now().astimezone()
        writer = SpoolWriter(self.spooldir, 0)
        try:
            # The data may fill sendmail's limit exactly; our Received: line comes on top.
            received = received_line(who, settings.me, email.utils.format_datetime(now),
                                     writer.qid)
            writer.max_size = limit + len(received) if limit else 0
            writer.write(received)
            eight_bit = False
            while True:
                chunk = fh.read(READ_CHUNK)
                if not chunk:
                    break
                writer.write(chunk)
                eight_bit = eight_bit or not chunk.isascii()
                if writer.too_big:
                    raise Rejected(f"larger than the size limit ({settings.sizelimit} bytes)")
            return writer.commit(env.spool_envelope(
                now.timestamp(), eight_bit, f"local uid={who.uid} user={who.login} maildrop"))
        finally:
            writer.abort()      # a no-op after commit

    def _quarantine(self, name: str, uid: int | None, reason: str) -> None:
        dest = self.quarantine_dir / f"maildrop.{int(self.clock())}.{_SAFE.sub('_', name)[:64]}"
        n = 0
        while os.path.lexists(dest) and n < 100:
            n += 1
            dest = dest.with_name(f"{dest.name.rsplit('~', 1)[0]}~{n}")
        try:
            # rename moves the entry itself: a symlink stays a symlink, nothing is followed.
            os.rename(self.dropdir / name, dest)
            fsync_dir(self.quarantine_dir)
            fsync_dir(self.dropdir)
        except FileNotFoundError:
            return
        except OSError as e:
            if name not in self._stuck:
                self._stuck.add(name)
                logger.error("maildrop %s (uid %s): %s; cannot quarantine it: %s",
                             shown(name), uid, reason, e.strerror or e)
            return
        self._stuck.discard(name)
        logger.warning("maildrop %s (uid %s) quarantined as %s: %s",
                       shown(name), uid, dest.name, reason)


async def run_pickup(spooldir: Path, etc: Path, announce: Callable[[str], None],
                     interval: Callable[[], float]) -> None:
    """courierd's pickup task: scan now, on every inotify event, and every interval()."""
    try:
        prepare_dirs(spooldir)
    except OSError as e:
        logger.error("maildrop: cannot prepare %s: %s; users cannot submit mail",
                     spooldir, e.strerror or e)
        return
    pickup = Pickup(spooldir, etc)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    watch = open_dirwatch(pickup.dropdir)
    if watch is not None:
        def on_event() -> None:
            watch.drain()
            wake.set()
        loop.add_reader(watch.fd, on_event)
    def queued(qid: str) -> None:      # called in the scanning thread
        loop.call_soon_threadsafe(announce, qid)

    try:
        while True:
            wake.clear()
            try:
                await asyncio.to_thread(pickup.scan, queued)
            except Exception:  # noqa: BLE001 - our bug: log it, keep the task (and files)
                logger.exception("maildrop: scan failed")
            try:
                await asyncio.wait_for(wake.wait(), max(1.0, interval()))
            except TimeoutError:
                pass
    finally:
        if watch is not None:
            loop.remove_reader(watch.fd)
            watch.close()
