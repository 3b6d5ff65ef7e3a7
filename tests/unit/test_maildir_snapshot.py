"""courierpystate: a warm SELECT answers from the snapshot the last SELECT's scan stored,
without a scan, only while the folder is provably as recorded; the message list is read
from it when first needed, and every change made since is still reported."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from courier_imapd.mailbox import FolderReplaced, MailboxView

from libcourier.maildir import index, uiddb
from libcourier.maildir import keywords as kwmod
from libcourier.maildir import snapshot as snapmod
from libcourier.maildir.folder import Maildir

DEADLINE = 10.0


def make_folder(p: Path, n: int = 6) -> Path:
    for d in ("tmp", "new", "cur"):
        (p / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"{1700000000 + i}.M{i}P1.host,S={10 + i}"
        flags = ":2,S" if i % 3 == 0 else ""
        (p / "cur" / (name + flags) if flags else p / "new" / name).write_bytes(b"x" * (10 + i))
    return p


def deliver(p: Path, i: int) -> None:
    name = f"{1800000000 + i}.M{i}P2.host,S=5"
    (p / "tmp" / name).write_bytes(b"hello")
    os.rename(p / "tmp" / name, p / "new" / name)


def refs(state) -> list[tuple]:
    return [(m.uid, m.base, m.filename, m.flags, m.size, m.mtime, m.keywords)
            for m in state.messages]


def no_scan(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make Maildir.scan count (and still work), to see which path a SELECT took."""
    calls: list[int] = []
    real = Maildir.scan

    def counting(self: Maildir, *a, **k):
        calls.append(1)
        return real(self, *a, **k)
    monkeypatch.setattr(Maildir, "scan", counting)
    return calls


def selected(md: Path) -> tuple[MailboxView, list[str]]:
    v = MailboxView("INBOX", Maildir(md), False)
    lines = v.select_responses()
    v.after_select()            # as the session does once SELECT is answered
    return v, lines


def warm(tmp_path: Path) -> tuple[Path, list[str], list[tuple]]:
    md = make_folder(tmp_path / "M")
    v, lines = selected(md)           # the cold SELECT: moves new/, scans, stores
    assert (md / snapmod.STATE_NAME).exists()
    return md, lines, refs(v.state)


def test_warm_select_answers_from_the_snapshot(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    md, cold_lines, cold = warm(tmp_path)
    calls = no_scan(monkeypatch)
    v, lines = selected(md)
    assert calls == []
    # The same answer as the scan gave, bar \Recent (the cold SELECT's: it moved the mail).
    assert [x for x in lines if not x.endswith("RECENT")] == \
        [x for x in cold_lines if not x.endswith("RECENT")]
    assert "0 RECENT" in lines and "6 EXISTS" in lines
    assert v.refresh(allow_expunge=True) == [] and calls == []     # NOOP: nothing changed
    assert v._messages is None                                      # nothing per message held
    assert refs(v.state) == cold                                    # read when needed


def test_select_scans_when_the_folder_changed(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    md, _, _ = warm(tmp_path)
    calls = no_scan(monkeypatch)
    deliver(md, 1)
    v, lines = selected(md)
    assert calls == [1] and "7 EXISTS" in lines and "1 RECENT" in lines
    calls.clear()
    box = Maildir(md)
    m = v.messages[0]
    box.change_flags(m, add="F")
    v, lines = selected(md)
    assert calls == [1]
    assert v.messages[0].flags == "FS"


@pytest.mark.parametrize("change", ["deliver", "flag", "expunge", "keyword"])
def test_changes_after_a_warm_select_are_reported(tmp_path: Path, change: str) -> None:
    md, _, _ = warm(tmp_path)
    v, _ = selected(md)
    assert v._summary is not None
    box = Maildir(md)
    st = box.scan()
    if change == "deliver":
        deliver(md, 2)
        want = ["7 EXISTS", "1 RECENT"]
    elif change == "flag":
        box.change_flags(st.messages[1], add="R")
        want = ["2 FETCH (FLAGS (\\Answered))"]
    elif change == "expunge":
        box.remove(st.messages[2])
        want = ["3 EXPUNGE"]
    else:
        box.change_keywords([st.messages[4]], "+", frozenset({"Urgent"}))
        want = ["5 FETCH (FLAGS (Urgent))"]
    out = v.refresh(allow_expunge=True)
    for w in want:
        assert w in out, (w, out)
    assert v.refresh(allow_expunge=True) == []


def test_uiddb_replaced_after_select_ends_the_session(tmp_path: Path) -> None:
    md, _, _ = warm(tmp_path)
    v, _ = selected(md)
    os.unlink(md / uiddb.IMAPDB)       # a new UIDVALIDITY at the next scan
    with pytest.raises(FolderReplaced):
        v.refresh(allow_expunge=True)


def test_keywords_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = make_folder(tmp_path / "M")
    st = Maildir(md).scan()
    Maildir(md).change_keywords([st.messages[0], st.messages[3]], "+",
                                frozenset({"$Label1", "Work"}))
    Maildir(md).change_keywords([st.messages[3]], "+", frozenset({"Later"}))
    v, cold_lines = selected(md)
    if v._summary is not None:          # a scan between: the keyword read folded updates
        pytest.fail("the first SELECT after keyword changes must scan")
    full = refs(v.state)
    if not (md / snapmod.STATE_NAME).exists():
        selected(md)                    # the keyword files settled: this scan stores it
    calls = no_scan(monkeypatch)
    v2, lines = selected(md)
    assert calls == [] and lines == [x.replace("6 RECENT", "0 RECENT") for x in cold_lines]
    assert "FLAGS ($Label1 Later Work \\Draft" in lines[0]
    assert refs(v2.state) == full


def _age(md: Path) -> None:
    """The folder's directories last changed 10 s ago."""
    for d in ("cur", "new", kwmod.KEYWORDDIR):
        st = os.stat(md / d)
        past = st.st_mtime_ns - 10 * 1_000_000_000 + 1
        os.utime(md / d, ns=(past, past))


def test_racy_snapshot_is_not_trusted(tmp_path: Path) -> None:
    md, _, _ = warm(tmp_path)
    _age(md)
    box = Maildir(md)
    v = box.validators()
    msgs = box.scan().messages
    # Recorded too soon after cur/'s mtime: a change in the same tick could hide.
    assert not snapmod.write(md, v, v.cur.mtime_ns + 1_000_000, 1, 99, msgs)
    assert snapmod.write(md, v, v.cur.mtime_ns + snapmod.FINE_MARGIN_NS, 1, 99, msgs)
    s = box.open_summary()
    assert s is not None and s.uidnext == 99 and s.count == len(msgs)
    s.file.close()
    # Whole-second mtimes (a coarse filesystem): the 2 s margin.
    assert snapmod.margin_ns([5 * 10**9, 7]) == snapmod.COARSE_MARGIN_NS
    assert snapmod.margin_ns([5 * 10**9 + 3]) == snapmod.FINE_MARGIN_NS


def test_stale_validators_are_not_used(tmp_path: Path) -> None:
    md, _, _ = warm(tmp_path)
    box = Maildir(md)
    now = box.validators()
    for field in ("cur", "new", "uiddb", "keywords"):
        s = getattr(now, field)
        other = snapmod.Validators(**{f: getattr(now, f) for f in ("cur", "new", "uiddb", "keywords")}
                                   | {field: index.DirStamp(s.ino, s.size + 1, s.mtime_ns)})
        assert snapmod.open_summary(md, other) is None, field
    s = snapmod.open_summary(md, now)
    assert s is not None
    s.file.close()


def test_damaged_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md, _, cold = warm(tmp_path)
    p = md / snapmod.STATE_NAME
    good = p.read_bytes()
    nl = good.index(b"\n", len(snapmod.MAGIC))
    # The header (a digit of its CRC): not used, the SELECT scans (and stores it again).
    bad = good[:nl - 20] + (b"1" if good[nl - 20:nl - 19] != b"1" else b"2") + good[nl - 19:]
    p.write_bytes(bad)
    deadline = time.monotonic() + DEADLINE
    v, _ = selected(md)
    assert v._summary is None and refs(v.state) == cold
    while not p.exists() or p.read_bytes() == bad:
        assert time.monotonic() < deadline
        v, _ = selected(md)
    # The body: the header verified at SELECT, so the state told is lost: the session ends.
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    v, _ = selected(md)
    assert v._summary is not None
    with pytest.raises(FolderReplaced):
        len(v.messages)
    # Foreign or truncated files are ignored.
    for junk in (b"", b"courierpy-state 1\n1 2 3\n", b"something else\n"):
        p.write_bytes(junk)
        v, _ = selected(md)
        assert v._summary is None and refs(v.state) == cold


def _pending_scan(md: Path):
    """A SELECT scan right after mail moved into cur/: too recent to store at once."""
    deliver(md, 77)
    st = Maildir(md).scan(snapshot=True)
    if st.pending is None:
        pytest.skip("whole-second timestamps, or the scan was slow enough to store at once")
    return st


def test_select_does_not_wait_for_the_racy_margin(tmp_path: Path) -> None:
    md = make_folder(tmp_path / "M")
    st = _pending_scan(md)
    assert not (md / snapmod.STATE_NAME).exists()
    t = time.monotonic()
    assert Maildir(md).store_snapshot(st)               # after the reply: waits, checks, stores
    assert time.monotonic() - t <= snapmod.FINE_MARGIN_NS / 1e9 + 1.0
    s = Maildir(md).open_summary()
    assert s is not None and s.count == 7 and s.uidnext == 8
    s.file.close()


def test_a_change_hidden_in_the_racy_tick_is_not_stored(tmp_path: Path) -> None:
    """A rename in cur/ (another program's flag change) that leaves cur/'s stamp as the
    scan saw it: store_snapshot lists cur/ again and stores nothing."""
    md = make_folder(tmp_path / "M")
    st = _pending_scan(md)
    cur = md / "cur"
    before = os.stat(cur)
    name = sorted(os.listdir(cur))[1]
    os.rename(cur / name, cur / (name.split(":")[0] + ":2,FS"))
    os.utime(cur, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert Maildir(md).validators() == st.pending.validators
    assert not Maildir(md).store_snapshot(st)
    assert not (md / snapmod.STATE_NAME).exists()


def test_mail_waiting_in_new_is_not_hidden_by_a_snapshot(tmp_path: Path) -> None:
    md = make_folder(tmp_path / "M")
    st = _pending_scan(md)
    new = md / "new"
    before = os.stat(new)
    deliver(md, 78)
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    if os.stat(new).st_size != before.st_size:
        pytest.skip("the directory grew: its stamp tells anyway")
    assert not Maildir(md).store_snapshot(st)
    assert not (md / snapmod.STATE_NAME).exists()


def test_scan_reads_names_only_and_mtimes_when_needed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """As Courier's imapd: a name with ,S= is not stat'ed by a scan; its mtime
    (INTERNALDATE) is read when its MessageRef is made; a name without ,S= is stat'ed."""
    md = make_folder(tmp_path / "M")
    (md / "cur" / "1600000000.M9P9.host:2,S").write_bytes(b"1234567")
    os.utime(md / "cur" / "1600000000.M9P9.host:2,S", (1600000000, 1600000000))
    real = os.stat
    stats: list[str] = []

    def counting(path, *a, **k):
        stats.append(os.fspath(path))
        return real(path, *a, **k)
    import libcourier.maildir.folder as foldermod
    monkeypatch.setattr(foldermod.os, "stat", counting)
    st = Maildir(md).scan()
    monkeypatch.setattr(foldermod.os, "stat", real)
    msgs = [p for p in stats if "/cur/" in p]
    assert msgs == [str(md / "cur" / "1600000000.M9P9.host:2,S")]
    ml = st.messages
    assert sum(1 for t in ml.columns()[3] if t != t) == 6         # six left unread
    monkeypatch.setattr(foldermod.os, "stat", counting)
    stats.clear()
    assert len({m.flags for m in ml}) >= 1 and stats == []       # flags: no stat
    monkeypatch.setattr(foldermod.os, "stat", real)
    by_name = {m.filename: m for m in ml}
    for name, m in by_name.items():
        assert m.mtime == real(md / "cur" / name).st_mtime
    assert by_name["1600000000.M9P9.host:2,S"].size == 7
    # A message renamed by another program since the scan: its mtime is still found.
    st = Maildir(md).scan()
    name = st.messages.columns()[1][0]
    os.rename(md / "cur" / name, md / "cur" / (name.split(":")[0] + ":2,T"))
    assert st.messages[0].mtime == real(md / "cur" / (name.split(":")[0] + ":2,T")).st_mtime


def _hammer(md: Path, seed: int, rounds: int, select: bool) -> None:
    """A child process: SELECTs (each scan may store a snapshot) or random changes."""
    rng = random.Random(seed)
    box = Maildir(md)
    for i in range(rounds):
        if select:
            v, _ = selected(md)
            v.close()
            continue
        msgs = box.scan().messages
        op = rng.randrange(4)
        try:
            if op == 0 or not msgs:
                deliver(md, seed * 1000 + i)
            elif op == 1:
                box.change_flags(rng.choice(msgs), add=rng.choice("SFRT"))
            elif op == 2:
                box.remove(rng.choice(msgs))
            else:
                box.change_keywords([rng.choice(msgs)], rng.choice("+-"), frozenset({"K"}))
        except FileNotFoundError:
            pass        # another writer removed that message first


def test_no_stale_snapshot_after_racing_writers(tmp_path: Path) -> None:
    """Sessions SELECT (storing snapshots) while others deliver, flag, expunge and
    change keywords; afterwards the SELECT answered from a snapshot equals a scan."""
    md = make_folder(tmp_path / "M", 20)
    selected(md)
    pids = []
    for k in range(5):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _hammer(md, k + 1, 60, select=k >= 3)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    truth = refs(Maildir(md).scan())
    deadline = time.monotonic() + DEADLINE
    while True:
        v, _ = selected(md)          # a scan stores one; the next SELECT answers from it
        if v._summary is not None:
            break
        assert time.monotonic() < deadline
    assert refs(v.state) == truth


def test_a_view_is_reusable_only_while_the_folder_is_unchanged(tmp_path: Path) -> None:
    """A second SELECT of the folder just closed takes the old view (session.select)
    only while the folder's stamps are those the view was told of, nothing waits to
    be reported, and it is opened the same way."""
    md = make_folder(tmp_path / "M")
    for d in ("cur", "new"):
        os.utime(md / d, (time.time() - 10, time.time() - 10))
    v, lines = selected(md)
    assert v.reusable(Maildir(md), False)
    assert not v.reusable(Maildir(md), True)              # EXAMINE after SELECT
    assert len(list(v.messages)) == 6                     # a FETCH 1:* made them all
    v.reopen("inbox")
    assert v.name == "inbox" and v.recent == set()
    again = v.select_responses()
    assert [x for x in again if not x.endswith("RECENT")] == \
        [x for x in lines if not x.endswith("RECENT")] and "0 RECENT" in again
    # Another session's flag change: the stamps differ, the view is not taken.
    name = sorted(os.listdir(md / "cur"))[0]
    os.rename(md / "cur" / name, md / "cur" / (name.split(":")[0] + ":2,F"))
    assert not v.reusable(Maildir(md), False)
    v2, _ = selected(md)
    assert any(m.flags == "F" for m in v2.messages)


@pytest.mark.parametrize("extra", [(), (".hidden",), ("1700000099.M1P1.host",),
                                   ("1700000000.M0P1.host,S=10:2,FS",),
                                   ("1700000098.M2P1.host,S=x,S=4:2,S",),
                                   ("1700000097.a:b,S=3:2,S",)])
def test_the_listing_fast_path_agrees_with_the_loop(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """_list_cur's C-level pass over the usual folder gives what its per-name loop gives
    (sizes from ,S=, the first name of a base kept, dot files and untagged names)."""
    md = make_folder(tmp_path / "M")
    Maildir(md).scan()
    for name in extra:
        (md / "cur" / name).write_bytes(b"abcd")
    fast = Maildir(md)._list_cur()

    class Loop(Maildir):
        STAT_ALL = True
    slow = Loop(md)._list_cur()
    assert {b: v[:2] for b, v in fast.items()} == {b: v[:2] for b, v in slow.items()}
    assert len(fast) == 6 + sum(1 for n in extra if not n.startswith(".") and
                                not n.startswith("1700000000.M0P1"))


def test_mtimes_read_by_one_session_are_stored_for_the_next(tmp_path: Path) -> None:
    """A cold scan reads no mtime, so the snapshot it stores holds none; the session
    that reads them all (FETCH INTERNALDATE of every message) stores them, while the
    folder is unchanged, and the next session's messages need no stat."""
    md = make_folder(tmp_path / "M")
    for d in ("cur", "new"):
        os.utime(md / d, (time.time() - 10, time.time() - 10))
    v, _ = selected(md)
    v2, _ = selected(md)
    assert v2._summary is not None
    assert len(list(v2.messages)) == 6 and not (md / snapmod.STATE_NAME).stat().st_size == 0
    got = {m.filename: m.mtime for m in v2.messages}      # FETCH INTERNALDATE 1:*
    want = {m.filename: os.stat(md / "cur" / m.filename).st_mtime for m in v2.messages}
    assert got == want
    v3, _ = selected(md)
    assert v3._summary is not None
    cols = v3.messages.columns()        # read from the snapshot, not made
    assert dict(zip(cols[1], cols[3], strict=True)) == want


def test_a_select_waits_for_a_snapshot_being_stored(tmp_path: Path) -> None:
    """While a SELECT scan's snapshot waits to be stored (after its reply), the scan's
    session holds cur/'s lock shared; another session's SELECT waits for it and is
    answered from the snapshot instead of scanning the folder again."""
    md = make_folder(tmp_path / "M")
    st = _pending_scan(md)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the second session
        try:
            os.close(r)
            os.write(w, b"1")
            s = Maildir(md).await_summary()
            os._exit(0 if s is not None and s.count == 7 else 1)
        except BaseException:
            os._exit(2)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    assert Maildir(md).store_snapshot(st)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
