"""IMAP extensions: CAPABILITY as Courier builds it, ENABLE (RFC 5161) with UTF8=ACCEPT
(RFC 6855), UNSELECT (RFC 3691), ID (RFC 2971), QUOTA (RFC 9208), SPECIAL-USE
(RFC 6154), IMAP_MOVE_EXPUNGE_TO_TRASH and IMAP_EMPTYTRASH. Core parsing, then whole
sessions over a socketpair against a real Maildir (authd replaced by a function)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from courier_imapd import login
from courier_imapd.config import capability_line, load_config
from courier_imapd.core import (
    NEED_DATA,
    Append,
    BadCommand,
    Enable,
    Id,
    ImapConnection,
    ListMailboxes,
    MailboxCommand,
    Quota,
    State,
    Unselect,
    parse_command,
)
from courier_imapd.session import Session

MSG = b"From: a@example.com\nSubject: hi\n\nline 1\n"


# -- the core ----------------------------------------------------------------------------

def parse(line: bytes, state: State = State.AUTHENTICATED):
    return parse_command([(line, None)], state)


def test_enable_unselect_parse() -> None:
    assert parse(b"a ENABLE UTF8=ACCEPT condstore") == Enable("a", ("UTF8=ACCEPT", "CONDSTORE"))
    assert isinstance(parse(b"a ENABLE"), BadCommand)
    # RFC 5161 §3.1: only in the authenticated state, not with a mailbox selected.
    assert parse(b"a ENABLE UTF8=ACCEPT", State.SELECTED).text.startswith("ENABLE is not valid")
    assert parse(b"u UNSELECT", State.SELECTED) == Unselect("u")
    assert isinstance(parse(b"u UNSELECT"), BadCommand)
    assert isinstance(parse(b"u UNSELECT x", State.SELECTED), BadCommand)


def test_id_parse_and_limits() -> None:
    assert parse(b"i ID NIL", State.NOT_AUTHENTICATED) == Id("i", None)
    assert parse(b'i ID ("name" "mutt" "version" NIL)') == \
        Id("i", (("name", "mutt"), ("version", None)))
    assert parse(b"i ID ()") == Id("i", ())
    pairs = b" ".join(b'"f%d" "v"' % n for n in range(31))
    assert "30" in parse(b"i ID (" + pairs + b")").text
    assert "too long" in parse(b'i ID ("' + b"f" * 31 + b'" "v")').text
    assert "too long" in parse(b'i ID ("f" "' + b"v" * 1025 + b'")').text
    assert isinstance(parse(b"i ID (name mutt)"), BadCommand)       # strings, not atoms
    assert isinstance(parse(b'i ID ("name")'), BadCommand)


def test_quota_parse() -> None:
    assert parse(b'q GETQUOTA ""') == Quota("q", "GETQUOTA", "")
    assert parse(b"q GETQUOTA ROOT") == Quota("q", "GETQUOTA", "ROOT")
    assert parse(b"q GETQUOTAROOT inbox") == Quota("q", "GETQUOTAROOT", "INBOX")
    assert parse(b"q SETQUOTA ROOT (STORAGE 512 MESSAGE 10)") == Quota("q", "SETQUOTA", "ROOT")
    assert isinstance(parse(b"q SETQUOTA ROOT (STORAGE x)"), BadCommand)
    assert isinstance(parse(b"q GETQUOTAROOT"), BadCommand)


def test_list_extended_options_parse() -> None:
    assert parse(b'l LIST (SPECIAL-USE) "" *') == \
        ListMailboxes("l", "", "*", False, ("SPECIAL-USE",), (), ("*",), (), True)
    assert parse(b'l LIST "" % RETURN (SPECIAL-USE CHILDREN)') == \
        ListMailboxes("l", "", "%", False, (), ("SPECIAL-USE", "CHILDREN"), ("%",), (), True)
    assert parse(b'l LIST "" (INBOX "INBOX.%") RETURN (STATUS (MESSAGES UIDNEXT))') == \
        ListMailboxes("l", "", "INBOX", False, (), ("STATUS",), ("INBOX", "INBOX.%"),
                      ("MESSAGES", "UIDNEXT"), True)
    assert not parse(b'l LIST "" *').extended
    assert "unsupported LIST option FOO" in parse(b'l LIST (FOO) "" *').text
    assert "RECURSIVEMATCH alone" in parse(b'l LIST (RECURSIVEMATCH) "" *').text
    assert isinstance(parse(b'l LIST "" * RETURN (STATUS (BOGUS))'), BadCommand)
    assert isinstance(parse(b'l LIST "" ()'), BadCommand)
    assert isinstance(parse(b'l LSUB (SPECIAL-USE) "" *'), BadCommand)


def test_append_utf8_literal8() -> None:
    # RFC 6855 §4: APPEND ... UTF8 (~{n}\r\n...), through the connection with LITERAL+.
    conn = ImapConnection(State.AUTHENTICATED)
    conn.receive_data(b"a APPEND INBOX (\\Seen) UTF8 (~{6+}\r\nSubj\xc3\xa4)\r\nb NOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, Append) and ev.message == b"Subj\xc3\xa4" and ev.flags == ("\\Seen",)
    assert parse_command([(b"b NOOP", None)], State.AUTHENTICATED) == conn.next_event()
    assert conn.next_event() is NEED_DATA


# -- CAPABILITY (FORMATS.md §2.1) --------------------------------------------------------

def config(tmp_path: Path, extra: str = ""):
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "imapd").write_text("PORT=143\n" + extra)
    return load_config(etc, "imapd")


def test_capability_courier_order_and_only_implemented(tmp_path: Path) -> None:
    cfg, warnings = config(tmp_path, 'IMAP_CAPABILITY="IMAP4rev1 UIDPLUS ACL ESEARCH QUOTA IDLE"\n'
                                     "IMAP_MOVE_EXPUNGE_TO_TRASH=1\nIMAP_ID_FIELDS=3\n")
    # Words we do not implement are dropped and reported; then Courier's order:
    # the list, ID, (STARTTLS), XMAGICTRASH, ENABLE UTF8=ACCEPT.
    assert capability_line(cfg, False) == \
        "IMAP4rev1 UIDPLUS QUOTA IDLE ID XMAGICTRASH ENABLE UTF8=ACCEPT"
    assert any("ACL ESEARCH" in w for w in warnings)
    cfg, warnings = config(tmp_path, 'IMAP_CAPABILITY="IMAP4rev1 ENABLE ID"\nIMAP_ID_FIELDS=\n')
    assert capability_line(cfg, True) == "IMAP4rev1 ENABLE ID UTF8=ACCEPT"   # each word once
    assert cfg.id_fields is None and not warnings


def test_shipped_default_capability(tmp_path: Path) -> None:
    cfg, warnings = config(tmp_path)
    words = capability_line(cfg, False).split()
    for w in ("IMAP4rev1", "UIDPLUS", "CHILDREN", "NAMESPACE", "IDLE", "LITERAL+", "MOVE",
              "UNSELECT", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", "SPECIAL-USE",
              "ID", "ENABLE", "UTF8=ACCEPT"):
        assert w in words
    assert not warnings


@pytest.mark.parametrize("bad", ["IMAP_SPECIALUSE_FOLDERS=Sent", "IMAP_SPECIALUSE_FOLDERS=Spam=Junk",
                                 "IMAP_SPECIALUSE_FOLDERS=Trash=Bin", "IMAP_TRASHFOLDERNAME=a.b",
                                 "IMAP_EMPTYTRASH=x"])
def test_bad_settings_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(Exception, match=bad.split("=")[0]):
        config(tmp_path, bad + "\n")


# -- whole sessions ------------------------------------------------------------------------

class Pair:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.peer_ip, self.peer_port, self.tls = "127.0.0.1", 4242, False

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        return self.sock.recv(n)

    def starttls(self, ctx) -> None:
        raise OSError("no TLS here")


def run_server(sock: socket.socket, root: Path, etc: Path) -> None:
    cfg, _ = load_config(etc, "imapd")
    conn, core, counters = Pair(sock), ImapConnection(), login.Counters()

    def authenticate(user: str, pw: str, ip: str):
        return SimpleNamespace(options={}) if (user, pw) == ("alice", "pw") else None

    ok = login.prelogin(conn, core, cfg, authenticate, None, counters, sleep=lambda s: None)
    if ok:
        login.send(conn, f"{ok.tag} OK LOGIN Ok.\r\n".encode(), counters)
        Session(conn, core, root, cfg, ok.user, counters).run()
    sock.close()


def session(tmp_path: Path, script: bytes, extra: str = "") -> bytes:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "imapd").write_text("PORT=143\n" + extra)
    a, b = socket.socketpair()
    t = threading.Thread(target=run_server, args=(b, tmp_path / "Maildir", etc))
    t.start()
    a.sendall(script)
    a.settimeout(10)
    out = bytearray()
    while chunk := a.recv(65536):
        out += chunk
    t.join(10)
    a.close()
    return bytes(out)


def maildir(tmp_path: Path, n: int = 2) -> Path:
    root = tmp_path / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "new" / f"100{i}.M1P1.h,S={len(MSG)}").write_bytes(MSG)
    return root


def test_id_before_and_after_login(tmp_path: Path) -> None:
    maildir(tmp_path)
    out = session(tmp_path, b'a ID ("name" "test")\r\nb LOGIN alice pw\r\nc ID NIL\r\n'
                  b"d LOGOUT\r\n")
    assert out.count(b'* ID ("name" "courier-py" "version" "') == 2
    assert b"a OK ID completed\r\n" in out and b"c OK ID completed\r\n" in out
    out = session(tmp_path, b"a ID NIL\r\nb LOGOUT\r\n", "IMAP_ID_FIELDS=\n")
    assert b"a BAD ID is not enabled" in out and b" ID " not in out.split(b"\r\n")[0]


def test_specialuse_created_listed_and_kept(tmp_path: Path) -> None:
    root = maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN alice pw\r\nb LIST (SPECIAL-USE) \"\" *\r\n"
                  b"c LIST \"\" % RETURN (SPECIAL-USE)\r\nd LSUB \"\" *\r\ne LOGOUT\r\n",
                  'IMAP_SPECIALUSE_FOLDERS="Sent=Sent Items,Archive=Archive"\n')
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == \
        [".Archive", ".Sent Items", ".Trash"]
    assert all((root / d / "maildirfolder").is_file() for d in (".Archive", ".Trash"))
    lines = out.split(b"\r\n")
    assert [x for x in lines if x.startswith(b"* LIST")][:3] == [
        b'* LIST (\\HasNoChildren \\Archive) "." INBOX.Archive',
        b'* LIST (\\HasNoChildren \\Sent) "." "INBOX.Sent Items"',
        b'* LIST (\\HasNoChildren \\Trash) "." INBOX.Trash']
    assert b'* LIST (\\HasChildren) "." INBOX\r\n' in out     # the % listing
    assert out.count(b"* LSUB") == 3
    # An unsubscribed special-use folder stays unsubscribed; a deleted one comes back.
    (root / "courierimapsubscribed").write_text("INBOX.Trash\n")
    os.rename(root / ".Archive", tmp_path / "gone")
    session(tmp_path, b"a LOGIN alice pw\r\nb LOGOUT\r\n",
            'IMAP_SPECIALUSE_FOLDERS="Sent=Sent Items,Archive=Archive"\n')
    assert (root / ".Archive" / "cur").is_dir()
    assert (root / "courierimapsubscribed").read_text() == "INBOX.Trash\nINBOX.Archive\n"
    # Not made when IMAP_SPECIALUSE_CREATE=0.
    root2 = maildir(tmp_path / "two")
    session(tmp_path / "two", b"a LOGIN alice pw\r\nb LOGOUT\r\n", "IMAP_SPECIALUSE_CREATE=0\n")
    assert not [p for p in root2.iterdir() if p.name.startswith(".")]


def test_enable_utf8_names(tmp_path: Path) -> None:
    root = maildir(tmp_path)
    out = session(tmp_path, "a LOGIN alice pw\r\nb CREATE INBOX.Entw&APw-rfe\r\n"
                  "c LIST \"\" INBOX.E*\r\nd ENABLE UTF8=ACCEPT X-UNKNOWN\r\n"
                  "e LIST \"\" INBOX.E*\r\nf STATUS \"INBOX.Entwürfe\" (MESSAGES)\r\n"
                  "g LOGOUT\r\n".encode(), "IMAP_SPECIALUSE_CREATE=0\n")
    assert (root / ".Entwürfe").is_dir()
    assert b'* LIST (\\HasNoChildren) "." INBOX.Entw&APw-rfe\r\n' in out
    assert b"* ENABLED UTF8=ACCEPT\r\nd OK" in out
    assert '* LIST (\\HasNoChildren) "." "INBOX.Entwürfe"\r\n'.encode() in out
    assert '* STATUS "INBOX.Entwürfe" (MESSAGES 0)\r\n'.encode() in out


def test_unselect_keeps_deleted(tmp_path: Path) -> None:
    root = maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX\r\n"
                  b"c STORE 1:* +FLAGS.SILENT (\\Deleted)\r\nd UNSELECT\r\ne UNSELECT\r\n"
                  b"f FETCH 1 FLAGS\r\ng LOGOUT\r\n")
    assert b"d OK UNSELECT completed\r\n" in out
    assert b"e BAD UNSELECT is not valid in the authenticated state" in out
    assert b"f BAD FETCH is not valid" in out
    assert len(os.listdir(root / "cur")) == 2 and all(n.endswith("T") for n in os.listdir(root / "cur"))


def test_quota(tmp_path: Path) -> None:
    root = maildir(tmp_path, 3)
    script = (b"a LOGIN alice pw\r\nb GETQUOTAROOT INBOX\r\nc GETQUOTA ROOT\r\n"
              b"d SETQUOTA ROOT (STORAGE 10)\r\ne GETQUOTAROOT INBOX.Nope\r\nf LOGOUT\r\n")
    out = session(tmp_path, script)
    # No maildirsize: no quota (Courier), so no quota root.
    assert b"* QUOTAROOT INBOX\r\nb OK GETQUOTAROOT Ok.\r\n" in out
    assert b"c NO [NONEXISTENT]" in out
    assert b"d NO [NOPERM] SETQUOTA No permission.\r\n" in out
    assert b"e NO [NONEXISTENT]" in out
    (root / "maildirsize").write_bytes(b"2048S,10C\n%12d %12d\n" % (3 * len(MSG), 3))
    out = session(tmp_path, script)
    assert b'* QUOTAROOT INBOX "ROOT"\r\n* QUOTA "ROOT" (STORAGE 1 2 MESSAGE 3 10)\r\n' in out
    assert b'c OK GETQUOTA Ok.' in out and out.count(b'* QUOTA "ROOT"') == 2
    # EXPUNGE takes the message off maildirsize, as Courier's maildir_quota_deleted.
    session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc STORE 1 +FLAGS (\\Deleted)\r\n"
            b"d EXPUNGE\r\ne LOGOUT\r\n")
    assert (root / "maildirsize").read_bytes().endswith(b"%12d %12d\n" % (-len(MSG), -1))
    out = session(tmp_path, script)
    assert b'* QUOTA "ROOT" (STORAGE 1 2 MESSAGE 2 10)\r\n' in out


def test_move_expunge_to_trash(tmp_path: Path) -> None:
    root = maildir(tmp_path, 3)
    extra = "IMAP_MOVE_EXPUNGE_TO_TRASH=1\n"
    out = session(tmp_path, b"a LOGIN alice pw\r\nb CAPABILITY\r\nc SELECT INBOX\r\n"
                  b"d STORE 1:2 +FLAGS (\\Deleted \\Draft \\Seen)\r\ne COPY 2 INBOX.Trash\r\n"
                  b"f EXPUNGE\r\ng LOGOUT\r\n", extra)
    assert b" XMAGICTRASH" in out and b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nf OK" in out
    trash = sorted(os.listdir(root / ".Trash" / "cur"))
    # Message 1 moved without \Deleted and \Draft; message 2 was copied by the client
    # first (COPY keeps its flags), so its original is deleted, not moved again.
    assert len(trash) == 2
    assert sum(1 for n in trash if n.endswith(":2,S")) == 1
    assert len(os.listdir(root / "cur")) == 1
    # In the Trash itself EXPUNGE deletes.
    session(tmp_path, b"a LOGIN alice pw\r\nb SELECT INBOX.Trash\r\n"
            b"c STORE 1:* +FLAGS (\\Deleted)\r\nd CLOSE\r\ne LOGOUT\r\n", extra)
    assert os.listdir(root / ".Trash" / "cur") == []


def test_emptytrash_at_login(tmp_path: Path) -> None:
    root = maildir(tmp_path, 0)
    (root / ".Trash").mkdir()
    for d in ("tmp", "new", "cur"):
        (root / ".Trash" / d).mkdir()
    old = root / ".Trash" / "cur" / "1.M1P1.h:2,S"
    old.write_bytes(MSG)
    fresh = root / ".Trash" / "cur" / "2.M1P1.h:2,S"
    fresh.write_bytes(MSG)
    now = time.time()
    cfg, _ = config(tmp_path, "IMAP_EMPTYTRASH=7\n")
    from courier_imapd import trash
    assert trash.empty_trash(root, cfg, now + 7 * 86400 - 60) == 0
    assert trash.empty_trash(root, cfg, now + 7 * 86400 + 60) == 2
    fresh.write_bytes(MSG)
    # At login, with Courier's per-folder form; a ctime of now is not old enough.
    session(tmp_path, b"a LOGIN alice pw\r\nb LOGOUT\r\n", "IMAP_EMPTYTRASH=Trash:1,Sent:30\n")
    assert fresh.exists()
    assert not old.exists()


def test_append_copy_move_against_the_quota(tmp_path: Path) -> None:
    root = maildir(tmp_path, 2)
    size = len(MSG)
    (root / "maildirsize").write_bytes(b"%dS,4C\n%12d %12d\n" % (10 * size, 2 * size, 2))
    big = b"Subject: big\r\n\r\n" + b"x" * (20 * size) + b"\r\n"
    small = b"Subject: small\r\n\r\nhi\r\n"
    out = session(tmp_path, b"a LOGIN alice pw\r\nb APPEND INBOX {%d+}\r\n" % len(big) + big
                  + b"\r\nc APPEND INBOX {%d+}\r\n" % len(small) + small
                  + b"\r\nd SELECT INBOX\r\ne COPY 1 INBOX.Trash\r\nf COPY 1:2 INBOX.Junk\r\n"
                  b"g MOVE 3 INBOX.Trash\r\nh COPY 1 INBOX.Drafts\r\ni LOGOUT\r\n")
    assert b"b NO [OVERQUOTA] You exceeded your mail quota.\r\n" in out
    assert b"c OK [APPENDUID" in out
    assert b"e OK [COPYUID" in out          # into the Trash: not counted
    assert b"f NO [OVERQUOTA]" in out       # 3 counted + 2 > 4 messages
    assert b"g OK MOVE completed" in out    # out of INBOX into the Trash: 2 counted
    assert b"h OK [COPYUID" in out          # 3 counted
    # Whatever was appended or recounted on the way, the sum is what is there.
    from libcourier.maildir import quota as mdquota
    use = mdquota.parse((root / "maildirsize").read_bytes())
    assert (use.bytes, use.count) == mdquota.measure(root) == (3 * size, 3)


def test_status_deleted_items(tmp_path: Path) -> None:
    root = maildir(tmp_path, 3)
    for i, name in enumerate(sorted(os.listdir(root / "new"))[:2]):
        os.rename(root / "new" / name, root / "cur" / (name + (":2,T" if i else ":2,ST")))
    out = session(tmp_path, b"a LOGIN alice pw\r\nb STATUS INBOX (DELETED DELETED-STORAGE "
                  b"MESSAGES)\r\nc LOGOUT\r\n")
    assert b"* STATUS INBOX (DELETED 2 DELETED-STORAGE 1 MESSAGES 3)\r\n" in out


def test_create_special_use(tmp_path: Path) -> None:
    assert parse(b"c CREATE INBOX.Out (USE (\\sent))") == \
        MailboxCommand("c", "CREATE", "INBOX.Out", ("\\Sent",))
    assert isinstance(parse(b"c CREATE INBOX.Out (FOO (\\Sent))"), BadCommand)
    assert isinstance(parse(b"c DELETE INBOX.Out (USE (\\Sent))"), BadCommand)
    root = maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN alice pw\r\nb CREATE INBOX.Out (USE (\\Sent))\r\n"
                  b"c CREATE INBOX.Odd (USE (\\Important))\r\nd CREATE INBOX.Arc (USE ())\r\n"
                  b"e LOGOUT\r\n", "IMAP_SPECIALUSE_CREATE=0\n")
    assert b"b OK CREATE completed" in out and b"d OK CREATE completed" in out
    assert b"c NO [USEATTR]" in out and not (root / ".Odd").exists()
    out = session(tmp_path, b'a LOGIN alice pw\r\nb LIST (SPECIAL-USE) "" *\r\nc LOGOUT\r\n',
                  "IMAP_SPECIALUSE_CREATE=0\n")
    assert [x for x in out.split(b"\r\n") if x.startswith(b"* LIST")] == \
        [b'* LIST (\\HasNoChildren \\Sent) "." INBOX.Out']
    assert (root / "courierpyspecialuse").read_text() == "\\Sent\tINBOX.Out\n"


def test_condstore_qresync_parse() -> None:
    from courier_imapd.core import Fetch, QResync, Select, Store, StoreMode
    a = State.AUTHENTICATED
    assert parse(b"s SELECT INBOX (CONDSTORE)", a) == Select("s", "INBOX", False, True)
    # RFC 7162 §3.2.5's example, with known UIDs and the sequence match data.
    assert parse(b"s EXAMINE INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
                 b"(1:3 41,43,45)))", a).qresync == \
        QResync(67890007, 90060115194045000, ((41, 211), (214, 541)),
                (((1, 3),), ((41, 41), (43, 43), (45, 45))))
    assert parse(b"s SELECT INBOX (QRESYNC (1 2))", a).qresync == QResync(1, 2)
    assert isinstance(parse(b"s SELECT INBOX (QRESYNC (1 0))", a), BadCommand)
    assert isinstance(parse(b"s SELECT INBOX (FOO)", a), BadCommand)
    f = parse(b"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)", State.SELECTED)
    assert isinstance(f, Fetch) and f.changedsince == 12345 and f.vanished
    assert [i.name for i in f.items] == ["UID", "FLAGS", "MODSEQ"]
    assert "VANISHED needs" in parse(b"f FETCH 1 (FLAGS) (VANISHED)", State.SELECTED).text
    assert parse(b"s STORE 1:* (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Deleted)", State.SELECTED) == \
        Store("s", False, ((1, None),), StoreMode.ADD, True, ("\\Deleted",), 0)
    assert isinstance(parse(b"s STORE 1 (UNCHANGEDSINCE x) FLAGS ()", State.SELECTED), BadCommand)


def test_utf8_mode_names_and_charset(tmp_path: Path) -> None:
    # Before ENABLE "R&D" is modified UTF-7 (and bad); after it, a plain UTF-8 name.
    assert "modified UTF-7" in parse(b"c CREATE INBOX.R&D").text
    assert parse_command([(b"c CREATE INBOX.R&D", None)], State.AUTHENTICATED, utf8=True) == \
        MailboxCommand("c", "CREATE", "INBOX.R&D")
    root = maildir(tmp_path)
    out = session(tmp_path, b"a LOGIN alice pw\r\nb ENABLE UTF8=ACCEPT\r\nc CREATE INBOX.R&D\r\n"
                  b"d LIST \"\" INBOX.R*\r\ne SELECT INBOX\r\nf SEARCH CHARSET US-ASCII ALL\r\n"
                  b"g SEARCH CHARSET UTF-8 ALL\r\nh LOGOUT\r\n", "IMAP_SPECIALUSE_CREATE=0\n")
    assert (root / ".R&D").is_dir() and b"c OK CREATE completed" in out
    assert b'* LIST (\\HasNoChildren) "." INBOX.R&D\r\n' in out
    assert b"f BAD [BADCHARSET (UTF-8)]" in out and b"* SEARCH 1 2\r\ng OK" in out


def test_list_extended_and_list_status(tmp_path: Path) -> None:
    root = maildir(tmp_path, 2)
    (root / "courierimapsubscribed").write_text("INBOX\nINBOX.a.b\nINBOX.gone\n")
    out = session(tmp_path, b"a LOGIN alice pw\r\nb CREATE INBOX.a.b\r\n"
                  b'c LIST (SUBSCRIBED RECURSIVEMATCH) "" *\r\n'
                  b'd LIST "" (INBOX "INBOX.a*") RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))\r\n'
                  b'e LIST "" INBOX.a\r\nf LOGOUT\r\n', "IMAP_SPECIALUSE_CREATE=0\n")
    lines = out.split(b"\r\n")
    c = lines[lines.index(b"b OK CREATE completed") + 1:]
    c = c[:[i for i, x in enumerate(c) if x.startswith(b"c OK")][0]]
    # RFC 5258 §3.5: a parent with a subscribed child gets CHILDINFO, subscribed or not.
    assert c == [b'* LIST (\\HasChildren \\Subscribed) "." INBOX ("CHILDINFO" ("SUBSCRIBED"))',
                 b'* LIST (\\HasNoChildren \\Subscribed) "." INBOX.a.b',
                 b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "." INBOX.gone',
                 b'* LIST (\\NonExistent \\HasChildren) "." INBOX.a ("CHILDINFO" ("SUBSCRIBED"))']
    d = lines[lines.index(c[-1]) + 2:]
    d = d[:[i for i, x in enumerate(d) if x.startswith(b"d OK")][0]]
    assert d == [b'* LIST (\\HasChildren \\Subscribed) "." INBOX',
                 b"* STATUS INBOX (MESSAGES 2 UNSEEN 2)",
                 b'* LIST (\\NonExistent \\HasChildren) "." INBOX.a',
                 b'* LIST (\\HasNoChildren \\Subscribed) "." INBOX.a.b',
                 b"* STATUS INBOX.a.b (MESSAGES 0 UNSEEN 0)"]
    assert b'* LIST (\\Noselect \\HasChildren) "." INBOX.a\r\ne OK' in out   # classic: Courier's
