"""Hibernation of idle IMAP sessions through real daemons (courier_imapd.hibernate).

IMAP_HIBERNATE_TIMEOUT=1: a session left without a command for a second hands
its connection to the listener and its process exits; the next command forks a
child that rebuilds the session as the client last saw it. What changed
meanwhile reaches the client as it would have awake (EXPUNGE only where RFC 3501
allows), CONDSTORE/QRESYNC state survives, a TLS session never sleeps, a
sleeping connection still counts for MAXPERIP, and garbage on the listener's
hibernation socket from a process that is not one of its sessions changes nothing.
"""

from __future__ import annotations

import imaplib
import os
import re
import socket
import struct
import time

import psutil
import pytest

from libcourier.maildir.folder import Maildir
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


@pytest.fixture
def inst(new_instance):
    inst = new_instance
    set_option(inst.etc, "imapd", "IMAP_HIBERNATE_TIMEOUT", "1")
    inst.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(inst.maildir(USER), m)
    inst.start("authdaemond", "imapd", "imapd-ssl")
    return inst


def listener_pid(inst, service: str = "imapd") -> int:
    return int(inst.layout.pidfile(service).read_text().split()[0])


def holder(inst, sock: socket.socket, service: str = "imapd") -> int | None:
    """The pid of the session child holding the server end of this client socket."""
    port = sock.getsockname()[1]
    for child in psutil.Process(listener_pid(inst, service)).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == port for c in conns):
            return child.pid
    return None


def count_log(inst, word: str) -> int:
    return len(re.findall(word, (inst.root / "var/log/imapd.log").read_text()))


def wait_asleep(inst, sock: socket.socket, before: int) -> None:
    """Until the session is hibernated: no child holds it, the log says so."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if count_log(inst, "HIBERNATE,") > before and holder(inst, sock) is None:
            return
        time.sleep(0.1)
    raise AssertionError("the session did not hibernate:\n" + inst.logs())


def login_select(inst, *extra: bytes) -> Raw:
    r = Raw(inst.port("imap"))
    assert r.line().startswith(b"* OK ")
    assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    for i, cmd in enumerate(extra):
        tag = f"e{i}".encode()
        assert r.cmd(tag, cmd)[-1].startswith(tag + b" OK"), cmd
    return r


def sleep_now(inst, r: Raw) -> None:
    before = count_log(inst, "HIBERNATE,")
    pid = holder(inst, r.sock)
    assert pid is not None
    wait_asleep(inst, r.sock, before)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def other(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    c.login(USER, PASSWORD)
    c.select("INBOX")
    return c


def test_sleeping_session_sees_expunge_delivery_and_flags(inst) -> None:
    r = login_select(inst, b"SELECT INBOX", b"FETCH 1:* (UID FLAGS)")
    uids = [int(x) for x in re.findall(rb"UID (\d+)", b"".join(r.cmd(b"f", b"FETCH 1:* UID")))]
    assert len(uids) == 3
    sleep_now(inst, r)
    o = other(inst)
    o.store("2", "+FLAGS", "\\Deleted")
    o.expunge()
    o.store("1", "+FLAGS", "\\Flagged")
    o.logout()
    deliver(inst.maildir(USER), b"From: d@example.net\nSubject: four\n\nnew\n")
    started = time.monotonic()
    out = r.cmd(b"n", b"NOOP")
    took = time.monotonic() - started
    assert b"* 2 EXPUNGE\r\n" in out
    assert b"* 3 EXISTS\r\n" in out
    # \Recent stays with this session: two of its first three and the new one.
    assert b"* 3 RECENT\r\n" in out
    assert b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n" in out, out
    assert out[-1].startswith(b"n OK")
    assert took < WAIT
    # FETCH, STORE and the UID forms go on in the resumed session.
    got = b"".join(r.cmd(b"u", b"UID FETCH 1:* (UID FLAGS)"))
    assert [int(x) for x in re.findall(rb"UID (\d+)", got)][:2] == [uids[0], uids[2]]
    assert r.cmd(b"s", b"UID STORE %d +FLAGS (\\Seen)" % uids[2])[-1].startswith(b"s OK")
    body = b"".join(r.cmd(b"b", b"FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    assert b"Subject: three" in body
    # And again: asleep, woken by a command that may not expunge.
    sleep_now(inst, r)
    assert count_log(inst, "RESUME,") >= 1
    assert r.cmd(b"z", b"LOGOUT")[-1].startswith(b"z OK")
    r.close()


def test_no_expunge_during_fetch_after_waking(inst) -> None:
    r = login_select(inst, b"SELECT INBOX")
    sleep_now(inst, r)
    o = other(inst)
    o.store("1", "+FLAGS", "\\Deleted")
    o.expunge()
    o.logout()
    out = r.cmd(b"f", b"FETCH 2:3 (FLAGS)")     # RFC 3501 §7.4.1: no EXPUNGE now
    assert not any(b"EXPUNGE" in ln for ln in out), out
    assert r.cmd(b"s", b"SEARCH ALL")[0] == b"* SEARCH 1 2 3\r\n"
    out = r.cmd(b"n", b"NOOP")
    assert b"* 1 EXPUNGE\r\n" in out, out
    assert r.cmd(b"c", b"SEARCH ALL")[0] == b"* SEARCH 1 2\r\n"
    r.close()


def test_condstore_and_qresync_survive(inst) -> None:
    r = login_select(inst, b"ENABLE QRESYNC")
    sel = r.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    top = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(sel)).group(1))
    uids = [int(x) for x in re.findall(rb"UID (\d+)", b"".join(r.cmd(b"f", b"FETCH 1:* UID")))]
    sleep_now(inst, r)
    o = other(inst)
    o.store("3", "+FLAGS", "\\Deleted")
    o.expunge()
    o.store("1", "+FLAGS", "\\Answered")
    o.logout()
    out = r.cmd(b"n", b"NOOP")
    text = b"".join(out)
    assert b"* VANISHED %d\r\n" % uids[2] in out, out
    m = re.search(rb"\* 1 FETCH \(FLAGS \(\\Answered \\Recent\) UID %d MODSEQ \((\d+)\)\)"
                  % uids[0], text)
    assert m and int(m.group(1)) > top, out
    # CHANGEDSINCE still answers from the mod-sequences after waking.
    sleep_now(inst, r)
    got = b"".join(r.cmd(b"c", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % top))
    assert b"UID %d" % uids[0] in got and b"UID %d " % uids[1] not in got, got
    r.close()


def test_tls_session_never_hibernates(inst) -> None:
    r = Raw(inst.port("imaps"), tls=True)
    assert r.line().startswith(b"* OK ")
    assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    pid = holder(inst, r.sock, "imapd-ssl")
    assert pid is not None
    time.sleep(3)       # three hibernation timeouts: nothing may happen
    assert holder(inst, r.sock, "imapd-ssl") == pid
    assert count_log(inst, "HIBERNATE,") == 0
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()


def test_starttls_session_never_hibernates(inst) -> None:
    r = Raw(inst.port("imap"))
    assert r.line().startswith(b"* OK ")
    assert r.cmd(b"t", b"STARTTLS")[-1].startswith(b"t OK")
    r.sock = unverified().wrap_socket(r.sock, server_hostname="mx.test")
    r.file = r.sock.makefile("rb")
    assert r.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
    pid = holder(inst, r.sock)
    time.sleep(3)
    assert holder(inst, r.sock) == pid
    assert count_log(inst, "HIBERNATE,") == 0
    r.close()


def test_maxperip_counts_sleeping_connections(new_instance) -> None:
    inst = new_instance
    set_option(inst.etc, "imapd", "IMAP_HIBERNATE_TIMEOUT", "1")
    set_option(inst.etc, "imapd", "MAXPERIP", "2")
    inst.adduser(USER, PASSWORD)
    inst.start("authdaemond", "imapd")
    held = [login_select(inst, b"SELECT INBOX") for _ in range(2)]
    deadline = time.monotonic() + WAIT
    while count_log(inst, "HIBERNATE,") < 2 or any(holder(inst, r.sock) for r in held):
        assert time.monotonic() < deadline, inst.logs()
        time.sleep(0.1)
    extra = Raw(inst.port("imap"))
    assert extra.line().startswith(b"* BYE ")
    extra.close()
    # One leaves: its slot is free again (the listener saw the hangup).
    held[0].close()
    deadline = time.monotonic() + WAIT
    while True:
        r = Raw(inst.port("imap"))
        if r.line().startswith(b"* OK "):
            break
        r.close()
        assert time.monotonic() < deadline, "the slot of a closed sleeping connection stays taken"
        time.sleep(0.1)
    r.close()
    assert held[1].cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    held[1].close()


def test_garbage_on_the_hibernation_socket_changes_nothing(inst) -> None:
    path = inst.layout.rundir / "imapd.hibernate"
    assert path.is_socket()
    r = login_select(inst, b"SELECT INBOX")
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:        # a process that is not one of the listener's sessions
        code = 1
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(str(path))
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", a.fileno()))]
            s.sendmsg([b"CIHB\x01garbage" * 100], fds)
            s.sendmsg([os.urandom(3000)])
            s.sendmsg([b""], fds)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    a.close()
    b.settimeout(IO_TIMEOUT)
    assert b.recv(10) == b""            # the listener closed the descriptor it was sent
    b.close()
    deadline = time.monotonic() + WAIT
    while "not a session of this listener" not in (inst.root / "var/log/imapd.log").read_text():
        assert time.monotonic() < deadline, inst.logs()
        time.sleep(0.1)
    # The listener is fine: a sleeping session still wakes, a new one logs in.
    sleep_now(inst, r)
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    r.close()
    c = other(inst)
    assert c.noop()[0] == "OK"
    c.logout()


def test_imaplib_across_hibernation(inst) -> None:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    c.login(USER, PASSWORD)
    assert c.select("INBOX") == ("OK", [b"3"])
    before = count_log(inst, "HIBERNATE,")
    wait_asleep(inst, c.sock, before)
    typ, data = c.uid("SEARCH", None, "ALL")
    assert typ == "OK" and len(data[0].split()) == 3
    assert c.store("1", "+FLAGS", "\\Seen")[0] == "OK"
    typ, data = c.fetch("1:3", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"Subject: one" in data[0][1]
    wait_asleep(inst, c.sock, before + 1)
    assert c.logout()[0] == "BYE"
    flags = sorted(m.flags for m in Maildir(inst.maildir(USER)).scan().messages)
    assert flags == ["", "", "S"]


def test_sleeping_session_in_authenticated_state(inst) -> None:
    r = login_select(inst, b"ENABLE UTF8=ACCEPT")
    sleep_now(inst, r)
    out = r.cmd(b"c", b'CREATE "INBOX.Caf\xc3\xa9"')
    assert out[-1].startswith(b"c OK"), out
    assert any(b'"INBOX.Caf\xc3\xa9"' in ln for ln in r.cmd(b"l", b'LIST "" "*"'))  # UTF-8 kept
    r.close()


def test_unchanged_folder_resumes_from_its_snapshot_and_a_changed_one_is_rebuilt(inst) -> None:
    """A warm SELECT answers from the folder snapshot; a session that saw nothing
    else resumes from that very file while the folder is unchanged (no scan), and
    rebuilds from its blob once something changed."""
    first = login_select(inst, b"SELECT INBOX")      # the cold SELECT stores the snapshot
    first.cmd(b"z", b"LOGOUT")
    first.close()
    r = login_select(inst, b"SELECT INBOX")          # warm: from the snapshot
    sleep_now(inst, r)
    assert r.cmd(b"n", b"NOOP") == [b"n OK NOOP completed\r\n"]
    log = (inst.root / "var/log/imapd.log").read_text()
    assert re.findall(r"RESUME, .*folder=INBOX \((\w+)\)", log) == ["snapshot"], log[-2000:]
    sleep_now(inst, r)
    deliver(inst.maildir(USER), b"From: e@example.net\nSubject: five\n\nnew\n")
    out = r.cmd(b"n", b"NOOP")
    assert b"* 4 EXISTS\r\n" in out, out
    log = (inst.root / "var/log/imapd.log").read_text()
    assert re.findall(r"RESUME, .*folder=INBOX \((\w+)\)", log)[-1] == "rebuilt"
    got = b"".join(r.cmd(b"f", b"FETCH 4 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"Subject: five" in got
    r.close()
