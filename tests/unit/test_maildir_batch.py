"""Several messages into Maildirs at once (courierlocal's batches):
stage_to_maildir writes tmp/ only, publish_staged fsyncs each file, links
it into new/ and fsyncs each new/ once; one message's failure is its own.
Every test runs twice: with unnamed files (O_TMPFILE, this kernel's) and with
named tmp/ files (the fallback, switched on as a system without O_TMPFILE
would leave it)."""

from __future__ import annotations

import os

import pytest

import libcourier.maildir.delivery as delivery_mod
from libcourier.maildir import unnamed
from libcourier.maildir.delivery import (
    DeliveryError,
    deliver_or_stage,
    ensure_maildir,
    publish_staged,
    stage_to_maildir,
)


@pytest.fixture(autouse=True, params=["unnamed", "named"])
def kind(request, monkeypatch):
    monkeypatch.setattr(unnamed.state, "usable", request.param == "unnamed")
    return request.param


def _md(tmp_path, name="Maildir"):
    md = tmp_path / name
    ensure_maildir(md)
    return md


def test_staged_messages_appear_in_new_only_when_published(tmp_path, monkeypatch, kind):
    md = _md(tmp_path)
    synced = []
    real = delivery_mod._fsync_dir
    monkeypatch.setattr(delivery_mod, "_fsync_dir", lambda p: (synced.append(p), real(p)))
    staged = [stage_to_maildir(md, [b"Subject: %d\r\n\r\nbody\r\n" % i], prefix=b"X: y\n")
              for i in range(5)]
    assert os.listdir(md / "new") == []
    # Written in tmp/: unnamed (nothing to see), or tmp/<name>.
    assert len(os.listdir(md / "tmp")) == (0 if kind == "unnamed" else 5)
    assert all(s.in_tmp == (kind == "named") for s in staged)
    names = publish_staged(staged)
    assert all(isinstance(n, str) for n in names)
    assert sorted(os.listdir(md / "new")) == sorted(names)
    assert os.listdir(md / "tmp") == []
    assert synced == [f"{md}/new"]                     # new/ fsync'd once for all five
    for i, n in enumerate(names):
        data = (md / "new" / n).read_bytes()
        assert data == b"X: y\nSubject: %d\n\nbody\n" % i
        assert n.endswith(f",S={len(data)}")


def test_one_failing_link_fails_only_its_message(tmp_path, monkeypatch):
    md = _md(tmp_path)
    staged = [stage_to_maildir(md, [b"m%d\n" % i]) for i in range(3)]
    real_link = os.link
    victim = staged[1].tmppath() or f"/proc/self/fd/{staged[1].fd}"

    def link(src, dst, **kw):
        if src == victim:
            raise OSError(28, "No space left on device")
        return real_link(src, dst, **kw)
    monkeypatch.setattr(delivery_mod.os, "link", link)
    out = publish_staged(staged)
    assert isinstance(out[0], str) and isinstance(out[2], str)
    assert isinstance(out[1], DeliveryError) and out[1].temporary
    assert sorted(os.listdir(md / "new")) == sorted([out[0], out[2]])
    assert os.listdir(md / "tmp") == []                 # the failed one's tmp file is gone


def test_a_failing_fsync_of_new_withdraws_that_maildirs_files_only(tmp_path, monkeypatch):
    a, b = _md(tmp_path, "a"), _md(tmp_path, "b")
    real = delivery_mod._fsync_dir

    def fsync_dir(path):
        if str(path) == f"{a}/new":
            raise OSError(5, "Input/output error")
        return real(path)
    monkeypatch.setattr(delivery_mod, "_fsync_dir", fsync_dir)
    out = publish_staged([stage_to_maildir(a, [b"1\n"]), stage_to_maildir(b, [b"2\n"]),
                          stage_to_maildir(a, [b"3\n"])])
    assert isinstance(out[0], DeliveryError) and isinstance(out[2], DeliveryError)
    assert isinstance(out[1], str)
    assert os.listdir(a / "new") == [] and os.listdir(a / "tmp") == []
    assert os.listdir(b / "new") == [out[1]]


def test_an_exception_mid_batch_leaves_nothing_behind(tmp_path, monkeypatch):
    md = _md(tmp_path)
    staged = [stage_to_maildir(md, [b"m%d\n" % i]) for i in range(3)]
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fd)
    monkeypatch.setattr(delivery_mod.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        publish_staged(staged)
    # The first was linked (new/ not fsync'd yet: withdrawn is not promised);
    # the others' tmp files are gone and their fds closed.
    assert os.listdir(md / "tmp") == []
    assert len(os.listdir(md / "new")) <= 1
    for s in staged[1:]:
        with pytest.raises(OSError):
            os.fstat(s.fd)


def test_a_maildir_with_a_quota_is_delivered_at_once(tmp_path):
    md = _md(tmp_path)
    (md / "maildirsize").write_bytes(b"1000000S\n0 0\n")
    name = deliver_or_stage(md, [b"Subject: q\n\nx\n"], 14, newquota="1000000S")
    assert isinstance(name, str) and os.listdir(md / "new") == [name]
    unquoted = _md(tmp_path, "plain")
    staged = deliver_or_stage(unquoted, [b"Subject: q\n\nx\n"], 14)
    assert not isinstance(staged, str) and os.listdir(unquoted / "new") == []
    assert isinstance(publish_staged([staged])[0], str)


def test_a_batch_checks_each_maildir_once(tmp_path, monkeypatch):
    md = _md(tmp_path)
    stats = []
    real = delivery_mod.os.stat
    monkeypatch.setattr(delivery_mod.os, "stat", lambda p, *a, **k: (stats.append(p),
                                                                      real(p, *a, **k))[1])
    unquoted: set[str] = set()
    staged = [deliver_or_stage(md, [b"m%d\n" % i], 3, unquoted=unquoted) for i in range(4)]
    assert unquoted == {str(md)}
    assert len(stats) == 4      # tmp/ new/ cur/ maildirfolder, for the first message only
    assert all(isinstance(n, str) for n in publish_staged(staged))
    assert len(os.listdir(md / "new")) == 4
