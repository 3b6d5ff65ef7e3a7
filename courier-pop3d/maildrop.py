"""The POP3 view of a Maildir: the message list, sizes as sent, UIDLs, the lock, deletions at QUIT.

Runs only after the switch to the user (DESIGN.md §2).

Messages and order come from libcourier.maildir (the same scan IMAP uses: new/
moved to cur/, UIDs from courierimapuiddb), so POP3 sees what IMAP sees. The
POP3 sizes and UIDLs come from `courierpop3dsizelist` (Courier's cache, FORMATS.md
§3.7): a message already listed there keeps its size and its UIDL, so the
UIDLs a Courier pop3d handed out stay valid; a new message gets the UIDL
``UID<imap uid>-<uidvalidity>`` and its size is computed once by reading it.

Lock: RFC 1939 §8 has the server lock the maildrop. We take
``flock(LOCK_EX|LOCK_NB)`` on ``courierpop3dlock`` in the Maildir (the name
Courier's older pop3d used for its lock file). flock dies with the process,
so a crashed or killed session never leaves a stale lock; a second POP3
session gets ``-ERR [IN-USE]`` (RFC 2449 §8.1.2). IMAP does not take it
(Courier's imapd does not either).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from courier_pop3d.core import DropView, WireEncoder, wire_size

from libcourier.maildir import pop3sizelist, quota
from libcourier.maildir.flags import split_name
from libcourier.maildir.folder import Maildir, MessageRef

LOCKFILE = "courierpop3dlock"
CHUNK = 64 * 1024


class MaildropInUse(Exception):
    """Another POP3 session holds the lock."""


@dataclass(frozen=True, slots=True)
class DropMessage:
    ref: MessageRef
    size: int          # RFC 1939 size (CRLF line ends, before stuffing)
    uidl: str
    utf8: bool


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk


class Maildrop:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.maildir = Maildir(self.root)
        self.messages: list[DropMessage] = []
        self._lockfd: int | None = None

    # -- the lock ---------------------------------------------------------------------------

    def lock(self) -> None:
        fd = os.open(self.root / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropInUse() from None
            raise
        self._lockfd = fd

    def unlock(self) -> None:
        if self._lockfd is not None:
            os.close(self._lockfd)     # closing the last fd releases the flock
            self._lockfd = None

    # -- the list ---------------------------------------------------------------------------

    def open(self) -> DropView:
        """Scan the Maildir and build the session's message list (fixed until QUIT)."""
        state = self.maildir.scan()
        cache = pop3sizelist.read(self.root)
        known = cache.by_base() if cache is not None else {}
        msgs: list[DropMessage] = []
        entries: list[pop3sizelist.SizeEntry] = []
        changed = cache is None
        for ref in state.messages:
            e = known.get(ref.base)
            if e is None:
                try:
                    with open(self.maildir.path_of(ref), "rb") as f:
                        size, utf8 = wire_size(_read_chunks(f))
                except FileNotFoundError:
                    continue      # expunged by IMAP since the scan
                e = pop3sizelist.SizeEntry(ref.filename, size, ref.uid, state.uidvalidity, utf8)
                changed = True
            elif e.filename != ref.filename:
                e = pop3sizelist.SizeEntry(ref.filename, e.size, e.uid, e.uidv, e.utf8)
                changed = True
            entries.append(e)
            msgs.append(DropMessage(ref, e.size, e.uidl, e.utf8))
        changed |= len(entries) != len(known)
        if changed:
            try:
                pop3sizelist.write(self.root, pop3sizelist.SizeList(
                    state.uidnext, state.uidvalidity, tuple(entries)))
            except OSError:
                # Only a cache: the UIDLs above are still the stable ones (from the
                # uiddb or the old list), so the session can go on.
                pass
        self.messages = msgs
        return DropView(tuple(m.size for m in msgs), tuple(m.uidl for m in msgs))

    # -- per message ------------------------------------------------------------------------

    def _path(self, i: int) -> Path | None:
        ref = self.messages[i].ref
        p = self.maildir.path_of(ref)
        if p.exists():
            return p
        # Renamed by IMAP (a flag change): find it by its base name.
        try:
            with os.scandir(self.root / "cur") as it:
                for ent in it:
                    if split_name(ent.name)[0] == ref.base:
                        return Path(ent.path)
        except FileNotFoundError:
            pass
        return None

    def open_message(self, i: int) -> BinaryIO | None:
        p = self._path(i)
        if p is None:
            return None
        try:
            return open(p, "rb")
        except FileNotFoundError:
            return None

    @staticmethod
    def stream(f: BinaryIO, lines: int | None) -> Iterator[bytes]:
        """The wire bytes of RETR (lines None) or TOP, read in chunks, ending with ".\\r\\n"."""
        enc = WireEncoder(lines)
        for chunk in _read_chunks(f):
            out = enc.feed(chunk)
            if out:
                yield out
            if enc.done:
                break
        yield enc.finish()

    def mark_seen(self, i: int) -> None:
        """RETR sets \\Seen, as Courier's pop3d does (TOP does not)."""
        m = self.messages[i]
        if "S" in m.ref.flags:
            return
        p = self._path(i)
        if p is None:
            return
        ref = m.ref
        if p.name != ref.filename:
            base, flags = split_name(p.name)
            ref = MessageRef(ref.uid, ref.base, p.name, flags, ref.size, ref.mtime)
        try:
            new = self.maildir.set_flags(ref, ref.flags + "S")
        except OSError:
            return        # a lost \Seen is not worth failing RETR over
        self.messages[i] = DropMessage(new, m.size, m.uidl, m.utf8)

    def commit(self, deleted: tuple[int, ...]) -> int:
        """RFC 1939 §6: remove the DELE'd messages; the number that could not be removed."""
        failed = 0
        gone: list[int] = []
        for i in deleted:
            ref = self.messages[i].ref
            p = self._path(i)
            if p is None:
                continue          # removed meanwhile (IMAP EXPUNGE): whoever removed it counted it
            if p.name != ref.filename:
                ref = MessageRef(ref.uid, ref.base, p.name, split_name(p.name)[1],
                                 ref.size, ref.mtime)
            try:
                self.maildir.remove(ref)
            except OSError:
                failed += 1
                continue
            gone.append(ref.size)
        if deleted:
            dfd = os.open(self.root / "cur", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)     # the removals are durable before we answer +OK
            finally:
                os.close(dfd)
        if gone:
            try:
                # Maildir++ quota (FORMATS.md §3.6): one "-size -1" line per message.
                quota.removed(self.root, gone)
            except OSError:
                pass      # the messages are gone; a stale maildirsize is recalculated later
        return failed
