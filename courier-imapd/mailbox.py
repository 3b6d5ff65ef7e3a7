"""The selected mailbox as one session sees it: sequence numbers <-> UIDs (RFC 3501 §2.3.1).

The view changes only when the session may tell the client: new messages are
announced with EXISTS/RECENT, flags others changed with FETCH, and messages
others removed with EXPUNGE — the last only where RFC 3501 §7.4.1 allows it
(not during FETCH, STORE or SEARCH), so until then a vanished message keeps its
sequence number as a "ghost" and fetching it answers NO.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from courier_imapd.condstore import uid_set
from courier_imapd.core import SeqRange

from libcourier.maildir import snapshot as snapmod
from libcourier.maildir.flags import IMAP_FLAG_ORDER, imap_to_letter, letters_to_imap, split_name
from libcourier.maildir.folder import FolderState, Maildir, MessageRef
from libcourier.maildir.msglist import MessageList
from libcourier.maildir.snapshot import SnapshotError, Summary

if TYPE_CHECKING:
    from courier_imapd.modseq import Tracker
    from courier_imapd.trash import Disposer

log = logging.getLogger("courier.imapd")

PERMANENT_FLAGS = "(" + " ".join(IMAP_FLAG_ORDER) + ")"


def flags_line(keywords: set[str]) -> str:
    """The FLAGS response: the folder's keywords, then the system flags (Courier's order)."""
    return "FLAGS (" + " ".join([*sorted(keywords), *IMAP_FLAG_ORDER, "\\Recent"]) + ")"


def permanent_line(keywords: set[str], readonly: bool) -> str:
    """RFC 3501 §7.1: \\* says clients may create keywords (they are stored in
    courierimapkeywords/, libcourier.maildir.keywords)."""
    if readonly:
        return "OK [PERMANENTFLAGS ()] Limited"
    return "OK [PERMANENTFLAGS (" + " ".join([*sorted(keywords), "\\*", *IMAP_FLAG_ORDER]) + \
        ")] Limited"


def _libc_trim():
    """glibc's malloc_trim, or None where there is none (musl, other systems)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _libc_trim()


def give_back() -> None:
    """Return the heap a folder scan used to the system. A scan of 10,000 messages
    builds and drops a few MB of lists and tuples (the uiddb, the directory listing);
    freed, they stay in the process's heap, private to every forked session, unless
    trimmed. Called after a scan, while the session waits for the client anyway."""
    if _TRIM is not None:
        _TRIM(0)


class SequenceError(Exception):
    """A sequence number beyond the mailbox: BAD (RFC 3501 §6.4.5 / §9 seq-number)."""


def _dir_id(maildir: Maildir) -> tuple[int, int]:
    st = os.stat(maildir.path / "cur")
    return st.st_dev, st.st_ino


class FolderReplaced(Exception):
    """The selected folder was deleted and made again (or lost its UID list): its
    UIDVALIDITY changed, which a session cannot tell its client; the session ends
    with BYE (RFC 2180 §3.3)."""


def flags_text(letters: str, recent: bool, keywords: frozenset[str] = frozenset()) -> str:
    names = letters_to_imap(letters)
    if recent:
        names.append("\\Recent")
    names.extend(sorted(keywords))
    return "(" + " ".join(names) + ")"


def split_flags(flags: tuple[str, ...]) -> tuple[str, frozenset[str]]:
    """Maildir letters and keywords for the flags of STORE / APPEND; other system flags
    (\\Recent, unknown \\X) cannot be stored and are left out (RFC 3501 §7.1)."""
    letters, unknown = letters_for(flags)
    return letters, frozenset(f for f in unknown if not f.startswith("\\"))


def letters_for(flags: tuple[str, ...]) -> tuple[str, list[str]]:
    """Maildir letters for IMAP flags, and the flags we cannot store (keywords, \\Recent)."""
    letters, unknown = [], []
    for f in flags:
        c = imap_to_letter(f)
        if c is None:
            unknown.append(f)
        else:
            letters.append(c)
    return "".join(sorted(set(letters))), unknown


class MailboxView:
    def __init__(self, name: str, maildir: Maildir, readonly: bool,
                 as_told: FolderState | None = None):
        # `as_told`: the folder as a hibernated session's client last saw it (its
        # messages' flags and keywords as reported, hibernate.py), instead of a scan;
        # the next refresh reports what differs on disk.
        self.name = name
        self.maildir = maildir
        self.readonly = readonly
        # A warm SELECT (libcourier.maildir.snapshot): the folder is as the last
        # SELECT's scan stored it, and SELECT is answered from that summary. The
        # message list is read from the snapshot (kept open: the state the client
        # was told) only when a command needs it, or a refresh finds a change; an
        # idle selected session holds nothing per message.
        self._summary: Summary | None = maildir.open_summary() if as_told is None else None
        if self._summary is None and as_told is None:
            # Another session's SELECT may be storing one right now (folder.py).
            self._summary = maildir.await_summary()
        # The stamps of the folder as the client was told of it at SELECT, while
        # no refresh has scanned since: a refresh that finds them so has nothing to do.
        self._told = self._summary.validators if self._summary is not None else None
        self._state: FolderState | None = None
        self._messages: list[MessageRef] | None = None
        self._pending: FolderState | None = None
        self.recent: set[int] = set()
        cold_keywords: set[str] = set()
        if self._summary is None:
            st = maildir.scan(snapshot=True) if as_told is None else as_told
            # Held as columns (msglist.py; a scan's list is), any MessageRefs let go: an
            # idle session selected after a scan holds no object per message either.
            msgs = st.messages if isinstance(st.messages, MessageList) \
                else MessageList.of(st.messages)
            cold_keywords = msgs.all_keywords()
            # A snapshot the scan could not store yet: after_select() stores it.
            self._pending = st if st.pending is not None else None
            self._told = st.stamps
            self._state, self._messages = replace(st, messages=msgs, pending=None), msgs
            self.recent = set(st.recent)
            del st                           # the refs go before give_back()
            give_back()     # (not after a warm SELECT: it built nothing big, and the
                            # trim's walk of the heap was a fifth of its time)
        self.cur_id = _dir_id(maildir)       # which cur/ this is: a folder made again differs
        self.ghosts: set[int] = set()        # UIDs gone from disk, not yet reported
        self.disposer: Disposer | None = None   # what EXPUNGE does with a message (trash.py)
        self.tracker: Tracker | None = None     # mod-sequences, once CONDSTORE is on (RFC 7162)
        self.qresync = False                    # expunges reported as VANISHED (RFC 7162 §3.2.10)
        self.sizes: dict[int, int] = {}      # uid -> size with CRLF line ends (RFC822.SIZE)
        # Keywords the client has been told of in FLAGS (RFC 3501 §7.2.6: a new one
        # is announced with a new FLAGS response before it is used).
        if self._summary is not None:
            self.keywords: set[str] = set(self._summary.keywords)
        else:
            self.keywords = cold_keywords

    def reusable(self, maildir: Maildir, readonly: bool) -> bool:
        """Whether a SELECT of `maildir` may take this view (the session's last, just
        closed) as it is: the same folder, opened the same way, provably unchanged
        since the view was told of it (its stamps) and nothing left unreported. A
        client that SELECTs the folder it just had (after a FETCH of every message)
        is answered without the message list dropped and read again."""
        return self._told is not None and not self.ghosts and self.readonly == readonly \
            and type(self.maildir) is type(maildir) and self.maildir.path == maildir.path \
            and maildir.validators() == self._told and _dir_id(maildir) == self.cur_id

    def reopen(self, name: str) -> None:
        """This view for a new SELECT (reusable()): the answer a SELECT from the
        snapshot would give (no \\Recent: the earlier SELECT's)."""
        self.name = name
        self.recent = set()

    def _held(self):
        """cur/'s lock a snapshot still to be stored holds, or None."""
        p = getattr(self, "_pending", None)
        return p.pending.held if p is not None and p.pending is not None else None

    def holding(self) -> bool:
        """Whether a snapshot still to be stored holds cur/'s lock (a cold SELECT's)."""
        held = self._held()
        return held is not None and held.fd >= 0

    def unhold(self) -> None:
        """Let go of cur/'s lock a snapshot still to be stored holds (after_select
        stores it all the same, checked as ever; another session's SELECT just no
        longer waits for it)."""
        held = self._held()
        if held is not None:
            held.close()

    def close(self) -> None:
        """Let go of the snapshot a lazy view keeps open (also when the view is dropped)."""
        self.unhold()
        s = getattr(self, "_summary", None)
        if s is not None:
            self._summary = None
            s.file.close()      # type: ignore[attr-defined]

    __del__ = close

    def snapshot_id(self) -> tuple[int, int, int] | None:
        """Which snapshot file a lazy view still answers from, (dev, inode, mtime_ns);
        None once the list is loaded. A hibernated session whose client saw only this
        snapshot resumes from it without a scan while it is unchanged (resume.py)."""
        s = self._summary
        if s is None:
            return None
        st = os.fstat(s.file.fileno())      # type: ignore[attr-defined]
        return st.st_dev, st.st_ino, st.st_mtime_ns

    def after_select(self) -> None:
        """Once SELECT is answered: store the snapshot its scan could not store yet
        (folder.Maildir.store_snapshot: it may wait out the racy margin, up to 50 ms,
        which SELECT's reply no longer waits for)."""
        st, self._pending = self._pending, None
        if st is not None:
            try:
                if self.maildir.store_snapshot(st) and self._told is None:
                    self._told = st.pending.validators    # type: ignore[union-attr]
            except OSError as e:
                log.error("%s: cannot store the folder snapshot: %s", self.maildir.path, e)

    # -- the message list, read when first needed -------------------------------------------

    @property
    def messages(self) -> list[MessageRef]:
        if self._messages is None:
            self._load()
        return self._messages      # type: ignore[return-value]

    @messages.setter
    def messages(self, value: list[MessageRef]) -> None:
        self._messages = value

    @property
    def state(self) -> FolderState:
        if self._state is None:
            self._load()
        return self._state         # type: ignore[return-value]

    @property
    def uidvalidity(self) -> int:
        return self._summary.uidvalidity if self._summary is not None else self.state.uidvalidity

    @property
    def uidnext(self) -> int:
        return self._summary.uidnext if self._summary is not None else self.state.uidnext

    def _load(self) -> None:
        s = self._summary
        assert s is not None
        try:
            st = self.maildir.load_summary(s)
        except (OSError, SnapshotError) as e:
            # What the client was told is lost (the file's header verified at SELECT,
            # so this is damage on disk): a new session must start over.
            log.error("%s: cannot read the folder snapshot: %s", self.maildir.path, e)
            raise FolderReplaced(self.name) from e
        finally:
            s.file.close()      # type: ignore[attr-defined]
        # The state's list is the view's (columns, msglist.py; a copy would double
        # them): the state is read for its message list only right after SELECT.
        self._summary, self._state, self._messages = None, st, st.messages  # type: ignore[assignment]
        if isinstance(st.messages, MessageList):
            # A snapshot of a cold scan holds no mtimes (folder.py reads names only):
            # once this session has read them all, they are stored for the next.
            # (A weak reference: the list must not keep its view alive.)
            recorded_ns, me = s.recorded_ns, weakref.ref(self)

            def store() -> None:
                view = me()
                if view is not None:
                    view._store_mtimes(recorded_ns)
            st.messages.on_all_read = store

    def _store_mtimes(self, recorded_ns: int) -> None:
        """The snapshot again, with the mtimes this session read, while the folder is
        still as the snapshot recorded it (its stamps): mtimes never change in place."""
        msgs, told = self._messages, self._told
        if told is None or not isinstance(msgs, MessageList) or \
                self.maildir.validators() != told:
            return
        try:
            snapmod.write(self.maildir.path, told, recorded_ns, self.state.uidvalidity,
                          self.state.uidnext, msgs)
        except OSError as e:
            log.error("%s: cannot store the folder snapshot: %s", self.maildir.path, e)

    # -- opening (RFC 3501 §6.3.1) --------------------------------------------------------

    def select_responses(self) -> list[str]:
        s = self._summary
        out = [
            flags_line(self.keywords),
            permanent_line(self.keywords, self.readonly),
            f"{s.count if s is not None else len(self.messages)} EXISTS",
            f"{len(self.recent)} RECENT",
            f"OK [UIDVALIDITY {self.uidvalidity}] Ok",
            f"OK [UIDNEXT {self.uidnext}] Ok",
        ]
        if s is not None:
            if s.first_unseen:
                out.append(f"OK [UNSEEN {s.first_unseen}] Message {s.first_unseen} "
                           "is first unseen")
            return out
        msgs = self.messages
        if isinstance(msgs, MessageList):
            i = msgs.first_unseen()
        else:
            i = next((i for i, m in enumerate(msgs, 1) if "S" not in m.flags), 0)
        if i:
            out.append(f"OK [UNSEEN {i}] Message {i} is first unseen")
        return out

    # -- numbers ---------------------------------------------------------------------------

    def resolve(self, ranges: tuple[SeqRange, ...], uid: bool) -> list[int]:
        """0-based indexes of the messages named, ascending, without duplicates.

        Work is O(ranges x log n + answer): a set of up to 10,000 ranges ("1:*,1:*,...")
        over 100,000 messages once cost minutes of CPU (a range at a time over every
        message). The view is in UID order (scans list it so; arrivals append higher)."""
        n = len(self.messages)
        spans: list[tuple[int, int]] = []     # [start, end) of indexes
        if uid:
            if not n:
                return []
            uids = self.uid_list()
            top = uids[-1]
            for a, b in ranges:
                lo, hi = (top if a is None else a), (top if b is None else b)
                if lo > hi:
                    lo, hi = hi, lo
                # RFC 3501 §6.4.8: "*" in a UID range is the highest UID, and a range
                # with no UIDs in it is not an error.
                spans.append((bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)))
        else:
            for a, b in ranges:
                lo, hi = (n if a is None else a), (n if b is None else b)
                if lo > hi:
                    lo, hi = hi, lo
                if lo < 1 or hi > n:
                    raise SequenceError("Invalid message sequence number")
                spans.append((lo - 1, hi))
        spans.sort()
        out: list[int] = []
        done = 0                  # indexes below this are in out already
        for start, end in spans:
            start = max(start, done)
            if start < end:
                out.extend(range(start, end))
                done = end
        return out

    def relocate(self) -> int:
        """Follow renames by other sessions: a flag change renames the file, so a name
        this view holds may be gone while the message is not. Takes the current name
        of each such message (one listing of cur/); the flags stay what the client was
        told, so the next refresh still reports the change. The number renamed."""
        names: dict[str, str] = {}
        try:
            with os.scandir(self.maildir.path / "cur") as it:
                for ent in it:
                    names[split_name(ent.name)[0]] = ent.name
        except FileNotFoundError:
            return 0
        n = 0
        for i in range(len(self.messages)):
            m = self._peek(i)
            name = names.get(m.base)
            if name is not None and name != m.filename:
                self.messages[i] = replace(m, filename=name)
                n += 1
        return n

    def _peek(self, i: int) -> MessageRef:
        """The message at index i, not kept by a column list (MessageList.peek)."""
        msgs = self.messages
        return msgs.peek(i) if isinstance(msgs, MessageList) else msgs[i]

    def _row(self, i: int) -> tuple[int, str, frozenset[str], str | None]:
        """UID, file name, keywords and told flags (None: the name's) at index i,
        without a MessageRef (MessageList.row)."""
        msgs = self.messages
        if isinstance(msgs, MessageList):
            return msgs.row(i)
        m = msgs[i]
        return m.uid, m.filename, m.keywords, m.flags

    def uid_list(self) -> Sequence[int]:
        """Every message's UID in order, from the columns when the list has them
        (msglist.py: no MessageRef made for it)."""
        msgs = self.messages
        if isinstance(msgs, MessageList):
            return msgs.uids()
        return [m.uid for m in msgs]

    # -- changes ---------------------------------------------------------------------------

    def refresh(self, allow_expunge: bool) -> list[str]:
        """Rescan the folder; untagged responses for what changed (RFC 3501 §7.3, §7.4)."""
        if self._told is not None:
            if self.maildir.validators() == self._told:
                return []       # as at SELECT (snapshot.py): nothing to scan or tell
            self._told = None
        if self._summary is not None:
            self._load()
        st = self.maildir.scan()
        # Deleted and created again, maybe in the same second (so the same UIDVALIDITY,
        # which is the time): the directory is another one.
        if st.uidvalidity != self.state.uidvalidity or _dir_id(self.maildir) != self.cur_id:
            raise FolderReplaced(self.name)
        # Compared by columns (UID, name, keywords): a MessageRef is made only for a
        # message that changed (its mtime, not read by the scan, is read then).
        sm = st.messages if isinstance(st.messages, MessageList) \
            else MessageList.of(st.messages)
        if self.tracker is not None:
            self.tracker.update(sm.peeked(), complete=True)
        out: list[str] = self.announce(sm.all_keywords())
        on_disk = {u: j for j, u in enumerate(sm.uids())}
        self.recent |= st.recent
        # A message that is still there is no ghost, whatever a failed open thought.
        self.ghosts.difference_update(on_disk)
        for i in range(len(self.messages)):
            uid, name, kws, told = self._row(i)
            j = on_disk.get(uid)
            if j is None:
                self.ghosts.add(uid)
                continue
            _, now_name, now_kws, _ = sm.row(j)
            if now_name == name and now_kws == kws and \
                    (told is None or told == split_name(now_name)[1]):
                continue
            now, m = sm[j], self._peek(i)
            self.messages[i] = now
            if now.flags != m.flags or now.keywords != m.keywords:
                # RFC 7162 §3.1: with CONDSTORE on, such a FETCH carries UID and MODSEQ.
                extra = "" if self.tracker is None else \
                    f" UID {now.uid} MODSEQ ({self.tracker.modseq(now.uid)})"
                out.append(f"{i + 1} FETCH (FLAGS "
                           f"{flags_text(now.flags, now.uid in self.recent, now.keywords)}{extra})")
        if allow_expunge and self.ghosts:
            out.extend(self._drop_ghosts())
        known_top = self._row(len(self.messages) - 1)[0] if self.messages else 0
        fresh = sm[bisect.bisect_right(sm.uids(), known_top):]
        if fresh:
            self.messages.extend(fresh)
            out.append(f"{len(self.messages)} EXISTS")
            out.append(f"{len(self.recent)} RECENT")
        # The scan's MessageRefs go (the view's list is the state's, as after _load).
        self._state = replace(st, messages=self.messages)
        del st, on_disk
        give_back()
        return out

    def announce(self, keywords: set[str]) -> list[str]:
        """FLAGS and PERMANENTFLAGS again when keywords the client has not seen appear."""
        if keywords <= self.keywords:
            return []
        self.keywords |= keywords
        return [flags_line(self.keywords), permanent_line(self.keywords, self.readonly)]

    def _drop_ghosts(self) -> list[str]:
        out = []
        gone = []
        # Highest first, so each number is right when the client applies it.
        uids = self.uid_list()
        for i in range(len(uids) - 1, -1, -1):
            if uids[i] in self.ghosts:
                out.append(f"{i + 1} EXPUNGE")
                gone.append(uids[i])
                self.recent.discard(uids[i])
                del self.messages[i]
        self.ghosts.clear()
        return self.expunged_lines(out, gone)

    def expunged_lines(self, lines: list[str], uids: list[int]) -> list[str]:
        """EXPUNGE lines, or one VANISHED once QRESYNC is on (RFC 7162 §3.2.10)."""
        if not self.qresync or not uids:
            return lines
        return [f"VANISHED {uid_set(uids)}"]

    def update(self, index: int, msg: MessageRef) -> None:
        self.messages[index] = msg

    def expunge(self) -> list[str]:
        """Remove \\Deleted messages (RFC 3501 §6.4.3); the EXPUNGE responses, highest first."""
        out = []
        gone: list[int] = []
        for i in range(len(self.messages) - 1, -1, -1):
            m = self._peek(i)
            if "T" in m.flags:
                if self.disposer is not None:
                    self.disposer.dispose(self.maildir, m)
                else:
                    self.maildir.remove(m)
                out.append(f"{i + 1} EXPUNGE")
                gone.append(m.uid)
                self.recent.discard(m.uid)
                self.sizes.pop(m.uid, None)
                del self.messages[i]
        if self.disposer is not None:
            self.disposer.done()
        if self.tracker is not None and gone:
            self.tracker.forget(gone)
        return self.expunged_lines(out, gone)

    def count_unseen(self) -> int:
        return sum(1 for i in range(len(self.messages)) if "S" not in self._peek(i).flags)
