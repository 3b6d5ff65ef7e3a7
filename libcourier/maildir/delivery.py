"""Deliver one message into a Maildir, crash-safely (maildir(5), FORMATS.md §3.3).

The sequence is Courier's deliverquota / maildir(5)'s (DESIGN.md §5: write
in tmp/, fsync, link or rename into new/):

1. create an unnamed file in tmp/ (O_TMPFILE, 0600: `libcourier.maildir.unnamed`)
   and stream the message into it;
2. fsync the file: only now is the content durable;
3. link it into new/<unique>V..I..,S=<size> (linkat of /proc/self/fd/N),
   and fsync it again: its first fsync wrote its inode with no link, and on
   ext4 without a journal nothing else writes the new link count before a
   crash (fsck then frees the inode and clears its name in new/);
4. fsync new/, so the directory entry survives a crash too.

The unnamed file is written in tmp/'s file system, as Courier's tmp/<unique>
is, but with no name until step 3: its inode is allocated without taking
tmp/'s directory lock (on ext4 without a journal, an allocation in a group
full of recently freed inodes costs ~0.7 ms of CPU, and every other writer
into that tmp/ used to wait on the lock meanwhile), and no tmp/ entry is made
and removed. Where the system refuses O_TMPFILE or the /proc link (old
kernels, NFS, no /proc: remembered for the process), step 1 creates
tmp/<unique> with O_EXCL as Courier does, and step 3 links it (rename if the
link is refused, e.g. a filesystem without hard links) and unlinks the tmp
name.

A reader only ever sees complete files in new/: anything that fails before
step 3 closes the file (an unnamed one vanishes) or removes the tmp file, and
raises DeliveryError. A crash leaves no name at all for an unnamed file (the
kernel's orphan list frees it on ext4 with a journal, fsck without), or at
most a stale tmp/ file, which readers purge after 36 hours.

Messages are stored with LF line ends (the Maildir convention): CRLF is turned
into LF while streaming; every other byte (a lone CR, 8-bit data) is kept.
The message is never read whole into memory.

Several messages at once (courierlocal's batches): stage_to_maildir does
step 1 for each, publish_staged steps 2-4 for all, with one fsync of new/.
"""

from __future__ import annotations

import email.utils
import errno
import os
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from libcourier.durable import fsync_dir as _fsync_dir  # a module name the tests patch
from libcourier.durable import unlink_quiet, write_all
from libcourier.maildir import quota, unnamed
from libcourier.maildir.names import unique_name

CHUNK = 64 * 1024
MAX_NAME_TRIES = 20  # EEXIST retries with a fresh counter before giving up


class DeliveryError(Exception):
    """A delivery failed; `temporary` says whether trying again later may succeed."""

    def __init__(self, temporary: bool, text: str):
        super().__init__(text)
        self.temporary = temporary
        self.text = text


class CRLFToLF:
    """Streaming CRLF -> LF; a CR at a chunk end waits for the next chunk."""

    __slots__ = ("_cr",)

    def __init__(self) -> None:
        self._cr = False

    def feed(self, data: bytes) -> bytes:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            self._cr = True
            data = data[:-1]
        return data.replace(b"\r\n", b"\n")

    def finish(self) -> bytes:
        """A CR at the very end of the message was not part of a CRLF: keep it."""
        if self._cr:
            self._cr = False
            return b"\r"
        return b""


def _chunks(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    if hasattr(source, "read"):
        while True:
            block = source.read(CHUNK)  # type: ignore[union-attr]
            if not block:
                return
            yield block
    else:
        yield from source  # type: ignore[misc]


def _temporary(err: OSError) -> bool:
    # A missing or unwritable mailbox is a setup problem an admin can fix, a
    # full disk or quota frees up: Courier defers all of these. Only a name
    # that is too long or not a directory is a permanent fault of the config.
    return err.errno not in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)


def _is_complete(maildir: Path) -> bool:
    """tmp/, new/ and cur/ are all directories: three stats, the common case
    of every delivery (rather than four refused mkdirs and four stats)."""
    base = os.fspath(maildir)
    for sub in ("/tmp", "/new", "/cur"):
        try:
            if not stat.S_ISDIR(os.stat(base + sub).st_mode):
                return False
        except OSError:
            return False
    return True


def ensure_maildir(maildir: Path) -> None:
    """Create maildir/{tmp,new,cur} (0700) if missing; the parent of the Maildir must exist.
    A new `.Name` inside a Maildir is a Maildir++ folder: it gets its `maildirfolder`
    file, as `maildirmake -f` makes it, so its quota is counted in the parent's."""
    if _is_complete(maildir):
        return
    created = False
    for sub in ("", "tmp", "new", "cur"):
        d = maildir / sub if sub else maildir
        try:
            os.mkdir(d, 0o700)
            created = True
            if not sub and maildir.name.startswith(".") and (maildir.parent / "cur").is_dir():
                os.close(os.open(maildir / quota.MAILDIRFOLDER,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            if not d.is_dir():
                raise DeliveryError(False, f"{d} exists and is not a directory") from None
        except OSError as e:
            raise DeliveryError(_temporary(e), f"cannot create {d}: {e.strerror}") from None
    if created:
        try:
            _fsync_dir(maildir)
            _fsync_dir(maildir.parent)
        except OSError as e:
            raise DeliveryError(True, f"cannot sync {maildir}: {e.strerror}") from None


def _create(tmpdir: str) -> tuple[int, str, bool]:
    """Step 1's file: (fd, unique name, whether the file is tmpdir/<name>)."""
    fd = unnamed.open_in(tmpdir)
    if fd is not None:
        return fd, unique_name(), False
    fd, name = _create_tmp(tmpdir)
    return fd, name, True


def _create_tmp(tmpdir: str) -> tuple[int, str]:
    for _ in range(MAX_NAME_TRIES):
        name = unique_name()
        try:
            fd = os.open(f"{tmpdir}/{name}",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
        except FileExistsError:
            continue  # the next call takes the next counter value
        return fd, name
    raise DeliveryError(True, f"cannot find a free name in {tmpdir}")


def deliver_to_maildir(maildir: Path, chunks: Iterable[bytes] | BinaryIO, *,
                       prefix: bytes = b"") -> str:
    """Store prefix + message in maildir/new; return the new file's name (no directory)."""
    maildir = Path(maildir)
    ensure_maildir(maildir)
    return _deliver_ensured(maildir, chunks, prefix)


def _deliver_ensured(maildir: Path, chunks: Iterable[bytes] | BinaryIO, prefix: bytes) -> str:
    """deliver_to_maildir once ensure_maildir has run."""
    name = publish_staged([stage_to_maildir(maildir, chunks, prefix=prefix)])[0]
    if isinstance(name, DeliveryError):
        raise name
    return name


@dataclass(slots=True)
class Staged:
    """A message written in a Maildir's tmp/ (step 1), not yet fsync'd nor
    linked: publish_staged finishes it. Holds the open file: an unnamed one,
    or tmp/<name> where the system refuses those (module docstring)."""
    maildir: str
    fd: int
    name: str           # the unique name the name in new/ is made from
    size: int
    in_tmp: bool        # the file is tmp/<name> (else it has no name yet)

    def tmppath(self) -> str | None:
        return f"{self.maildir}/tmp/{self.name}" if self.in_tmp else None


def stage_to_maildir(maildir: Path, chunks: Iterable[bytes] | BinaryIO, *,
                     prefix: bytes = b"") -> Staged:
    """Step 1 of deliver_to_maildir (ensure_maildir first): prefix + message in tmp/.
    Raises DeliveryError (nothing left behind)."""
    # Plain strings: this runs for every message, and pathlib's parsing cost
    # more than the system calls that use the paths.
    base_dir = os.fspath(maildir)
    fd, name, in_tmp = _create(f"{base_dir}/tmp")
    try:
        size = 0
        conv = CRLFToLF()
        if prefix:
            write_all(fd, prefix)
            size += len(prefix)
        for chunk in _chunks(chunks):
            out = conv.feed(bytes(chunk))
            write_all(fd, out)
            size += len(out)
        tail = conv.finish()
        write_all(fd, tail)
        size += len(tail)
    except BaseException as e:
        os.close(fd)
        _cleanup(f"{base_dir}/tmp/{name}" if in_tmp else None, None)
        if isinstance(e, OSError):
            raise DeliveryError(_temporary(e),
                                f"cannot deliver to {maildir}: {e.strerror}") from None
        raise
    return Staged(base_dir, fd, name, size, in_tmp)


def publish_staged(batch: list[Staged]) -> list[str | DeliveryError]:
    """Steps 2-4 for several staged messages: fsync each file, link each into
    new/, then fsync each new/ once for all its files. The file name in new/,
    or the DeliveryError, for each (in order): one message's failure is its
    own; a failed fsync of new/ withdraws the files linked into it. Writing
    all the files before the first fsync lets one journal commit carry them
    all (ext4 measured: 32 files, 0.23 ms each, against 2.5 ms for an fsync
    per file written alone), and new/ is fsync'd once, not once a message."""
    out: list[str | DeliveryError] = []
    unsettled: list[tuple[int, int]] = []      # (index, fd): unnamed files linked, fd open
    done = 0
    try:
        for s in batch:
            done += 1
            try:
                name, fd = _link_staged(s)
            except DeliveryError as e:
                out.append(e)
                continue
            out.append(name)
            if fd is not None:
                unsettled.append((len(out) - 1, fd))
        # An unnamed file's first fsync wrote its inode with no link: on ext4
        # without a journal nothing else writes the link count of 1 before a
        # crash (the fsync of new/ writes new/), and fsck frees an inode it
        # finds with none, clearing its name in new/: the message lost. So
        # each is fsync'd again once linked; after all the links, files that
        # share an inode-table block share its write.
        while unsettled:
            i, fd = unsettled.pop()
            try:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                _cleanup(None, f"{batch[i].maildir}/new/{out[i]}")
                out[i] = DeliveryError(_temporary(e), f"cannot deliver to "
                                       f"{batch[i].maildir}: {e.strerror}")
        in_dir: dict[str, list[int]] = {}      # new/ -> indexes of the files linked into it
        for i, name in enumerate(out):
            if isinstance(name, str):
                in_dir.setdefault(f"{batch[i].maildir}/new", []).append(i)
        for newdir, idx in in_dir.items():
            try:
                _fsync_dir(newdir)
            except OSError as e:
                for i in idx:
                    _cleanup(None, f"{newdir}/{out[i]}")
                    out[i] = DeliveryError(_temporary(e), f"cannot deliver to "
                                           f"{newdir[:-4]}: {e.strerror}")
            except BaseException:
                for i in idx:
                    _cleanup(None, f"{newdir}/{out[i]}")
                raise
    finally:
        for _, fd in unsettled:
            os.close(fd)
        discard_staged(batch[done:])
    return out


def discard_staged(batch: list[Staged]) -> None:
    """Give up staged messages: close them (an unnamed file vanishes) and
    remove their tmp files."""
    for s in batch:
        try:
            os.close(s.fd)
        except OSError:
            pass
        _cleanup(s.tmppath(), None)


def _final_name(name: str, st: os.stat_result, size: int) -> str:
    base = name.split(".", 2)
    # Insert V<dev>I<ino> before the host part: time.MusecPpid[_n]VdevIino.host
    return f"{base[0]}.{base[1]}V{st.st_dev:016X}I{st.st_ino:016X}.{base[2]},S={size}"


def _link_staged(s: Staged) -> tuple[str, int | None]:
    """fsync one staged file and link it into new/ (not fsync'd): its new
    name, and for an unnamed file its fd, left open for publish_staged to
    fsync it again and close it."""
    if s.in_tmp:
        return _link_named(s), None
    copy: Staged | None = None
    try:
        os.fsync(s.fd)
        st = os.fstat(s.fd)
        final = _final_name(s.name, st, s.size)
        target = f"{s.maildir}/new/{final}"
        try:
            unnamed.link(s.fd, target)
            return final, s.fd
        except FileExistsError:
            raise DeliveryError(True, f"{target} already exists") from None
        except unnamed.LinkRefused:
            # This system may not name unnamed files: this one goes
            # through a named copy; if that works, the next ones are named.
            copy = _named_copy(s)
    except BaseException as e:
        discard_staged([s])         # closed, the unnamed file vanishes
        if isinstance(e, OSError):
            raise DeliveryError(_temporary(e),
                                f"cannot deliver to {s.maildir}: {e.strerror}") from None
        raise
    discard_staged([s])
    final = _link_named(copy)
    unnamed.refused()       # the named file worked: the refusal was this system's
    return final, None


def _named_copy(s: Staged) -> Staged:
    """s's bytes in a new tmp/<unique> file (not fsync'd), read back from its fd."""
    fd, name = _create_tmp(f"{s.maildir}/tmp")
    copy = Staged(s.maildir, fd, name, s.size, True)
    try:
        for block in unnamed.read_back(s.fd, s.size, CHUNK):
            write_all(fd, block)
    except BaseException:
        discard_staged([copy])
        raise
    return copy


def _link_named(s: Staged) -> str:
    """_link_staged for a file in tmp/ (link it into new/, remove the tmp name)."""
    tmppath = f"{s.maildir}/tmp/{s.name}"
    target: str | None = None
    linked: str | None = None
    try:
        try:
            os.fsync(s.fd)
            st = os.fstat(s.fd)
        finally:
            os.close(s.fd)
        if not stat.S_ISREG(st.st_mode):
            raise DeliveryError(True, f"{tmppath} is not a regular file")
        final = _final_name(s.name, st, s.size)
        target = f"{s.maildir}/new/{final}"
        try:
            os.link(tmppath, target)
            linked = target
            os.unlink(tmppath)
        except FileExistsError:
            raise DeliveryError(True, f"{target} already exists") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                raise
            # No hard links here: rename is atomic too, it just cannot refuse
            # to overwrite; the inode in the name makes a clash impossible.
            os.rename(tmppath, target)
            linked = target
        return final
    except DeliveryError:
        _cleanup(tmppath, linked)
        raise
    except OSError as e:
        _cleanup(tmppath, linked)
        raise DeliveryError(_temporary(e),
                            f"cannot deliver to {s.maildir}: {e.strerror}") from None
    except BaseException:
        _cleanup(tmppath, linked)
        raise


def _cleanup(tmppath: str | None, linked: str | None) -> None:
    # A failure after the link (the directory fsync) withdraws the file too:
    # the caller will retry, and a duplicate is worse than a retry.
    unlink_quiet(tmppath)
    unlink_quiet(linked)


class OverQuota(DeliveryError):
    """The Maildir is over its Maildir++ quota: temporary (Courier defers it, and the
    queue bounces it once queuetime has passed)."""

    def __init__(self, maildir: Path):
        super().__init__(True, f"{maildir}: mailbox is over quota")


def deliver_with_quota(maildir: Path, chunks: Iterable[bytes] | BinaryIO, size: int, *,
                       prefix: bytes = b"", newquota: str | None = None) -> str:
    """deliver_to_maildir with Courier's quota rules (quota.check_add before, the
    maildirsize line after). `size` is the message's size as far as it is known
    before writing (the spool file's; CRLF to LF only makes it smaller);
    `newquota` is the account's quota (authd QUOTA=), None to use maildirsize's.
    Raises OverQuota."""
    name = deliver_or_stage(maildir, chunks, size, prefix=prefix, newquota=newquota,
                            stage=False)
    assert isinstance(name, str)
    return name


def deliver_or_stage(maildir: Path, chunks: Iterable[bytes] | BinaryIO, size: int, *,
                     prefix: bytes = b"", newquota: str | None = None,
                     stage: bool = True, unquoted: set[str] | None = None) -> str | Staged:
    """deliver_with_quota, but a Maildir that keeps no quota gets the message only
    staged (stage_to_maildir: publish_staged finishes it, with others). One that
    keeps a quota is delivered at once, as before: its next message's check
    must count this one. `unquoted`: Maildirs this batch already found complete
    and without quota (the next message to one skips the four stats and the
    maildirsize open; a quota appearing meanwhile applies from the next batch,
    as for a delivery already running). Raises OverQuota, DeliveryError."""
    if stage and unquoted is not None and os.fspath(maildir) in unquoted:
        return stage_to_maildir(maildir, chunks, prefix=prefix)
    maildir = Path(maildir)
    ensure_maildir(maildir)         # maildirsize may have to be made in it first
    counted = quota.counts_folder(maildir)
    if counted:
        try:
            check = quota.check_add(maildir, size + len(prefix), 1, newquota)
        except OSError as e:
            raise DeliveryError(True, f"{maildir}: cannot read the quota: {e.strerror}") from None
        if not check.allowed:
            raise OverQuota(maildir)
        # No quota on this Maildir: nothing to record after (Courier's
        # maildir_quota_add_end is a no-op then too).
        counted = check.usage is not None
    if stage and not counted:
        if unquoted is not None:
            unquoted.add(os.fspath(maildir))
        return stage_to_maildir(maildir, chunks, prefix=prefix)
    name = _deliver_ensured(maildir, chunks, prefix)
    if counted:
        try:
            quota.add_end(maildir, quota.message_size(name), 1)
        except OSError:
            pass            # the message is in; a recount will fix the sum
    return name


MAX_WARNING_BYTES = 64 * 1024


def deliver_quota_warning(maildir: Path, percent: int, msgfile: Path | None) -> str | None:
    """deliverquota -w: when the Maildir is at least `percent` full, put the text of
    `msgfile` (Courier's quotawarnmsg) into INBOX with Date: and Message-Id: added,
    at most once a day; counted in the quota but delivered even when over it.
    Returns the new file's name, or None when no warning was due or there is no
    message file (Courier stays silent then too)."""
    if msgfile is None:
        return None
    try:
        with open(msgfile, "rb") as f:
            text = f.read(MAX_WARNING_BYTES)
    except OSError:
        return None
    root = quota.quota_root(Path(maildir))
    if not quota.warning_due(root, percent):
        return None
    now = time.time()
    head = (f"Date: {email.utils.formatdate(now, localtime=True)}\n"
            f"Message-Id: <{int(now)}.overquota@{socket.gethostname()}>\n").encode("ascii")
    name = deliver_to_maildir(root, [text], prefix=head)
    quota.add_end(root, quota.message_size(name), 1)
    return name
