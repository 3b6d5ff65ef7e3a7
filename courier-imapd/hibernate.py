"""Hibernation of an idle session: its state as a compact blob, and back.

After IMAP_HIBERNATE_TIMEOUT seconds without a command, a plain-TCP session at
rest (nothing buffered, no command, literal or reply half done, not in IDLE)
hands its connection and this blob to the listener (libcourier.tcpd.listener)
and its process exits; an idle connection then costs the listener's few hundred
bytes instead of a process. When the client speaks, the listener forks a child
with the blob; resume.py re-resolves the user through authd, checks the uid is
the one that sent the blob, switches to it, and only then decodes the rest.

The blob is read by another process, so it is not pickle: a fixed header
(magic, version, the login name, which the resuming child needs before it can
switch to the user), then a zlib-compressed body of little-endian integers,
length-prefixed strings and arrays, every count and length checked against what
is left and against the limits below. What it holds is what the client was
told: the selected folder's UIDs in sequence order with their flags and keywords
as last reported, \\Recent, expunged-but-unreported UIDs, the keywords announced
in FLAGS, ENABLEd extensions, the session's counters. Changes made while it
slept are found by the first refresh after resuming, as for a session awake.
"""

from __future__ import annotations

import array
import itertools
import logging
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from courier_imapd.mailbox import FolderReplaced

from libcourier.maildir.flags import INFO_SEP, normalize, split_name
from libcourier.maildir.msglist import MessageList
from libcourier.tcpd.listener import hibernate as hand_over

if TYPE_CHECKING:
    from courier_imapd.session import Session

log = logging.getLogger("courier.imapd")

MAGIC = b"CIHB"
VERSION = 1
MAX_BLOB = 128 * 1024          # compressed octets: one datagram to the listener
MAX_RAW = 16 * 1024 * 1024     # octets of body once inflated (a zip bomb stops here)
MAX_NAME = 1024                # octets of a login, folder name, flag or keyword
MAX_TABLE = 1 << 20            # distinct (flags, keywords) pairs, UIDs in a list

_HEAD = struct.Struct("<4sBH")  # magic, version, length of the login
_LE = sys.byteorder == "little"


class BlobError(Exception):
    """A blob that is not one we wrote: truncated, oversize, or nonsense."""


@dataclass(slots=True)
class FolderImage:
    """The selected folder as the client was last told of it."""
    name: str
    readonly: bool
    uidvalidity: int
    cur_id: tuple[int, int]                  # (st_dev, st_ino) of cur/ at SELECT
    uids: list[int]                          # in sequence order
    flags: list[str]                         # maildir letters per message, as reported
    keywords: list[frozenset[str]]           # keywords per message, as reported
    recent: list[int] = field(default_factory=list)
    ghosts: list[int] = field(default_factory=list)   # gone from disk, EXPUNGE not yet sent
    announced: list[str] = field(default_factory=list)  # keywords told in FLAGS
    tracked: bool = False                    # mod-sequences on (CONDSTORE)
    # The SELECT's snapshot (dev, inode, mtime_ns) when all the client saw came from
    # it (MailboxView.snapshot_id): resumed without a scan while it is unchanged.
    snapshot: tuple[int, int, int] | None = None


@dataclass(slots=True)
class SessionImage:
    user: str
    utf8: bool = False
    condstore: bool = False
    qresync: bool = False
    rcvd: int = 0
    sent: int = 0
    body: int = 0
    elapsed: int = 0                          # seconds since login (the LOGOUT log's time)
    nap: float = 0.0                          # the nap this sleep followed (0: configured)
    asleep_since: float = 0.0                 # time.time() it was handed over
    copied: list[int] = field(default_factory=list)
    folder: FolderImage | None = None


# -- writing ----------------------------------------------------------------------------

class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack("<B", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack("<Q", v))

    def text(self, s: str) -> None:
        b = s.encode("utf-8", "surrogateescape")
        if len(b) > MAX_NAME:
            raise BlobError(f"a name of {len(b)} octets")
        self.parts.append(struct.pack("<H", len(b)) + b)

    def uints(self, values: list[int] | array.array) -> None:
        a = array.array("I", values)
        if len(a) > MAX_TABLE * 16:
            raise BlobError("too many numbers")
        if not _LE:
            a.byteswap()
        self.parts.append(struct.pack("<I", len(a)) + a.tobytes())

    def texts(self, values: list[str]) -> None:
        self.parts.append(struct.pack("<I", len(values)))
        for v in values:
            self.text(v)


def encode(img: SessionImage) -> bytes:
    """The blob of a session; BlobError when it would exceed MAX_BLOB (then the
    session stays awake: a folder too big to describe in one datagram)."""
    login = img.user.encode("utf-8", "surrogateescape")
    if len(login) > MAX_NAME:
        raise BlobError("login too long")
    w = _Writer()
    w.u8(img.utf8 | img.condstore << 1 | img.qresync << 2 | (img.folder is not None) << 3)
    for v in (img.rcvd, img.sent, img.body, img.elapsed, int(img.nap * 1000),
              int(img.asleep_since * 1000)):
        w.u64(max(0, v))
    w.uints(img.copied)
    f = img.folder
    if f is not None:
        if not len(f.uids) == len(f.flags) == len(f.keywords):
            raise BlobError("folder columns of different lengths")
        w.text(f.name)
        w.u8(f.readonly | f.tracked << 1 | (f.snapshot is not None) << 2)
        for v in f.snapshot or ():
            w.u64(v)
        w.u64(f.uidvalidity)
        w.u64(f.cur_id[0])
        w.u64(f.cur_id[1])
        # UIDs as differences (ascending: each > 0), which compress to almost nothing
        # where the numbers run on.
        w.uints([b - a for a, b in zip([0, *f.uids], f.uids, strict=False)])
        # Each message's (flags, keywords) as an index into a table of the distinct
        # pairs: most folders have a handful, and the index column compresses to little.
        table: dict[tuple[str, frozenset[str]], int] = {}
        index = array.array("I", (table.setdefault(p, len(table))
                                  for p in zip(f.flags, f.keywords, strict=True)))
        if len(table) > MAX_TABLE:
            raise BlobError("too many distinct flag sets")
        w.parts.append(struct.pack("<I", len(table)))
        for flags, kws in table:
            w.text(flags)
            w.texts(sorted(kws))
        w.uints(index)
        w.uints(f.recent)
        w.uints(f.ghosts)
        w.texts(sorted(f.announced))
    body = zlib.compress(b"".join(w.parts), 6)
    blob = _HEAD.pack(MAGIC, VERSION, len(login)) + login + body
    if len(blob) > MAX_BLOB:
        raise BlobError(f"{len(blob)} octets, over {MAX_BLOB}")
    return blob


# -- reading ----------------------------------------------------------------------------

def login_of(blob: bytes) -> str:
    """The login in the header: all the resuming child reads before it is the user."""
    if len(blob) > MAX_BLOB:
        raise BlobError("oversize")
    if len(blob) < _HEAD.size:
        raise BlobError("truncated header")
    magic, version, n = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise BlobError("not a session blob")
    if version != VERSION:
        raise BlobError(f"version {version}, not {VERSION}")
    if n == 0 or n > MAX_NAME or len(blob) < _HEAD.size + n:
        raise BlobError("bad login length")
    try:
        return blob[_HEAD.size:_HEAD.size + n].decode("utf-8", "surrogateescape")
    except UnicodeDecodeError as e:      # only for lone surrogates of another encoder
        raise BlobError("login not UTF-8") from e


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise BlobError("truncated")
        got = self.data[self.pos:self.pos + n]
        self.pos += n
        return got

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def text(self) -> str:
        n = struct.unpack("<H", self.take(2))[0]
        if n > MAX_NAME:
            raise BlobError("name too long")
        try:
            return bytes(self.take(n)).decode("utf-8", "surrogateescape")
        except UnicodeDecodeError as e:
            raise BlobError("name not UTF-8") from e

    def uints(self) -> array.array:
        n = self.u32()
        a = array.array("I")
        a.frombytes(self.take(4 * n))       # take() checks n against what is left
        if not _LE:
            a.byteswap()
        return a

    def texts(self) -> list[str]:
        n = self.u32()
        if n > MAX_TABLE:
            raise BlobError("list too long")
        return [self.text() for _ in range(n)]


def decode(blob: bytes) -> SessionImage:
    """The session a blob describes; BlobError for anything but a blob we wrote."""
    user = login_of(blob)
    start = _HEAD.size + len(user.encode("utf-8", "surrogateescape"))
    z = zlib.decompressobj()
    try:
        raw = z.decompress(blob[start:], MAX_RAW)
    except zlib.error as e:
        raise BlobError(f"body: {e}") from None
    if z.unconsumed_tail:
        raise BlobError(f"body over {MAX_RAW} octets")
    if not z.eof or z.unused_data:
        raise BlobError("truncated or trailing body")
    r = _Reader(raw)
    bits = r.u8()
    img = SessionImage(user, utf8=bool(bits & 1), condstore=bool(bits & 2),
                       qresync=bool(bits & 4))
    img.rcvd, img.sent, img.body, img.elapsed = r.u64(), r.u64(), r.u64(), r.u64()
    img.nap, img.asleep_since = r.u64() / 1000, r.u64() / 1000
    img.copied = r.uints().tolist()
    if bits & 8:
        name = r.text()
        fbits = r.u8()
        snapshot = (r.u64(), r.u64(), r.u64()) if fbits & 4 else None
        uidvalidity, dev, ino = r.u64(), r.u64(), r.u64()
        deltas = r.uints()
        if 0 in deltas:
            raise BlobError("UIDs not ascending")
        uids = array.array("Q", itertools.accumulate(deltas))
        if uids and uids[-1] > 0xFFFFFFFF:
            raise BlobError("UID out of range")
        ntable = r.u32()
        if ntable > MAX_TABLE:
            raise BlobError("flag table too long")
        table = [(r.text(), frozenset(r.texts())) for _ in range(ntable)]
        index = r.uints()
        if len(index) != len(uids):
            raise BlobError("flag index and UIDs differ in length")
        if index and max(index) >= ntable:
            raise BlobError("flag index out of its table")
        pairs = [table[i] for i in index]
        img.folder = FolderImage(
            name, readonly=bool(fbits & 1), uidvalidity=uidvalidity, cur_id=(dev, ino),
            uids=uids.tolist(), flags=[p[0] for p in pairs], keywords=[p[1] for p in pairs],
            recent=r.uints().tolist(), ghosts=r.uints().tolist(), announced=r.texts(),
            tracked=bool(fbits & 2), snapshot=snapshot)
    if r.pos != len(raw):
        raise BlobError("trailing octets")
    return img


# -- the session's side -----------------------------------------------------------------

MAX_NAP = 64.0        # seconds: the longest a session backs off (next_nap)
LONG_SLEEP = 60.0     # seconds asleep that pay for a hibernation many times over


def nap(s: Session) -> float:
    """Seconds without a command after which this session hibernates; 0: never (off,
    no channel to the listener, TLS, or a timeout not below the autologout)."""
    t = s.cfg.hibernate_timeout
    if t <= 0 or t >= s.cfg.autologout or s.conn.tls:
        return 0
    if getattr(s.conn, "hibernate", None) is None:
        return 0
    return min(max(t, s.hibernate_nap), s.cfg.autologout - 1)


def next_nap(img: SessionImage, configured: int, now: float) -> float:
    """The nap of a resumed session. A sleep and a wake cost some CPU (a fork, a scan
    of the folder): a client that woke its session soon after it slept (one that
    pauses a little longer than the timeout between commands) gets twice the nap,
    up to MAX_NAP, so it is not put to sleep after every command; a session that
    slept long (LONG_SLEEP) goes back to the configured timeout."""
    slept = now - img.asleep_since
    if img.nap <= 0 or not 0 <= slept < LONG_SLEEP:
        return float(configured)
    return min(MAX_NAP, max(float(configured), 2 * img.nap))


def capture(s: Session) -> SessionImage:
    """What the client of this session has been told (module doc)."""
    img = SessionImage(s.user, utf8=s.utf8, condstore=s.condstore, qresync=s.qresync,
                       rcvd=s.counters.rcvd, sent=s.counters.sent, body=s.counters.body,
                       elapsed=int(time.monotonic() - s.started), copied=sorted(s.copied),
                       nap=nap(s), asleep_since=time.time())
    v = s.view
    if v is not None:
        snapshot = v.snapshot_id()   # before the list is read (which lets the file go)
        msgs = v.messages            # a lazy view reads its snapshot: the list as told
        if isinstance(msgs, MessageList):
            uids, flags, keywords = _columns(msgs)
        else:
            uids = [m.uid for m in msgs]
            flags = [m.flags for m in msgs]
            keywords = [m.keywords for m in msgs]
        img.folder = FolderImage(
            v.name, readonly=v.readonly, uidvalidity=v.uidvalidity, cur_id=v.cur_id,
            uids=uids, flags=flags, keywords=keywords, recent=sorted(v.recent),
            ghosts=sorted(v.ghosts), announced=sorted(v.keywords),
            tracked=v.tracker is not None, snapshot=snapshot)
    return img


def _columns(msgs: MessageList) -> tuple[list[int], list[str], list[frozenset[str]]]:
    """UIDs, flags as told and keywords, by rows (no MessageRef made: a peek per
    message was most of a hibernation's CPU)."""
    uids: list[int] = []
    flags: list[str] = []
    keywords: list[frozenset[str]] = []
    for i in range(len(msgs)):
        uid, name, kws, told = msgs.row(i)
        if told is None:
            cut = name.find(INFO_SEP)
            told = normalize(name[cut + len(INFO_SEP):]) if cut >= 0 else split_name(name)[1]
        uids.append(uid)
        flags.append(told)
        keywords.append(kws)
    return uids, flags, keywords


def hibernate(s: Session) -> bool:
    """Hand this idle session to the listener; True: done, the process may exit
    without a word to the client (the connection is the listener's now)."""
    channel = getattr(s.conn, "hibernate", None)
    if channel is None or s.conn.tls or not s.core.at_rest():
        return False
    try:
        blob = encode(capture(s))
    except (BlobError, FolderReplaced, OSError) as e:
        log.info("user=%s, ip=[%s]: staying awake: %s", s.user, s.conn.peer_ip, e)
        return False
    if not hand_over(channel, s.conn.sock, blob):
        return False
    log.info("HIBERNATE, user=%s, ip=[%s], folder=%s, state=%d octets", s.user,
             s.conn.peer_ip, s.view.name if s.view is not None else "-", len(blob))
    return True


ASLEEP = object()     # Session._next_command's word: handed to the listener, stop now
