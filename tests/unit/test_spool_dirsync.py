"""libcourier.spool.dirsync: one msgs/ fsync for many removals, never none."""

from __future__ import annotations

import threading
import time

from libcourier.spool import dirsync
from libcourier.spool.dirsync import DelayedDirSync

WAIT = 10.0


def _counting(monkeypatch) -> list[tuple[float, str]]:
    calls: list[tuple[float, str]] = []
    lock = threading.Lock()

    def fake_fsync_dir(path):
        with lock:
            calls.append((time.monotonic(), str(path)))
    monkeypatch.setattr(dirsync, "fsync_dir", fake_fsync_dir)
    return calls


def _wait_for(pred) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_many_changes_share_one_fsync_after_the_last_of_them(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    s = DelayedDirSync(tmp_path, delay=0.2)
    changes = []
    for _ in range(50):
        s.changed()
        changes.append(time.monotonic())
    assert _wait_for(lambda: len(calls) >= 1)
    time.sleep(0.4)                       # no second fsync without a new change
    assert len(calls) == 1
    assert calls[0][0] >= changes[-1] and calls[0][1] == str(tmp_path)
    # A change after that fsync gets one of its own.
    s.changed()
    after = time.monotonic()
    assert _wait_for(lambda: len(calls) >= 2)
    assert calls[1][0] >= after


def test_flush_syncs_a_pending_change_at_once_and_only_then(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    s = DelayedDirSync(tmp_path, delay=60.0)
    s.flush()
    assert calls == []                    # nothing changed: no fsync
    s.changed()
    s.flush()
    assert len(calls) == 1
    time.sleep(0.1)
    s.flush()
    assert len(calls) == 1


def test_a_real_directory_is_synced_and_an_error_only_logged(tmp_path, caplog):
    s = DelayedDirSync(tmp_path, delay=0.0)
    s.changed()
    s.flush()                              # fsyncs tmp_path for real (no error)
    gone = DelayedDirSync(tmp_path / "missing", delay=60.0)
    gone.changed()
    gone.flush()
    assert "cannot fsync" in caplog.text
