"""courierimapkeywords/ (FORMATS.md §3.5): the formats, Courier's merge of update files,
our locked updates, APPEND/COPY keywords, and what Courier's own imapd left on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.maildir import folders
from libcourier.maildir import keywords as kw
from libcourier.maildir.folder import Maildir

DATA = Path(__file__).resolve().parents[1] / "data" / "courier-keywords"
NOW = 1_700_000_000.0
TN = int(NOW) // kw.WINDOW


def mkmaildir(tmp_path: Path, *bases: str) -> Path:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    for b in bases:
        (md / "cur" / f"{b}:2,").write_bytes(b"Subject: x\n\nbody\n")
    return md


# -- formats ------------------------------------------------------------------------

def test_list_format_as_courier_writes_it() -> None:
    # Exactly what Courier-IMAP 5.0.13 wrote (see tests/data/courier-keywords).
    data = b"bar\n$Label1\n\n1000.M1P1.host:1\n1001.M1P1.host:0\n"
    got, damaged = kw.parse_list(data)
    assert not damaged
    assert got == {"1000.M1P1.host": {"$Label1"}, "1001.M1P1.host": {"bar"}}
    assert kw.parse_list(kw.format_list(got)) == (got, False)


def test_list_damage_is_noticed_not_fatal() -> None:
    got, damaged = kw.parse_list(b"a\nb\n\nm1:0 7 x\nno-colon-here\nm2:1\n")
    assert damaged
    assert got == {"m1": {"a"}, "m2": {"b"}}
    assert kw.format_list({}) == b""
    assert kw.format_list({"m": frozenset()}) == b""


def test_update_file_format() -> None:
    assert kw.parse_update(b"foo\n$Junk\n") == {"foo", "$Junk"}
    assert kw.parse_update(b"") == frozenset()
    assert kw.parse_update(b"a\n\nignored\n") == {"a"}
    assert kw.parse_update(kw.format_update({"z", "a"})) == {"a", "z"}


@pytest.mark.parametrize("bad", ["", "\\Seen", "a b", "a\nb", "x" * 256])
def test_bad_names_refused(bad: str) -> None:
    with pytest.raises(kw.KeywordError):
        kw.check_name(bad)


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="\\"),
                min_size=1, max_size=20)
bases = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters=":/"),
                min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(bases, st.frozensets(names, max_size=5), max_size=10))
def test_list_round_trip(state: dict[str, frozenset[str]]) -> None:
    want = {b: k for b, k in state.items() if k}
    assert kw.parse_list(kw.format_list(state)) == (want, False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_take_any_bytes(data: bytes) -> None:
    got, _ = kw.parse_list(data)
    assert all(isinstance(v, frozenset) and v for v in got.values())
    kw.parse_update(data)


# -- Courier's merge ----------------------------------------------------------------

def test_plain_update_is_folded_into_list(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1", "m2")
    kwdir = md / kw.KEYWORDDIR
    kwdir.mkdir()
    (kwdir / "m1").write_bytes(b"foo\nbar\n")
    assert kw.read(md, {"m1", "m2"}, NOW) == {"m1": {"foo", "bar"}}
    # As Courier: the update renamed to .<T+1>.<base>, :list written.
    assert sorted(os.listdir(kwdir)) == [f".{TN + 1}.m1", ":list"]
    assert kw.parse_list((kwdir / ":list").read_bytes())[0] == {"m1": {"foo", "bar"}}
    # Read again in the same window: the .T+1. file is still read, same answer.
    assert kw.read(md, {"m1", "m2"}, NOW) == {"m1": {"foo", "bar"}}
    # Two windows later it is old and the only update: dropped, :list holds it.
    later = NOW + 3 * kw.WINDOW
    assert kw.read(md, {"m1", "m2"}, later) == {"m1": {"foo", "bar"}}
    assert sorted(os.listdir(kwdir)) == [":list"]


def test_newest_update_wins_and_empty_clears(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1")
    kwdir = md / kw.KEYWORDDIR
    kwdir.mkdir()
    (kwdir / ":list").write_bytes(b"old\n\nm1:0\n")
    (kwdir / f".{TN - 5}.m1").write_bytes(b"older\n")
    (kwdir / f".{TN - 2}.m1").write_bytes(b"newer\n")
    assert kw.read(md, {"m1"}, NOW) == {"m1": {"newer"}}
    assert not (kwdir / f".{TN - 5}.m1").exists()       # superseded
    (kwdir / "m1").write_bytes(b"")                      # STORE FLAGS () from Courier
    assert kw.read(md, {"m1"}, NOW) == {}
    assert not (kwdir / ":list").exists()                # Courier removes an empty :list


def test_orphans_and_scratch_files(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1")
    kwdir = md / kw.KEYWORDDIR
    kwdir.mkdir()
    for n in ("gone", f".{TN}.gone2", "fresh-orphan", f".tmp.{int(NOW) - 1000}x", f".tmp.{int(NOW)}y"):
        (kwdir / n).write_bytes(b"k\n")
    old = NOW - kw.ORPHAN_AGE - 10
    for n in ("gone", f".{TN}.gone2"):
        os.utime(kwdir / n, (old, old))
    os.utime(kwdir / "fresh-orphan", (NOW, NOW))
    assert kw.read(md, {"m1"}, NOW) == {}
    # Old orphans and old scratch go; a young orphan (its message may be on its way) stays.
    assert sorted(os.listdir(kwdir)) == [".tmp.1700000000y", "fresh-orphan"]


def test_list_entries_of_gone_messages_dropped(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1")
    kwdir = md / kw.KEYWORDDIR
    kwdir.mkdir()
    (kwdir / ":list").write_bytes(b"a\nb\n\nm1:0\nexpunged:1\n")
    assert kw.read(md, {"m1"}, NOW) == {"m1": {"a"}}
    assert (kwdir / ":list").read_bytes() == b"a\n\nm1:0\n"


def test_directory_made_with_folder_mode(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1")
    os.chmod(md, 0o750)
    assert kw.read(md, {"m1"}, NOW) == {}
    assert (os.stat(md / kw.KEYWORDDIR).st_mode & 0o777) == 0o750


# -- our writes -----------------------------------------------------------------------

def test_update_modes_and_case(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1", "m2")
    s = kw.update(md, {"m1", "m2"}, {"m1": ("+", frozenset({"$Label1", "foo"}))})
    assert s == {"m1": {"$Label1", "foo"}}
    # A name used in the folder keeps its spelling; removal ignores case.
    s = kw.update(md, {"m1", "m2"}, {"m2": ("+", frozenset({"FOO"})),
                                     "m1": ("-", frozenset({"$label1"}))})
    assert s == {"m1": {"foo"}, "m2": {"foo"}}
    s = kw.update(md, {"m1", "m2"}, {"m1": ("=", frozenset({"x"}))})
    assert s == {"m1": {"x"}, "m2": {"foo"}}
    # What a reader (ours, or Courier's, same files) sees afterwards.
    assert kw.read(md, {"m1", "m2"}) == {"m1": {"x"}, "m2": {"foo"}}
    with pytest.raises(kw.KeywordError):
        kw.update(md, {"m1"}, {"m1": ("+", frozenset({"bad name"}))})


def test_scan_carries_keywords_and_store_sees_latest(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path)
    folders.append_message(md, b"Subject: a\r\n\r\nx\r\n", "S", None, ["$Forwarded"])
    box = Maildir(md)
    [m] = box.scan().messages
    assert m.flags == "S" and m.keywords == {"$Forwarded"}
    # Another session adds a keyword; ours, holding a stale view, adds another: both kept.
    other = Maildir(md).scan().messages[0]
    Maildir(md).change_keywords([other], "+", frozenset({"one"}))
    [m2] = box.change_keywords([m], "+", frozenset({"two"}))
    assert m2.keywords == {"$Forwarded", "one", "two"}
    assert Maildir(md).scan().messages[0].keywords == {"$Forwarded", "one", "two"}


def test_copy_carries_keywords(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path)
    folders.append_message(md, b"Subject: a\r\n\r\nx\r\n", "", None, ["k1", "k2"])
    dst = folders.create_folder(md, "INBOX.Dst")
    [m] = Maildir(md).scan().messages
    folders.copy_messages([(md / "cur" / m.filename, m.flags, m.size)], dst, [m.keywords])
    [c] = Maildir(dst).scan().messages
    assert c.keywords == {"k1", "k2"}


def test_change_flags_keeps_concurrent_change(tmp_path: Path) -> None:
    md = mkmaildir(tmp_path, "m1")
    box = Maildir(md)
    [stale] = box.scan().messages
    box.change_flags(stale, add="F")        # someone else: \Flagged
    m = box.change_flags(stale, add="S")    # we still hold the old name
    assert m.flags == "FS"
    m = box.change_flags(stale, remove="F")
    assert m.flags == "S"
    assert box.change_flags(m, exact="T").flags == "T"
    (md / "cur" / "m1:2,T").unlink()
    with pytest.raises(FileNotFoundError):
        box.change_flags(m, add="S")


# -- Courier's imapd wrote this -------------------------------------------------------

def test_reads_courier_written_folder(tmp_path: Path) -> None:
    """tests/data/courier-keywords/courier-wrote: the Maildir as Courier-IMAP 5.0.13's imapd
    left it (tests/integration/test_maildir_courier.py records it): same UIDs,
    UIDVALIDITY, flags and keywords here."""
    src = DATA / "courier-wrote"
    if not src.is_dir():
        pytest.skip("no golden Courier Maildir recorded")
    md = tmp_path / "Maildir"
    shutil.copytree(src, md)
    for sub in ("new", "tmp", "cur"):
        (md / sub).mkdir(exist_ok=True)
    want = (DATA / "courier-wrote.expected").read_text().splitlines()
    st = Maildir(md).scan()
    got = [f"UIDVALIDITY {st.uidvalidity}"] + [
        f"{m.uid} {m.flags} {' '.join(sorted(m.keywords))}".rstrip() for m in st.messages]
    assert got == want


# -- the merge over time, against a model ----------------------------------------------

kw_sets = st.frozensets(st.sampled_from(["a", "b", "$Junk", "Work"]), max_size=3)
actions = st.lists(st.one_of(
    st.tuples(st.just("courier-write"), st.integers(0, 3), kw_sets),
    st.tuples(st.just("our-update"), st.integers(0, 3), kw_sets),
    st.tuples(st.just("read"), st.integers(0, 2 * kw.WINDOW), st.just(frozenset())),
), max_size=25)


@settings(max_examples=60, deadline=None)
@given(actions)
def test_reads_always_give_the_last_write(tmp_path_factory, steps) -> None:
    """Whatever the order of Courier-style update files, our locked updates and reads
    at later times (generations folded into :list, old files purged), a read gives
    each message the set written last."""
    md = mkmaildir(tmp_path_factory.mktemp("kw"), "m0", "m1", "m2", "m3")
    kwdir = md / kw.KEYWORDDIR
    kwdir.mkdir()
    bases = {"m0", "m1", "m2", "m3"}
    model: dict[str, frozenset[str]] = {}
    now = NOW
    for what, n, ks in steps:
        if what == "courier-write":
            # Courier's imapd: the whole new set into tmp/, renamed to <base>.
            tmp = md / "tmp" / "courier.tmp"
            tmp.write_bytes(kw.format_update(ks))
            os.rename(tmp, kwdir / f"m{n}")
            model[f"m{n}"] = ks
        elif what == "our-update":
            kw.update(md, bases, {f"m{n}": ("=", ks)}, now)
            model[f"m{n}"] = ks
        else:
            now += n
            want = {b: k for b, k in model.items() if k}
            assert kw.read(md, bases, now) == want
    want = {b: k for b, k in model.items() if k}
    assert kw.read(md, bases, now + 10 * kw.WINDOW) == want
    assert kw.read(md, bases, now + 20 * kw.WINDOW) == want
    # Long after: only :list is left (every update folded and purged).
    assert set(os.listdir(kwdir)) <= {kw.LIST}
