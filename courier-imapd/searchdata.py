"""What SEARCH, SORT and THREAD ask of a message, from the folder index or the file.

`MessageFacts` implements search.Facts, sort.SortFacts and thread.ThreadFacts
for one message of the selected mailbox. Every answer is computed lazily and
at most once: flags, UID and internal date come from the scan; RFC822.SIZE and
the header fields of libcourier.maildir.index.HEADER_FIELDS from the folder
index (`courierpyindex`), so a header search or a SORT over 10,000 messages
opens no message file once the index knows them; a miss parses the message's
header once and records what it found for next time. Other header fields are
read from the file's header; BODY/TEXT stream the file through
libcourier.mime.textsearch. `forget()` drops what one message holds, so memory
stays bounded over a long search.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from courier_imapd import fetch as fetchmod
from courier_imapd.mailbox import MailboxView

from libcourier.maildir import index as mindex
from libcourier.maildir import sortkeys
from libcourier.maildir.folder import MessageRef
from libcourier.maildir.sortkeys import parse_date
from libcourier.mime import Part, imapview, parse, textsearch
from libcourier.rfc5322 import decode_words, unfold

MAX_HEADER = 1 << 20      # bytes of a header read for a field the index does not keep
HEADER_READ = 1 << 14     # the first read: most headers end within it
_INDEXED = {n.decode(): i for i, n in enumerate(mindex.HEADER_FIELDS)}
_UNSET = object()
_T = TypeVar("_T")


def read_header(fh: BinaryIO, limit: int = MAX_HEADER) -> bytes:
    """The message header up to its blank line (LF line ends), at most `limit` bytes."""
    fh.seek(0)
    data = fh.read(min(HEADER_READ, limit))
    while b"\n\n" not in data and b"\n\r\n" not in data and len(data) < limit:
        more = fh.read(min(limit - len(data), 1 << 16))   # a header longer than most
        if not more:
            break
        data += more
    if data.startswith((b"\n", b"\r\n")):
        return b""
    ends = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    if ends:
        data = data[:min(ends) + 1]
    return data.replace(b"\r\n", b"\n") if b"\r" in data else data


_FIELD_RX: dict[str, re.Pattern[bytes]] = {}


def header_values(header: bytes, name: str) -> list[bytes]:
    """Every value of field `name` (lower case) in a header block, folds kept; a
    regular expression finds them without splitting every field (RFC 5322 §2.2:
    name, optional WSP (obsolete syntax), colon, then lines that start with WSP)."""
    rx = _FIELD_RX.get(name)
    if rx is None:
        if len(_FIELD_RX) > 256:
            _FIELD_RX.clear()
        rx = _FIELD_RX[name] = re.compile(
            rb"^" + re.escape(name.encode("ascii", "replace")) + rb"[ \t]*:(.*(?:\n[ \t].*)*)",
            re.IGNORECASE | re.MULTILINE)
    return rx.findall(header)


def has_text(value: bytes, needle: str) -> bool:
    """RFC 3501 §6.4.4 substring match on a header value: unfolded, RFC 2047-decoded,
    case-insensitive."""
    return needle in decode_words(unfold(value)).casefold()


# Bytes kept between commands, counted as each value's length plus MEMO_OVERHEAD for
# the key tuple and dict slot (measured ~200 with sys.getsizeof): 16 MiB holds about
# four remembered fields of 10,000 messages; an idle session keeps what it learnt.
MAX_MEMO = 16 << 20
MEMO_OVERHEAD = 200


class FolderMemo:
    """What earlier commands learnt about the messages of one folder, kept in this
    session process so the next SEARCH FROM, SORT or THREAD does not decode the
    index again (as Dovecot keeps looked-up fields in its cache). Keyed by the
    message's base name and size: a Maildir message's bytes never change under
    one name. Bounded by MAX_MEMO; past it, answers are computed and not kept."""

    def __init__(self, folder: str):
        self.folder = folder
        self.values: dict[tuple[str, int, str], object] = {}
        self.used = 0

    def get(self, msg: MessageRef, key: str, compute: Callable[[], _T]) -> _T:
        k = (msg.base, msg.size, key)
        try:
            return self.values[k]  # type: ignore[return-value]
        except KeyError:
            pass
        v = compute()
        if self.used < MAX_MEMO:
            self.values[k] = v
            self.used += MEMO_OVERHEAD + (len(v) if isinstance(v, (str, bytes, tuple)) else 0)
        return v


_memo: FolderMemo | None = None


def folder_memo(folder: str) -> FolderMemo:
    """The memo of `folder`; one folder at a time (a session selects one)."""
    global _memo
    if _memo is None or _memo.folder != folder:
        _memo = FolderMemo(folder)
    return _memo


class MailboxFacts:
    """What the messages of one command share: the view, its folder index and memo."""

    def __init__(self, view: MailboxView):
        self.view = view
        folder = str(view.maildir.path)
        self.index = fetchmod.index_of(folder)
        self.memo = folder_memo(folder)
        self.facts = [MessageFacts(self, i + 1, m) for i, m in enumerate(view.messages)]
        self.relocated = False    # cur/ listed again once for this command (view.relocate)
        self._records: list[tuple[bytes, tuple[int, ...]] | None] | None = None
        self._keys: list[sortkeys.SortKeys | None] | None = None

    def _record(self, seq: int) -> tuple[bytes, tuple[int, ...]] | None:
        """The index record of message `seq`. The first one asked for maps the index
        once for every message of the command (a SORT or header SEARCH of 1:* wants
        them all), instead of a read per message."""
        if self._records is None:
            self._records = self.index.records([(f.msg.base, f.msg.size) for f in self.facts])
        return self._records[seq - 1]

    def header_of(self, seq: int, i: int) -> tuple[bool, bytes | None]:
        """(known, raw value) of HEADER_FIELDS[i] from the index, nothing else decoded."""
        rec = self._record(seq)
        return (False, None) if rec is None else mindex.header(rec[0], rec[1], i)

    def keys_of(self, seq: int) -> sortkeys.SortKeys | None:
        """The SORT/THREAD keys the index holds for message `seq`, or None. The first
        one asked for decodes every message's in one loop (SORT and THREAD want all)."""
        if self._keys is None:
            self._record(seq)
            assert self._records is not None
            self._keys = mindex.keys_of_records(self._records)
        return self._keys[seq - 1]

    def entry_of(self, seq: int) -> mindex.Entry | None:
        rec = self._record(seq)
        if rec is None:
            return None
        try:
            return mindex.decode(rec[0])
        except mindex.IndexError_:
            return None


class MessageFacts:
    __slots__ = ("box", "seq", "uid", "flags", "recent", "msg", "_entry", "_head",
                 "_all", "_size", "_sent", "_keys")

    def __init__(self, box: MailboxFacts, seq: int, msg: MessageRef):
        self.box = box
        self.seq = seq
        self.msg = msg
        self.uid = msg.uid
        self.flags = msg.flags
        self.recent = msg.uid in box.view.recent
        self.forget()

    def forget(self) -> None:
        """Drop the per-message caches (the header, the index entry)."""
        self._entry: object = _UNSET
        self._head: Part | None = None
        self._all: bytes | None = None        # the header block
        self._size: int | None = None
        self._sent: object = _UNSET
        self._keys: object = _UNSET

    # -- sources ------------------------------------------------------------------------

    def _open(self) -> BinaryIO | None:
        if self.msg.uid in self.box.view.ghosts:
            return None
        try:
            return open(self.box.view.maildir.path_of(self.msg), "rb")
        except FileNotFoundError:
            pass
        if not self.box.relocated:
            # Another session's flag change renamed the file: follow the renames
            # (one listing of cur/ for the command).
            self.box.relocated = True
            self.box.view.relocate()
        current = self.box.view.messages[self.seq - 1]
        if current.filename != self.msg.filename:
            self.msg = current
            try:
                return open(self.box.view.maildir.path_of(self.msg), "rb")
            except FileNotFoundError:
                pass
        return None       # expunged by another session: nothing in it matches

    def entry(self) -> mindex.Entry | None:
        if self._entry is _UNSET:
            self._entry = self.box.entry_of(self.seq)
        return self._entry  # type: ignore[return-value]

    def _parse_head(self) -> Part | None:
        """The header as libcourier.mime keeps it; recorded in the index."""
        if self._head is None:
            fh = self._open()
            if fh is None:
                return None
            with fh:
                self._head = parse(fh, header_only=True)
            head = self._head
            new = mindex.Entry(self.msg.size, envelope=imapview.envelope(head),
                               headers=tuple(head.fields.get(n) for n in mindex.HEADER_FIELDS))
            old = self.entry()
            new = old.merge(new) if old is not None else new
            self.box.index.put(self.msg.base, new)
            self._entry = new
        return self._head

    def memo(self, key: str, compute: Callable[[], _T]) -> _T:
        """`compute()`, remembered for this message across commands (FolderMemo)."""
        return self.box.memo.get(self.msg, key, compute)

    def field(self, name: bytes) -> bytes | None:
        """The raw value of a header field (for the indexed ones, address fields given
        more than once are joined, as ENVELOPE reads them); None when there is none."""
        return self.memo("raw:" + name.decode(), lambda: self._field(name))

    def _field(self, name: bytes) -> bytes | None:
        i = _INDEXED.get(name.decode())
        if i is None:
            vals = self._fields(name.decode())
            return vals[0] if vals else None
        if self._entry is _UNSET:
            known, value = self.box.header_of(self.seq, i)
            if known:
                return value
        e = self.entry()
        if e is not None and e.headers is not None and len(e.headers) > i:
            return e.headers[i]
        head = self._parse_head()
        return None if head is None else head.fields.get(name)

    def _fields(self, name: str) -> list[bytes]:
        if self._all is None:
            fh = self._open()
            if fh is None:
                return []
            with fh:
                self._all = read_header(fh)
        return header_values(self._all, name)

    # -- search.Facts ---------------------------------------------------------------------

    def modseq(self) -> int:
        """RFC 7162: the message's mod-sequence (the session turns CONDSTORE on first)."""
        tracker = self.box.view.tracker
        return tracker.modseq(self.uid) if tracker is not None else 1

    def keywords(self) -> frozenset[str]:
        return frozenset(k.casefold() for k in self.msg.keywords)

    def size(self) -> int:
        if self._size is None:
            view = self.box.view
            size = view.sizes.get(self.uid)
            if size is None:
                e = self.entry()
                size = e.crlf_size if e is not None else None
            if size is None:
                fh = self._open()
                if fh is None:
                    size = self.msg.size
                else:
                    with fh:
                        size = fetchmod.crlf_size(fh)
                    old = self.entry()
                    new = mindex.Entry(self.msg.size, crlf_size=size)
                    self.box.index.put(self.msg.base, old.merge(new) if old else new)
            view.sizes[self.uid] = size
            self._size = size
        return self._size

    def internal_time(self) -> float:
        return self.msg.mtime

    def internal_day(self) -> datetime.date:
        # RFC 3501 §6.4.4: the date of INTERNALDATE, which we show in local time
        return datetime.date.fromtimestamp(self.msg.mtime)

    def keys(self) -> sortkeys.SortKeys | None:
        """sort.SortFacts / thread.ThreadFacts: the keys stored in the index record, or
        None (not indexed yet: the callers compute them from field())."""
        if self._keys is _UNSET:
            self._keys = self.box.keys_of(self.seq)
        return self._keys  # type: ignore[return-value]

    def _date(self) -> tuple[datetime.date, float] | None:
        if self._sent is _UNSET:
            k = self.keys()
            self._sent = k.sent if k is not None else \
                self.memo("date", lambda: parse_date(self.field(b"date")))
        return self._sent  # type: ignore[return-value]

    def sent_day(self) -> datetime.date | None:
        d = self._date()
        return None if d is None else d[0]

    def sent_time(self) -> float:
        """RFC 5256 §2.2: the Date: in UTC; the internal date when it has none."""
        k = self.keys()
        if k is not None:          # the index's keys: no date object made
            return k.when if k.day else self.msg.mtime
        d = self._date()
        return self.msg.mtime if d is None else d[1]

    def header_has(self, name: str, needle: str) -> bool:
        text = self.memo("text:" + name, lambda: self._header_text(name))
        return text is not None and needle in text

    def _header_text(self, name: str) -> str | None:
        """The field's values as SEARCH compares them: unfolded, RFC 2047-decoded,
        casefolded, joined by newlines; None (matching nothing) when there is none."""
        if name in _INDEXED:
            v = self.field(name.encode())
            vals = [] if v is None else [v]
        else:
            vals = self._fields(name)
        if not vals:
            return None
        return "\n".join(decode_words(unfold(v)).casefold() for v in vals)

    def text_has(self, needle: str, body_only: bool) -> bool:
        fh = self._open()
        if fh is None:
            return False
        with fh:
            return textsearch.contains(fh, needle, body_only=body_only)
