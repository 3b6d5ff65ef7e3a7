"""Real IMAP clients nobody here wrote against the instance's imapd: mbsync (isync) for a
two-way sync, offlineimap, mutt in batch mode, fetchmail over IMAP, and the imapclient
library. Each test is skipped, saying which package to install, when its client is
missing (.ci/run installs them all)."""

from __future__ import annotations

import imaplib
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

USER, PASSWORD = "alice@example.com", "alice-secret"
MSGS = [b"From: a@example.net\nTo: alice@example.com\nSubject: one %d\nMessage-ID: <m%d@x>\n"
        b"\nHello %d\n.leading dot\n" % (i, i, i) for i in range(3)]
TIMEOUT = 120


def exe(name: str, package: str | None = None) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install {package or name})")
    return path


def run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, **kw)


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def owned_like(path: Path, ref: Path) -> None:
    st = ref.stat()
    os.chown(path, st.st_uid, st.st_gid)


def deliver(maildir: Path, msg: bytes, n: int) -> None:
    tmp = maildir / "tmp" / f"t{n}"
    tmp.write_bytes(msg)
    owned_like(tmp, maildir)
    os.rename(tmp, maildir / "new" / f"{1700000000 + n}.M{n}P7.mx.test,S={len(msg)}")


def imap(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=30)
    assert c.login(USER, PASSWORD)[0] == "OK"
    return c


def server_flags(inst, box: str) -> dict[bytes, bytes]:
    """Subject -> FLAGS of every message in a server folder."""
    c = imap(inst)
    try:
        typ, data = c.select(box, readonly=True)
        assert typ == "OK", data
        if data[0] == b"0":
            return {}
        typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1)
                subj = item[1].strip().split(b": ", 1)[1]
                out[subj] = flags
        return out
    finally:
        c.logout()


def local_msgs(md: Path) -> dict[str, str]:
    """Subject -> maildir flag letters of every message in a local Maildir."""
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(md / sub):
            text = (md / sub / name).read_text(errors="replace")
            m = re.search(r"^Subject: (.*)$", text, re.M)
            out[m.group(1) if m else name] = name.split(":2,")[1] if ":2," in name else ""
    return out


@pytest.fixture
def inst(new_instance):
    new_instance.adduser(USER, PASSWORD)
    md = new_instance.maildir(USER)
    for i, m in enumerate(MSGS):
        deliver(md, m, i)
    new_instance.start("authdaemond", "imapd")
    # Two more folders with mail and flags, made over IMAP as a client would.
    c = imap(new_instance)
    try:
        for box in ("INBOX.Work", "INBOX.Work.2024"):
            assert c.create(box)[0] == "OK"
            assert c.subscribe(box)[0] == "OK"
            for i in range(2):
                msg = b"From: w@example.net\r\nSubject: %s %d\r\n\r\nwork\r\n" % (box.encode(), i)
                assert c.append(box, "(\\Flagged)" if i else "", None, msg)[0] == "OK"
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Seen \\Answered)")
    finally:
        c.logout()
    return new_instance


# -- mbsync -------------------------------------------------------------------------------

# isync 1.4 prints its counters only to a terminal: "F: +a/b *c/d #e/f  N: ...", far
# then near side: messages added, flag updates, messages expunged (done/total).
MBSYNC_STATS = re.compile(r"F: \+(\d+)/\d+ +\*(\d+)/\d+ +#(\d+)/\d+ +"
                          r"N: \+(\d+)/\d+ +\*(\d+)/\d+ +#(\d+)/\d+")


def run_on_tty(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal (bounded by TIMEOUT); exit code and output."""
    master, slave = os.openpty()
    p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                         start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    return rc, out.decode("utf-8", "replace")


def mbsync(inst, tmp_path: Path) -> tuple[int, ...]:
    """One `mbsync -a`; its own counters: far +new *flags #expunged, then near."""
    local = tmp_path / "mail"
    local.mkdir(exist_ok=True)
    rc = private(tmp_path / "mbsyncrc", f"""\
IMAPAccount test
Host 127.0.0.1
Port {inst.port('imap')}
User {USER}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN
Timeout 60

IMAPStore far
Account test

MaildirStore near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel all
Far :far:
Near :near:
Patterns *
Create Both
Expunge Both
Remove None
SyncState *
CopyArrivalDate yes
""")
    code, text = run_on_tty([exe("mbsync", "isync"), "-c", str(rc), "-a"],
                            env={**os.environ, "HOME": str(tmp_path), "TERM": "dumb"})
    assert code == 0, text + inst.logs()
    found = MBSYNC_STATS.findall(text)
    assert found, text
    return tuple(int(x) for x in found[-1])     # the last update is the final count


def test_mbsync_two_way(inst, tmp_path: Path) -> None:
    local = tmp_path / "mail"
    first = mbsync(inst, tmp_path)
    # Everything came near: 3 in INBOX, 2 in each Work folder, plus the special-use
    # folders (empty); nothing went far.
    assert first == (0, 0, 0, 7, 0, 0), first
    assert sorted(local_msgs(local / "INBOX")) == ["one 0", "one 1", "one 2"]
    assert local_msgs(local / "INBOX")["one 0"] == "RS"
    assert set(local_msgs(local / "Work" / "2024").values()) == {"", "F"}
    for box in ("Drafts", "Sent", "Trash", "Junk"):
        assert (local / box / "cur").is_dir()
    before = {p: sorted(os.listdir(p)) for p in local.rglob("cur")}

    # A second run changes nothing, on either side.
    assert mbsync(inst, tmp_path) == (0,) * 6
    assert {p: sorted(os.listdir(p)) for p in local.rglob("cur")} == before

    # Changes on both sides: near, a new message and \Seen on "one 1"; far, \Flagged
    # on "one 2", "one 0" expunged and a new message in Work.
    deliver(local / "INBOX", b"From: me@example.com\nSubject: written near\n\nhi\n", 50)
    (d,) = [p for p in (local / "INBOX").glob("*/*") if "one 1" in p.read_text()]
    os.rename(d, local / "INBOX" / "cur" / (d.name.split(":2,")[0] + ":2,S"))
    c = imap(inst)
    try:
        c.select("INBOX")
        _, data = c.search(None, "SUBJECT", '"one 2"')
        c.store(data[0], "+FLAGS", "(\\Flagged)")
        _, data = c.search(None, "SUBJECT", '"one 0"')
        c.store(data[0], "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.append("INBOX.Work", "", None, b"Subject: written far\r\n\r\nhi\r\n")
    finally:
        c.logout()
    third = mbsync(inst, tmp_path)
    # far: +1 (written near) *1 (\Seen); near: +1 (written far) *2 (\Flagged on "one 2",
    # and "one 0", gone far, marked deleted near, which Expunge Both then removes).
    assert third == (1, 1, 0, 1, 2, 0), third
    assert local_msgs(local / "INBOX") == {"one 1": "S", "one 2": "F", "written near": ""}
    assert "written far" in local_msgs(local / "Work")
    assert server_flags(inst, "INBOX") == {b"one 1": b"\\Seen", b"one 2": b"\\Flagged",
                                           b"written near": b""}
    assert mbsync(inst, tmp_path) == (0,) * 6


# -- offlineimap ----------------------------------------------------------------------------

def offlineimap(inst, tmp_path: Path) -> str:
    local = tmp_path / "oi"
    local.mkdir(exist_ok=True)
    cfg = private(tmp_path / "offlineimaprc", f"""\
[general]
accounts = test
metadata = {tmp_path}/oi-meta

[Account test]
localrepository = near
remoterepository = far

[Repository near]
type = Maildir
localfolders = {local}

[Repository far]
type = IMAP
remotehost = 127.0.0.1
remoteport = {inst.port('imap')}
remoteuser = {USER}
remotepass = {PASSWORD}
ssl = no
starttls = no
""")
    r = run([exe("offlineimap", "offlineimap3"), "-c", str(cfg), "-o", "-u", "quiet"],
            env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr + inst.logs()
    return r.stdout + r.stderr


def test_offlineimap(inst, tmp_path: Path) -> None:
    offlineimap(inst, tmp_path)
    local = tmp_path / "oi"
    # offlineimap keeps the server's names, "." separated, one Maildir each.
    assert sorted(local_msgs(local / "INBOX")) == ["one 0", "one 1", "one 2"]
    assert local_msgs(local / "INBOX")["one 0"] == "RS"
    assert set(local_msgs(local / "INBOX.Work.2024").values()) == {"", "F"}
    assert (local / "INBOX.Trash" / "cur").is_dir()
    listing = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    # A second run changes nothing on either side.
    offlineimap(inst, tmp_path)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == listing
    # A flag set near and a message expunged far are both carried over.
    (d,) = [p for p in (local / "INBOX").glob("*/*") if "one 1" in p.read_text()]
    os.rename(d, d.parent.parent / "cur" / (d.name.split(":2,")[0] + ":2,F"))
    c = imap(inst)
    try:
        c.select("INBOX")
        _, data = c.search(None, "SUBJECT", '"one 2"')
        c.store(data[0], "+FLAGS", "(\\Deleted)")
        c.expunge()
    finally:
        c.logout()
    offlineimap(inst, tmp_path)
    assert sorted(local_msgs(local / "INBOX")) == ["one 0", "one 1"]
    assert server_flags(inst, "INBOX")[b"one 1"] == b"\\Flagged"


# -- mutt in batch mode ----------------------------------------------------------------------

def test_mutt_batch_send_records_over_imap(inst, tmp_path: Path) -> None:
    """mutt sends without a terminal when its input is not one; with `record` on IMAP
    it logs in and APPENDs the sent copy to INBOX.Sent (fcc), as users' mutts do."""
    sent = tmp_path / "sendmail.out"
    fake_sendmail = tmp_path / "sendmail"
    fake_sendmail.write_text(f"#!/bin/sh\ncat > {sent}\n")
    fake_sendmail.chmod(0o755)
    url = f"imap://{USER.replace('@', '%40')}@127.0.0.1:{inst.port('imap')}"
    rc = private(tmp_path / "muttrc", f"""\
set imap_user = "{USER}"
set imap_pass = "{PASSWORD}"
set ssl_starttls = no
set ssl_force_tls = no
set folder = "{url}/INBOX"
set record = "{url}/INBOX.Sent"
set copy = yes
set sendmail = "{fake_sendmail}"
set from = "{USER}"
set use_from = yes
set header_cache = ""
set message_cachedir = ""
""")
    body = tmp_path / "body"
    body.write_text("sent by mutt in batch mode\n")
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "dumb"}
    with open(body) as fh:
        r = subprocess.run([exe("mutt"), "-n", "-F", str(rc), "-s", "from mutt", "--",
                            "bob@example.net"], stdin=fh, capture_output=True, text=True,
                           timeout=TIMEOUT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr + inst.logs()
    assert "Subject: from mutt" in sent.read_text()
    flags = server_flags(inst, "INBOX.Sent")
    assert list(flags) == [b"from mutt"] and b"\\Seen" in flags[b"from mutt"]


# -- fetchmail over IMAP ---------------------------------------------------------------------

def test_fetchmail_imap(inst, tmp_path: Path) -> None:
    out = tmp_path / "bsmtp"
    rc = private(tmp_path / "fetchmailrc",
                 f'poll 127.0.0.1 port {inst.port("imap")} proto imap\n'
                 f'  user "{USER}" password "{PASSWORD}" sslproto \'\' folder INBOX\n')
    base = [exe("fetchmail"), "-f", str(rc), "--bsmtp", str(out), "--nodetach",
            "--pidfile", str(tmp_path / "pid")]
    env = {**os.environ, "HOME": str(tmp_path)}
    r = run([*base, "--keep"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr + inst.logs()
    # --keep over IMAP: fetchmail fetches the unseen messages and leaves them, \Seen.
    assert out.read_text().count("Subject: one") == 2
    assert set(server_flags(inst, "INBOX").values()) == {b"\\Seen", b"\\Answered \\Seen"}
    r = run([*base, "--keep"], env=env)
    assert r.returncode == 1, r.stdout + r.stderr       # 1: no new mail
    r = run([*base, "--all"], env=env)                   # fetch all and delete
    assert r.returncode == 0, r.stdout + r.stderr
    assert server_flags(inst, "INBOX") == {}


# -- imapclient ------------------------------------------------------------------------------

def test_imapclient(inst) -> None:
    imapclient = pytest.importorskip("imapclient", reason="pip install imapclient")
    md = inst.maildir(USER)
    (md / "maildirsize").write_bytes(b"1048576S,1000C\n%12d %12d\n" % (10000, 7))
    owned_like(md / "maildirsize", md)
    c = imapclient.IMAPClient("127.0.0.1", port=inst.port("imap"), ssl=False, timeout=30)
    try:
        ident = c.id_({"name": "imapclient"})         # before login (RFC 2971 §3.1)
        (pairs,) = ident
        assert dict(zip(pairs[::2], pairs[1::2], strict=True))[b"name"] == b"courier-py"
        c.login(USER, PASSWORD)
        caps = c.capabilities()
        for cap in (b"ENABLE", b"UTF8=ACCEPT", b"UNSELECT", b"QUOTA", b"SPECIAL-USE", b"MOVE",
                    b"UIDPLUS", b"IDLE", b"ID", b"NAMESPACE", b"CHILDREN", b"LITERAL+"):
            assert cap in caps, cap
        assert c.find_special_folder(imapclient.imapclient.SENT) == "INBOX.Sent"
        assert c.find_special_folder(imapclient.imapclient.TRASH) == "INBOX.Trash"
        flags = {name: f for f, _, name in c.list_folders()}
        assert b"\\HasChildren" in flags["INBOX.Work"]
        assert b"\\Junk" in flags["INBOX.Junk"]
        ns = c.namespace()
        assert ns.personal == (("INBOX.", "."),) and ns.other is None
        roots, quotas = c.get_quota_root("INBOX")
        assert roots.quota_roots == ["ROOT"]
        assert {(q.resource, q.usage, q.limit) for q in quotas} == \
            {("STORAGE", 10, 1024), ("MESSAGE", 7, 1000)}
        assert c.enable("UTF8=ACCEPT") == [b"UTF8=ACCEPT"]
        assert c.folder_status("INBOX.Work", ["MESSAGES", "UNSEEN"]) == \
            {b"MESSAGES": 2, b"UNSEEN": 2}
        c.create_folder("INBOX.Entwürfe")        # UTF-8 name after ENABLE (RFC 6855)
        assert (md / ".Entwürfe" / "cur").is_dir()
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3
        uids = c.search(["NOT", "SEEN"])
        assert len(uids) == 2
        c.add_flags(uids[:1], [imapclient.FLAGGED])
        fetched = c.fetch(uids[:1], ["FLAGS", "RFC822.SIZE", "ENVELOPE"])
        assert imapclient.FLAGGED in fetched[uids[0]][b"FLAGS"]
        c.move(uids[:1], "INBOX.Work")
        assert len(c.search("ALL")) == 2
        c.delete_messages(c.search("ALL")[:1])
        c.unselect_folder()                       # UNSELECT: \Deleted stays, nothing expunged
        assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 2
        c.select_folder("INBOX")
        # IDLE sees a delivery.
        c.idle()
        deliver(md, b"Subject: during idle\n\nx\n", 90)
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = [r for r in c.idle_check(timeout=2) if r[1] == b"EXISTS"]
        c.idle_done()
        assert got and got[0][0] == 3
        c.close_folder()                          # CLOSE expunges the \Deleted one
        assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 2
    finally:
        c.logout()


def test_imapclient_condstore_qresync(inst) -> None:
    """RFC 7162 as imapclient speaks it: ENABLE, HIGHESTMODSEQ at SELECT, FETCH
    (CHANGEDSINCE), STORE (UNCHANGEDSINCE) failing after another session's change, and
    a QRESYNC SELECT that names what went away meanwhile."""
    imapclient = pytest.importorskip("imapclient", reason="pip install imapclient")
    a = imapclient.IMAPClient("127.0.0.1", port=inst.port("imap"), ssl=False, timeout=30)
    b = imapclient.IMAPClient("127.0.0.1", port=inst.port("imap"), ssl=False, timeout=30)
    try:
        a.login(USER, PASSWORD)
        b.login(USER, PASSWORD)
        assert b"CONDSTORE" in a.capabilities() and b"QRESYNC" in a.capabilities()
        assert a.enable("QRESYNC") == [b"CONDSTORE", b"QRESYNC"]
        info = a.select_folder("INBOX")
        top, validity = info[b"HIGHESTMODSEQ"], info[b"UIDVALIDITY"]
        uids = a.search("ALL")
        assert len(uids) == 3
        assert all(d[b"MODSEQ"][0] <= top for d in a.fetch(uids, ["MODSEQ"]).values())
        b.select_folder("INBOX")
        b.add_flags(uids[:1], [imapclient.FLAGGED])
        b.delete_messages(uids[2:])
        b.expunge()
        a.noop()        # b's expunge: VANISHED, not EXPUNGE, with QRESYNC on
        assert a._imap.untagged_responses.pop("VANISHED") == [b"%d" % uids[2]]
        changed = a.fetch(uids[:2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {top}"])
        assert list(changed) == uids[:1] and changed[uids[0]][b"MODSEQ"][0] > top
        # A conditional STORE against the modseq from before b's change fails for it.
        typ, data = a._imap._simple_command("UID", "STORE", str(uids[0]),
                                            f"(UNCHANGEDSINCE {top})", "+FLAGS", "(\\Seen)")
        assert typ == "OK" and b"[MODIFIED %d]" % uids[0] in data[-1]
        a.close_folder()
        # Resynchronise from the old state: the expunged UID and the flag change.
        typ, data = a._imap._simple_command(
            "SELECT", "INBOX", f"(QRESYNC ({validity} {top}))")
        assert typ == "OK"
        assert a._imap.untagged_responses.get("VANISHED") == [b"(EARLIER) %d" % uids[2]]
    finally:
        for c in (a, b):
            try:
                c.logout()
            except Exception:     # noqa: BLE001 - the first failure is the one to see
                pass
    assert (inst.maildir(USER) / "courierpymodseq").stat().st_uid == \
        inst.maildir(USER).stat().st_uid


def test_mutt_qresync_resync(inst, tmp_path: Path) -> None:
    """mutt (a terminal for it on a pty) with a header cache and imap_qresync: the first
    run reads INBOX; after an expunge elsewhere, the second run resynchronises with
    UID FETCH (CHANGEDSINCE ... VANISHED) and is told what vanished (its debug log
    shows the exchange)."""
    url = f"imap://{USER.replace('@', '%40')}@127.0.0.1:{inst.port('imap')}"
    rc = private(tmp_path / "muttrc", f"""\
set imap_user = "{USER}"
set imap_pass = "{PASSWORD}"
set ssl_starttls = no
set ssl_force_tls = no
set folder = "{url}/INBOX"
set spoolfile = "{url}/INBOX"
set header_cache = "{tmp_path}/hcache"
set imap_qresync = yes
set imap_condstore = yes
set quit = yes
""")
    args = [exe("mutt"), "-n", "-d", "5", "-F", str(rc), "-e", "push <quit>", "-f", f"{url}/INBOX"]
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm"}
    code, text = run_on_tty(args, env)
    assert code == 0 and "[Msgs:3 " in text, text[-2000:] + inst.logs()
    c = imap(inst)
    try:
        c.select("INBOX")
        _, data = c.search(None, "SUBJECT", '"one 1"')
        c.store(data[0], "+FLAGS", "(\\Deleted)")
        c.expunge()
    finally:
        c.logout()
    code, text = run_on_tty(args, env)
    assert code == 0 and "[Msgs:2 " in text, text[-2000:]
    debug = "".join(p.read_text(errors="replace") for p in tmp_path.glob(".muttdebug*"))
    assert re.search(r"> a\d+ UID FETCH 1:3 \(FLAGS\) \(CHANGEDSINCE \d+ VANISHED\)", debug), debug
    assert "< * VANISHED (EARLIER) 2" in debug
