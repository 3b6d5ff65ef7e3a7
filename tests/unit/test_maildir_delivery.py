"""libcourier.maildir.names and .delivery: Courier's file names, crash-safe delivery."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcourier.maildir import delivery as delivery_mod
from libcourier.maildir.delivery import CRLFToLF, DeliveryError, deliver_to_maildir
from libcourier.maildir.names import escape_hostname, unique_name

NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)(?:_(\d+))?V([0-9A-F]{16})I([0-9A-F]{16})\.(.+),S=(\d+)$")


def test_unique_name_matches_deliverquota_example():
    # FORMATS.md §3.3, a name made by Courier's deliverquota.
    assert unique_name(28, hostname="vm", now=1795720848.602307, dev=0xFE00,
                       ino=0x40C3EB, pid=2588, counter=0) == \
        "1795720848.M602307P2588V000000000000FE00I000000000040C3EB.vm,S=28"


def test_unique_name_counter_and_no_size():
    assert unique_name(hostname="h", now=5.0, pid=7, counter=3) == "5.M0P7_3.h"


def test_unique_names_differ_in_one_process():
    names = {unique_name(hostname="h", now=1.0, pid=1) for _ in range(50)}
    assert len(names) == 50


def test_hostname_escaping():
    assert escape_hostname("a/b:c") == "a\\057b\\072c"
    assert "/" not in unique_name(hostname="x/y:z") and ":" not in unique_name(hostname="x:y")


def files(d):
    return sorted(p.name for p in d.iterdir())


def test_deliver_creates_maildir_and_stores_lf(tmp_path):
    md = tmp_path / "Maildir"
    name = deliver_to_maildir(md, [b"Subject: x\r\n", b"\r\nbody\r", b"\nlone\rcr\r"],
                              prefix=b"Return-Path: <a@b>\n")
    assert files(md) == ["cur", "new", "tmp"]
    assert oct(md.stat().st_mode & 0o777) == "0o700"
    data = (md / "new" / name).read_bytes()
    assert data == b"Return-Path: <a@b>\nSubject: x\n\nbody\nlone\rcr\r"
    m = NAME_RE.match(name)
    assert m, name
    assert int(m.group(8)) == len(data)
    st_ = (md / "new" / name).stat()
    assert int(m.group(6), 16) == st_.st_ino and int(m.group(5), 16) == st_.st_dev
    assert oct(st_.st_mode & 0o777) == "0o600"
    assert files(md / "tmp") == [] and files(md / "cur") == []


def test_deliver_from_file_object_streams(tmp_path):
    src = tmp_path / "msg"
    src.write_bytes(b"a\r\n" * 100_000)
    with open(src, "rb") as fh:
        name = deliver_to_maildir(tmp_path / "Maildir", fh)
    assert (tmp_path / "Maildir" / "new" / name).read_bytes() == b"a\n" * 100_000


@given(st.lists(st.binary(max_size=20), max_size=10))
def test_crlf_conversion_independent_of_chunking(chunks):
    whole = b"".join(chunks)
    conv = CRLFToLF()
    out = b"".join(conv.feed(c) for c in chunks) + conv.finish()
    assert out == whole.replace(b"\r\n", b"\n")
    conv = CRLFToLF()
    out = b"".join(conv.feed(whole[i:i + 1]) for i in range(len(whole))) + conv.finish()
    assert out == whole.replace(b"\r\n", b"\n")


def test_failing_source_leaves_nothing(tmp_path):
    md = tmp_path / "Maildir"

    def source():
        yield b"first part\n"
        raise OSError(28, "No space left on device")

    with pytest.raises(DeliveryError) as ei:
        deliver_to_maildir(md, source())
    assert ei.value.temporary
    assert files(md / "new") == [] and files(md / "tmp") == []


def test_failing_write_leaves_nothing_in_new(tmp_path, monkeypatch):
    md = tmp_path / "Maildir"
    deliver_to_maildir(md, [b"ok\n"])
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(122, "Disk quota exceeded")
        return real_write(fd, data)

    monkeypatch.setattr(delivery_mod.os, "write", flaky_write)
    with pytest.raises(DeliveryError) as ei:
        deliver_to_maildir(md, [b"a" * 10, b"b" * 10], prefix=b"P: 1\n")
    monkeypatch.undo()
    assert ei.value.temporary
    new = files(md / "new")
    assert len(new) == 1 and (md / "new" / new[0]).read_bytes() == b"ok\n"
    assert files(md / "tmp") == []


def test_failing_fsync_of_new_withdraws_the_file(tmp_path, monkeypatch):
    md = tmp_path / "Maildir"
    deliver_to_maildir(md, [b"warm up\n"])
    before = files(md / "new")
    real = delivery_mod._fsync_dir

    def bad_fsync_dir(path):
        if os.path.basename(path) == "new":
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(delivery_mod, "_fsync_dir", bad_fsync_dir)
    with pytest.raises(DeliveryError):
        deliver_to_maildir(md, [b"x\n"])
    assert files(md / "new") == before and files(md / "tmp") == []


def test_only_complete_files_appear_in_new(tmp_path, monkeypatch):
    """While the message is being written, new/ stays empty."""
    md = tmp_path / "Maildir"
    seen = []

    def source():
        for i in range(5):
            seen.append(files(md / "new"))
            yield b"line %d\n" % i

    name = deliver_to_maildir(md, source())
    assert seen == [[]] * 5
    assert files(md / "new") == [name]


def test_maildir_path_is_a_file_is_permanent(tmp_path):
    (tmp_path / "Maildir").write_text("not a dir")
    with pytest.raises(DeliveryError) as ei:
        deliver_to_maildir(tmp_path / "Maildir", [b"x"])
    assert not ei.value.temporary


def test_missing_parent_is_temporary(tmp_path):
    with pytest.raises(DeliveryError) as ei:
        deliver_to_maildir(tmp_path / "nohome" / "Maildir", [b"x"])
    assert ei.value.temporary
