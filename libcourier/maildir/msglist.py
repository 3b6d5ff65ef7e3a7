"""A folder's message list held as columns, a MessageRef made only when one is asked for.

A warm session reads its message list from the snapshot (snapshot.py) when a command
first needs it. One frozen MessageRef per message was most of that cost (100,000
messages: about 0.2 s of CPU, and some 390 bytes each for as long as the session is
selected). Here the list is the snapshot's columns: UIDs, sizes and mtimes in arrays,
the file names in one list of str, keywords only for the messages that have any. A
command that reads a message gets a MessageRef built from the columns; what a session
stores (a flag change it made, a message that arrived) is kept as the object it
stored, in a second list made on the first such store.

It behaves as the list[MessageRef] it replaces (index, slice, iterate, store, delete,
append, extend); `keys()` gives the folder index's (base, size) keys of many messages
without making a MessageRef for each (FETCH from the index).

A scan reads names only (folder.py: the size is the name's ,S=, as Courier's imapd
has it), so a message's mtime (INTERNALDATE) may not be known yet: NaN in the mtime
column. Its MessageRef is then a folder.LazyRef, which stats the file (in `cur`) when
its mtime is first asked for and hands it back to the column (learn_mtime_of); once
every mtime is known, on_all_read() lets the view store them (mailbox.py).
"""

from __future__ import annotations

import array
import bisect
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import TYPE_CHECKING, overload

# folder.py makes its message lists here, so the module, not the name: either may be
# imported first.
from libcourier.maildir import folder as _folder
from libcourier.maildir.flags import INFO_SEP, normalize, split_name

if TYPE_CHECKING:
    from libcourier.maildir.folder import MessageRef

_EMPTY: frozenset[str] = frozenset()


class MessageList(MutableSequence["MessageRef"]):
    """A message list over columns (module doc); in UID order as a scan lists it."""

    __slots__ = ("_uids", "_names", "_sizes", "_mtimes", "_keywords", "_stored", "_full",
                 "cur", "_unread", "on_all_read", "__weakref__")

    def __init__(self, uids: array.array, names: list[str], sizes: array.array,
                 mtimes: array.array, keywords: dict[int, frozenset[str]],
                 cur: str | None = None):
        if not len(uids) == len(names) == len(sizes) == len(mtimes):
            raise ValueError("message list columns of different lengths")
        self._uids = uids
        self._names = names
        self._sizes = sizes
        self._mtimes = mtimes
        # Each message's keywords, aligned with the other columns; None while no
        # message has any (most folders), so a list without keywords holds nothing.
        self._keywords: list[frozenset[str]] | None = None
        if keywords:
            self._keywords = [_EMPTY] * len(uids)
            for i, ks in keywords.items():
                self._keywords[i] = ks
        # The MessageRef made or stored at each index (None: not yet, make it from the
        # columns); None until the first, so a list read only by columns (FETCH from the
        # index, UID ranges) holds nothing per message. A message once made is kept:
        # a command that went through every message (SEARCH, FLAGS) will again.
        self._stored: list[MessageRef | None] | None = None
        self._full = False          # _stored holds every message: iterate it as is
        # The cur/ directory the names are in: where a NaN (not yet read) mtime is
        # read from when the message's MessageRef is made (module doc).
        self.cur = cur
        # How many mtimes are still NaN (-1: not counted yet); when the last is read,
        # on_all_read() is called (the view stores them: the next session stats none).
        self._unread = -1
        self.on_all_read: Callable[[], None] | None = None

    @classmethod
    def of(cls, refs: Sequence[MessageRef]) -> MessageList:
        """The list of a scan's MessageRefs as columns, the refs let go (an idle
        session keeps the columns only). A message the columns would not give back as
        it is (a base cut at another colon than split_name's) is kept as its ref."""
        ml = cls(array.array("q", [m.uid for m in refs]), [m.filename for m in refs],
                 array.array("q", [m.size for m in refs]),
                 array.array("d", [m.mtime for m in refs]),
                 {i: m.keywords for i, m in enumerate(refs) if m.keywords})
        for i, m in enumerate(refs):
            if (m.base, m.flags) != split_name(m.filename):
                if ml._stored is None:
                    ml._stored = [None] * len(refs)
                ml._stored[i] = m
        return ml

    def first_unseen(self) -> int:
        """The sequence number of the first message without \\Seen, 0: none (SELECT's
        UNSEEN), from the names without making a MessageRef each."""
        return next(self._unseen(), -1) + 1

    def _unseen(self) -> Iterator[int]:
        """The indexes of the messages without \\Seen, in order, from the names."""
        stored = self._stored
        for i, name in enumerate(self._names):
            m = stored[i] if stored is not None else None
            if "S" not in (m.flags if m is not None else split_name(name)[1]):
                yield i

    def copy(self) -> MessageList:
        c = MessageList(array.array(self._uids.typecode, self._uids), list(self._names),
                        array.array(self._sizes.typecode, self._sizes),
                        array.array(self._mtimes.typecode, self._mtimes), {}, self.cur)
        c._keywords = None if self._keywords is None else list(self._keywords)
        c._stored = None if self._stored is None else list(self._stored)
        c._full = self._full
        return c

    def __len__(self) -> int:
        return len(self._uids)

    def __eq__(self, other: object) -> bool:
        # Equal to any sequence of the same messages (a scan's list was a tuple).
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(other) == len(self._uids) and \
            all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None     # type: ignore[assignment]

    def _make(self, i: int) -> MessageRef:
        stored = self._stored
        if stored is None:
            stored = self._stored = [None] * len(self._uids)
        else:
            got = stored[i]
            if got is not None:
                return got
        m = stored[i] = self._ref(i)
        return m

    def _ref(self, i: int) -> MessageRef:
        """The MessageRef at `i` from the columns: a LazyRef when its mtime is not read."""
        t = self._mtimes[i]
        kws = _EMPTY if self._keywords is None else self._keywords[i]
        if t == t:
            return _ref(self._uids[i], self._names[i], self._sizes[i], t, kws)
        m = _ref(self._uids[i], self._names[i], self._sizes[i], t, kws, lazy=True)
        # object's setattr: the frozen dataclass's refuses a subclass's own slots.
        object.__setattr__(m, "cur", self.cur)
        object.__setattr__(m, "source", weakref.ref(self))
        return m

    def learn_mtime_of(self, uid: int, name: str, mtime: float) -> None:
        """learn_mtime for the message of `uid` (a LazyRef that read its file)."""
        i = bisect.bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid and self._names[i] == name:
            self.learn_mtime(i, mtime)

    def _one_read(self) -> None:
        """A NaN mtime was just filled in: count down to on_all_read()."""
        if self._unread < 0:
            self._unread = sum(1 for t in self._mtimes if t != t) + 1
        self._unread -= 1
        if self._unread == 0 and self.on_all_read is not None:
            self.on_all_read()

    def learn_mtime(self, i: int, mtime: float) -> None:
        """The mtime at `i`, read by a process that had the file open (a cold FETCH's
        record builders fstat it): making its MessageRef then needs no stat."""
        if self._mtimes[i] != self._mtimes[i]:      # NaN: not read yet
            self._mtimes[i] = mtime
            self._one_read()

    def peek(self, i: int) -> MessageRef:
        """The message at `i` (0 <= i < len), made for the caller and not kept: for a
        pass over every message that keeps none of them (a refresh, EXPUNGE)."""
        if self._stored is not None:
            got = self._stored[i]
            if got is not None:
                return got
        return self._ref(i)

    def peeked(self) -> Iterator[MessageRef]:
        """Every message as peek() makes it (not kept, its mtime maybe not read): for a
        pass that reads flags and keywords only (mod-sequences, modseq.Tracker)."""
        for i in range(len(self._uids)):
            yield self.peek(i)

    def _make_all(self) -> list[MessageRef]:
        """Every message made (once), for a command that goes through them all."""
        if self._stored is None:
            kws = self._keywords or [_EMPTY] * len(self._uids)
            mtimes = self._mtimes
            if any(math.isnan(t) for t in mtimes):
                self._stored = [self._ref(i) for i in range(len(mtimes))]
            else:
                self._stored = [_ref(*c) for c in zip(self._uids, self._names, self._sizes,
                                                      mtimes, kws, strict=True)]
        elif not self._full:
            for i in range(len(self._uids)):
                self._make(i)
        self._full = True
        return self._stored     # type: ignore[return-value]

    @overload
    def __getitem__(self, i: int) -> MessageRef: ...
    @overload
    def __getitem__(self, i: slice) -> list[MessageRef]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._make(k) for k in range(*i.indices(len(self._uids)))]
        n = len(self._uids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("message list index out of range")
        return self._make(i)

    def __iter__(self) -> Iterator[MessageRef]:
        # The list itself, as a list's iterator: a store or delete while iterating
        # does what it does to a list.
        return iter(self._make_all())

    def __setitem__(self, i, m) -> None:
        if isinstance(i, slice):
            raise TypeError("a message list takes one message at a time")
        n = len(self._uids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("message list index out of range")
        self._put(i, m)

    def _put(self, i: int, m: MessageRef) -> None:
        # The columns follow the stored message, so keys() and uids() stay right (a
        # LazyRef's mtime as it is: NaN until read).
        self._uids[i], self._names[i], self._sizes[i], self._mtimes[i] = \
            m.uid, m.filename, m.size, _folder._MTIME.__get__(m, _folder.MessageRef)
        if m.keywords and self._keywords is None:
            self._keywords = [_EMPTY] * len(self._uids)
        if self._keywords is not None:
            self._keywords[i] = m.keywords
        if self._stored is None:
            self._stored = [None] * len(self._uids)
        self._stored[i] = m

    def __delitem__(self, i) -> None:
        if isinstance(i, slice):
            for k in sorted(range(*i.indices(len(self._uids))), reverse=True):
                del self[k]
            return
        n = len(self._uids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("message list index out of range")
        del self._uids[i], self._names[i], self._sizes[i], self._mtimes[i]
        if self._stored is not None:
            del self._stored[i]
        if self._keywords is not None:
            del self._keywords[i]

    def insert(self, i: int, m: MessageRef) -> None:
        n = len(self._uids)
        i = max(0, min(n, i + n if i < 0 else i))
        self._uids.insert(i, 0)
        self._names.insert(i, "")
        self._sizes.insert(i, 0)
        self._mtimes.insert(i, 0.0)
        if self._keywords is not None:
            self._keywords.insert(i, _EMPTY)
        if self._stored is not None:
            self._stored.insert(i, None)
        self._put(i, m)

    def extend(self, values: Iterable[MessageRef]) -> None:
        for m in values:
            self.insert(len(self._uids), m)

    def pin(self, i: int, m: MessageRef) -> None:
        """Keep `m` as the message at `i`: one the columns would not give back as it is
        (a base cut at another colon than split_name's, folder.py's scan)."""
        if self._stored is None:
            self._stored = [None] * len(self._uids)
        self._stored[i] = m

    def row(self, i: int) -> tuple[int, str, frozenset[str], str | None]:
        """UID, file name, keywords and the flags of a stored MessageRef (None: none
        stored, they are the name's) of the message at `i`, without a MessageRef. A
        stored message's flags may differ from its name's (mailbox.relocate keeps the
        flags the client was told)."""
        if self._stored is not None:
            m = self._stored[i]
            if m is not None:
                return m.uid, m.filename, m.keywords, m.flags
        return self._uids[i], self._names[i], \
            _EMPTY if self._keywords is None else self._keywords[i], None

    def all_keywords(self) -> set[str]:
        """Every keyword some message has (the FLAGS response's), from the column."""
        if self._keywords is None:
            return set()
        return {k for ks in self._keywords if ks for k in ks}

    def has_keywords(self) -> bool:
        return self._keywords is not None and any(self._keywords)

    def count_unseen(self) -> int:
        """Messages without \\Seen (STATUS UNSEEN), from the names."""
        return sum(1 for _ in self._unseen())

    def columns(self) -> tuple[array.array, list[str], array.array, array.array,
                               dict[int, frozenset[str]]]:
        """UIDs, names, sizes, mtimes (NaN: not read) and keywords by index, as they
        are (not copies): what snapshot.write stores."""
        kws = {} if self._keywords is None else \
            {i: ks for i, ks in enumerate(self._keywords) if ks}
        return self._uids, self._names, self._sizes, self._mtimes, kws

    def uids(self) -> array.array:
        """Every message's UID, in order (a copy)."""
        return array.array(self._uids.typecode, self._uids)

    def keys(self, indexes: Iterable[int]) -> list[tuple[str, int]]:
        """(base, size) of the messages at `indexes`: the folder index's keys
        (MessageRef.base, MessageRef.size) without a MessageRef each."""
        names, sizes, stored = self._names, self._sizes, self._stored
        if stored is None:
            return [(_base(names[i]), sizes[i]) for i in indexes]
        return [(_base(names[i]), sizes[i]) if stored[i] is None
                else (stored[i].base, stored[i].size)       # type: ignore[union-attr]
                for i in indexes]


def _base(name: str) -> str:
    """MessageRef.base of a file name (flags.split_name's), the common case first."""
    j = name.find(INFO_SEP)
    return name[:j] if j >= 0 else split_name(name)[0]


class Picked(Sequence[tuple[int, "MessageRef"]]):
    """The (sequence number, message) pairs of the messages a command names (0-based
    `indexes` into `messages`), made when read; `columns()` gives what FETCH from the
    index needs of them without a MessageRef each."""

    __slots__ = ("_msgs", "_idx")

    def __init__(self, messages: Sequence[MessageRef], indexes: list[int]):
        self._msgs = messages
        self._idx = indexes

    def __len__(self) -> int:
        return len(self._idx)

    @overload
    def __getitem__(self, k: int) -> tuple[int, MessageRef]: ...
    @overload
    def __getitem__(self, k: slice) -> Picked: ...

    def __getitem__(self, k):
        if isinstance(k, slice):
            return Picked(self._msgs, self._idx[k])
        i = self._idx[k]
        return i + 1, self._msgs[i]

    def __iter__(self) -> Iterator[tuple[int, MessageRef]]:
        msgs = self._msgs
        for i in self._idx:
            yield i + 1, msgs[i]

    def columns(self) -> tuple[list[int], list[tuple[str, int]], list[int]]:
        """Sequence numbers, index keys (base, size) and UIDs of the picked messages."""
        idx, msgs = self._idx, self._msgs
        if isinstance(msgs, MessageList):
            uids = msgs._uids
            return [i + 1 for i in idx], msgs.keys(idx), [uids[i] for i in idx]
        refs = [msgs[i] for i in idx]
        return [i + 1 for i in idx], [(m.base, m.size) for m in refs], [m.uid for m in refs]

    def filename(self, k: int) -> str:
        """The file name of the k-th picked message, without keeping a MessageRef for
        it (a cold FETCH's record builders open the files of a whole folder)."""
        msgs, i = self._msgs, self._idx[k]
        if isinstance(msgs, MessageList):
            m = msgs._stored[i] if msgs._stored is not None else None
            return msgs._names[i] if m is None else m.filename
        return msgs[i].filename

    def learn_mtime(self, k: int, mtime: float) -> None:
        """MessageList.learn_mtime for the k-th picked message (a list of MessageRefs
        has every mtime already)."""
        if isinstance(self._msgs, MessageList):
            self._msgs.learn_mtime(self._idx[k], mtime)


def _stat_mtime(cur: str | None, name: str) -> float:
    """A message file's mtime (its INTERNALDATE). Another process may have renamed it
    (a flag change) since it was listed: then it is looked for by its base. 0.0 when
    it has gone (expunged: nothing will read its date)."""
    if cur is None:
        return 0.0
    try:
        return os.stat(os.path.join(cur, name)).st_mtime
    except FileNotFoundError:
        pass
    base = _base(name)
    for fresh in (False, True):
        now = _Renamed.names(cur, fresh).get(base)
        if now is None:
            return 0.0      # gone when cur/ was listed: a rename keeps a file's base
        try:
            return os.stat(os.path.join(cur, now)).st_mtime
        except FileNotFoundError:
            continue        # renamed again since that listing: list once more
        except OSError:
            return 0.0
    return 0.0


class _Renamed:
    """cur/'s names by base, for _stat_mtime: one listing serves every message
    renamed since its scan (another session's STORE 1:* +FLAGS \\Seen, then our
    FETCH 1:* INTERNALDATE: a listing per message was quadratic). Kept for one
    directory while its stamp holds."""

    key: tuple[str, int, int] | None = None
    by_base: dict[str, str] = {}

    @classmethod
    def names(cls, cur: str, fresh: bool) -> dict[str, str]:
        try:
            st = os.stat(cur)
            key = (cur, st.st_ino, st.st_mtime_ns)
            if fresh or key != cls.key:
                cls.key, cls.by_base = None, {}       # (the old one goes first)
                cls.by_base = {_base(n): n for n in os.listdir(cur) if not n.startswith(".")}
                cls.key = key
        except OSError:
            cls.key, cls.by_base = None, {}
        return cls.by_base


def _ref(uid: int, name: str, size: int, mtime: float, keywords: frozenset[str],
         lazy: bool = False) -> MessageRef:
    j = name.find(INFO_SEP)
    base, letters = split_name(name) if j < 0 else (name[:j], normalize(name[j + len(INFO_SEP):]))
    return (_folder.LazyRef if lazy else _folder.MessageRef)(uid, base, name, letters, size,
                                                             mtime, keywords)
