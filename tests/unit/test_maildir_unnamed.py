"""Maildir delivery through unnamed files (libcourier.maildir.unnamed: O_TMPFILE
on tmp/, linkat of /proc/self/fd/N into new/) and its fallback to named tmp/
files: nothing is ever left in tmp/, failures are real ones, the fallback is
taken (and remembered) when the kernel or /proc refuse, and the delivered files
are the same bytes under the same kind of name either way."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import libcourier.maildir.delivery as delivery_mod
from libcourier.maildir import unnamed
from libcourier.maildir.delivery import (
    DeliveryError,
    deliver_to_maildir,
    ensure_maildir,
    publish_staged,
    stage_to_maildir,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus"
NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)(?:_(\d+))?V([0-9A-F]{16})I([0-9A-F]{16})\.(.+),S=(\d+)$")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts from what this process would find: O_TMPFILE usable."""
    monkeypatch.setattr(unnamed.state, "usable", True)


def _md(tmp_path, name="Maildir") -> Path:
    md = tmp_path / name
    ensure_maildir(md)
    return md


def test_delivery_makes_no_tmp_entry(tmp_path):
    md = _md(tmp_path)
    seen = []

    def source():
        for i in range(3):
            seen.append(os.listdir(md / "tmp"))
            yield b"line %d\r\n" % i
    name = deliver_to_maildir(md, source(), prefix=b"Return-Path: <a@b>\n")
    assert seen == [[]] * 3 and os.listdir(md / "tmp") == []
    assert os.listdir(md / "new") == [name] and NAME_RE.match(name)
    data = (md / "new" / name).read_bytes()
    assert data == b"Return-Path: <a@b>\nline 0\nline 1\nline 2\n"
    st = os.stat(md / "new" / name)
    assert name.endswith(f",S={len(data)}") and st.st_nlink == 1
    assert f"V{st.st_dev:016X}I{st.st_ino:016X}." in name
    assert st.st_mode & 0o777 == 0o600 & ~_umask()
    assert unnamed.usable()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("kind", ["unnamed", "named"])
def test_failures_leave_nothing_in_tmp(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(unnamed.state, "usable", kind == "unnamed")
    # A file standing where new/ should be: permanent, nothing anywhere.
    md = _md(tmp_path, "file")
    os.rmdir(md / "new")
    (md / "new").write_bytes(b"not a directory")
    out = publish_staged([stage_to_maildir(md, [b"a\n"]), stage_to_maildir(md, [b"b\n"])])
    assert all(isinstance(e, DeliveryError) and not e.temporary for e in out)
    assert os.listdir(md / "tmp") == []
    # new/ gone: temporary; and on the unnamed path not taken for a refusal
    # of the link (ENOENT is also what a missing /proc gives).
    md = _md(tmp_path, "gone")
    os.rmdir(md / "new")
    out = publish_staged([stage_to_maildir(md, [b"a\n"])])
    assert isinstance(out[0], DeliveryError) and out[0].temporary
    assert os.listdir(md / "tmp") == [] and not (md / "new").exists()
    assert unnamed.usable() == (kind == "unnamed")
    # The name in new/ already taken: refused, never replaced.
    md = _md(tmp_path, "taken")
    staged = stage_to_maildir(md, [b"mine\n"])
    st = os.fstat(staged.fd)
    base = staged.name.split(".", 2)
    taken = f"{base[0]}.{base[1]}V{st.st_dev:016X}I{st.st_ino:016X}.{base[2]},S=5"
    (md / "new" / taken).write_bytes(b"theirs\n")
    out = publish_staged([staged, stage_to_maildir(md, [b"next\n"])])
    assert isinstance(out[0], DeliveryError) and "already exists" in out[0].text
    assert isinstance(out[1], str)
    assert (md / "new" / taken).read_bytes() == b"theirs\n"
    assert sorted(os.listdir(md / "new")) == sorted([taken, out[1]])
    assert os.listdir(md / "tmp") == []
    # A source that fails mid-message.
    md = _md(tmp_path, "source")

    def broken():
        yield b"half\n"
        raise OSError(5, "Input/output error")
    with pytest.raises(DeliveryError):
        deliver_to_maildir(md, broken())
    assert os.listdir(md / "tmp") == [] and os.listdir(md / "new") == []


def test_a_missing_tmp_is_an_error_not_a_refusal(tmp_path):
    md = _md(tmp_path)
    os.rmdir(md / "tmp")
    with pytest.raises(FileNotFoundError):
        stage_to_maildir(md, [b"x\n"])
    assert unnamed.usable()


def test_a_kernel_without_o_tmpfile_falls_back_once_and_remembers(tmp_path, monkeypatch):
    # Kernels before 3.11 ignore O_TMPFILE's own bit and see O_DIRECTORY with
    # O_RDWR: the real open(2) then fails with EISDIR, as it does here.
    monkeypatch.setattr(unnamed, "_TMPFILE", os.O_DIRECTORY)
    md = _md(tmp_path)
    staged = [stage_to_maildir(md, [b"m%d\n" % i]) for i in range(3)]
    assert not unnamed.usable()
    assert all(s.in_tmp for s in staged) and len(os.listdir(md / "tmp")) == 3
    names = publish_staged(staged)
    assert [(md / "new" / n).read_bytes() for n in names] == [b"m0\n", b"m1\n", b"m2\n"]
    assert os.listdir(md / "tmp") == []
    assert unnamed.open_in(str(md / "tmp")) is None        # remembered: not tried again


@pytest.fixture
def nobodys_dir():
    """A directory of nobody's that nobody can reach (pytest's tmp_path sits
    under a 0700 directory of root's)."""
    top = Path(tempfile.mkdtemp(prefix="unnamed-"))
    try:
        os.chmod(top, 0o755)
        home = top / "home"
        home.mkdir()
        shutil.chown(home, 65534, 65534)
        yield home
    finally:
        shutil.rmtree(top)


def test_a_user_without_root_delivers_unnamed_and_is_refused_by_a_read_only_new(nobodys_dir):
    """courierlocal's worker runs as the account: /proc/self/fd is its own."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    md = nobodys_dir / "Maildir"
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # pragma: no cover - child
        try:
            os.close(rd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            ok = deliver_to_maildir(md, [b"as nobody\n"])
            os.chmod(md / "new", 0o500)
            out = publish_staged([stage_to_maildir(md, [b"refused\n"])])
            res = {"ok": ok, "usable": unnamed.usable(), "err": str(out[0]),
                   "temporary": getattr(out[0], "temporary", None)}
        except BaseException as e:  # noqa: BLE001 - reported to the test
            res = {"child": repr(e)}
        try:
            os.write(wr, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        res = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert res["usable"], res
    assert (md / "new" / res["ok"]).read_bytes() == b"as nobody\n"
    assert os.stat(md / "new" / res["ok"]).st_uid == 65534
    assert res["temporary"] is True and "Permission denied" in res["err"]
    assert os.listdir(md / "new") == [res["ok"]] and os.listdir(md / "tmp") == []


CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from libcourier.maildir import unnamed
from libcourier.maildir.delivery import publish_staged, stage_to_maildir
md = Path(sys.argv[2])
staged = [stage_to_maildir(md, [b"m%d\\n" % i]) for i in range(2)]   # unnamed: /proc is
before = [s.in_tmp for s in staged]                                   # not needed yet
names = publish_staged(staged)
more = stage_to_maildir(md, [b"m2\\n"])
names += publish_staged([more])
print(json.dumps({"before": before, "after": more.in_tmp, "usable": unnamed.usable(),
                  "names": [n if isinstance(n, str) else repr(n) for n in names]}))
"""


APPEND_CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from libcourier.maildir import unnamed
from libcourier.maildir.tmpcreate import write_tmp
md = Path(sys.argv[2])
out = []
for i in range(2):
    with write_tmp(md, "a%d" % i, b"m%d\\n" % i) as msg:
        unnamed_before = msg.fd is not None
        msg.rename(md / "cur" / ("a%d:2," % i), mtime=1e9)
    out.append(unnamed_before)
print(json.dumps({"unnamed": out, "usable": unnamed.usable()}))
"""


def _without_proc(script: str, *args: str) -> dict:
    """Run `script` in a private mount namespace where /proc is unmounted."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to run without /proc")
    try:
        run = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'umount -l /proc && exec "$0" -c "$1" "$2" "$3"',
             sys.executable, script, str(ROOT), *args],
            capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the child without /proc did not finish in 120 s")
    if run.returncode != 0 and (run.stderr.startswith((b"umount", b"unshare"))):
        # A container without CAP_SYS_ADMIN: no namespace of our own to do it in.
        pytest.skip(f"cannot unmount /proc here: {run.stderr.decode()[:200]}")
    assert run.returncode == 0, run.stderr.decode()
    return json.loads(run.stdout)


def test_no_proc_names_an_appended_file_through_a_copy(tmp_path):
    md = _md(tmp_path)
    res = _without_proc(APPEND_CHILD, str(md))
    # The first was unnamed (refused at rename: copied, renamed); the second named.
    assert res == {"unnamed": [True, False], "usable": False}
    for i in range(2):
        target = md / "cur" / f"a{i}:2,"
        assert target.read_bytes() == b"m%d\n" % i and os.stat(target).st_mtime == 1e9
    assert os.listdir(md / "tmp") == []


def test_no_proc_names_the_staged_files_through_a_copy(tmp_path):
    """/proc unmounted (a private mount namespace): the link through it is
    refused; the staged unnamed files are copied into tmp/ and delivered as
    before, and the process writes named tmp/ files from then on."""
    md = _md(tmp_path)
    res = _without_proc(CHILD, str(md))
    assert res == {"before": [False, False], "after": True, "usable": False,
                   "names": res["names"]}
    assert [(md / "new" / n).read_bytes() for n in res["names"]] == [b"m0\n", b"m1\n", b"m2\n"]
    for n in res["names"]:
        st = os.stat(md / "new" / n)
        assert NAME_RE.match(n) and f"I{st.st_ino:016X}." in n    # the copy's inode
    assert os.listdir(md / "tmp") == []


def test_a_tmp_on_another_file_system_fails_as_before(tmp_path):
    """tmp/ a symlink to another file system: no link can cross; that is this
    Maildir's fault, not the system's: O_TMPFILE stays in use."""
    from libcourier.maildir.tmpcreate import write_tmp
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no /dev/shm on another file system")
    md = _md(tmp_path)
    away = Path(tempfile.mkdtemp(prefix="unnamed-tmp-", dir=other))
    try:
        os.rmdir(md / "tmp")
        os.symlink(away, md / "tmp")
        out = publish_staged([stage_to_maildir(md, [b"x\n"])])
        assert isinstance(out[0], DeliveryError) and out[0].temporary
        with pytest.raises(OSError), write_tmp(md, "n", b"x") as msg:
            msg.rename(md / "cur" / "n:2,")
        assert os.listdir(away) == [] and os.listdir(md / "new") == []
        assert os.listdir(md / "cur") == []
        assert unnamed.usable()
    finally:
        shutil.rmtree(away)


def _shape(name: str) -> tuple[str, str]:
    """What a name says besides time, process and inode: host part and size."""
    m = NAME_RE.match(name)
    assert m, name
    return m.group(7), m.group(8)


def test_corpus_delivered_the_same_either_way(tmp_path, monkeypatch):
    if not CORPUS.is_dir():
        pytest.skip("no ../shared/corpus beside the checkout")
    mails = sorted(CORPUS.glob("*.eml"))
    assert mails
    out = {}
    for kind in ("unnamed", "named"):
        monkeypatch.setattr(unnamed.state, "usable", kind == "unnamed")
        md = _md(tmp_path, kind)
        staged = []
        for path in mails:
            with open(path, "rb") as f:
                staged.append(stage_to_maildir(md, f, prefix=b"Delivered-To: alice@example.com\n"))
        assert all(s.in_tmp == (kind == "named") for s in staged)
        names = publish_staged(staged)
        out[kind] = [(_shape(n), (md / "new" / n).read_bytes()) for n in names]
        assert os.listdir(md / "tmp") == []
    assert out["unnamed"] == out["named"]
    for (_host, size), data in out["unnamed"]:
        assert int(size) == len(data) and b"\r\n" not in data


def test_a_linked_file_is_fsynced_with_its_link(tmp_path, monkeypatch):
    """An unnamed file's inode is written by its first fsync with no link (its
    link count is 0 until linkat): on ext4 without a journal nothing else
    writes it again before a crash (the fsync of new/ or cur/ writes the
    directory), and fsck frees an inode found with no link, and clears its
    name: the message acknowledged and lost. So each one is fsync'd again
    once linked, before its directory's fsync reports it delivered."""
    from libcourier.maildir import tmpcreate
    events: list[tuple[str, int, int]] = []
    real_fsync, real_dir = os.fsync, delivery_mod._fsync_dir

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_nlink))
        return real_fsync(fd)

    def fsync_dir(path):
        events.append(("dir", os.stat(path).st_ino, 0))
        return real_dir(path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(delivery_mod, "_fsync_dir", fsync_dir)
    one, two = _md(tmp_path, "one"), _md(tmp_path, "two")
    names = publish_staged([stage_to_maildir(md, [b"m%d\n" % i])
                            for i, md in enumerate([one, two, one])])
    for md, name in zip([one, two, one], names, strict=True):
        ino = os.stat(md / "new" / name).st_ino
        newdir = ("dir", os.stat(md / "new").st_ino, 0)
        assert ("fsync", ino, 1) in events, name
        assert events.index(("fsync", ino, 1)) < events.index(newdir)
    events.clear()
    with tmpcreate.write_tmp(one, "a", b"appended\n") as msg:
        msg.rename(one / "cur" / "a:2,", mtime=1e9)
    st = os.stat(one / "cur" / "a:2,")
    assert ("fsync", st.st_ino, 1) in events
    assert st.st_mtime == 1e9


@pytest.fixture
def ext4_without_journal(tmp_path):
    """A small ext4 file system with no journal on a loop device (the kind of
    root file system issue 7 measured); yields (mount point, image file).
    The image file is what the device was sent: a copy of it is the disk
    after a power loss."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a loop device")
    for tool in ("mkfs.ext4", "losetup", "mount", "umount", "debugfs", "e2fsck"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool}")
    img, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096",
                    "-I", "256", "-N", "256", str(img)], check=True, timeout=60)
    made = subprocess.run(["losetup", "--find", "--show", str(img)],
                          capture_output=True, text=True, timeout=60, check=False)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()[:200]}")
    dev = made.stdout.strip()
    try:
        mounted = subprocess.run(["mount", "-t", "ext4", dev, str(mnt)],
                                 capture_output=True, text=True, timeout=60, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()[:200]}")
        try:
            yield mnt, img
        finally:
            subprocess.run(["umount", str(mnt)], timeout=60, check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=60, check=True)


def _next_inode_alone(mnt: Path) -> None:
    """Fill inodes until the next one allocated starts an inode-table block
    (16 inodes of 256 bytes in 4 KB), and write everything out: that block
    then holds no other file whose fsync would write the next file's inode
    by chance."""
    fill = mnt / "fill"
    fill.mkdir(exist_ok=True)
    for _ in range(40):
        path = fill / f"{len(os.listdir(fill))}"
        path.touch()
        if os.stat(path).st_ino % 16 == 0:
            break
    else:
        pytest.fail("no inode ending a 16-inode block in 40 files")
    os.sync()


def _after_power_loss(img: Path, tmp_path: Path, path: str) -> bytes | None:
    """The file at `path` in the file system as the disk holds it now, after
    e2fsck -fy (what a boot after a power loss runs): its bytes, or None."""
    snap = tmp_path / "snap.img"
    shutil.copyfile(img, snap)
    fsck = subprocess.run(["e2fsck", "-fy", str(snap)], capture_output=True, timeout=120,
                          check=False)
    assert fsck.returncode in (0, 1), fsck.stdout.decode()[-2000:]
    out = tmp_path / "out"
    out.unlink(missing_ok=True)
    subprocess.run(["debugfs", "-R", f"dump {path} {out}", str(snap)], capture_output=True,
                   timeout=120, check=False)
    return out.read_bytes() if out.exists() else None


def test_a_delivered_message_survives_a_power_loss_on_ext4_without_a_journal(
        ext4_without_journal, tmp_path):
    mnt, img = ext4_without_journal
    md = mnt / "Maildir"
    ensure_maildir(md)
    _next_inode_alone(mnt)
    name = deliver_to_maildir(md, [b"Subject: kept\r\n\r\nbody\r\n"])
    assert (int(NAME_RE.match(name).group(6), 16) - 1) % 16 == 0, name
    assert _after_power_loss(img, tmp_path, f"/Maildir/new/{name}") == \
        b"Subject: kept\n\nbody\n"
    # APPEND's path: written in tmp/, linked into cur/, cur/ fsync'd.
    from libcourier.durable import fsync_dir
    from libcourier.maildir.tmpcreate import write_tmp
    _next_inode_alone(mnt)
    with write_tmp(md, "a", b"appended\n") as msg:
        msg.rename(md / "cur" / "a:2,", mtime=1e9)
    fsync_dir(md / "cur")
    assert _after_power_loss(img, tmp_path, "/Maildir/cur/a:2,") == b"appended\n"
