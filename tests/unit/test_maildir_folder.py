"""Maildir reading: courierimapuiddb bytes, UID rules, new/ -> cur/, flags, concurrency."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from libcourier.maildir import uiddb
from libcourier.maildir.flags import join_name, letters_to_imap, split_name
from libcourier.maildir.folder import Maildir, folder_path, list_folders


def make_maildir(p: Path) -> Path:
    for d in ("tmp", "new", "cur"):
        (p / d).mkdir(parents=True, exist_ok=True)
    return p


def deliver(md: Path, name: str, body: bytes = b"Subject: x\n\nhi\n") -> None:
    (md / "tmp" / name).write_bytes(body)
    os.rename(md / "tmp" / name, md / "new" / name)


COURIER_DB = (b"1 795720848 4\n"
              b"1 1795720848.M602307P2588V000000000000FE00I000000000040C3EB.vm,S=28\n"
              b"3 1795720849.M1P2V000000000000FE00I0000000000000001.vm\n")


def test_uiddb_round_trip_exact_bytes() -> None:
    db = uiddb.parse(COURIER_DB)
    assert db is not None
    assert (db.uidvalidity, db.nextuid) == (795720848, 4)
    assert db.entries[1] == (3, "1795720849.M1P2V000000000000FE00I0000000000000001.vm")
    assert uiddb.format_db(db) == COURIER_DB


@pytest.mark.parametrize("data", [b"", b"2 5 6\n", b"x y z\n", b"1 5\n", b"\xff\xfe"])
def test_uiddb_bad_header_is_no_db(data: bytes) -> None:
    assert uiddb.parse(data) is None


def test_uiddb_skips_bad_lines_like_courier() -> None:
    db = uiddb.parse(b"1 10 5\nfoo bar\n2\n2 a.b\n")
    assert db is not None and db.entries == ((2, "a.b"),)


def test_flags_names() -> None:
    assert split_name("a.b,S=3:2,SF") == ("a.b,S=3", "FS")
    assert split_name("a.b") == ("a.b", "")
    assert join_name("x", "TSa") == "x:2,STa"
    assert letters_to_imap("SFRDT") == ["\\Draft", "\\Answered", "\\Flagged", "\\Deleted", "\\Seen"]


def test_scan_assigns_and_keeps_uids(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    deliver(md, "200.M1P1.host,S=15")
    deliver(md, "100.M1P1.host")
    now = 2_000_000_000.0
    st = Maildir(md).scan(now=now)
    assert st.uidvalidity == now - uiddb.IMAP_EPOCH
    assert [(m.uid, m.base) for m in st.messages] == [(1, "100.M1P1.host"), (2, "200.M1P1.host,S=15")]
    assert st.uidnext == 3 and st.recent == {1, 2}
    assert st.messages[1].size == 15 and st.messages[0].size == len(b"Subject: x\n\nhi\n")
    assert sorted(os.listdir(md / "cur")) == ["100.M1P1.host:2,", "200.M1P1.host,S=15:2,"]
    assert (md / "courierimapuiddb").read_bytes() == (
        b"1 1000000000 3\n1 100.M1P1.host\n2 200.M1P1.host,S=15\n")
    mtime = (md / "courierimapuiddb").stat().st_mtime_ns
    time.sleep(0.01)
    st2 = Maildir(md).scan()
    assert st2.uidvalidity == st.uidvalidity and not st2.recent
    assert (md / "courierimapuiddb").stat().st_mtime_ns == mtime  # unchanged -> not rewritten
    # Expunge one, deliver one: the UID is not reused.
    Maildir(md).remove(st2.messages[0])
    deliver(md, "050.M1P1.host")
    st3 = Maildir(md).scan()
    assert [(m.uid, m.base) for m in st3.messages] == [(2, "200.M1P1.host,S=15"), (3, "050.M1P1.host")]


def test_corrupt_db_gives_new_uidvalidity(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    deliver(md, "1.a.h")
    Maildir(md).scan(now=1_500_000_000)
    (md / "courierimapuiddb").write_bytes(b"9 1 1\n")
    st = Maildir(md).scan(now=1_600_000_000)
    assert st.uidvalidity == 600_000_000 and st.messages[0].uid == 1


def test_flags_rename_and_vanish(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    deliver(md, "1.a.h")
    box = Maildir(md)
    m = box.scan().messages[0]
    m2 = box.set_flags(m, "SF")
    assert m2.filename == "1.a.h:2,FS" and m2.flags == "FS"
    assert box.path_of(m2).exists()
    # A stale ref (another session renamed it) still finds the file by base.
    m3 = box.set_flags(m, "T")
    assert m3.filename == "1.a.h:2,T"
    box.remove(m3)
    with pytest.raises(FileNotFoundError):
        box.set_flags(m3, "S")


def test_tmp_purge(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    (md / "tmp" / "old").write_bytes(b"x")
    (md / "tmp" / "young").write_bytes(b"x")
    old = time.time() - 37 * 3600
    os.utime(md / "tmp" / "old", (old, old))
    Maildir(md).scan()
    assert sorted(os.listdir(md / "tmp")) == ["young"]


def test_list_folders(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    make_maildir(md / ".Sent")
    make_maildir(md / ".Sent.2024")
    (md / ".notafolder").mkdir()
    assert list_folders(md) == ["Sent", "Sent.2024"]
    assert folder_path(md, "inbox") == md
    assert folder_path(md, "INBOX.Sent") == md / ".Sent"
    assert folder_path(md, "INBOX.../x") is None and folder_path(md, "Other") is None


def _scanner(path: str, rounds: int, q: multiprocessing.Queue) -> None:
    seen: dict[str, int] = {}
    for i in range(rounds):
        deliver(Path(path), f"{time.time():.6f}.P{os.getpid()}_{i}.h")
        for m in Maildir(Path(path)).scan().messages:
            seen[m.base] = m.uid
    q.put(seen)


def test_concurrent_scans_never_share_a_uid(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "Maildir")
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_scanner, args=(str(md), 25, q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    merged: dict[str, int] = {}
    for r in results:
        for base, uid in r.items():
            assert merged.setdefault(base, uid) == uid  # one base, one UID everywhere
    assert len(set(merged.values())) == len(merged) == 100
    final = Maildir(md).scan()
    assert {m.base: m.uid for m in final.messages} == merged


def test_recreated_folder_gets_a_greater_uidvalidity(tmp_path: Path) -> None:
    """RFC 3501 2.3.1.1: a folder deleted and created again, even within the same
    second (same clock value), gets a UIDVALIDITY above its previous one."""
    import shutil

    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    sub = root / ".Work"
    values = []
    for _ in range(3):
        for d in ("cur", "new", "tmp"):
            (sub / d).mkdir(parents=True)
        Maildir(sub).scan(now=1_700_000_000.0)      # the same second every time
        db = uiddb.read(sub)
        assert db is not None
        values.append(db.uidvalidity)
        shutil.rmtree(sub)
    assert values[0] == 1_700_000_000 - uiddb.IMAP_EPOCH
    assert values == sorted(set(values)) and len(values) == 3
    # INBOX shares the Maildir's mark; a damaged mark falls back to the clock.
    (root / uiddb.UIDVALIDITY_MARK).write_bytes(b"garbage")
    Maildir(root).scan(now=1_800_000_000.0)
    db = uiddb.read(root)
    assert db is not None and db.uidvalidity == 1_800_000_000 - uiddb.IMAP_EPOCH
    assert list((root / "tmp").iterdir()) == [] and not [
        p for p in root.iterdir() if p.name.startswith(".") and p.name != ".Work"]


def test_list_folders_skips_a_folder_it_may_not_search() -> None:
    """A `.Name` directory the user cannot search (mode 000) is left out of the
    list instead of raising PermissionError into the IMAP session. Run as
    nobody in a forked child when we are root (root searches anything)."""
    import pwd
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="listperm."))
    try:
        base.chmod(0o755)
        md = base / "Maildir"
        for name in ("", ".Open", ".Locked"):
            for d in ("cur", "new", "tmp"):
                (md / name / d).mkdir(parents=True)
        (md / ".Locked").chmod(0)
        if os.geteuid() != 0:
            assert list_folders(md) == ["Open"]
            return
        nobody = pwd.getpwnam("nobody")
        for p in [md, *md.rglob("*")]:
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                os.write(w, repr(list_folders(md)).encode())
            except BaseException as exc:
                os.write(w, f"error {exc!r}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            got = fh.read().decode()
        os.waitpid(pid, 0)
        assert got == "['Open']"
    finally:
        (base / "Maildir" / ".Locked").chmod(0o700)
        shutil.rmtree(base)
