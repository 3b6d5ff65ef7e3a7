"""A message file written in a Maildir's tmp/ and renamed into cur/: what
IMAP APPEND and COPY store, into a folder or a shared folder (Courier's
maildircreate.c, maildir_tmpcreate, then rename). Delivery into new/ is
libcourier.maildir.delivery's (CRLF to LF, the link, its own error kinds).

The steps (STYLE.md principle 6):

1. create tmp/<name> with O_EXCL, so a leftover or a concurrent writer is
   never overwritten; stream the message in; fsync it;
2. rename it into cur/ (the caller may do this later, e.g. under the
   folder's flock, once the final name is known from the file's inode);
3. only then set its dates (INTERNALDATE): an old mtime while the file is
   still in tmp/ would let a concurrent scan purge it as a stale leftover
   before the rename (commit 340d235);
4. the caller fsyncs cur/ once for all the messages it placed.

Anything failing before the rename removes the tmp file, and the error goes
to the caller as it was raised (each caller maps it to its own answer).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from libcourier.durable import write_all

CHUNK = 1 << 20           # bytes read from a source file at a time


@dataclass(slots=True)
class TmpMessage:
    """A message written and fsync'd in tmp/, not yet in cur/. As a context
    manager: removed from tmp/ if the block fails before it was renamed."""
    path: Path
    stat: os.stat_result          # of the written file (st_dev, st_ino for the final name)

    def rename(self, target: Path, *, mtime: float | None = None,
               stat_from: Path | None = None) -> None:
        """Into `target` (in cur/); then the dates: `mtime` as both atime and
        mtime, or all of `stat_from`'s dates and mode (shutil.copystat, a COPY
        keeping its source's INTERNALDATE)."""
        os.rename(self.path, target)
        # The dates are set once in cur/ (module docstring, step 3).
        if stat_from is not None:
            shutil.copystat(stat_from, target)
        elif mtime is not None:
            os.utime(target, (mtime, mtime))

    def discard(self) -> None:
        """Remove the tmp file (nothing to do once it was renamed)."""
        _remove(self.path)

    def __enter__(self) -> TmpMessage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.discard()


def write_tmp(folder: Path, name: str, source: bytes | os.PathLike[str], *,
              mode: int = 0o600) -> TmpMessage:
    """Step 1: folder/tmp/<name> holding `source` (the bytes, or the contents of
    the file at that path, streamed; a symlink is followed), fsync'd, with
    `mode` (group and other bits in it are set whatever the umask). Raises OSError (FileExistsError: the name is taken;
    FileNotFoundError: the source file is gone) with nothing left in tmp/."""
    tmp = Path(folder) / "tmp" / name
    if not isinstance(source, os.PathLike | str):
        return _write(tmp, mode, (source,))
    with open(source, "rb") as fin:          # first: a vanished source creates nothing
        return _write(tmp, mode, iter(lambda: fin.read(CHUNK), b""))


def _write(tmp: Path, mode: int, chunks: Iterable[bytes]) -> TmpMessage:
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
            os.close(fd)
    except BaseException:
        _remove(tmp)
        raise
    return TmpMessage(tmp, st)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
