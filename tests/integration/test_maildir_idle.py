"""IDLE (RFC 2177) woken by inotify (libcourier.maildir.watch): a delivery, another
session's keyword change and its expunge reach the idling client, plain and over TLS.
The latencies are printed (pytest -s) for the report; the assertion bound is generous
so a loaded machine does not fail it, the normal figure is milliseconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from libcourier.maildir.folder import Maildir
from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, Raw, deliver

BOUND = 3.0   # seconds; the stat poll alone would also meet it, the printed figure shows which


@pytest.fixture
def imap(new_instance):
    new_instance.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(new_instance.maildir(USER), m)
    new_instance.start("authdaemond", "imapd", "imapd-ssl")
    return new_instance


def as_owner(md: Path, fn) -> None:
    """Run fn in a child as the Maildir's owner (the files it makes must be the user's,
    as they would be when another session of the user makes them)."""
    st = os.stat(md)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(st.st_gid)
            os.setuid(st.st_uid)
            fn()
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def wait_for(r: Raw, want: bytes, t0: float) -> float:
    r.sock.settimeout(BOUND + 2)
    for _ in range(1000):
        if want in r.line():
            return time.monotonic() - t0
    raise AssertionError(want)


@pytest.mark.parametrize("tls", [False, True])
def test_idle_woken_by_delivery_keywords_expunge(imap, tls: bool) -> None:
    r = Raw(imap.port("imaps" if tls else "imap"), tls=tls)
    md = imap.maildir(USER)
    try:
        assert r.line().startswith(b"* OK ")
        assert r.cmd(b"a1", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"a1 OK")
        assert b"* 3 EXISTS\r\n" in r.cmd(b"a2", b"SELECT INBOX")
        r.send(b"a3 IDLE\r\n")
        assert r.line().startswith(b"+ ")
        time.sleep(0.2)   # not synchronisation: lets the server reach its wait first
        lat = []
        t0 = time.monotonic()
        deliver(md, b"Subject: idle\n\nwoken\n")
        lat.append(wait_for(r, b"* 4 EXISTS\r\n", t0))
        box = Maildir(md)
        m = box.scan().messages[0]
        t0 = time.monotonic()
        as_owner(md, lambda: box.change_keywords([m], "+", frozenset({"Urgent"})))
        lat.append(wait_for(r, b"Urgent", t0))
        t0 = time.monotonic()
        box.remove(box.scan().messages[1])
        lat.append(wait_for(r, b"* 2 EXPUNGE\r\n", t0))
        print(f"IDLE latencies (tls={tls}): " + ", ".join(f"{x * 1000:.1f} ms" for x in lat))
        assert max(lat) < BOUND, lat
        r.sock.settimeout(IO_TIMEOUT)
        r.send(b"DONE\r\n")
        assert r.until(b"a3")[-1].startswith(b"a3 OK")
        out = r.cmd(b"a4", b"FETCH 1 (FLAGS)")
        assert b"Urgent" in out[0] and out[-1].startswith(b"a4 OK")
    finally:
        r.close()
