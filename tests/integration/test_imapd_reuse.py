"""Warm workers (courier_imapd.warm): a finished session's process serves the same
account's next login, through real daemons.

The second connection of a user is served by the process of the first (already
that user, pages warm); another user's is not. Its Session is fresh (nothing
selected, nothing buffered), pipelined input after LOGIN reaches it, it expires
after IMAP_REUSE_TIMEOUT, a reload retires it, concurrent logins each get one
or a fresh process, STARTTLS'd connections are never handed over, and an idle
worker counts for neither MAXPERIP nor MAXDAEMONS.
"""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import time

import psutil
import pytest

from tests.integration.test_imapd import (
    IO_TIMEOUT,
    MSGS,
    PASSWORD,
    USER,
    Raw,
    deliver,
    set_option,
    unverified,
)

WAIT = 30.0     # generous: the machine is shared
BOB, BOB_PW = "bob@example.net", "bob-secret"


def make(new_instance, reuse: str = "10", **extra: str):
    inst = new_instance
    set_option(inst.etc, "imapd", "IMAP_REUSE_TIMEOUT", reuse)
    # No hibernation unless a test asks: a sleeping session's process is gone.
    set_option(inst.etc, "imapd", "IMAP_HIBERNATE_TIMEOUT", extra.pop("hibernate", "0"))
    for key, value in extra.items():
        set_option(inst.etc, "imapd", key, value)
    inst.adduser(USER, PASSWORD)
    inst.adduser(BOB, BOB_PW)
    for m in MSGS:
        deliver(inst.maildir(USER), m)
    inst.start("authdaemond", "imapd")
    return inst


@pytest.fixture
def inst(new_instance):
    return make(new_instance)


def listener(inst) -> psutil.Process:
    return psutil.Process(int(inst.layout.pidfile("imapd").read_text().split()[0]))


def holder(inst, sock: socket.socket) -> int:
    """The pid of the child holding the server end of this client socket."""
    port = sock.getsockname()[1]
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for child in listener(inst).children():
            try:
                conns = child.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                   for c in conns):
                return child.pid
        time.sleep(0.05)
    raise AssertionError("no child holds the connection")


def warm_pids(inst, user: str = USER) -> set[int]:
    out = set()
    for child in listener(inst).children():
        try:
            if " ".join(child.cmdline()).startswith(f"imapd: {user} warm"):
                out.add(child.pid)
        except psutil.Error:
            continue
    return out


def wait_warm(inst, n: int = 1, user: str = USER) -> set[int]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = warm_pids(inst, user)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"no {n} warm worker(s) for {user}:\n" + inst.logs())


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                time.sleep(0.05)
                continue
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def connect(inst, user: str = USER, password: str = PASSWORD) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(user, password)[0] == "OK"
    return c


def one_session(inst) -> int:
    """A login and a logout; the pid of the process that served them."""
    c = connect(inst)
    pid = holder(inst, c.sock)
    c.logout()
    return pid


def test_same_user_is_served_by_the_same_process(inst) -> None:
    c = connect(inst)
    first = holder(inst, c.sock)
    assert c.select("INBOX")[0] == "OK"
    c.store("1", "+FLAGS", r"(\Flagged)")
    c.logout()
    assert wait_warm(inst) == {first}
    # imaplib across the reuse: a whole session on the warm process.
    c = connect(inst)
    assert holder(inst, c.sock) == first
    typ, data = c.select("INBOX")
    assert typ == "OK" and int(data[0]) == len(MSGS)
    typ, data = c.fetch("1", "(FLAGS)")
    assert typ == "OK" and b"\\Flagged" in data[0]
    c.logout()
    assert wait_warm(inst) == {first}
    # Another account never gets it.
    b = connect(inst, BOB, BOB_PW)
    assert holder(inst, b.sock) != first
    assert b.select("INBOX")[0] == "OK"
    b.logout()
    assert first in warm_pids(inst)


def test_fresh_session_state_and_pipelined_input(inst) -> None:
    r = Raw(inst.port("imap"))
    try:
        assert r.line().startswith(b"* OK ")
        assert r.cmd(b"a", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"a OK")
        assert r.cmd(b"c", b"ENABLE CONDSTORE")[-1].startswith(b"c OK")
        assert r.cmd(b"b", b"SELECT INBOX")[-1].startswith(b"b OK [READ-WRITE]")
        assert any(b"MODSEQ" in ln for ln in r.cmd(b"k", b"FETCH 1 (FLAGS)"))
        first = holder(inst, r.sock)
        # A literal started and never finished: nothing of it may reach the next session.
        r.send(b"d APPEND INBOX {50}\r\n")
        assert r.line().startswith(b"+ ")
        r.send(b"half a message")
    finally:
        r.close()
    assert wait_warm(inst) == {first}
    r = Raw(inst.port("imap"))
    try:
        assert r.line().startswith(b"* OK ")
        # LOGIN and the next commands in one packet: the login child read them all.
        r.send(f"e LOGIN {USER} {PASSWORD}\r\nf FETCH 1 FLAGS\r\ng NOOP\r\n".encode())
        assert r.until(b"e")[-1].startswith(b"e OK")
        assert holder(inst, r.sock) == first
        # Nothing selected in the new session: FETCH is not allowed yet.
        assert r.until(b"f")[-1].startswith(b"f BAD")
        assert r.until(b"g")[-1].startswith(b"g OK")
        reply = r.cmd(b"h", b"SELECT INBOX")
        assert reply[-1].startswith(b"h OK")
        assert not any(b"half a message" in ln for ln in reply)
        # CONDSTORE is not enabled in this session: no MODSEQ in FETCH (RFC 7162 §3.1).
        reply = r.cmd(b"j", b"FETCH 1 (FLAGS)")
        assert reply[-1].startswith(b"j OK") and not any(b"MODSEQ" in ln for ln in reply)
        assert r.cmd(b"i", b"LOGOUT")[-1].startswith(b"i OK")
    finally:
        r.close()


def test_worker_expires(new_instance) -> None:
    inst = make(new_instance, reuse="1")
    first = one_session(inst)
    wait_warm(inst)
    wait_gone(first)
    c = connect(inst)
    assert holder(inst, c.sock) != first
    c.logout()


def test_off_when_zero(new_instance) -> None:
    inst = make(new_instance, reuse="0")
    first = one_session(inst)
    wait_gone(first)
    assert not warm_pids(inst)


def test_sighup_retires_idle_workers(inst) -> None:
    first = one_session(inst)
    wait_warm(inst)
    os.kill(listener(inst).pid, signal.SIGHUP)
    wait_gone(first)
    c = connect(inst)
    assert holder(inst, c.sock) != first
    c.logout()


def test_concurrent_logins_and_the_per_account_bound(inst) -> None:
    three = [connect(inst) for _ in range(3)]
    pids = {holder(inst, c.sock) for c in three}
    assert len(pids) == 3
    for c in three:
        c.logout()
    warm = wait_warm(inst, 2)
    time.sleep(0.5)                                  # a third must not join
    assert len(warm_pids(inst)) == 2 and warm <= pids
    again = [connect(inst) for _ in range(3)]
    got = [holder(inst, c.sock) for c in again]
    assert len(set(got)) == 3
    assert len(set(got) & warm) == 2                 # both warm ones used, one fresh process
    for c in again:
        typ, data = c.select("INBOX")
        assert typ == "OK" and int(data[0]) == len(MSGS)
        assert c.fetch("1:*", "(UID FLAGS)")[0] == "OK"
    for c in again:
        c.logout()


def test_starttls_connection_is_not_handed_over(inst) -> None:
    first = one_session(inst)
    wait_warm(inst)
    t = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    t.starttls(unverified())
    assert t.login(USER, PASSWORD)[0] == "OK"
    assert holder(inst, t.sock) != first
    assert t.select("INBOX")[0] == "OK"
    t.logout()


def test_idle_worker_counts_for_neither_maxperip_nor_maxdaemons(new_instance) -> None:
    inst = make(new_instance, MAXPERIP="2", MAXDAEMONS="2")
    c = connect(inst)
    c.logout()
    wait_warm(inst)
    # Two connections fit beside the idle worker; the first takes it over.
    held = [connect(inst), connect(inst, BOB, BOB_PW)]
    try:
        extra = Raw(inst.port("imap"))
        try:
            assert extra.line().startswith(b"* BYE ")
        finally:
            extra.close()
        for h in held:
            assert h.select("INBOX")[0] == "OK"
    finally:
        for h in held:
            h.logout()


def test_hibernated_session_process_is_not_reused(new_instance) -> None:
    inst = make(new_instance, hibernate="1")
    c = connect(inst)
    first = holder(inst, c.sock)
    assert c.select("INBOX")[0] == "OK"
    wait_gone(first)                 # hibernated: its process handed the connection over
    assert c.noop()[0] == "OK"       # resumed in a new child
    c.logout()
    assert first not in warm_pids(inst)
