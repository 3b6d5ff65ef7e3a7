"""CONDSTORE and QRESYNC (RFC 7162) answers built from a folder's mod-sequences
(modseq.py) and the session's view: the untagged lines, no I/O of their own."""

from __future__ import annotations

from collections.abc import Iterable

from courier_imapd import search as searchmod
from courier_imapd.core import QResync, SeqRange
from courier_imapd.modseq import Tracker

from libcourier.maildir.folder import MessageRef

MAX_VANISHED_SCAN = 1_000_000    # UIDs looked at for gaps when the log does not reach back


def uid_set(uids: Iterable[int]) -> str:
    """Ascending UIDs as a compact set: "4:6,9"."""
    out: list[str] = []
    start = prev = None
    for u in sorted(set(uids)):
        if prev is not None and u == prev + 1:
            prev = u
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = u
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def in_ranges(uid: int, ranges: tuple[SeqRange, ...] | None, top: int) -> bool:
    if ranges is None:
        return True
    for a, b in ranges:
        lo, hi = (top if a is None else a), (top if b is None else b)
        if min(lo, hi) <= uid <= max(lo, hi):
            return True
    return False


def vanished(tracker: Tracker, present: set[int], since: int, uidnext: int,
             ranges: tuple[SeqRange, ...] | None) -> list[int]:
    """UIDs expunged after modseq `since`, within `ranges` (RFC 7162 §3.2.5.1/§3.2.6).
    When the log does not go back that far, every missing UID below UIDNEXT in the
    ranges is named: the RFC lets the server name UIDs the client never had."""
    top = uidnext - 1
    logged = tracker.vanished_since(since)
    if logged is not None:
        return [u for u in logged if u not in present and in_ranges(u, ranges, top)]
    lo = 1
    out = []
    for u in range(lo, min(top, MAX_VANISHED_SCAN) + 1):
        if u not in present and in_ranges(u, ranges, top):
            out.append(u)
    return out


def fetch_line(seq: int, msg: MessageRef, flags: str, modseq: int) -> str:
    """`n FETCH (UID u FLAGS (...) MODSEQ (m))`, as RFC 7162 §3.1 wants for changes."""
    return f"{seq} FETCH (UID {msg.uid} FLAGS {flags} MODSEQ ({modseq}))"


def qresync_lines(q: QResync, uidvalidity: int, uidnext: int, messages: list[MessageRef],
                  tracker: Tracker, flags_of) -> list[str]:
    """What SELECT (QRESYNC (...)) adds after the usual responses (RFC 7162 §3.2.5):
    VANISHED (EARLIER) for what the client's cache holds and is gone, then a FETCH
    for each message changed since its modseq. Nothing for a stale UIDVALIDITY."""
    if q.uidvalidity != uidvalidity:
        return []
    out = []
    present = {m.uid for m in messages}
    gone = vanished(tracker, present, q.modseq, uidnext, q.known_uids)
    if gone:
        out.append(f"VANISHED (EARLIER) {uid_set(gone)}")
    for i, m in enumerate(messages, 1):
        ms = tracker.modseq(m.uid)
        if ms > q.modseq:
            out.append(fetch_line(i, m, flags_of(m), ms))
    return out


def uses_modseq(key: object) -> bool:
    """Whether a SEARCH key tree has a MODSEQ key (RFC 7162 §3.1.5)."""
    if isinstance(key, searchmod.Modseq):
        return True
    if isinstance(key, searchmod.Not):
        return uses_modseq(key.key)
    if isinstance(key, searchmod.Or):
        return uses_modseq(key.a) or uses_modseq(key.b)
    if isinstance(key, searchmod.And):
        return any(uses_modseq(k) for k in key.keys)
    return False
