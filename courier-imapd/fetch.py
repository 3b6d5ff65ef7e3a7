"""FETCH data items (RFC 3501 §6.4.5, §7.4.2) from Maildir files.

Messages are stored with LF line ends and served with CRLF; RFC822.SIZE is the
size of the CRLF form, so it equals the number of bytes BODY[] sends. Nothing is
read whole: the size is counted over chunks (and cached by the view), and
BODY[] / BODY.PEEK[] / RFC822 and the header / text sections are windows of the
CRLF form streamed from the open file while the response is sent.
"""

from __future__ import annotations

import array
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from courier_imapd.core import FetchItem, FetchPart, StreamedLiteral
from courier_imapd.mailbox import flags_text

from libcourier.maildir import index as mindex
from libcourier.maildir import indexbuild
from libcourier.maildir.folder import Maildir, MessageRef
from libcourier.maildir.msglist import Picked
from libcourier.mime import Part, imapview, parse

log = logging.getLogger("courier.imapd")
NAN = float("nan")

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


CHUNK = 1 << 16     # bytes read from a message file at a time
MAX_OPEN_INDEXES = 4    # folder indexes kept open per process (a session selects one at a time)

_indexes: dict[str, mindex.FolderIndex] = {}


def folder_index(message_file: str) -> mindex.FolderIndex:
    """The index of the folder holding `message_file` (FOLDER/cur/NAME): index_of.
    (os.path, not pathlib: this runs once per message and pathlib is slow.)"""
    return index_of(os.path.dirname(os.path.dirname(message_file)))


def index_of(folder: str) -> mindex.FolderIndex:
    """The index of `folder`, kept open across FETCH commands; the least recently
    opened is closed beyond the limit."""
    idx = _indexes.get(folder)
    if idx is None:
        while len(_indexes) >= MAX_OPEN_INDEXES:
            _indexes.pop(next(iter(_indexes))).close()
        idx = _indexes[folder] = mindex.FolderIndex(Path(folder))
    return idx


def message_path(maildir: Maildir, msg: MessageRef) -> str:
    """FOLDER/cur/NAME as a string: what Maildir.path_of names, without pathlib (about
    10 µs a Path; FETCH 1:* wanted two per message, a third of a warm FETCH's time)."""
    return os.path.join(os.fspath(maildir.path), "cur", msg.filename)


def to_crlf(data: bytes) -> bytes:
    """Every line end as CRLF, whether it was stored as LF or CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_stream(fh: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    """The CRLF form of the whole file, from its start, a chunk at a time.

    Concatenated, the pieces equal to_crlf(file contents): a CR at the end of a
    chunk is held back until the next one, so a CRLF split across two reads is
    not seen as a bare CR followed by a bare LF.
    """
    fh.seek(0)
    carry = b""
    while raw := fh.read(chunk):
        data = carry + raw
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        else:
            carry = b""
        if data:
            yield to_crlf(data)
    if carry:
        yield carry


def window(stream: Iterator[bytes], start: int, stop: int) -> Iterator[bytes]:
    """The bytes [start, stop) of a stream of chunks."""
    if start >= stop:
        return
    pos = 0
    for piece in stream:
        end = pos + len(piece)
        if end > start:
            yield piece[max(0, start - pos):stop - pos]
        pos = end
        if pos >= stop:
            return


def crlf_size(fh: BinaryIO) -> int:
    """Size of the CRLF form, read in chunks so a large message is not held whole."""
    return sum(len(piece) for piece in crlf_stream(fh))


def header_length(fh: BinaryIO) -> int:
    """Length of the header of the CRLF form, blank line included (as split_header):
    up to the first empty line, 2 for a message that starts with one, else all of it."""
    head = b""      # the first two bytes
    tail = b""      # the last three bytes before `piece`, for a CRLFCRLF split between reads
    pos = 0         # offset of `piece` in the CRLF form
    for piece in crlf_stream(fh):
        if len(head) < 2:
            head += piece[:2 - len(head)]
            if head == b"\r\n":
                return 2
        buf = tail + piece
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            return pos - len(tail) + i + 4
        tail = buf[-3:]
        pos += len(piece)
    return pos


def internaldate(mtime: float) -> str:
    """RFC 3501 date-time: "17-Jul-1996 02:44:25 -0700", in local time like Courier."""
    t = time.localtime(mtime)
    off = t.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{t.tm_mday:2d}-{MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} '
            f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"')


def split_header(msg: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) of a CRLF message (RFC 5322 §2.1)."""
    if msg.startswith(b"\r\n"):
        return b"\r\n", msg[2:]
    i = msg.find(b"\r\n\r\n")
    if i < 0:
        return msg, b""
    return msg[:i + 4], msg[i + 4:]


def header_fields(header: bytes, names: tuple[str, ...], negate: bool) -> bytes:
    """The header lines (with continuations) whose field name is (not) in names."""
    want = {n.lower().encode("utf-8") for n in names}
    out: list[bytes] = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line + b"\r\n")
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in want) != negate
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


def section_name(item: FetchItem) -> bytes:
    if item.name == "BODY.STRUCTURE":
        return b"BODY"
    if item.name != "BODY":
        return item.name.encode("ascii")
    sec = item.section
    if item.fields:
        sec += " (" + " ".join(f.upper() for f in item.fields) + ")"
    out = b"BODY[" + sec.encode("utf-8") + b"]"
    if item.partial is not None:
        out += b"<%d>" % item.partial[0]
    return out


def sets_seen(item: FetchItem) -> bool:
    """RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \\Seen."""
    return (item.name == "BODY" and not item.peek) or item.name in ("RFC822", "RFC822.TEXT")


def needs_content(item: FetchItem) -> bool:
    return item.name in ("BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "ENVELOPE",
                         "BODYSTRUCTURE", "BODY.STRUCTURE")


def needs_tree(item: FetchItem) -> bool:
    """Items answered from the MIME tree (one linear parse of the file); the
    whole message and the top-level HEADER / TEXT are windows found without it."""
    if item.name in ("BODYSTRUCTURE", "BODY.STRUCTURE"):
        return True
    return item.name == "BODY" and item.section not in (
        "", "HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def needs_file(items: tuple[FetchItem, ...], size_known: bool,
               cached: mindex.Entry | None = None) -> bool:
    """Whether answering `items` reads the message file; what the index entry
    `cached` holds (ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE) does not."""
    if cached is not None and cached.crlf_size is not None:
        size_known = True
    for i in items:
        field = _INDEXED_VIEWS.get(i.name)
        if field is not None and cached is not None and getattr(cached, field) is not None:
            continue
        if needs_content(i) or (i.name == "RFC822.SIZE" and not size_known):
            return True
    return False


_INDEXED_VIEWS = {"ENVELOPE": "envelope", "BODYSTRUCTURE": "bodystructure",
                  "BODY.STRUCTURE": "body"}


def body_part(item: FetchItem, fh: BinaryIO, size: Callable[[], int],
              header_len: Callable[[], int], tree: Callable[[], Part]) -> FetchPart:
    """`NAME {n}\\r\\n<bytes>` for a content item; the whole message, its header
    and its text, and numbered parts are streamed from `fh` as windows of the CRLF
    form; `tree()` gives the message's MIME tree when a part number needs it."""
    name = section_name(item)
    if item.name == "BODY" and needs_tree(item):
        sec = imapview.parse_section(item.section)
        found = imapview.resolve(tree(), sec) if sec is not None else None
        if found is None:
            # RFC 3501 leaves a missing part open; like Dovecot, send it empty
            return name + b" " + literal(b"")
        start, stop, filtered = found
        if filtered:
            header = b"".join(window(crlf_stream(fh), start, stop))
            data = header_fields(header, item.fields, item.section.endswith(".NOT"))
            if item.partial is not None:
                off, count = item.partial
                data = data[off:off + count]
            return name + b" " + literal(data)
    elif item.name in ("RFC822", "BODY") and item.section == "":
        start, stop = 0, size()
    elif item.name == "RFC822.HEADER" or item.section == "HEADER":
        start, stop = 0, header_len()
    elif item.name == "RFC822.TEXT" or item.section == "TEXT":
        start, stop = header_len(), size()
    else:
        header = b"".join(window(crlf_stream(fh), 0, header_len()))
        data = header_fields(header, item.fields, item.section == "HEADER.FIELDS.NOT")
        if item.partial is not None:
            off, count = item.partial
            data = data[off:off + count]
        return name + b" " + literal(data)
    if item.partial is not None:
        # RFC 3501 §6.4.5: <offset.count> of the section; past its end is empty.
        off, count = item.partial
        start = min(start + off, stop)
        stop = min(start + count, stop)
    return StreamedLiteral(name, stop - start, window(crlf_stream(fh), start, stop))


def message_parts(items: tuple[FetchItem, ...], msg: MessageRef, fh: BinaryIO | None,
                  seq_flags: str, size: int | None,
                  index: mindex.FolderIndex | None = None,
                  entry: mindex.Entry | None = None,
                  modseq: int | None = None) -> tuple[list[FetchPart], int | None]:
    """All parts for one message.

    `fh` is the open message file (needs_file() says when one is needed); streamed
    parts read it while they are sent, so the caller keeps it open until then.
    Returns (parts, crlf size if known). `seq_flags` is the formatted flag list.

    ENVELOPE, BODY, BODYSTRUCTURE, RFC822.SIZE and the header length come from
    the folder's index (`index`, else the one of the folder `fh` is in) when it
    has them; a miss parses the file and appends what the parse gave. `entry` is
    the index entry when the caller has looked it up already (not looked up again).
    """
    parts: list[FetchPart] = []
    hlen: list[int] = []
    known: list[Part] = []       # the MIME tree, parsed at most once
    heads: list[Part] = []       # a header-only parse, for ENVELOPE
    sizes: list[int] = [] if size is None else [size]
    name = getattr(fh, "name", None)
    if index is None and isinstance(name, str) and \
            os.path.basename(os.path.dirname(name)) == "cur":
        # only a file in a Maildir's cur/ has a base name that identifies its bytes
        index = folder_index(name)
    cached = entry if entry is not None else \
        index.get(msg.base, msg.size) if index is not None else None
    if cached is not None:
        if not sizes and cached.crlf_size is not None:
            sizes.append(cached.crlf_size)
        if cached.header_len is not None:
            hlen.append(cached.header_len)
    counted: list[int] = []      # a size counted here (not from the index or the caller)

    def header_len() -> int:
        if not hlen:
            assert fh is not None
            hlen.append(known[0].body_start if known else header_length(fh))
        return hlen[0]

    def tree() -> Part:
        if not known:
            assert fh is not None
            known.append(parse(fh))
            if not sizes:
                sizes.append(known[0].body_end)     # the root ends at end of file
        return known[0]

    def crlf_len() -> int:
        if not sizes:
            assert fh is not None
            sizes.append(crlf_size(fh))
            counted.append(sizes[0])
        return sizes[0]

    made: dict[str, bytes] = {}     # views computed here, for the index

    def from_index(name: str) -> bytes | None:
        return None if cached is None else getattr(cached, name)

    def view(name: str, compute: Callable[[], bytes]) -> bytes:
        got = from_index(name)
        if got is None:
            got = made[name] = compute()
        return got

    if any(needs_tree(i) and not (i.name in ("BODYSTRUCTURE", "BODY.STRUCTURE") and
                                  from_index(i.name.lower().replace(".structure", "")))
           for i in items):
        tree()
    elif fh is not None and not sizes and \
            from_index("bodystructure") is None and any(i.name == "RFC822.SIZE" for i in items):
        # The whole file is read to count RFC822.SIZE anyway: parse it on the way (the
        # size comes with the tree), so the BODYSTRUCTURE clients ask for next is in
        # the index by then, and the file is not read and parsed a second time for it.
        tree()
    for item in items:
        if item.name == "UID":
            parts.append(b"UID %d" % msg.uid)
        elif item.name == "MODSEQ":
            # RFC 7162 §3.1.4.1; a session without mod-sequences asked: none known yet
            parts.append(b"MODSEQ (%d)" % (modseq or 1))
        elif item.name == "FLAGS":
            parts.append(b"FLAGS " + seq_flags.encode("ascii"))
        elif item.name == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + internaldate(msg.mtime).encode("ascii"))
        elif item.name == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % crlf_len())
        elif item.name == "ENVELOPE":
            def env() -> bytes:
                assert fh is not None
                # the envelope needs only the header: no full parse unless one is made anyway
                if not known and not heads:
                    heads.append(parse(fh, header_only=True))
                return imapview.envelope(known[0] if known else heads[0])
            parts.append(b"ENVELOPE " + view("envelope", env))
        elif item.name == "BODYSTRUCTURE":
            parts.append(b"BODYSTRUCTURE " + view(
                "bodystructure", lambda: imapview.bodystructure(tree())))
        elif item.name == "BODY.STRUCTURE":
            parts.append(b"BODY " + view("body", lambda: imapview.body(tree())))
        else:
            assert fh is not None
            parts.append(body_part(item, fh, crlf_len, header_len, tree))
    if index is not None and (known or heads or counted):
        new = indexbuild.entry_of(msg.size, known[0] if known else None,
                                  heads[0] if heads else None, counted[0] if counted else None,
                                  cached, any(i.name == "BODY.STRUCTURE" for i in items), made)
        index.put(msg.base, new if cached is None else cached.merge(new))
    return parts, (sizes[0] if sizes else None)


# -- FETCH 1:* of what the index holds, without per-message objects ------------------------

# Items a warm folder answers from the message list and the index alone: clients' sync
# requests (FLAGS, the ENVELOPE set, BODYSTRUCTURE) over a whole folder.
INDEX_ONLY = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                        "BODYSTRUCTURE", "BODY.STRUCTURE", "MODSEQ"})
_NEEDS_RECORD = frozenset({"RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY.STRUCTURE"})
_VIEW_OF = {"ENVELOPE": (0, b"ENVELOPE "), "BODY.STRUCTURE": (1, b"BODY "),
            "BODYSTRUCTURE": (2, b"BODYSTRUCTURE ")}


def indexed_responses(items: tuple[FetchItem, ...], maildir: Maildir,
                      picked: Sequence[tuple[int, MessageRef]],
                      recent: set[int] | frozenset[int], sizes: dict[int, int],
                      modseq: Callable[[int], int] | None = None,
                      ghosts: set[int] | frozenset[int] = frozenset()
                      ) -> Iterator[bytes | None] | None:
    """`* n FETCH (...)\r\n` for each (n, message) of `picked` in turn, answered from
    the message list, the folder index and `modseq` (uid -> its mod-sequence, the
    session's CONDSTORE tracker, None without one) only; None also for the UIDs in
    `ghosts` (expunged by another session: the caller's long way says so); None in place of a message the index
    does not know (the caller answers it the usual way, which records it). None instead
    of an iterator when `items` need more than the index holds (a body section...).

    Same bytes as message_parts() + core.fetch_response(): the items in the order asked.
    Made INDEXED_BATCH messages at a time, so memory does not grow with the folder."""
    names = tuple(i.name for i in items)
    if not names or not all(n in INDEX_ONLY for n in names):
        return None
    idx = None
    if any(n in _NEEDS_RECORD for n in names):
        idx = index_of(os.fspath(maildir.path))
    return _indexed_lines(names, idx, picked, recent, sizes, modseq, ghosts)


INDEXED_BATCH = 2048


def _indexed_lines(names: tuple[str, ...], idx: mindex.FolderIndex | None,
                   picked: Sequence[tuple[int, MessageRef]],
                   recent: set[int] | frozenset[int], sizes: dict[int, int],
                   modseq: Callable[[int], int] | None,
                   ghosts: set[int] | frozenset[int]) -> Iterator[bytes | None]:
    cold = None if idx is None else _ColdFill.start(names, idx, picked, sizes, ghosts)
    try:
        yield from _indexed_batches(names, idx, picked, recent, sizes, modseq, ghosts, cold)
    finally:
        if cold is not None:
            cold.close()


def _indexed_batches(names: tuple[str, ...], idx: mindex.FolderIndex | None,
                     picked: Sequence[tuple[int, MessageRef]],
                     recent: set[int] | frozenset[int], sizes: dict[int, int],
                     modseq: Callable[[int], int] | None,
                     ghosts: set[int] | frozenset[int],
                     cold: _ColdFill | None) -> Iterator[bytes | None]:
    flag_memo: dict[tuple, bytes] = {}
    date_memo = InternalDates()
    view = mindex.view
    one_view = idx is not None and len(names) == 1 and names[0] in _VIEW_OF
    for first in range(0, len(picked), INDEXED_BATCH):
        batch = picked[first:first + INDEXED_BATCH]
        if cold is not None or one_view:
            seqs, keys, uids = _columns(batch)      # (made once for both)
        if cold is not None:
            cold.fill(first, keys)
        if one_view:
            # one view (FETCH 1:* BODYSTRUCTURE): no per-item loop
            k_view, label = _VIEW_OF[names[0]]
            views = idx.views(keys, k_view)         # type: ignore[union-attr]
            if ghosts:
                views = [None if u in ghosts else v for u, v in zip(uids, views, strict=True)]
            yield from [None if v is None else b"* %d FETCH (%s%s)\r\n" % (seq, label, v)
                        for seq, v in zip(seqs, views, strict=True)]
            continue
        batch = list(batch)     # the messages made once (a Picked makes them when read)
        recs = None if idx is None else idx.records(
            keys if cold is not None else [(m.base, m.size) for _, m in batch])
        for k, (seq, msg) in enumerate(batch):
            if msg.uid in ghosts:
                yield None
                continue
            rec = recs[k] if recs is not None else None
            parts = []
            for name in names:
                if name == "UID":
                    parts.append(b"UID %d" % msg.uid)
                elif name == "FLAGS":
                    key = (msg.flags, msg.uid in recent, msg.keywords)
                    got = flag_memo.get(key)
                    if got is None:
                        got = flag_memo[key] = b"FLAGS " + flags_text(*key).encode("ascii")
                    parts.append(got)
                elif name == "INTERNALDATE":
                    parts.append(date_memo.item(msg.mtime))
                elif name == "MODSEQ":
                    # RFC 7162 §3.1.4.1, as message_parts: 1 when no mod-sequences are kept
                    parts.append(b"MODSEQ (%d)" % ((modseq(msg.uid) if modseq else None) or 1))
                elif rec is None:
                    parts = None
                    break
                elif name == "RFC822.SIZE":
                    size = rec[1][1]
                    if size < 0:
                        size = sizes.get(msg.uid, -1)
                        if size < 0:
                            parts = None
                            break
                    parts.append(b"RFC822.SIZE %d" % size)
                else:
                    k_view, label = _VIEW_OF[name]
                    got = view(rec[0], rec[1], k_view)
                    if got is None:
                        parts = None
                        break
                    parts.append(label + got)
            yield None if parts is None else b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))


# Header sections: the long way reads them from the file without the MIME tree, so what
# it records for a FETCH of them and index items is what _ColdFill makes.
_HEADER_SECTIONS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def cold_records(items: tuple[FetchItem, ...], maildir: Maildir,
                 picked: Sequence[tuple[int, MessageRef]], sizes: dict[int, int],
                 ghosts: set[int] | frozenset[int]) -> Iterator[None] | None:
    """For a FETCH indexed_responses cannot answer because it also asks for header
    sections (a client's first sync: RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (...)]):
    the records the long way would write for the messages without one, made in
    parallel ahead of it as for indexed_responses (_ColdFill), so the long way finds
    them and parses nothing. Advance it once before each message of `picked`, in
    order. None when there is nothing to gain (few cold messages, one CPU, items
    that need no record or that need the message's tree)."""
    names = tuple(i.name for i in items)
    if not all(n in INDEX_ONLY or n == "RFC822.HEADER"
               or (n == "BODY" and i.section in _HEADER_SECTIONS)
               for n, i in zip(names, items, strict=True)):
        return None
    cold = _ColdFill.start(names, index_of(os.fspath(maildir.path)), picked, sizes, ghosts)
    return None if cold is None else _RecordsAhead(cold, picked)


class _RecordsAhead(Iterator[None]):
    """cold_records' iterator: fills a batch's records when it reaches it. An object,
    not a generator, so that one dropped before its first step still closes its
    workers (a generator's finally does not run if it never started)."""

    def __init__(self, cold: _ColdFill, picked: Sequence[tuple[int, MessageRef]]):
        self.cold = cold
        self.picked = picked
        self.k = 0                    # the next message's position

    def __next__(self) -> None:
        k = self.k
        if k >= len(self.picked):
            self.close()
            raise StopIteration
        if k % INDEXED_BATCH == 0:
            batch = self.picked[k:k + INDEXED_BATCH]
            self.cold.fill(k, _columns(batch)[1])
        self.k = k + 1

    def close(self) -> None:
        self.cold.close()

    def __del__(self) -> None:
        self.close()


COLD_LEAST = 1000      # messages without a record before their records are built in parallel
_TREE_ITEMS = frozenset({"BODYSTRUCTURE", "BODY.STRUCTURE"})


class _ColdFill:
    """The records of a FETCH's messages the index does not know yet, made by
    indexbuild.Workers and appended to the index ahead of the batch that answers
    them: each is what message_parts would record for the same items (the long way's
    entry_of), made from the whole tree when a structure or a size not known to the
    session is asked, else from the header. What no worker made (a worker failed, a
    file was renamed meanwhile) goes the long way. Per cold message it holds two
    numbers and a flag in arrays (100,000 messages: under 2 MB)."""

    def __init__(self, idx: mindex.FolderIndex, workers: indexbuild.Workers,
                 positions: array.array, learn_mtime: Callable[[int, float], None] | None):
        self.idx = idx
        self.learn_mtime = learn_mtime
        self.workers: indexbuild.Workers | None = workers
        self.positions = positions            # in `picked`, ascending
        self.done = 0                         # positions handled

    @classmethod
    def start(cls, names: tuple[str, ...], idx: mindex.FolderIndex,
              picked: Sequence[tuple[int, MessageRef]], sizes: dict[int, int],
              ghosts: set[int] | frozenset[int]) -> _ColdFill | None:
        """Workers started for the cold messages of `picked`; None when there are too few
        of them, one CPU, or nothing to record."""
        tree = any(n in _TREE_ITEMS for n in names)
        size = "RFC822.SIZE" in names
        envelope = "ENVELOPE" in names
        if not (tree or size or envelope) or \
                indexbuild.worker_count(len(picked), COLD_LEAST) == 0:
            return None
        positions, disk, whole = array.array("q"), array.array("q"), bytearray()
        for first in range(0, len(picked), INDEXED_BATCH):     # (a batch's keys at a time)
            _, keys, uids = _columns(picked[first:first + INDEXED_BATCH])
            for k in idx.unknown([b for b, _ in keys]):
                uid = uids[k]
                if uid in ghosts:
                    continue
                parse_all = tree or (size and uid not in sizes)
                if parse_all or envelope:          # (else the long way reads no file either)
                    positions.append(first + k)
                    disk.append(keys[k][1])
                    whole.append(parse_all)
        n = indexbuild.worker_count(len(positions), COLD_LEAST)
        if n == 0:
            return None
        cur = os.path.join(os.fspath(idx.folder), "cur")
        filename = picked.filename if isinstance(picked, Picked) else \
            (lambda k: picked[k][1].filename)
        want_body = "BODY.STRUCTURE" in names

        def job(j: int) -> tuple[bytes | None, float]:        # (run in a worker)
            try:
                with open(os.path.join(cur, filename(positions[j])), "rb", buffering=0) as fh:
                    # (unbuffered: parse reads in large pieces itself; a buffer is a copy)
                    # the mtime (INTERNALDATE) too: the session need not stat the file
                    return (indexbuild.record(fh, disk[j], bool(whole[j]), want_body),
                            os.fstat(fh.fileno()).st_mtime)
            except OSError:
                return None, NAN      # renamed or expunged meanwhile: the long way follows it

        try:
            workers = indexbuild.Workers(len(positions), job, n)
        except OSError as e:
            log.warning("cold FETCH: no record builders (%s): one at a time", e)
            return None
        log.info("cold FETCH: %d records made by %d processes and the session",
                 len(positions), n)
        return cls(idx, workers, positions,
                   picked.learn_mtime if isinstance(picked, Picked) else None)

    def fill(self, first: int, keys: Sequence[tuple[str, int]]) -> None:
        """The records of the cold messages of the batch at position `first` whose index
        keys are `keys` (and of any before it) appended, with one write."""
        recs: list[tuple[str, bytes]] = []
        upto = first + len(keys)
        try:
            while self.workers is not None and self.done < len(self.positions) \
                    and self.positions[self.done] < upto:
                k = self.positions[self.done]
                payload, mtime = self.workers.next()
                if payload is not None and k >= first:
                    recs.append((keys[k - first][0], payload))
                if self.learn_mtime is not None and mtime == mtime:
                    self.learn_mtime(k, mtime)
                self.done += 1
        except indexbuild.WorkerFailed as e:
            log.warning("cold FETCH: a record builder failed (%s): the rest one at a time", e)
            self.close()
        finally:
            # the table the index gets every doubling is written once, by close()
            self.idx.put_payloads(recs, table=False)

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
            self.workers = None
            self.idx.settle()


def _columns(batch: Sequence[tuple[int, MessageRef]]
             ) -> tuple[list[int], list[tuple[str, int]], list[int]]:
    """Sequence numbers, index keys and UIDs of a batch; from the message list's
    columns when it has them (msglist.Picked: no MessageRef made per message)."""
    if isinstance(batch, Picked):
        return batch.columns()
    return [s for s, _ in batch], [(m.base, m.size) for _, m in batch], [m.uid for _, m in batch]


class InternalDates:
    """INTERNALDATE items, the local time worked out once per quarter hour: a folder's
    messages arrive close together, and time.localtime + formatting per message was
    a third of FETCH (... INTERNALDATE ...) from the index."""

    BLOCK = 900      # seconds; UTC offsets change on quarter hours

    def __init__(self) -> None:
        # block start -> (date prefix `"DD-Mon-YYYY `, local second of day, ` +hhmm"`)
        self._blocks: dict[int, tuple[bytes, int, bytes] | None] = {}

    def item(self, mtime: float) -> bytes:
        t = int(mtime)
        b = t - t % self.BLOCK
        got = self._blocks.get(b, False)
        if got is False:
            got = self._blocks[b] = self._block(b)
        if got is not None:
            sod = got[1] + (t - b)
            if sod < 86400:
                return b"INTERNALDATE %s%02d:%02d:%02d%s" % (
                    got[0], sod // 3600, sod // 60 % 60, sod % 60, got[2])
        return b"INTERNALDATE " + internaldate(mtime).encode("ascii")

    def _block(self, b: int) -> tuple[bytes, int, bytes] | None:
        """None when the UTC offset changes inside the block (then: per message)."""
        lt, last = time.localtime(b), time.localtime(b + self.BLOCK - 1)
        if lt.tm_gmtoff != last.tm_gmtoff:
            return None
        full = internaldate(b).encode("ascii")       # "DD-Mon-YYYY HH:MM:SS +hhmm"
        return full[:13], lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec, full[21:]
