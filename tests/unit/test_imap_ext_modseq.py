"""Mod-sequences in courierpymodseq (RFC 7162): several processes (here: trackers) on
one folder hand out increasing numbers and agree on them; expunges are logged for
QRESYNC; the log is rewritten when long and survives a torn write."""

from __future__ import annotations

import os
from pathlib import Path

from courier_imapd.modseq import FILENAME, Tracker

from libcourier.maildir.folder import MessageRef


def msg(uid: int, flags: str = "", kws: frozenset[str] = frozenset()) -> MessageRef:
    return MessageRef(uid, f"b{uid}", f"b{uid}:2,{flags}", flags, 10, 0.0, kws)


def folder(tmp_path: Path) -> Path:
    for d in ("tmp", "new", "cur"):
        (tmp_path / d).mkdir(exist_ok=True)
    return tmp_path


def test_two_processes_agree(tmp_path: Path) -> None:
    f = folder(tmp_path)
    a, b = Tracker(f, 7), Tracker(f, 7)
    assert a.update([msg(1), msg(2)], complete=True) == [1, 2]
    start = a.highest
    assert a.modseq(2) == start and a.modseq(1) == start - 1
    # b reads what a wrote and finds nothing new; a change b makes is seen by a.
    assert b.update([msg(1), msg(2)], complete=True) == []
    assert b.modseq(1) == a.modseq(1) and b.highest == start
    assert b.update([msg(1, "S")], complete=False) == [1]
    assert a.update([msg(1, "S"), msg(2)], complete=True) == []
    assert a.modseq(1) == start + 1 == b.highest
    # A keyword change is a change; an expunge is logged with its own modseq.
    assert a.update([msg(1, "S", frozenset({"$Junk"}))], complete=True) == [1]
    assert a.vanished_since(start) == [2] and 2 not in a.live
    assert b.update([msg(1, "S", frozenset({"$Junk"}))], complete=True) == []
    assert b.expunged == {2: start + 3} and b.highest == start + 3
    b.forget([1])
    a.update([], complete=True)
    assert a.expunged == {2: start + 3, 1: start + 4} and a.live == {}


def test_new_uidvalidity_and_damage_start_over(tmp_path: Path) -> None:
    f = folder(tmp_path)
    a = Tracker(f, 7)
    a.update([msg(1)], complete=True)
    old = a.highest
    with open(f / FILENAME, "ab") as fh:
        fh.write(b"9 99")          # a torn last line: ignored
    b = Tracker(f, 7)
    assert b.update([msg(1)], complete=True) == [] and b.highest == old
    c = Tracker(f, 8)             # UIDVALIDITY changed: a fresh log, numbers still grow
    assert c.update([msg(1)], complete=True) == [1] and c.highest > old
    (f / FILENAME).write_bytes(b"garbage\n")
    d = Tracker(f, 8)
    assert d.update([msg(1)], complete=True) == [1]


def test_rewrite_keeps_state_and_other_process_follows(tmp_path: Path, monkeypatch) -> None:
    import courier_imapd.modseq as mod
    monkeypatch.setattr(mod, "MAX_EXPUNGED", 3)
    f = folder(tmp_path)
    a, b = Tracker(f, 1), Tracker(f, 1)
    msgs = [msg(u) for u in range(1, 50)]
    a.update(msgs, complete=True)
    b.update(msgs, complete=True)
    for _ in range(20000 // 49):           # flag flips until the log is rewritten
        msgs = [msg(m.uid, "S" if not m.flags else "") for m in msgs]
        a.update(msgs, complete=True)
    size_before = (f / FILENAME).stat().st_size
    a.update(msgs[10:], complete=True)     # 10 expunged; 3 kept by the next rewrite
    assert size_before < (1 << 21)
    assert b.update(msgs[10:], complete=True) == []
    assert b.highest == a.highest and b.live == a.live
    os.close(a._rewrite(a._open_locked()))   # as update() does when the log is long
    c = Tracker(f, 1)
    c.update(msgs[10:], complete=True)
    assert c.live == a.live and len(c.expunged) == 3
    assert c.vanished_since(0) is None                 # older expunges were dropped
    assert c.vanished_since(c.first - 1) == sorted(c.expunged)
