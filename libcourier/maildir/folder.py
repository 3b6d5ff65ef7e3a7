"""Reading one Maildir folder the way Courier's imapd does (FORMATS.md §3.3, §3.4).

`Maildir.scan()` is Courier's imapscan: purge stale tmp/ files, move new/ to
cur/, reconcile cur/ with `courierimapuiddb` and hand out UIDs to new arrivals.

Concurrency: Courier takes no lock and relies on a single imapd per folder
being the common case; two of ours (IMAP + POP3, or two IMAP sessions) racing
could hand out one UID twice. We take ``flock(LOCK_EX)`` on the folder's
``cur/`` directory fd for the whole reconcile-and-write step. A directory fd
needs no extra file in the Maildir (Courier's tools see nothing new), and
flock is released by the kernel if the process dies. Deliverers never take
it: they only add to new/, which the next scan picks up.
"""

from __future__ import annotations

import array
import fcntl
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path

from libcourier.maildir import index, msglist, uiddb
from libcourier.maildir import keywords as kwmod
from libcourier.maildir import snapshot as snapmod
from libcourier.maildir.flags import join_name, split_name

log = logging.getLogger("courier.maildir")

TMP_MAX_AGE = 36 * 3600          # Courier purges tmp/ files older than 36 hours
RELIST_TRIES = 3                 # extra reads of cur/ when a known message seems gone
_SIZE_TAG = re.compile(r",S=(\d+)")
# Per line of names joined by \n: the base's (before the first ":") ,S= digits, or ""
# (the second branch: exactly one match at each line's start).
_SIZE_TAGS = re.compile(r"^[^:\n]*?,S=(\d+)|^", re.M)
_TWO_COLONS = re.compile(r"^[^:\n]*:[^\n]*:", re.M)   # a base split_name cuts elsewhere
UNREAD = math.nan                # an mtime the scan did not read (msglist.py reads it later)


@dataclass(frozen=True, slots=True)
class MessageRef:
    uid: int
    base: str         # file name without the ":2,..." info (the courierimapuiddb key)
    filename: str     # current file name in cur/
    flags: str        # maildir flag letters, sorted (e.g. "FS"); lowercase keyword letters kept
    size: int         # on-disk size in bytes (from ,S= when present, else stat)
    mtime: float      # INTERNALDATE source (LazyRef: read from the file when asked for)
    keywords: frozenset[str] = frozenset()   # IMAP keywords (courierimapkeywords/)


_MTIME = MessageRef.__dict__["mtime"]      # the slot under LazyRef's property


class LazyRef(MessageRef):
    """A MessageRef whose mtime the scan did not read (names only, _list_cur): read
    from the file (in `cur`) the first time it is asked for, and handed to the
    message list it came from (`source`, a weak reference) so the list's column
    has it. A command reading flags, names or sizes stats nothing."""

    __slots__ = ("cur", "source")

    @property       # type: ignore[override]
    def mtime(self) -> float:
        t = _MTIME.__get__(self, MessageRef)
        if t != t:                  # NaN: not read yet
            t = msglist._stat_mtime(getattr(self, "cur", None), self.filename)
            _MTIME.__set__(self, t)
            src = getattr(self, "source", None)
            ml = src() if src is not None else None
            if ml is not None:
                ml.learn_mtime_of(self.uid, self.filename, t)
        return t

    @mtime.setter
    def mtime(self, value: float) -> None:
        _MTIME.__set__(self, value)

    def __eq__(self, other: object) -> bool:
        # The dataclass's __eq__ wants the same class: a LazyRef equals the MessageRef
        # of the same message.
        if not isinstance(other, MessageRef):
            return NotImplemented
        return (self.uid, self.base, self.filename, self.flags, self.size, self.mtime,
                self.keywords) == (other.uid, other.base, other.filename, other.flags,
                                   other.size, other.mtime, other.keywords)

    __hash__ = MessageRef.__hash__


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int
    messages: tuple[MessageRef, ...]          # sorted by uid
    # UIDs this scan moved from new/ to cur/: IMAP's \Recent (RFC 3501 §2.3.2),
    # which, as in Courier, goes to the session that first sees the message.
    recent: frozenset[int] = field(default_factory=frozenset)
    # A SELECT scan that could not store its snapshot yet (the folder changed within
    # the racy margin: it just moved mail into cur/): Maildir.store_snapshot, once
    # SELECT has been answered.
    pending: snapmod.Pending | None = None
    # The stamps the messages are the folder's for (a SELECT scan whose snapshot was
    # stored): while the folder's validators() equal them, nothing has changed.
    stamps: snapmod.Validators | None = None


def _size_of(base: str) -> int | None:
    j = base.find(",S=")
    if j < 0:
        return None
    m = _SIZE_TAG.search(base, j)
    return int(m.group(1)) if m else None


class Maildir:
    """One Maildir++ folder (the INBOX root or a `.Name` sub-folder)."""

    # Stat every message file at a scan, not only those without ,S=: a folder of
    # symlinks (shared.PrivateCopy) leaves out a link whose target has gone.
    STAT_ALL = False

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- the scan -----------------------------------------------------------------

    def _purge_tmp(self, now: float) -> None:
        tmp = self.path / "tmp"
        try:
            with os.scandir(tmp) as it:
                for ent in it:
                    try:
                        if ent.is_file(follow_symlinks=False) and \
                                now - ent.stat(follow_symlinks=False).st_mtime > TMP_MAX_AGE:
                            os.unlink(ent.path)
                    except OSError:
                        pass  # someone else removed or renamed it
        except FileNotFoundError:
            pass

    def _move_new(self) -> set[str]:
        """Move new/ to cur/ adding ":2,"; return the bases moved by us."""
        moved: set[str] = set()
        new, cur = os.path.join(self.path, "new"), os.path.join(self.path, "cur")
        try:
            names = os.listdir(new)
        except FileNotFoundError:
            return moved
        if not names:
            return moved
        # Renamed relative to the two directories' fds: no path walked per message.
        newfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            curfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for name in names:
                    if name.startswith("."):
                        continue
                    base, letters = split_name(name)
                    try:
                        os.rename(name, join_name(base, letters),
                                  src_dir_fd=newfd, dst_dir_fd=curfd)
                    except FileNotFoundError:
                        continue  # another session moved it first
                    moved.add(base)
            finally:
                os.close(curfd)
        finally:
            os.close(newfd)
        return moved

    def _list_cur(self) -> dict[str, tuple[str, int, float]]:
        """base -> (file name, size, mtime) of cur/. As Courier's imapd, the names
        only: the size is the name's ,S= (MessageRef.size); only a file without one
        is stat'ed (for its size, and its mtime with it). The other mtimes are UNREAD,
        read when a command needs the message (msglist.py): at 100,000 messages the
        stat calls were most of a cold SELECT."""
        found: dict[str, tuple[str, int, float]] = {}
        cur = os.path.join(self.path, "cur")
        names = os.listdir(cur)
        if names and not self.STAT_ALL:
            # The usual folder (every name with ,S=, no dot file, one name per base)
            # in a few C-level passes; anything else by the loop below.
            blob = "\n".join(names)
            if not blob.startswith(".") and "\n." not in blob:
                tags = _SIZE_TAGS.findall(blob)
                if len(tags) == len(names) and "" not in tags:
                    found = dict(zip([n.partition(":")[0] for n in names],
                                     zip(names, map(int, tags), repeat(UNREAD)),
                                     strict=True))
                    if len(found) == len(names):
                        return found
                    found = {}
        for name in names:
            if name.startswith("."):
                continue
            i = name.find(":")
            base = name if i < 0 else name[:i]
            prev = found.get(base)
            # Two names for one base (a crash mid-rename elsewhere): keep one, stably.
            if prev is not None and name >= prev[0]:
                continue
            j = base.find(",S=")       # _size_of, inline: this loop runs per message
            m = _SIZE_TAG.match(base, j) if j >= 0 else None
            tag = int(m.group(1)) if m is not None else None if j < 0 else _size_of(base)
            if tag is not None and not self.STAT_ALL:
                found[base] = (name, tag, UNREAD)
                continue
            try:
                st = os.stat(os.path.join(cur, name))
            except FileNotFoundError:
                continue
            found[base] = (name, st.st_size if tag is None else tag, st.st_mtime)
        return found

    def _relist_missing(self, files: dict[str, tuple[str, int, float]],
                        db: uiddb.UidDb) -> None:
        """readdir() may miss a file renamed while the directory is read (a flag change
        by a process that takes no lock: Courier's imapd, a POP3 client of another
        server). Dropping it would give it a new UID at the next scan, so before a
        known message counts as gone, cur/ is read again (a few times at most)."""
        for _ in range(RELIST_TRIES):
            if all(base in files for _, base in db.entries):
                return
            for base, found in self._list_cur().items():
                files.setdefault(base, found)

    def _cur_lock(self, kind: int) -> int:
        """flock on cur/ (module docstring): LOCK_SH for a flag rename, so our renames
        never run while one of our scans reads the directory (LOCK_EX)."""
        fd = os.open(self.path / "cur", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, kind)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def validators(self) -> snapmod.Validators:
        """The stamps a snapshot of this folder is valid for (snapshot.py)."""
        return snapmod.Validators.current(self.path, uiddb.IMAPDB, kwmod.KEYWORDDIR)

    def open_summary(self) -> snapmod.Summary | None:
        """SELECT without a scan: the stored snapshot when the folder is as it
        recorded and nothing waits in new/; None: scan. Never for a class whose
        scan does more than read the folder (shared.PrivateCopy synchronises first)."""
        if type(self).scan is not Maildir.scan:
            return None
        return snapmod.open_summary(self.path, self.validators())

    def load_summary(self, summary: snapmod.Summary) -> FolderState:
        """The folder as the snapshot behind `summary` recorded it (no \\Recent: that
        belongs to the scan that moved the mail). SnapshotError, OSError."""
        c = snapmod.load(summary)
        # Columns, not a MessageRef per message (msglist.py).
        msgs = msglist.MessageList(c.uids, c.names, c.sizes, c.mtimes, dict(c.keywords),
                                   os.path.join(self.path, "cur"))
        return FolderState(summary.uidvalidity, summary.uidnext, msgs)    # type: ignore[arg-type]

    def await_summary(self) -> snapmod.Summary | None:
        """open_summary() once no other process holds cur/'s lock: a session whose
        SELECT scan is storing its snapshot after its reply (store_snapshot) holds it,
        and a SELECT right behind it is then answered from that snapshot."""
        if type(self).scan is not Maildir.scan:
            return None
        snapmod.release(os.path.join(self.path, "cur"))
        try:
            fd = self._cur_lock(fcntl.LOCK_EX)
        except OSError:
            return None
        os.close(fd)
        return self.open_summary()

    def _new_waiting(self) -> bool:
        """Mail in new/ (a delivery after this scan moved new/ to cur/): a snapshot
        stored now would hide it while the stamps stay as they are."""
        try:
            return any(not n.startswith(".") for n in os.listdir(self.path / "new"))
        except FileNotFoundError:
            return False

    def scan(self, now: float | None = None, snapshot: bool = False) -> FolderState:
        """Courier's imapscan (module docstring). With `snapshot` (SELECT's scan) the
        result is also stored for the next SELECT (snapshot.py) when the folder held
        still while it was read; when it changed within the racy margin (this scan
        moved mail into cur/) the state says so (`pending`) and store_snapshot()
        stores it once SELECT is answered, rather than SELECT waiting for the clock.

        The messages are a msglist.MessageList over columns (no MessageRef per
        message) whose mtimes are read only when a message is made (_list_cur)."""
        now = time.time() if now is None else now
        self._purge_tmp(now)
        if snapshot:
            try:
                kwmod.ensure_dir(self.path)   # before the stamps, or they differ after
            except OSError:
                snapshot = False
        if snapshot and type(self).scan is not Maildir.scan:
            snapshot = False            # never answered from one (open_summary)
        cur = os.path.join(self.path, "cur")
        snapmod.release(cur)
        lockfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        v0: snapmod.Validators | None = None
        recorded_ns = 0
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX)
            moved = self._move_new()
            if snapshot:
                recorded_ns = time.time_ns()   # before the stamps and the listing
                v0 = self.validators()
            files = self._list_cur()
            db = uiddb.read(self.path)
            if db is not None:
                self._relist_missing(files, db)
            changed = db is None
            if db is None:
                db = uiddb.UidDb(uiddb.new_uidvalidity(now, self.path), 1, ())
            kept = [(uid, base) for uid, base in db.entries if base in files]
            changed |= len(kept) != len(db.entries)
            nextuid = max(db.nextuid, kept[-1][0] + 1 if kept else 1)
            changed |= nextuid != db.nextuid
            if len(kept) != len(files):
                known = {base for _, base in kept}
                # Courier step 5: new messages sorted by file name, then nextuid++.
                # (Names are unique: sorted alone; the base is the name's up to ":".)
                fresh = sorted([v[0] for v in files.values()] if not known else
                               [v[0] for b, v in files.items() if b not in known])
                kept.extend(zip(range(nextuid, nextuid + len(fresh)),
                                [n.partition(":")[0] for n in fresh], strict=True))
                nextuid += len(fresh)
                changed = True
            if changed:
                db = uiddb.UidDb(db.uidvalidity, nextuid, tuple(kept))
                uiddb.write(self.path, db)
                if v0 is not None:
                    # Ours, under the lock; replaced by rename, so its stamp names it.
                    v0 = replace(v0, uiddb=index.DirStamp.at(self.path / uiddb.IMAPDB))
        except BaseException:
            os.close(lockfd)  # releases the flock
            raise
        if v0 is None:
            os.close(lockfd)
        else:
            # Kept, shared, until the snapshot is stored or not (store_snapshot): another
            # session's SELECT waits for it (await_summary) instead of scanning again.
            fcntl.flock(lockfd, fcntl.LOCK_SH)
        held = snapmod.Held(lockfd, cur) if v0 is not None else None
        bases = [base for _, base in kept]
        kws = self.read_keywords(set(bases), now)
        rows = [files[b] for b in bases]
        names = [r[0] for r in rows]
        kwcol: dict[int, frozenset[str]] = {}
        if kws:
            kwcol = {i: kws[b] for i, b in enumerate(bases) if kws.get(b)}
        msgs = msglist.MessageList(array.array("q", [uid for uid, _ in kept]), names,
                                   array.array("q", [r[1] for r in rows]),
                                   array.array("d", [r[2] for r in rows]), kwcol,
                                   os.path.join(self.path, "cur"))
        for i, name in enumerate(names if _TWO_COLONS.search("\n".join(names)) else ()):
            # A name the columns cut at another colon than the scan did: kept as made.
            if name.count(":") > 1 and split_name(name)[0] != bases[i]:
                _, size, mtime = rows[i]
                if mtime != mtime:
                    mtime = msglist._stat_mtime(msgs.cur, name)
                msgs.pin(i, MessageRef(kept[i][0], bases[i], name, split_name(name)[1],
                                       size, mtime, kws.get(bases[i], frozenset())))
        recent = frozenset(uid for uid, base in kept if base in moved) if moved else frozenset()
        del rows, files
        pending = stamps = None
        if v0 is not None and self.validators() == v0 and not self._new_waiting():
            # Nothing changed since the stamps (keywords included): store it, or leave
            # it to store_snapshot() when the stamps are too recent to trust yet.
            if snapmod.write(self.path, v0, recorded_ns, db.uidvalidity, nextuid, msgs):
                stamps = v0
            else:
                pending = snapmod.Pending(v0, recorded_ns, held)
        if pending is None and held is not None:
            held.close()
        return FolderState(db.uidvalidity, nextuid, msgs, recent,   # type: ignore[arg-type]
                           pending, stamps)

    def store_snapshot(self, st: FolderState) -> bool:
        """Store a SELECT scan's state that could not be stored at once (`pending`):
        the clock is let pass the racy margin of its stamps (at most FINE_MARGIN_NS),
        then cur/ is listed again (names) and new/ looked at. The same names, new/
        empty and the stamps still those of the scan: the folder is as the scan saw
        it at a time no later change can hide in, so the snapshot may be trusted.
        False when not stored (the next SELECT scans; nothing else is lost)."""
        p = st.pending
        if p is None:
            return False
        try:
            return self._store_pending(st, p)
        finally:
            if p.held is not None:
                p.held.close()          # other sessions' SELECTs may go on

    def _store_pending(self, st: FolderState, p: snapmod.Pending) -> bool:
        if not isinstance(st.messages, msglist.MessageList):
            return False
        v0 = p.validators
        wait = v0.racy_until() - time.time_ns()
        if wait > snapmod.FINE_MARGIN_NS:
            return False            # whole-second timestamps: not worth 2 s of a session
        if wait > 0:
            time.sleep(wait / 1e9)
        recorded_ns = time.time_ns()
        if self.validators() != v0:
            return False
        try:
            names = [n for n in os.listdir(self.path / "cur") if not n.startswith(".")]
        except OSError:
            return False
        ml = st.messages
        if len(names) != len(ml) or set(names) != set(ml.columns()[1]) or self._new_waiting():
            return False
        if not v0.settled_dir(v0.keywords, p.recorded_ns):
            # The keywords were read within their directory's racy margin: again.
            bases = [b for b, _ in ml.keys(range(len(ml)))]
            kws = self.read_keywords(set(bases))
            if ml.columns()[4] != {i: kws[b] for i, b in enumerate(bases) if kws.get(b)}:
                return False
        if self.validators() != v0:
            return False
        return snapmod.write(self.path, v0, recorded_ns, st.uidvalidity, st.uidnext, ml)

    def read_keywords(self, bases: set[str], now: float | None = None) -> dict[str, frozenset[str]]:
        """base -> keywords; a keyword directory we cannot use costs the keywords, not
        the scan (Courier's imapd goes on without them too)."""
        try:
            return kwmod.read(self.path, bases, now)
        except OSError as e:
            log.error("%s: cannot read %s: %s", self.path, kwmod.KEYWORDDIR, e)
            return {}

    def change_keywords(self, msgs: list[MessageRef], mode: str,
                        names: frozenset[str]) -> list[MessageRef]:
        """STORE on keywords (mode "=", "+" or "-"); the messages with their new keywords.
        The change is made against the folder's current keywords under the keyword
        lock, so another session's concurrent change is kept, not overwritten."""
        if not msgs:
            return []
        # Every message in cur/ (names only, no stat), so their keywords are kept.
        bases = {split_name(n)[0] for n in os.listdir(self.path / "cur") if not n.startswith(".")}
        state = kwmod.update(self.path, bases, {m.base: (mode, names) for m in msgs})
        empty: frozenset[str] = frozenset()
        return [replace(m, keywords=state.get(m.base, empty)) for m in msgs]

    # -- per message --------------------------------------------------------------

    def change_flags(self, msg: MessageRef, add: str = "", remove: str = "",
                     exact: str | None = None) -> MessageRef:
        """Add / remove flag letters (or set them to `exact`) against the file's
        current flags. The rename names the exact current file, so if another
        process renamed it meanwhile ours fails and we re-read and retry: a
        concurrent change of another flag is never lost. FileNotFoundError if
        the message has gone."""
        name = msg.filename
        _ = msg.mtime   # a LazyRef's read while the file has this name (the copy keeps it)
        lockfd = self._cur_lock(fcntl.LOCK_SH)
        try:
            return self._change_flags(msg, name, add, remove, exact)
        finally:
            os.close(lockfd)

    def _change_flags(self, msg: MessageRef, name: str, add: str, remove: str,
                      exact: str | None) -> MessageRef:
        for _ in range(64):   # each retry means someone else changed it: bounded
            current = split_name(name)[1]
            if exact is not None:
                keep = "".join(c for c in current if not c.isupper())   # others' letters
                letters = "".join(set(exact) | set(keep))
            else:
                letters = "".join((set(current) | set(add)) - set(remove))
            target = join_name(msg.base, letters)
            try:
                if target == name:
                    os.stat(self.path / "cur" / name)
                else:
                    os.rename(self.path / "cur" / name, self.path / "cur" / target)
                return replace(msg, filename=target, flags=split_name(target)[1])
            except FileNotFoundError:
                found = self._find(msg.base)
                if found is None:
                    raise
                name = found
        raise OSError(f"{msg.base}: flags keep changing under us")


    def path_of(self, msg: MessageRef) -> Path:
        return self.path / "cur" / msg.filename

    def set_flags(self, msg: MessageRef, flags: str) -> MessageRef:
        """Rename to base:2,<sorted flags>; FileNotFoundError if it has gone."""
        _ = msg.mtime   # as change_flags
        lockfd = self._cur_lock(fcntl.LOCK_SH)
        try:
            return self._set_flags(msg, flags)
        finally:
            os.close(lockfd)

    def _set_flags(self, msg: MessageRef, flags: str) -> MessageRef:
        target = join_name(msg.base, flags)
        new = replace(msg, filename=target, flags=split_name(target)[1])
        if target == msg.filename:
            if not self.path_of(msg).exists():
                raise FileNotFoundError(str(self.path_of(msg)))
            return new
        try:
            os.rename(self.path_of(msg), self.path / "cur" / target)
        except FileNotFoundError:
            # Another session may have changed the flags meanwhile: find it by base.
            current = self._find(msg.base)
            if current is None:
                raise
            os.rename(self.path / "cur" / current, self.path / "cur" / target)
        return new

    def _find(self, base: str) -> str | None:
        try:
            with os.scandir(self.path / "cur") as it:
                for ent in it:
                    if split_name(ent.name)[0] == base:
                        return ent.name
        except FileNotFoundError:
            return None
        return None

    def remove(self, msg: MessageRef) -> None:
        """Delete the message file; a message already gone is not an error (already expunged)."""
        try:
            os.unlink(self.path_of(msg))
        except FileNotFoundError:
            current = self._find(msg.base)
            if current is not None:
                os.unlink(self.path / "cur" / current)


# -- folders of a Maildir++ (FORMATS.md §3.3) --------------------------------------

def list_folders(root: Path) -> list[str]:
    """Names of the `.Name.Sub` folders under the Maildir root, without the dot."""
    out = []
    try:
        with os.scandir(root) as it:
            for ent in it:
                n = ent.name
                # os.path.isdir, not Path.is_dir: a folder we may not search
                # (EACCES) is left out instead of ending the session.
                if len(n) > 1 and n.startswith(".") and n not in ("..",) \
                        and os.path.isdir(ent.path) and os.path.isdir(ent.path + "/cur"):
                    out.append(n[1:])
    except FileNotFoundError:
        pass
    return sorted(out)


def folder_path(root: Path, imap_name: str) -> Path | None:
    """The directory for an IMAP name (INBOX, INBOX.Sent): None if it is not ours."""
    up = imap_name.upper()
    if up == "INBOX":
        return Path(root)
    if up.startswith("INBOX.") and len(imap_name) > 6:
        sub = imap_name[6:]
        if "/" in sub or sub.startswith(".") or ".." in sub or sub.endswith("."):
            return None
        return Path(root) / ("." + sub)
    return None
