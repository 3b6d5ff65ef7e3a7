"""libcourier.maildir.folders and .mutf7: Maildir++ folder management on disk
(FORMATS.md §3.3, Courier's `maildirmake -f`), subscriptions, APPEND/COPY with UIDs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.maildir import folders as f
from libcourier.maildir import uiddb
from libcourier.maildir.folder import Maildir, list_folders
from libcourier.maildir.mutf7 import decode_mutf7, encode_mutf7


@pytest.fixture
def md(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    root.mkdir()
    for s in ("tmp", "new", "cur"):
        (root / s).mkdir()
    return root


# -- modified UTF-7 (RFC 3501 §5.1.3) ----------------------------------------------

@pytest.mark.parametrize("text, wire", [
    ("INBOX", "INBOX"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("日本語", "&ZeVnLIqe-"),                      # RFC 3501 §5.1.3 example
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
])
def test_mutf7_examples(text: str, wire: str) -> None:
    assert encode_mutf7(text) == wire
    assert decode_mutf7(wire) == text


@pytest.mark.parametrize("bad", ["&", "&Jjo", "&AGE-", "&U,BTFw-&ZeVnLIqe-x&-&", "a\x80", "&ZeVnLIqe=-"])
def test_mutf7_rejects(bad: str) -> None:
    # "&AGE-" encodes "a", which must be sent as itself; two adjacent &-runs are not canonical.
    with pytest.raises(ValueError):
        decode_mutf7(bad)


@given(st.text(max_size=40))
def test_mutf7_round_trip(s: str) -> None:
    s = s.replace("\x00", "")
    try:
        s.encode("utf-16-be")
    except UnicodeEncodeError:   # lone surrogates are not text
        return
    w = encode_mutf7(s)
    assert w.isascii() and decode_mutf7(w) == s


# -- CREATE / DELETE / RENAME --------------------------------------------------------

def test_create_matches_maildirmake(md: Path) -> None:
    f.create_folder(md, "INBOX.Sent")
    f.create_folder(md, "INBOX.Sent.2024")
    for d in (".Sent", ".Sent.2024"):
        assert sorted(p.name for p in (md / d).iterdir()) == ["cur", "maildirfolder", "new", "tmp"]
        assert (md / d / "maildirfolder").stat().st_size == 0
        assert (md / d).stat().st_mode & 0o777 == 0o700
    assert list_folders(md) == ["Sent", "Sent.2024"]
    assert os.listdir(md / "tmp") == []                # nothing left behind
    with pytest.raises(f.FolderError, match="exists"):
        f.create_folder(md, "INBOX.Sent")
    with pytest.raises(f.FolderError):
        f.create_folder(md, "inbox")
    for bad in ("Other", "INBOX.a..b", "INBOX.a/b", "INBOX..x", "INBOX.a\nb"):
        with pytest.raises(f.FolderError, match="Invalid"):
            f.create_folder(md, bad)
    f.create_folder(md, "INBOX.Trailing.")            # §6.3.3: trailing separator
    assert (md / ".Trailing" / "cur").is_dir()
    f.create_folder(md, "INBOX.Entwürfe")             # UTF-8 on disk
    assert (md / ".Entwürfe" / "maildirfolder").exists()


def test_delete(md: Path) -> None:
    f.create_folder(md, "INBOX.a")
    f.create_folder(md, "INBOX.a.b")
    with pytest.raises(f.FolderError, match="INBOX"):
        f.delete_folder(md, "INBOX")
    with pytest.raises(f.FolderError, match="not exist"):
        f.delete_folder(md, "INBOX.nope")
    f.delete_folder(md, "INBOX.a")          # children stay (RFC 3501 §6.3.4)
    assert list_folders(md) == ["a.b"]
    assert os.listdir(md / "tmp") == []


def _put(folder: Path, body: bytes, flags: str = "") -> f.Added:
    return f.append_message(folder, body, flags, 1_000_000_000.0)


def test_rename_with_children_and_subscriptions(md: Path) -> None:
    f.create_folder(md, "INBOX.a")
    f.create_folder(md, "INBOX.a.b")
    f.create_folder(md, "INBOX.ab")
    f.subscribe(md, "INBOX.a.b")
    f.subscribe(md, "INBOX.ab")
    f.rename_folder(md, "INBOX.a", "INBOX.z")
    assert list_folders(md) == ["ab", "z", "z.b"]
    assert f.read_subscriptions(md) == ["INBOX.z.b", "INBOX.ab"]
    with pytest.raises(f.FolderError, match="exists"):
        f.rename_folder(md, "INBOX.z", "INBOX.ab")
    with pytest.raises(f.FolderError, match="not exist"):
        f.rename_folder(md, "INBOX.q", "INBOX.r")
    with pytest.raises(f.FolderError, match="itself"):
        f.rename_folder(md, "INBOX.z", "INBOX.z.c")
    with pytest.raises(f.FolderError):
        f.rename_folder(md, "INBOX.z", "INBOX")


def test_rename_inbox_moves_messages(md: Path) -> None:
    _put(md, b"Subject: 1\r\n\r\nx\r\n", "S")
    _put(md, b"Subject: 2\r\n\r\ny\r\n")
    f.rename_folder(md, "INBOX", "INBOX.Old")
    assert Maildir(md).scan().messages == ()
    moved = Maildir(md / ".Old").scan().messages
    assert [m.flags for m in moved] == ["S", ""]


def test_subscriptions_file(md: Path) -> None:
    f.create_folder(md, "INBOX.Sent")
    f.subscribe(md, "INBOX")
    f.subscribe(md, "INBOX.Sent")
    f.subscribe(md, "INBOX.Sent")
    assert (md / f.SUBSCRIBED).read_bytes() == b"INBOX\nINBOX.Sent\n"   # Courier's format
    with pytest.raises(f.FolderError):
        f.subscribe(md, "INBOX.missing")
    f.unsubscribe(md, "INBOX")
    assert f.read_subscriptions(md) == ["INBOX.Sent"]
    with pytest.raises(f.FolderError):
        f.unsubscribe(md, "INBOX")


# -- APPEND / COPY -------------------------------------------------------------------

def test_append_gets_the_uid_scan_sees(md: Path) -> None:
    a1 = _put(md, b"Subject: a\r\n\r\nbody\r\n", "FS")
    a2 = _put(md, b"Subject: b\r\n\r\nbody\r\n")
    assert a1.uids == (1,) and a2.uids == (2,) and a1.uidvalidity == a2.uidvalidity
    state = Maildir(md).scan()
    assert [m.uid for m in state.messages] == [1, 2]
    assert state.messages[0].flags == "FS" and state.messages[0].mtime == 1_000_000_000.0
    assert state.messages[0].size == len(b"Subject: a\r\n\r\nbody\r\n")
    assert state.uidvalidity == a1.uidvalidity and state.uidnext == 3
    assert os.listdir(md / "new") == [] and os.listdir(md / "tmp") == []
    db = uiddb.read(md)
    assert db is not None and [u for u, _ in db.entries] == [1, 2]


def test_copy_links_and_numbers(md: Path) -> None:
    f.create_folder(md, "INBOX.Dst")
    _put(md, b"one\r\n", "S")
    _put(md, b"two\r\n")
    src = Maildir(md).scan().messages
    _put(md / ".Dst", b"already there\r\n")
    added = f.copy_messages([(md / "cur" / m.filename, m.flags, m.size) for m in src], md / ".Dst")
    assert added.uids == (2, 3)
    dst = Maildir(md / ".Dst").scan().messages
    assert [m.uid for m in dst] == [1, 2, 3] and [m.flags for m in dst] == ["", "S", ""]
    # Hard links: the same inode, so the bytes and INTERNALDATE come along.
    assert os.stat(md / ".Dst" / "cur" / dst[1].filename).st_ino == \
        os.stat(md / "cur" / src[0].filename).st_ino


def test_copy_across_file_systems_writes_a_copy_with_the_old_date(
        md: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f.create_folder(md, "INBOX.Dst")
    _put(md, b"one\r\n", "S")
    src = Maildir(md).scan().messages

    real_link = os.link

    def exdev(a: object, b: object, **kw: object) -> None:
        # The source is elsewhere; the copy's own unnamed file in .Dst/tmp/
        # is named in .Dst/cur/ by a link on the same file system.
        if str(a).startswith("/proc/self/fd/"):
            return real_link(a, b, **kw)  # type: ignore[arg-type]
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(f.os, "link", exdev)
    added = f.copy_messages([(md / "cur" / m.filename, m.flags, m.size) for m in src], md / ".Dst")
    assert added.uids == (1,)
    dst = Maildir(md / ".Dst").scan().messages
    assert [(m.uid, m.flags, m.mtime) for m in dst] == [(1, "S", 1_000_000_000.0)]
    out = md / ".Dst" / "cur" / dst[0].filename
    assert out.read_bytes() == b"one\r\n"
    assert os.stat(out).st_ino != os.stat(md / "cur" / src[0].filename).st_ino
    assert os.listdir(md / ".Dst" / "tmp") == []


def test_copy_is_all_or_nothing(md: Path) -> None:
    f.create_folder(md, "INBOX.Dst")
    _put(md, b"one\r\n")
    m = Maildir(md).scan().messages[0]
    with pytest.raises(FileNotFoundError):
        f.copy_messages([(md / "cur" / m.filename, "", 5), (md / "cur" / "gone", "", 1)],
                        md / ".Dst")
    assert os.listdir(md / ".Dst" / "cur") == []
