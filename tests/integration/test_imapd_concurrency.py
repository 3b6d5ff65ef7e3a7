"""Several sessions and deliveries on one folder (issue 5), checked against RFC 3501's rules:
§7.4.1 (no untagged EXPUNGE while responding to FETCH, STORE or SEARCH, nor when no
command is in progress), §5.5, §7.3.1 (EXISTS never shrinks a client's view), and
RFC 2180 §4.1.2 for a message another session expunged: we keep it in the session's
view and answer a FETCH/STORE that names it with the data of the other messages and a
tagged NO (COPY/MOVE: NO, nothing copied); its EXPUNGE comes on the next command that
may carry one (NOOP, CHECK, IDLE, EXPUNGE). IMAP_SEED=n runs the random test with
another seed; IMAP_TRACE=1 prints every exchange.

Each session is followed by a client model built only from the untagged responses it
got (sequence number -> UID, UID -> flags), as a real client keeps it; after a NOOP the
model must equal the folder as an independent EXAMINE session sees it.
"""

from __future__ import annotations

import os
import random
import re
import time

import pytest

from tests.integration.test_imapd import IO_TIMEOUT, PASSWORD, USER, Raw, deliver

NO_EXPUNGE = {"FETCH", "STORE", "SEARCH"}      # §7.4.1, the non-UID commands
_FETCH = re.compile(rb"\* (\d+) FETCH \((.*)\)\r\n\Z")
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def msg(n: int) -> bytes:
    return f"From: x{n}@example.net\nSubject: m{n}\n\nbody {n}\n".encode()


def deliver_plain(maildir, data: bytes, n: int) -> None:
    """A delivery whose name has no ,S= (as some MDAs write): sizes come from the file."""
    st = maildir.stat()
    base = f"{1800000000 + n}.M{n}P{os.getpid()}.other.test"
    tmp = maildir / "tmp" / base
    tmp.write_bytes(data)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, maildir / "new" / base)


class Client:
    """A session and the client's view of its folder, kept from untagged responses."""

    def __init__(self, inst, name: str, examine: bool = False):
        self.name = name
        self.r = Raw(inst.port("imap"))
        self.n = 0
        assert self.r.line().startswith(b"* OK")
        self.uids: list[int | None] = []
        self.flags: dict[int, frozenset[bytes]] = {}
        self.seen: dict[str, int] = {}      # what the model saw, by kind
        self.run("LOGIN", f"LOGIN {USER} {PASSWORD}".encode())
        self.run("SELECT", b"EXAMINE INBOX" if examine else b"SELECT INBOX")
        self.catch_up()

    def run(self, verb: str, text: bytes) -> tuple[bytes, list[bytes]]:
        """Send one command; apply its untagged responses to the model, checking the
        RFC's rules; (tagged status, untagged lines)."""
        self.n += 1
        tag = f"{self.name}{self.n}".encode()
        assert self.pending() == b"", f"{self.name}: sent with no command in progress"
        lines = self.r.cmd(tag, text)
        if os.environ.get("IMAP_TRACE"):
            print(self.name, text, b"".join(lines).decode(errors="replace"))
        for ln in lines[:-1]:
            self.apply(verb, ln)
        status = lines[-1][len(tag) + 1:].split(b" ", 1)[0]
        assert status in (b"OK", b"NO"), (text, lines[-1])
        self.seen[status.decode()] = self.seen.get(status.decode(), 0) + 1
        return status, lines[:-1]

    def idle_until_exists(self, action) -> None:
        """IDLE, run action (which delivers), read until the new EXISTS, DONE."""
        self.n += 1
        tag = f"{self.name}{self.n}".encode()
        assert self.pending() == b"", f"{self.name}: sent with no command in progress"
        self.r.send(tag + b" IDLE\r\n")
        while not (ln := self.r.line()).startswith(b"+ "):
            self.apply("IDLE", ln)
        before = len(self.uids)
        action()
        while len(self.uids) == before:          # bounded by the socket's timeout
            self.apply("IDLE", self.r.line())
        self.r.send(b"DONE\r\n")
        lines = self.r.until(tag)
        for ln in lines[:-1]:
            self.apply("IDLE", ln)
        assert lines[-1].startswith(tag + b" OK"), lines[-1]

    def pending(self) -> bytes:
        """Bytes the server sent that no command asked for (§7.4.1: none may come)."""
        self.r.sock.settimeout(0.0)
        try:
            return self.r.file.peek(1) or b""
        except (BlockingIOError, TimeoutError):
            return b""
        finally:
            self.r.sock.settimeout(IO_TIMEOUT)

    def apply(self, verb: str, ln: bytes) -> None:
        if m := re.fullmatch(rb"\* (\d+) EXPUNGE\r\n", ln):
            assert verb not in NO_EXPUNGE, f"{self.name}: EXPUNGE during {verb}: {ln!r}"
            n = int(m.group(1))
            assert 1 <= n <= len(self.uids), (ln, self.uids)
            uid = self.uids.pop(n - 1)
            kind = "EXPUNGE" if verb == "EXPUNGE" else "EXPUNGE-other"
            self.seen[kind] = self.seen.get(kind, 0) + 1
            if uid is not None:
                self.flags.pop(uid, None)
        elif m := re.fullmatch(rb"\* (\d+) EXISTS\r\n", ln):
            n = int(m.group(1))
            assert n >= len(self.uids), f"{self.name}: EXISTS {n} below {len(self.uids)}"
            self.uids.extend([None] * (n - len(self.uids)))
        elif m := _FETCH.fullmatch(ln):
            n = int(m.group(1))
            assert 1 <= n <= len(self.uids), (ln, len(self.uids))
            body = m.group(2)
            if u := _UID.search(body):
                uid = int(u.group(1))
                assert self.uids[n - 1] in (None, uid), (ln, self.uids[n - 1])
                self.uids[n - 1] = uid
            uid = self.uids[n - 1]
            if (f := _FLAGS.search(body)) and uid is not None:
                if verb in ("NOOP", "CHECK", "IDLE", "EXPUNGE"):
                    self.seen["FLAGS"] = self.seen.get("FLAGS", 0) + 1
                self.flags[uid] = frozenset(f.group(1).split()) - {b"\\Recent"}

    def catch_up(self) -> None:
        """Learn UIDs and flags of messages only known by an EXISTS."""
        if None in self.uids:
            self.run("FETCH", b"FETCH %d:* (UID FLAGS)" % (self.uids.index(None) + 1))

    def close(self) -> None:
        self.r.close()


def truth(oracle: Client) -> tuple[list[int], dict[int, frozenset[bytes]]]:
    """The folder as a fresh look sees it: NOOP, then every UID and its flags."""
    oracle.run("NOOP", b"NOOP")
    oracle.catch_up()
    status, lines = oracle.run("FETCH", b"FETCH 1:* (UID FLAGS)")
    assert status == b"OK" or not oracle.uids
    return list(oracle.uids), dict(oracle.flags)   # type: ignore[arg-type]


def check_against(c: Client, oracle: Client) -> None:
    c.run("NOOP", b"NOOP")
    c.catch_up()
    uids, flags = truth(oracle)
    assert c.uids == uids, f"{c.name}: {c.uids} != {uids}"
    for uid in uids:
        assert c.flags.get(uid) == flags[uid], (c.name, uid, c.flags.get(uid), flags[uid])


@pytest.fixture
def box(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    for i in range(6):
        deliver(inst.maildir(USER), msg(i))
    inst.start("authdaemond", "imapd")
    return inst


def test_random_interleavings_follow_the_rfc(box) -> None:
    rng = random.Random(int(os.environ.get("IMAP_SEED", "20261127")))   # fixed unless asked
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    delivered = 6
    try:
        # op:      deliver store uidstore expunge fetch body search uidfetch check verify idle
        weights = (3,      5,    1,       2,      2,    1,   1,     1,       1,    2,     1)
        for _step in range(200):
            c = rng.choice((a, b))
            op = rng.choices(range(11), weights)[0]
            n = len(c.uids)
            seq = rng.randint(1, n) if n else None
            if op == 0:
                if delivered % 2:
                    deliver(box.maildir(USER), msg(delivered))
                else:
                    deliver_plain(box.maildir(USER), msg(delivered), delivered)
                delivered += 1
            elif op == 1 and seq:
                flag = rng.choice((b"\\Deleted", b"\\Deleted", b"\\Seen", b"\\Flagged", b"$Label1"))
                sign = rng.choice((b"+", b"+", b"-"))
                c.run("STORE", b"STORE %d %sFLAGS (%s)" % (seq, sign, flag))
            elif op == 2 and seq and c.uids[seq - 1] is not None:
                c.run("UID STORE", b"UID STORE %d +FLAGS (\\Answered)" % c.uids[seq - 1])
            elif op == 3:
                c.run("EXPUNGE", b"EXPUNGE")
            elif op == 4 and seq:
                hi = rng.randint(seq, n)
                c.run("FETCH", b"FETCH %d:%d (UID FLAGS)" % (seq, hi))
            elif op == 5 and seq:
                c.run("FETCH", b"FETCH %d (UID BODY.PEEK[])" % seq)
            elif op == 6:
                c.run("SEARCH", rng.choice((b"SEARCH ALL", b"SEARCH DELETED", b"SEARCH TEXT body")))
            elif op == 7:
                c.run("UID FETCH", b"UID FETCH 1:* (FLAGS RFC822.SIZE)")
            elif op == 8:
                c.run("CHECK", b"CHECK")
            elif op == 10:
                c.idle_until_exists(lambda k=delivered: deliver(box.maildir(USER), msg(k)))
                delivered += 1
            else:
                check_against(c, oracle)
            c.catch_up()
        for c in (a, b):
            check_against(c, oracle)
        seen = {k: a.seen.get(k, 0) + b.seen.get(k, 0)
                for k in ("OK", "NO", "EXPUNGE", "EXPUNGE-other", "FLAGS")}
        print(f"random run: {delivered - 6} deliveries, {seen}")
        # The run is not vacuous: others' expunges and flag changes were reported
        # (commands on messages expunged elsewhere: test_other_session_expunge_...).
        assert seen["EXPUNGE-other"] >= 3 and seen["FLAGS"] >= 5, seen
        for c in (a, b):
            c.run("LOGOUT", b"LOGOUT")
    finally:
        for c in (a, b, oracle):
            c.close()


def test_other_session_expunge_while_fetching(box) -> None:
    """RFC 2180 §4.1: B expunges what A still shows. A's FETCH, STORE, SEARCH, COPY on
    it get data for the rest and a tagged NO (or OK), never an EXPUNGE and never a
    broken session; A's NOOP then says EXPUNGE."""
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    try:
        gone = a.uids[1]
        b.run("STORE", b"STORE 2 +FLAGS (\\Deleted)")
        b.run("EXPUNGE", b"EXPUNGE")
        status, lines = a.run("FETCH", b"FETCH 2 (BODY.PEEK[])")
        assert status == b"NO" and not any(b"BODY" in ln for ln in lines)
        status, lines = a.run("FETCH", b"FETCH 1:3 (UID)")
        assert status == b"NO" and len(lines) == 2     # 1 and 3, not the expunged 2
        status, _ = a.run("STORE", b"STORE 2 +FLAGS (\\Seen)")
        assert status == b"NO"
        for verb, text in (("SEARCH", b"SEARCH ALL"), ("SEARCH", b"SEARCH TEXT body"),
                           ("SEARCH", b"SEARCH HEADER Subject m1"),
                           ("SORT", b"SORT (SUBJECT) UTF-8 ALL"),
                           ("THREAD", b"THREAD ORDEREDSUBJECT UTF-8 ALL"),
                           ("COPY", b"COPY 2 INBOX"), ("UID FETCH", b"UID FETCH 1:* (UID)")):
            status, _ = a.run(verb, text)
            assert status in (b"OK", b"NO"), text
        assert gone in a.uids
        status, lines = a.run("NOOP", b"NOOP")
        assert b"* 2 EXPUNGE\r\n" in lines and gone not in a.uids
        check_against(a, oracle)
        check_against(b, oracle)
    finally:
        for c in (a, b, oracle):
            c.close()


def test_idle_sees_delivery_flags_and_expunge(box) -> None:
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    try:
        a.r.send(b"i IDLE\r\n")
        assert a.r.line().startswith(b"+ ")
        waits = []
        for k in range(3):
            t0 = time.monotonic()
            deliver(box.maildir(USER), msg(100 + k))
            ln = a.r.line()
            while b"RECENT" in ln or b"FETCH" in ln:    # what came before the EXISTS
                a.apply("IDLE", ln)
                ln = a.r.line()
            waits.append(time.monotonic() - t0)
            assert re.fullmatch(rb"\* \d+ EXISTS\r\n", ln), ln
            a.apply("IDLE", ln)
        # Another session's flag change and expunge also show while idling.
        b.run("NOOP", b"NOOP")
        b.catch_up()
        b.run("STORE", b"STORE 1 +FLAGS (\\Flagged)")
        b.run("STORE", b"STORE 3 +FLAGS (\\Deleted)")
        b.run("EXPUNGE", b"EXPUNGE")
        got: list[bytes] = []
        deadline = time.monotonic() + IO_TIMEOUT
        while not any(ln.endswith(b" EXPUNGE\r\n") for ln in got) and time.monotonic() < deadline:
            ln = a.r.line()
            got.append(ln)
            a.apply("IDLE", ln)
        assert any(b"\\Flagged" in ln for ln in got), got
        a.r.send(b"DONE\r\n")
        lines = a.r.until(b"i")
        for ln in lines[:-1]:
            a.apply("IDLE", ln)
        assert lines[-1].startswith(b"i OK")
        a.catch_up()
        check_against(a, oracle)
        print(f"IDLE: EXISTS after delivery in {', '.join(f'{w * 1000:.0f} ms' for w in waits)}")
        assert sorted(waits)[1] < 1.0, waits     # the median: within a second
    finally:
        for c in (a, b, oracle):
            c.close()


def test_other_session_flag_change_is_no_expunge(box) -> None:
    """B's flag change renames the message file under A's view. A must follow the
    rename: FETCH of the body, SEARCH TEXT and COPY still find the message, and A's
    next NOOP reports the new flags, not an EXPUNGE (it reported both before)."""
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    try:
        for k, seq in enumerate((1, 2, 3)):
            b.run("STORE", b"STORE %d +FLAGS (\\Flagged)" % seq)
            if k == 0:
                status, lines = a.run("FETCH", b"FETCH 1 (BODY.PEEK[])")
                assert status == b"OK" and b"BODY[] {" in b"".join(lines), lines
            elif k == 1:
                status, lines = a.run("SEARCH", b"SEARCH TEXT \"body 1\"")
                assert (status, lines) == (b"OK", [b"* SEARCH 2\r\n"])
            else:
                status, lines = a.run("COPY", b"COPY 3 INBOX")
                assert status == b"OK", lines
        status, lines = a.run("NOOP", b"NOOP")
        assert not any(ln.endswith(b" EXPUNGE\r\n") for ln in lines), lines
        assert sum(b"\\Flagged" in ln for ln in lines) == 3, lines
        a.catch_up()
        check_against(a, oracle)
    finally:
        for c in (a, b, oracle):
            c.close()


def test_close_move_uid_expunge_with_messages_expunged_elsewhere(box) -> None:
    """A holds \\Deleted messages B already expunged (ghosts): UID EXPUNGE, MOVE and
    CLOSE still work and the session goes on."""
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    try:
        a.run("STORE", b"STORE 1:3 +FLAGS (\\Deleted)")
        b.run("NOOP", b"NOOP")
        b.run("EXPUNGE", b"EXPUNGE")            # removes 1:3 under A
        assert len(b.uids) == 3
        status, lines = a.run("UID EXPUNGE", b"UID EXPUNGE %d" % a.uids[0])
        assert status == b"OK" and lines == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n",
                                              b"* 1 EXPUNGE\r\n"], lines
        assert len(a.uids) == 3
        a.run("STORE", b"STORE 1 +FLAGS (\\Deleted)")
        b.run("EXPUNGE", b"EXPUNGE")            # and the next one
        a.run("CREATE", b"CREATE INBOX.Archive")
        status, lines = a.run("MOVE", b"MOVE 1:2 INBOX.Archive")
        assert status == b"NO", lines           # 1 is gone: all or nothing (§6.4.7)
        status, lines = a.run("MOVE", b"MOVE 2 INBOX.Archive")
        assert status == b"OK" and lines[-1] == b"* 2 EXPUNGE\r\n", lines
        b.run("STORE", b"STORE 1 +FLAGS (\\Deleted)")
        status, _ = a.run("CLOSE", b"CLOSE")
        assert status == b"OK"
        a.uids, a.flags = [], {}
        a.run("SELECT", b"SELECT INBOX")
        a.catch_up()
        check_against(a, oracle)
        check_against(b, oracle)
        assert len(a.uids) == 1                 # of 6: 3 + 1 expunged by B, 1 moved by A
    finally:
        for c in (a, b, oracle):
            c.close()


def test_noop_reports_new_mail_with_recent_once(box) -> None:
    """§6.4.1/§7.3: new mail shows on NOOP as EXISTS and RECENT; \\Recent goes to one
    session only (§2.3.2), the first to see the message."""
    a, b = Client(box, "A"), Client(box, "B")
    try:
        for k in range(2):
            deliver(box.maildir(USER), msg(50 + k))
        _, lines = a.run("NOOP", b"NOOP")
        assert lines[-2:] == [b"* 8 EXISTS\r\n", b"* 8 RECENT\r\n"], lines   # 6 at SELECT + 2
        _, lines = b.run("NOOP", b"NOOP")
        assert lines[-2:] == [b"* 8 EXISTS\r\n", b"* 0 RECENT\r\n"], lines
        a.catch_up()
        b.catch_up()
        assert a.uids == b.uids == list(range(1, 9))
    finally:
        for c in (a, b):
            c.close()


def test_expunge_racing_a_long_fetch(box) -> None:
    """B expunges messages while A streams them with FETCH BODY[]: every literal A gets
    is whole and right (an open file keeps its bytes after the unlink), the FETCH ends
    OK or NO, no EXPUNGE comes inside it, and A's view then matches the folder."""
    import threading

    big = {}
    for k in range(30):
        body = f"Subject: big {k}\n\n".encode() + (f"line {k} ".encode() * 7 + b"\n") * 3000
        deliver(box.maildir(USER), body)
        big[k] = body.replace(b"\n", b"\r\n")
    a, b = Client(box, "A"), Client(box, "B")
    oracle = Client(box, "O", examine=True)
    bodies = {i + 1: None for i in range(6)} | {7 + k: big[k] for k in range(30)}   # uid -> wire
    errors: list[BaseException] = []
    outcomes: list[str] = []

    def expunger() -> None:
        try:
            for _ in range(10):
                b.run("NOOP", b"NOOP")
                if len(b.uids) > 4:
                    b.run("STORE", b"STORE 2:3 +FLAGS (\\Deleted)")
                    b.run("EXPUNGE", b"EXPUNGE")
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    try:
        t = threading.Thread(target=expunger, daemon=True)
        t.start()
        for rnd in range(4):
            tag = b"F%d" % rnd
            a.r.send(tag + b" FETCH 1:* (UID BODY.PEEK[])\r\n")
            while True:
                ln = a.r.line()
                if ln.startswith(tag + b" "):
                    assert ln.split()[1] in (b"OK", b"NO"), ln
                    outcomes.append(ln.split()[1].decode())
                    break
                assert not ln.endswith(b" EXPUNGE\r\n"), ln
                m = re.fullmatch(rb"\* (\d+) FETCH \(UID (\d+) BODY\[\] \{(\d+)\}\r\n", ln)
                assert m, ln[:200]
                data = a.r.file.read(int(m.group(3)))
                assert a.r.line() == b")\r\n"
                want = bodies[int(m.group(2))]
                assert want is None or data == want, int(m.group(2))
                a.apply("FETCH", b"* %s FETCH (UID %s)\r\n" % (m.group(1), m.group(2)))
        t.join(IO_TIMEOUT * 6)
        assert not t.is_alive() and not errors, errors
        print(f"FETCH 1:* BODY[] while expunging: {outcomes}, B expunged {b.seen.get('EXPUNGE', 0)}")
        check_against(a, oracle)
        check_against(b, oracle)
    finally:
        for c in (a, b, oracle):
            c.close()


def test_selected_folder_deleted_and_created_again_ends_with_bye(box) -> None:
    """B deletes the folder A has selected and creates it again: a new UIDVALIDITY,
    which a selected session cannot announce, so A's next update is BYE (RFC 2180
    §3.3). Before, A went on with its old UIDs and took new messages for old ones."""
    b = Client(box, "B")
    try:
        b.run("CREATE", b"CREATE INBOX.x")
        b.run("APPEND", b"APPEND INBOX.x {3+}\r\nx\r\n")
        a = Raw(box.port("imap"))
        a.line()
        assert a.cmd(b"l", f"LOGIN {USER} {PASSWORD}".encode())[-1].startswith(b"l OK")
        assert a.cmd(b"s", b"SELECT INBOX.x")[-1].startswith(b"s OK")
        assert b.run("DELETE", b"DELETE INBOX.x")[0] == b"OK"
        # UIDVALIDITY is the clock's second (as Courier's): wait for the next one so the
        # check does not hang on inode reuse (within one second only the directory's
        # identity tells the folders apart, and a freed inode may come back).
        t0 = int(time.time())
        while int(time.time()) == t0:
            time.sleep(0.05)
        assert b.run("CREATE", b"CREATE INBOX.x")[0] == b"OK"
        b.run("APPEND", b"APPEND INBOX.x {3+}\r\ny\r\n")
        a.send(b"n NOOP\r\n")
        assert a.line().startswith(b"* BYE [ALERT] The selected mailbox was deleted")
        with pytest.raises((EOFError, ConnectionError)):
            a.line()
        a.close()
    finally:
        b.close()
