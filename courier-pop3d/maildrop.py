"""The POP3 view of a Maildir: the message list, sizes as sent, UIDLs, the lock, deletions at QUIT.

Runs only after the switch to the user (DESIGN.md §2).

The list is built as Courier's pop3d builds it (imap/pop3dserver.C, checked
against Debian's courier-pop 5.0.13: tests/data/pop3-golden/courier-scratch.json):
tmp/ files older than 48 hours are purged, new/ is moved to cur/, the messages
are cur/'s files in Courier's order, and sizes and UIDLs come from
`courierpop3dsizelist` (libcourier.maildir.pop3sizelist.reconcile). Courier's
pop3d numbers messages in that file on its own, not from IMAP's
courierimapuiddb, so a mailbox a Courier pop3d served keeps its UIDLs with us,
and one it never saw gets the UIDLs Courier would have given it.

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
import itertools
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from courier_pop3d.core import DropView, WireEncoder

from libcourier import mime
from libcourier.maildir import pop3sizelist, quota
from libcourier.maildir.flags import split_name
from libcourier.maildir.folder import Maildir, MessageRef

log = logging.getLogger("courier.pop3d")

LOCKFILE = "courierpop3dlock"
CHUNK = 256 * 1024
TMP_MAX_AGE = 48 * 3600        # Courier's pop3d purgetmp(): 48 hours
_SIZE_TAG = re.compile(r",S=(\d+)")
_HEADER_END = re.compile(rb"\n\r?\n")
# A top-level Content-Type that can hold more headers (parts, an attached message).
_MIME_CONTAINER = re.compile(rb"(?im)^content-type:\s*(multipart|message)/")
# rfc2045 parses the structure only under "MIME-Version: 1.x" (atoi() == 1).
_MIME_1 = re.compile(rb"(?im)^mime-version:\s*\+?0*1(?![0-9])")


class MaildropInUse(Exception):
    """Another POP3 session holds the lock."""


@dataclass(frozen=True, slots=True)
class DropMessage:
    ref: MessageRef
    size: int          # RFC 1939 size as Courier counts it (octets + LFs)
    uidl: str
    utf8: bool


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _header_spans(part: mime.Part, out: list[tuple[int, int]]) -> None:
    out.append((part.header_start, part.body_start))
    for child in part.children:
        _header_spans(child, out)
    if part.message is not None:
        _header_spans(part.message, out)


def eight_bit_header(f: BinaryIO) -> bool:
    """8-bit octets in the header of any MIME part (Courier's RFC2045_ERR8BITHEADER, which
    rfc2045 sets on the whole message for a header of any part or attached message)."""
    root = mime.parse(f)
    spans: list[tuple[int, int]] = []
    _header_spans(root, spans)
    spans.sort()
    # The MIME offsets are in the message's CRLF form (a bare LF counts two, a stored
    # CRLF two): walk the file once in that form and look at the header spans only.
    f.seek(0)
    pos = 0                 # CRLF offset of the next byte
    prev_cr = False
    k = 0
    for chunk in _read_chunks(f):
        n_lf = chunk.count(b"\n")
        crlf = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if n_lf else chunk
        if prev_cr and chunk[:1] == b"\n":
            crlf = crlf[1:]            # that LF's CR was the last byte of the previous chunk
        prev_cr = chunk.endswith(b"\r")
        end = pos + len(crlf)
        while k < len(spans) and spans[k][1] <= pos:
            k += 1
        j = k
        while j < len(spans) and spans[j][0] < end:
            a, b = max(spans[j][0], pos) - pos, min(spans[j][1], end) - pos
            if not crlf[a:b].isascii():
                return True
            j += 1
        if k >= len(spans):
            return False
        pos = end
    return False


def _header_has_8bit(f: BinaryIO, first: bytes) -> bool:
    """Courier's 8-bit-header flag, the MIME parse only when the top-level header needs it.

    As Courier's rfc2045 (checked against its pop3d): the top-level header counts
    always; the headers of parts and attached messages only when the top-level
    header has "MIME-Version: 1.0" and a multipart/ or message/ Content-Type.
    """
    if first[:1] == b"\n" or first[:2] == b"\r\n":
        return False          # no header at all, so no MIME either
    m = _HEADER_END.search(first)
    header = first if m is None else first[:m.end()]    # None: a header over one chunk
    if not header.isascii():
        return True
    if not _MIME_1.search(header) or (m is not None and not _MIME_CONTAINER.search(header)):
        return False
    return eight_bit_header(f)


def measure(path: Path) -> tuple[int, bool] | None:
    """(size, 8-bit header) of a message file as Courier's calcsize(); None if it is gone."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        size = 0
        ascii_only = True
        first = b""
        for chunk in _read_chunks(f):
            if not first:
                first = chunk
            size += len(chunk) + chunk.count(b"\n")
            ascii_only = ascii_only and chunk.isascii()
        return size, (not ascii_only and _header_has_8bit(f, first))


def _disk_size(name: str, path: Path) -> int:
    """What Maildir++ quota counts for a message: its S= size, else the file's size."""
    m = _SIZE_TAG.search(split_name(name)[0])
    if m:
        return int(m.group(1))
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


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

    def _purge_tmp(self, now: float) -> None:
        try:
            with os.scandir(self.root / "tmp") as it:
                for ent in it:
                    if ent.name.startswith("."):
                        continue
                    try:
                        if ent.stat().st_mtime < now - TMP_MAX_AGE:
                            os.unlink(ent.path)
                    except OSError:
                        pass      # gone meanwhile, or not ours to remove
        except FileNotFoundError:
            pass

    def _move_new(self) -> None:
        """Courier's maildir_getnew(): new/NAME -> cur/NAME:2, (a name with ":" keeps it)."""
        new, cur = self.root / "new", self.root / "cur"
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("."):
                continue
            target = name if ":" in name else name + ":2,"
            try:
                os.rename(new / name, cur / target)
            except FileNotFoundError:
                continue      # another session moved it first

    def open(self, now: int | None = None) -> DropView:
        """Scan the Maildir and build the session's message list (fixed until QUIT).

        `now` is Courier's time(NULL): the UIDVALIDITY of a Maildir without a list.
        """
        now = int(time.time()) if now is None else now
        self._purge_tmp(now)
        self._move_new()
        cur = self.root / "cur"
        names = [n for n in os.listdir(cur) if not n.startswith(".")]
        rec = pop3sizelist.reconcile(names, pop3sizelist.read(self.root), now,
                                     lambda name: measure(cur / name))
        entries = list(rec.entries)
        enomem: str | None = None
        if rec.save is not None:
            try:
                pop3sizelist.write(self.root, rec.save)
            except OSError as e:
                # Courier's recovery: messages without a recorded UID are not shown (their
                # UIDL would change next time); if none is left, the first message alone,
                # with a UIDL from its inode, so a full disk can still be emptied.
                log.error("cannot save %s in %s: %s", pop3sizelist.FILENAME, self.root, e)
                kept = [x for x in entries if x.filename not in rec.new]
                if not kept and entries:
                    try:
                        st = os.stat(cur / entries[0].filename)
                        kept = entries[:1]
                        enomem = f"ENOMEM-{st.st_mtime_ns // 10**9:016X}-" \
                                 f"{st.st_dev:016X}-{st.st_ino:016X}"
                    except OSError:
                        kept = []
                entries = kept
        msgs = []
        for x in entries:
            ref = MessageRef(x.uid, x.base, x.filename, split_name(x.filename)[1], 0, 0.0)
            msgs.append(DropMessage(ref, x.size, enomem or x.uidl, x.utf8))
        self.messages = msgs
        return DropView(tuple(m.size for m in msgs), tuple(m.uidl for m in msgs),
                        tuple(m.utf8 for m in msgs))

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
        try:
            return open(self.maildir.path_of(self.messages[i].ref), "rb")
        except FileNotFoundError:
            pass          # renamed (IMAP changed a flag) or gone: look for it
        p = self._path(i)
        if p is None:
            return None
        try:
            return open(p, "rb")
        except FileNotFoundError:
            return None

    @staticmethod
    def stream(f: BinaryIO, lines: int | None,
               wrapper: tuple[bytes, bytes] | None = None) -> Iterator[bytes]:
        """The wire bytes of RETR (lines None) or TOP, read in chunks, ending with ".\\r\\n".

        wrapper: (before, after) to send around the message as if they were part
        of it (Courier's Unicode notice: stuffed, CRLF'd and counted by TOP alike).
        """
        enc = WireEncoder(lines)
        pieces = _read_chunks(f)
        if wrapper is not None:
            pieces = itertools.chain((wrapper[0],), pieces, (wrapper[1],))
        for chunk in pieces:
            out = enc.feed(chunk)
            if out:
                yield out
            if enc.done:
                break
        yield enc.finish()

    def mark_seen(self, i: int) -> None:
        """RETR sets \\Seen, as Courier's pop3d does (TOP does not)."""
        m = self.messages[i]
        info = m.ref.filename.partition(":")[2]
        if "S" in m.ref.flags or (info and not info.startswith("2,")):
            return      # Courier leaves names with another info (":1,...") alone
        try:
            # Against the file's current name, keeping a flag IMAP set meanwhile.
            new = self.maildir.change_flags(m.ref, add="S")
        except OSError:
            return        # gone, or a lost \Seen: not worth failing RETR over
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
            size = _disk_size(p.name, p)
            try:
                self.maildir.remove(ref)
            except OSError:
                failed += 1
                continue
            gone.append(size)
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
