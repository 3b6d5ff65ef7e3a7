"""The POP3 view of a Maildir, and the courierpop3dsizelist cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from courier_pop3d.maildrop import Maildrop, MaildropInUse
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import pop3sizelist as sl

MSGS = [
    b"From: a@example.com\nSubject: one\n\nHello\n.dot\n",
    b"From: b@example.com\nSubject: two\n\nbody 1\nbody 2\n",
    b"Subject: caf\xc3\xa9\n\nno final newline",
]


def make_maildir(root: Path, msgs: list[bytes] = MSGS) -> Path:
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(msgs):
        (root / "new" / f"{1700000000 + i}.M{i}P1.host,S={len(m)}").write_bytes(m)
    return root


def retr(drop: Maildrop, i: int, lines: int | None = None) -> bytes:
    f = drop.open_message(i)
    assert f is not None
    with f:
        return b"".join(drop.stream(f, lines))


def test_sizes_uidls_and_stream(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    view = drop.open(now=1700000000)
    crlf = [m.replace(b"\n", b"\r\n") for m in MSGS]
    # Courier's sizes: octets + LFs; the CRLF sent after "no final newline" is not counted.
    assert view.sizes == (len(crlf[0]), len(crlf[1]), len(crlf[2]))
    # Courier's pop3d: no list yet, so UIDVALIDITY is the time and UIDs start at 1.
    assert view.uidls == ("UID1-1700000000", "UID2-1700000000", "UID3-1700000000")
    assert retr(drop, 0) == crlf[0].replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n"
    assert retr(drop, 2) == crlf[2] + b"\r\n.\r\n"
    assert retr(drop, 1, 1) == b"From: b@example.com\r\nSubject: two\r\n\r\nbody 1\r\n.\r\n"
    # RFC 1939 "exact size": what RETR sends, minus stuffing and the final ".".
    for i, size in enumerate(view.sizes):
        body = retr(drop, i)[:-3]
        stuffed = sum(1 for ln in body.split(b"\r\n") if ln.startswith(b".."))
        assert len(body) - stuffed - (0 if MSGS[i].endswith(b"\n") else 2) == size
    assert drop.messages[2].utf8 is True


def test_uidls_stable_and_cache_written(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    first = Maildrop(root).open()
    cache = sl.read(root)
    assert cache is not None and len(cache.entries) == 3
    assert (root / sl.FILENAME).read_bytes().startswith(b"/3 4 ")
    # A new arrival gets the next UIDL; the old ones do not change.
    (root / "new" / "1800000000.M9P1.host").write_bytes(b"Subject: new\n\nx\n")
    second = Maildrop(root).open()
    assert second.uidls[:3] == first.uidls and second.sizes[:3] == first.sizes
    assert second.uidls[3].startswith("UID4-")


def test_courier_sizelist_uidls_are_kept(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir", MSGS[:2])
    Maildrop(root).open()          # moves new/ to cur/
    names = sorted(os.listdir(root / "cur"))
    # A list written by Courier's pop3d (version 2: no UTF-8 flag), with its own UIDs.
    (root / sl.FILENAME).write_text(
        f"/2 40 1600000000\n{names[0].split(':')[0]}:2,S 999 37:1600000000\n"
        f"{names[1].split(':')[0]} 123 38:1600000000\n")
    view = Maildrop(root).open()
    # Courier's cmpmsgs() matches up to a ":" both names have: a flag change keeps the
    # entry, a name without ":" does not match "name:2," (it gets the next UID).
    assert view.uidls == ("UID37-1600000000", "UID40-1600000000")
    assert view.sizes == (999, len(MSGS[1]) + MSGS[1].count(b"\n"))   # trusted, as Courier does
    lst = sl.read(root)
    assert lst is not None and lst.version == 3 and lst.nextuid == 41
    assert [e.uid for e in lst.entries] == [37, 40]     # rewritten in version 3


def test_deletions_only_at_commit(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    drop.open(now=1700000000)
    assert len(os.listdir(root / "cur")) == 3
    assert drop.commit((0, 2)) == 0
    left = os.listdir(root / "cur")
    assert len(left) == 1 and left[0].startswith("1700000001.")
    assert Maildrop(root).open().uidls == ("UID2-1700000000",)


def test_commit_follows_flag_renames(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    drop.open()
    name = drop.messages[0].ref.filename
    os.rename(root / "cur" / name, root / "cur" / (name.split(":")[0] + ":2,F"))  # IMAP flagged it
    assert retr(drop, 0).startswith(b"From: a@")
    assert drop.commit((0,)) == 0
    assert len(os.listdir(root / "cur")) == 2


def test_retr_marks_seen(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    drop.open()
    drop.mark_seen(1)
    assert any(n.endswith(":2,S") for n in os.listdir(root / "cur"))
    assert drop.messages[1].ref.flags == "S"


def test_lock_in_use(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    a, b = Maildrop(root), Maildrop(root)
    a.lock()
    with pytest.raises(MaildropInUse):
        b.lock()
    a.unlock()
    b.lock()
    b.unlock()


def test_missing_message_is_none(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    drop.open()
    os.unlink(drop.maildir.path_of(drop.messages[0].ref))
    assert drop.open_message(0) is None
    assert drop.commit((0,)) == 0      # already gone is not a failure


# -- courierpop3dsizelist ------------------------------------------------------------------

def test_sizelist_round_trip(tmp_path: Path) -> None:
    lst = sl.SizeList(7, 1700000000, (
        sl.SizeEntry("1.M1P1.h,S=5:2,S", 7, 1, 1700000000, False),
        sl.SizeEntry("2 with space.M2P1.h", 9, 5, 1700000000, True),
    ))
    sl.write(tmp_path, lst)
    assert sl.read(tmp_path) == lst
    assert (tmp_path / sl.FILENAME).read_text() == (
        "/3 7 1700000000\n1.M1P1.h,S=5:2,S 7 1:1700000000:0\n"
        "2 with space.M2P1.h 9 5:1700000000:1\n")
    assert not [p for p in tmp_path.iterdir() if p.name != sl.FILENAME]   # no tmp left


@pytest.mark.parametrize("data", [
    b"", b"garbage\n", b"/3\n", b"/3 x y\n", b"3 1 2\n",
])
def test_sizelist_bad_header_is_ignored(data: bytes) -> None:
    assert sl.parse(data) is None


def test_sizelist_unknown_version_keeps_counters_only() -> None:
    # Courier's sscanf() has filled nextuid and uidv before the version check fails.
    got = sl.parse(b"/9 5 1600000000\nx 1 2:3:0\n")
    assert got == sl.SizeList(5, 1600000000, (), 9)
    rec = sl.reconcile(["x:2,"], got, 1700000000, lambda n: (3, False))
    assert [e.uidl for e in rec.entries] == ["UID5-1600000000"]


def test_sizelist_bad_lines_skipped() -> None:
    got = sl.parse(b"/3 5 9\nok 1 2:9:0\nbad line\nx y z:w\n"
                   b"n 1 2:3:4:5\ntorn 1 2:9")
    assert got is not None
    # "n" is read as Courier's sscanf("%lu %lu:%lu:%d") reads it: trailing fields ignored.
    assert [e.filename for e in got.entries] == ["ok", "n"]
    assert got.entries[0].uidl == "UID2-9"
    assert sl.SizeEntry("f", 1, 3, 0).uidl == "UID3"


# -- maildirsize (Maildir++ quota, FORMATS.md §3.6) ----------------------------------------

def test_commit_appends_to_maildirsize(tmp_path: Path) -> None:
    from libcourier.maildir import quota
    root = make_maildir(tmp_path / "Maildir")
    # As Courier's maildirmake -q 100000S,50C then three deliveries.
    (root / "maildirsize").write_bytes(b"100000S,50C\n" + quota.line(0, 0) + b"".join(
        quota.line(len(m), 1) for m in MSGS))
    drop = Maildrop(root)
    drop.open()
    assert drop.commit((0, 2)) == 0
    data = (root / "maildirsize").read_bytes()
    assert data.endswith(b"%12d %12d\n" % (-len(MSGS[0]), -1) + b"%12d %12d\n" % (-len(MSGS[2]), -1))
    usage = quota.parse(data)
    assert usage is not None and (usage.bytes, usage.count) == (len(MSGS[1]), 1)
    assert (usage.bytes, usage.count) == quota.measure(root)
    # The sizelist agrees with what is left on the next session.
    assert [e.uid for e in sl.read(root).entries] == [1, 2, 3]
    Maildrop(root).open()
    assert [e.uid for e in sl.read(root).entries] == [2]


def test_commit_without_maildirsize_creates_none(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    drop = Maildrop(root)
    drop.open()
    assert drop.commit((1,)) == 0
    assert not (root / "maildirsize").exists()


def test_large_or_corrupt_maildirsize_is_recalculated(tmp_path: Path) -> None:
    from libcourier.maildir import quota
    root = make_maildir(tmp_path / "Maildir")
    (root / ".Sent" / "cur").mkdir(parents=True)
    (root / ".Sent" / "cur" / "1.M1P1.h,S=1000:2,S").write_bytes(b"x" * 10)
    (root / ".Trash" / "cur").mkdir(parents=True)
    (root / ".Trash" / "cur" / "2.M1P1.h,S=5000:2,S").write_bytes(b"x")
    (root / "maildirsize").write_bytes(b"5000S\n" + quota.line(1, 1) * 300)   # > 5120 bytes
    drop = Maildrop(root)
    drop.open()
    assert drop.commit((0,)) == 0
    data = (root / "maildirsize").read_bytes()
    left = len(MSGS[1]) + len(MSGS[2]) + 1000     # Trash does not count, ,S= wins over stat
    assert data == b"5000S\n" + quota.line(left, 3)
    (root / "maildirsize").write_bytes(b"5000S\ngarbage\n")
    drop = Maildrop(root)
    drop.open()
    assert drop.commit((0,)) == 0
    assert (root / "maildirsize").read_bytes() == b"5000S\n" + quota.line(len(MSGS[2]) + 1000, 2)


def test_quota_parse_rules() -> None:
    from libcourier.maildir import quota
    assert quota.parse_spec("100000S,50C") == quota.QuotaSpec(100000, 50)
    assert quota.parse_spec("50C") == quota.QuotaSpec(None, 50)
    assert quota.parse_spec("100X") is None
    u = quota.parse(b"100S\n          28            1\n         -28           -1\n  5 1")
    assert u == quota.Usage(quota.QuotaSpec(100, None), 0, 0, 2)   # torn last line ignored
    assert quota.parse(b"100S\n1 2 3\n") is None
    over = quota.parse(b"10S\n" + quota.line(28, 1))
    assert over is not None and over.over()
    assert not quota.needs_recalc((over, 30, 1000.0), now=1000.0 + 60)
    assert quota.needs_recalc((over, 30, 1000.0), now=1000.0 + quota.OVER_QUOTA_AGE)
    assert quota.needs_recalc(None, now=0.0)
    assert quota.needs_recalc((over, quota.RECALC_SIZE, 0.0), now=0.0)


def test_sort_key_is_courier_cmpmsgs() -> None:
    names = ["1790000013.M11P100.golden:2,", "abc:2,", "999999999.x:2,S",
             "1790000013.M11P100.g\udcc3\udcb6lden:2,", "1790000000.M1:2,", "1790000000.M0:2,T"]
    # atol() first (a name without a number is 0), then bytes as signed char:
    # a byte >= 0x80 sorts before ASCII.
    assert sorted(names, key=sl.sort_key) == [
        "abc:2,", "999999999.x:2,S", "1790000000.M0:2,T", "1790000000.M1:2,",
        "1790000013.M11P100.g\udcc3\udcb6lden:2,", "1790000013.M11P100.golden:2,"]
    assert sl.sort_key("5.a:2,S") == sl.sort_key("5.a:2,")       # flags do not count
    assert sl.sort_key("5.a") != sl.sort_key("5.a:2,")
    assert sl.sort_key("5.a") < sl.sort_key("5.ab")


def test_reconcile_rewrites_only_when_courier_would() -> None:
    first = sl.reconcile(["2.b:2,", "1.a:2,"], None, 1700000000, lambda n: (10, False))
    assert [e.uidl for e in first.entries] == ["UID1-1700000000", "UID2-1700000000"]
    assert first.save is not None and first.save.nextuid == 3
    # A flag change alone: same UIDs, nothing to write.
    again = sl.reconcile(["2.b:2,S", "1.a:2,F"], first.save, 1800000000, lambda n: None)
    assert [e.uid for e in again.entries] == [1, 2] and again.save is None
    assert again.entries[0].filename == "1.a:2,F"
    # One gone: written; a new one: the next UID under the old UIDVALIDITY.
    gone = sl.reconcile(["1.a:2,"], first.save, 1800000000, lambda n: None)
    assert gone.save is not None and [e.uid for e in gone.save.entries] == [1]
    more = sl.reconcile(["0.z:2,", "1.a:2,", "2.b:2,"], first.save, 1800000000,
                        lambda n: (5, True))
    assert [e.uidl for e in more.entries] == ["UID3-1700000000", "UID1-1700000000",
                                              "UID2-1700000000"]
    # Empty Maildir, no list: Courier writes nothing.
    assert sl.reconcile([], None, 1, lambda n: None).save is None


def test_large_message_streamed_in_bounded_pieces(tmp_path: Path) -> None:
    from courier_pop3d import maildrop as md
    line = b"0123456789 " * 7 + b"\n"              # 78 octets, LF
    body = line * (24 * 1024 * 1024 // len(line))   # ~24 MB
    msg = b"Subject: big\n\n" + body + b".dot\n"
    root = make_maildir(tmp_path / "Maildir", [msg])
    drop = Maildrop(root)
    view = drop.open()
    assert view.sizes == (len(msg) + msg.count(b"\n"),)
    f = drop.open_message(0)
    assert f is not None
    with f:
        pieces = list(drop.stream(f, None))
    # Read CHUNK at a time: no piece is more than one chunk with CRs and stuffing added.
    assert len(pieces) > len(msg) // md.CHUNK
    assert max(map(len, pieces)) <= 2 * md.CHUNK + 3
    sent = b"".join(pieces)
    assert sent == msg.replace(b"\n", b"\r\n").replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n"
    # TOP stops reading at its last line instead of passing over the rest.
    f = drop.open_message(0)
    assert f is not None
    with f:
        top = b"".join(drop.stream(f, 2))
        assert f.tell() <= md.CHUNK
    assert top == b"Subject: big\r\n\r\n" + line.replace(b"\n", b"\r\n") * 2 + b".\r\n"


def test_sizelist_not_saved_hides_new_messages(tmp_path: Path, monkeypatch) -> None:
    """Courier's recovery when courierpop3dsizelist cannot be written (disk full): new
    messages are not shown (their UIDL would change next time); with nothing known,
    the first message alone, with a UIDL from its inode, so the box can be emptied."""
    from courier_pop3d import maildrop as md
    root = make_maildir(tmp_path / "Maildir", MSGS[:1])
    Maildrop(root).open(now=1700000000)           # the first message is in the list
    for i, m in enumerate(MSGS[1:], 1):
        (root / "new" / f"{1700000000 + i}.M{i}P1.host,S={len(m)}").write_bytes(m)

    def full(*_a: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(md.pop3sizelist, "write", full)
    assert Maildrop(root).open().uidls == ("UID1-1700000000",)
    (root / sl.FILENAME).unlink()
    drop = Maildrop(root)
    view = drop.open()
    assert len(view.uidls) == 1 and view.uidls[0].startswith("ENOMEM-")
    st = os.stat(root / "cur" / drop.messages[0].ref.filename)
    assert view.uidls[0] == f"ENOMEM-{int(st.st_mtime):016X}-{st.st_dev:016X}-{st.st_ino:016X}"
    assert drop.commit((0,)) == 0                 # and it can be deleted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_sizelist_parse_never_raises(data: bytes) -> None:
    got = sl.parse(data)
    if got is not None:
        # What we read we can write, and read back the same.
        again = sl.parse(sl.format_list(got, now=1))
        assert again is not None and again.entries == tuple(
            e for e in got.entries if "\n" not in e.filename)


_NAME = st.text(st.sampled_from("0123456789.:,MPSabc\u00e9 -"), min_size=1, max_size=20).filter(
    lambda n: not n.startswith(".") and "/" not in n)


@settings(max_examples=200, deadline=None)
def _base(name: str) -> str:
    return name.split(":", 1)[0]


# One file per base, as in a sound Maildir (two names with one base are one message
# to Courier's cmpmsgs(), and it numbers the second as new).
@given(st.lists(_NAME, max_size=30, unique_by=_base), st.lists(_NAME, max_size=10))
def test_fuzz_reconcile_is_stable(names: list[str], later: list[str]) -> None:
    first = sl.reconcile(names, None, 1700000000, lambda n: (len(n), False))
    saved = first.save if first.save is not None else None
    # A second pass over the same names: same UIDLs, nothing to write.
    again = sl.reconcile(names, saved, 1800000000, lambda n: None)
    assert [e.uidl for e in again.entries] == [e.uidl for e in first.entries]
    assert again.save is None or not names
    # New arrivals never take a UID already handed out.
    bases = {_base(n) for n in names}
    arrivals = list({_base(n): n for n in later if _base(n) not in bases}.values())
    more = sl.reconcile(names + arrivals, saved, 1800000000, lambda n: (1, True))
    uids = [e.uid for e in more.entries]
    assert len(uids) == len(set(uids))
    kept = {e.filename: e.uidl for e in first.entries}
    assert all(kept.get(e.filename, e.uidl) == e.uidl for e in more.entries)
