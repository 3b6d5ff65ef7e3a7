"""courierpyscan: a warm scan takes cur/'s listing from it instead of listdir + stat,
and only when cur/ is provably unchanged since a listing that was not racy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libcourier.maildir import index
from libcourier.maildir.folder import Maildir


def make_folder(p: Path, n: int = 5) -> Path:
    for d in ("tmp", "new", "cur"):
        (p / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"{1700000000 + i}.M{i}P1.host,S={10 + i}"
        (p / "tmp" / name).write_bytes(b"x" * (10 + i))
        os.rename(p / "tmp" / name, p / "new" / name)
    return p


def age_cur(p: Path, seconds: int = 10) -> None:
    """Set cur/'s mtime in the past, as it is in a folder nobody changed lately."""
    st = os.stat(p / "cur")
    past = st.st_mtime_ns - seconds * 1_000_000_000
    os.utime(p / "cur", ns=(past, past))


def snapshot(state) -> list[tuple]:
    return [(m.uid, m.base, m.filename, m.flags, m.size, m.mtime, m.keywords)
            for m in state.messages]


def no_listdir(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make reading cur/ count (and still work), to see which path a scan took."""
    calls: list[int] = []
    real = Maildir._list_cur

    def counting(self: Maildir) -> dict:
        calls.append(1)
        return real(self)
    monkeypatch.setattr(Maildir, "_list_cur", counting)
    return calls


def warm(tmp_path: Path) -> tuple[Path, list[tuple]]:
    """A folder whose listing is stored and trusted; the full scan's answer."""
    md = make_folder(tmp_path / "M")
    Maildir(md).scan()                       # moves new/ to cur/: cur/ mtime is now -> racy
    assert not (md / index.SCAN_NAME).exists()
    age_cur(md)
    full = snapshot(Maildir(md).scan())      # full scan, listing stored
    assert (md / index.SCAN_NAME).exists()
    return md, full


def test_warm_scan_uses_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md, full = warm(tmp_path)
    calls = no_listdir(monkeypatch)
    st = Maildir(md).scan()
    assert calls == [] and snapshot(st) == full and not st.recent
    assert [m.size for m in st.messages] == [10, 11, 12, 13, 14]


@pytest.mark.parametrize("change", ["flag", "expunge", "deliver", "add_to_cur"])
def test_a_change_in_cur_is_a_full_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        change: str) -> None:
    md, _ = warm(tmp_path)
    mdir = Maildir(md)
    first = mdir.scan().messages[0]
    if change == "flag":
        mdir.set_flags(first, "S")
    elif change == "expunge":
        mdir.remove(first)
    elif change == "deliver":
        (md / "new" / "1800000000.M9P9.host").write_bytes(b"new")
    else:   # a file put straight into cur/ by another program
        (md / "cur" / "1800000000.M9P9.host:2,").write_bytes(b"new")
    calls = no_listdir(monkeypatch)
    st = mdir.scan()
    assert calls      # an expunge reads cur/ again (Maildir._relist_missing) before trusting it
    monkeypatch.undo()
    # The same answer as a scan with no listing at all.
    os.unlink(md / index.SCAN_NAME)
    assert snapshot(st) == snapshot(Maildir(md).scan())
    if change == "flag":
        assert st.messages[0].flags == "S"
    elif change == "expunge":
        assert first.uid not in {m.uid for m in st.messages}
    else:
        assert st.messages[-1].uid == 6 and st.messages[-1].base == "1800000000.M9P9.host"
        assert st.recent == ({6} if change == "deliver" else set())


def test_racy_listing_is_neither_stored_nor_used(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    md = make_folder(tmp_path / "M")
    Maildir(md).scan()
    Maildir(md).scan()       # cur/ changed less than RACY_NS ago: nothing stored
    assert not (md / index.SCAN_NAME).exists()
    # A listing recorded 1 s after cur/'s mtime is refused even when the stamp matches.
    stamp = index.DirStamp.of(os.stat(md / "cur"))
    files = Maildir(md)._list_cur()
    assert not index.write_listing(md, stamp, stamp.mtime_ns + 1_000_000_000, files)
    assert index.write_listing(md, stamp, stamp.mtime_ns + index.RACY_NS, files)
    assert index.read_listing(md, stamp) == files
    assert index.read_listing(md, index.DirStamp(stamp.ino + 1, stamp.size,
                                                 stamp.mtime_ns)) is None
    assert index.read_listing(md, index.DirStamp(stamp.ino, stamp.size + 1,
                                                 stamp.mtime_ns)) is None
    assert index.read_listing(md, index.DirStamp(stamp.ino, stamp.size,
                                                 stamp.mtime_ns + 1)) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "header"])
def test_damaged_listing_is_a_full_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        damage: str) -> None:
    md, full = warm(tmp_path)
    p = md / index.SCAN_NAME
    data = bytearray(p.read_bytes())
    if damage == "flip":
        data[-20] ^= 0x01            # in the mtimes
    elif damage == "truncate":
        del data[-5:]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(os.urandom(300))
    else:                            # recorded time made older: the CRC covers the header
        head = data.split(b"\n")[1].split(b" ")
        head[3] = str(int(head[3]) + 1).encode()
        data[len(index.SCAN_MAGIC):data.index(b"\n", len(index.SCAN_MAGIC))] = b" ".join(head)
    p.write_bytes(bytes(data))
    age_cur(md, 0)   # writing the file does not touch cur/; keep its stamp as recorded
    calls = no_listdir(monkeypatch)
    st = Maildir(md).scan()
    assert calls == [1] and snapshot(st) == full
    assert index.read_listing(md, index.DirStamp.of(os.stat(md / "cur"))) is not None


def test_known_uid_missing_from_listing_is_a_full_scan(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """courierimapuiddb names a message the listing lacks (written by a process that
    does not keep our listing): doubt, so cur/ is read."""
    md, full = warm(tmp_path)
    stamp = index.DirStamp.of(os.stat(md / "cur"))
    files = index.read_listing(md, stamp)
    assert files is not None
    files.pop(full[0][1])
    assert index.write_listing(md, stamp, stamp.mtime_ns + index.RACY_NS, files)
    calls = no_listdir(monkeypatch)
    assert snapshot(Maildir(md).scan()) == full and calls == [1]


def test_names_with_newline_are_not_stored(tmp_path: Path) -> None:
    md = make_folder(tmp_path / "M", 0)
    stamp = index.DirStamp.of(os.stat(md / "cur"))
    assert not index.write_listing(md, stamp, stamp.mtime_ns + index.RACY_NS,
                                   {"a\nb": ("a\nb:2,", 1, 1.0)})
    assert index.write_listing(md, stamp, stamp.mtime_ns + index.RACY_NS, {})
    assert index.read_listing(md, stamp) == {}


def test_change_while_cur_is_read_is_not_stored(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program (Courier's imapd takes no lock) renames a file while our scan
    reads cur/: what we read may be half old, so it is not stored for the next scan."""
    md = make_folder(tmp_path / "M")
    Maildir(md).scan()
    age_cur(md)
    real = Maildir._list_cur

    def racing(self: Maildir) -> dict:
        out = real(self)
        name = sorted(os.listdir(md / "cur"))[0]
        os.rename(md / "cur" / name, md / "cur" / (name + "S"))
        return out
    monkeypatch.setattr(Maildir, "_list_cur", racing)
    Maildir(md).scan()
    monkeypatch.undo()
    assert not (md / index.SCAN_NAME).exists()
    age_cur(md)
    st = Maildir(md).scan()
    assert (md / index.SCAN_NAME).exists() and st.messages[0].flags == "S"


def test_size_tag_wins_in_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MessageRef.size is the name's ,S= when present (Courier's RFC822.SIZE source),
    the on-disk size otherwise: the same from a stored listing as from stat."""
    md = make_folder(tmp_path / "M", 0)
    (md / "cur" / "1.M1P1.host,S=99:2,").write_bytes(b"12345")
    (md / "cur" / "2.M1P1.host:2,S").write_bytes(b"1234567")
    age_cur(md)
    full = Maildir(md).scan()
    assert [m.size for m in full.messages] == [99, 7]
    calls = no_listdir(monkeypatch)
    assert snapshot(Maildir(md).scan()) == snapshot(full) and calls == []
