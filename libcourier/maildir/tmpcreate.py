"""A message file written in a Maildir's tmp/ and renamed into cur/: what
IMAP APPEND and COPY store, into a folder or a shared folder (Courier's
maildircreate.c, maildir_tmpcreate, then rename). Delivery into new/ is
libcourier.maildir.delivery's (CRLF to LF, the link, its own error kinds).

The steps (STYLE.md principle 6):

1. create an unnamed file in tmp/ (O_TMPFILE: `libcourier.maildir.unnamed`,
   so the inode is allocated without holding tmp/'s lock, and nothing in tmp/
   can be overwritten or purged); stream the message in; fsync it;
2. give it its name in cur/ (a link of /proc/self/fd/N, which, unlike a
   rename, never replaces a file; the caller may do this later, e.g. under
   the folder's flock, once the final name is known from the file's inode);
3. only then set its dates (INTERNALDATE): an old mtime on a file still in
   tmp/ would let a concurrent scan purge it as a stale leftover before the
   rename (commit 340d235; an unnamed file cannot be purged, and the order
   is kept for the fallback); an unnamed file is then fsync'd again, for its
   link count (its first fsync wrote 0: on ext4 without a journal fsck would
   free it after a crash, clearing its name in cur/);
4. the caller fsyncs cur/ once for all the messages it placed.

Where the system refuses O_TMPFILE or the /proc link (remembered for the
process), step 1 creates tmp/<name> with O_EXCL, so a leftover or a
concurrent writer is never overwritten, and step 2 renames it into cur/, as
Courier does. A crash before step 2 leaves no name for an unnamed file (the
kernel's orphan list frees it on ext4 with a journal, fsck without).

Anything failing before step 2 closes the unnamed file (it vanishes) or
removes the tmp file, and the error goes to the caller as it was raised
(each caller maps it to its own answer).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from libcourier.durable import unlink_quiet, write_all
from libcourier.maildir import unnamed

CHUNK = 1 << 20           # bytes read from a source file at a time


@dataclass(slots=True)
class TmpMessage:
    """A message written and fsync'd in tmp/, not yet in cur/. As a context
    manager: discarded if the block fails before it was renamed; an unnamed
    file not renamed by the end of the block is discarded too (it is closed)."""
    path: Path                    # tmp/<name>: the file, or (fd open) the name a copy takes
    stat: os.stat_result          # of the written file (st_dev, st_ino for the final name)
    mode: int = 0o600
    fd: int | None = None         # the unnamed file, open until it has its name

    def rename(self, target: Path, *, mtime: float | None = None,
               stat_from: Path | None = None) -> None:
        """Into `target` (in cur/; an unnamed file never replaces one there:
        FileExistsError); then the dates: `mtime` as both atime and mtime, or
        all of `stat_from`'s dates and mode (shutil.copystat, a COPY keeping
        its source's INTERNALDATE)."""
        if self.fd is None:
            os.rename(self.path, target)
        else:
            try:
                unnamed.link(self.fd, os.fspath(target))
            except unnamed.LinkRefused:
                # This system may not name unnamed files: a named copy in tmp/
                # is renamed as before; if that works, the next ones are named.
                self._named_copy()
                os.rename(self.path, target)
                unnamed.refused()
        try:
            # The dates are set once in cur/ (module docstring, step 3).
            if stat_from is not None:
                shutil.copystat(stat_from, target)
            elif mtime is not None:
                os.utime(target, (mtime, mtime))
            if self.fd is not None:
                # The first fsync wrote the inode with no link: on ext4 without a
                # journal only the file's own fsync writes its link count (the
                # caller's fsync of cur/ writes cur/), and fsck frees an inode
                # found with none, clearing its name: the message lost.
                try:
                    os.fsync(self.fd)
                finally:
                    self._close()
        except BaseException:
            # The caller answers the failure: no message in cur/ it was not told of.
            unlink_quiet(target)
            raise

    def discard(self) -> None:
        """Close the unnamed file (it vanishes) or remove the tmp file (nothing
        to do once it was renamed)."""
        if self.fd is not None:
            self._close()
        else:
            unlink_quiet(self.path)

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def _named_copy(self) -> None:
        """The unnamed file's bytes into self.path (O_EXCL, fsync'd); then it
        is closed and self.path is the message."""
        if self.fd is not None:
            _write(self.path, self.mode,
                   unnamed.read_back(self.fd, self.stat.st_size, CHUNK))
            self._close()

    def __enter__(self) -> TmpMessage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None or self.fd is not None:
            self.discard()


def write_tmp(folder: Path, name: str, source: bytes | os.PathLike[str], *,
              mode: int = 0o600) -> TmpMessage:
    """Step 1: an unnamed file in folder/tmp/ (where the system refuses those:
    folder/tmp/<name>) holding `source` (the bytes, or the contents of the
    file at that path, streamed; a symlink is followed), fsync'd, with `mode`
    (group and other bits in it are set whatever the umask). Raises OSError
    (FileExistsError: tmp/<name> is taken; FileNotFoundError: the source file
    is gone) with nothing left in tmp/."""
    tmp = Path(folder) / "tmp" / name
    if not isinstance(source, os.PathLike | str):
        return _write(tmp, mode, (source,), unnamed_ok=True)
    with open(source, "rb") as fin:          # first: a vanished source creates nothing
        return _write(tmp, mode, iter(lambda: fin.read(CHUNK), b""), unnamed_ok=True)


def _write(tmp: Path, mode: int, chunks: Iterable[bytes], *,
           unnamed_ok: bool = False) -> TmpMessage:
    fd = unnamed.open_in(os.fspath(tmp.parent), mode) if unnamed_ok else None
    named = fd is None
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if mode & 0o077:
                os.fchmod(fd, mode)      # the umask may have taken bits others need
            for chunk in chunks:
                write_all(fd, chunk)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            if named:
                os.close(fd)
    except BaseException:
        if named:
            unlink_quiet(tmp)
        else:
            os.close(fd)                 # it vanishes
        raise
    # An unnamed file stays open: its fd is the only way to it until it is named.
    return TmpMessage(tmp, st, mode, None if named else fd)

