"""Waking a hibernated session (hibernate.py) in the child the listener forked for it.

The listener hands the child the connection, the blob the sleeping session wrote
and that session's uid as the kernel gave it. Order matters: the child, still
root, reads only the login from the blob's header, asks authd for that account
(auth_pre), refuses unless its uid is the one that wrote the blob, switches to
it for good, and only then decodes the rest and reopens the Maildir. The folder
view is rebuilt as the client last saw it; what changed meanwhile (expunges,
deliveries, other sessions' flags) is then reported by the first command's
refresh exactly as for a session that stayed awake. Anything wrong: `* BYE`,
logged, the connection closed.
"""

from __future__ import annotations

import array
import logging
import os
import pwd
import time
from pathlib import Path

from courier_imapd import hibernate, keywordpolicy, sharedfolders
from courier_imapd.config import ImapdConfig
from courier_imapd.core import SESSION_LIMITS, ImapConnection, State, untagged
from courier_imapd.hibernate import BlobError, FolderImage, SessionImage, decode, login_of
from courier_imapd.login import Counters, send
from courier_imapd.mailbox import FolderReplaced, MailboxView
from courier_imapd.session import Session, account_settings, open_maildir_root
from courier_imapd.sharedfolders import folder_path

from libcourier import authclient, privsep, proctitle
from libcourier.maildir.flags import INFO_SEP, join_name, split_name
from libcourier.maildir.folder import FolderState, MessageRef
from libcourier.maildir.msglist import MessageList
from libcourier.tcpd.connection import Connection

log = logging.getLogger("courier.imapd")


class FolderGone(Exception):
    """The selected folder was deleted or renamed, or may no longer be read."""


def _bye(conn: Connection, text: str) -> None:
    try:
        send(conn, untagged("BYE " + text), Counters())
    except OSError:
        pass


def resume(conn: Connection, cfg: ImapdConfig, authsocket: Path) -> None:
    assert conn.resumed is not None
    proctitle.set_title(f"imapd: [{conn.peer_ip}] resuming")
    blob, uid_then = conn.resumed.blob, conn.resumed.uid
    try:
        login = login_of(blob)
    except BlobError as e:
        log.error("ip=[%s]: cannot resume a hibernated session: %s", conn.peer_ip, e)
        _bye(conn, "Cannot resume the session")
        return
    try:
        info = authclient.auth_pre(authsocket, "imap", login)
    except authclient.AuthTempFail as e:
        log.error("user=%s, ip=[%s]: cannot resume, authd: %s", login, conn.peer_ip, e)
        _bye(conn, "Temporary problem, please log in again")
        return
    try:
        if info is None:
            raise LookupError("no such account any more")
        uid = info.uid if info.uid is not None else pwd.getpwnam(info.username).pw_uid
        if uid != uid_then:
            raise LookupError(f"the account is uid {uid}, the sleeping session was {uid_then}")
        privsep.switch_to_user(uid, info.gid)
        os.chdir(info.home)
        root = open_maildir_root(info.home, info.maildir, cfg.maildirpath)
        img = decode(blob)
        if img.user != login:
            raise BlobError("login changed under us")
    except (LookupError, BlobError, privsep.PrivsepError, OSError) as e:
        log.error("user=%s, ip=[%s]: cannot resume a hibernated session: %s",
                  login, conn.peer_ip, e)
        _bye(conn, "Cannot resume the session, please log in again")
        return
    sharedfolders.configure(cfg.etc)
    quota, groups = account_settings(info)
    session = Session(conn, ImapConnection(State.AUTHENTICATED, SESSION_LIMITS), root, cfg,
                      login, Counters(), account_quota=quota, acl_groups=groups)
    started, cpu = time.monotonic(), time.process_time()
    try:
        how = restore(session, img)
    except FolderGone as e:
        log.info("user=%s: selected folder gone while hibernated: %s", login, e)
        _bye(conn, "[ALERT] The selected mailbox was deleted or renamed")
        return
    except FolderReplaced:
        log.info("user=%s: selected folder replaced while hibernated", login)
        _bye(conn, "[ALERT] The selected mailbox was deleted and created again")
        return
    except OSError as e:
        log.error("user=%s, ip=[%s]: cannot reopen the mailbox: %s", login, conn.peer_ip, e)
        _bye(conn, "Unable to open your mailbox")
        return
    log.info("RESUME, user=%s, ip=[%s], folder=%s%s, in %.1f ms (%.1f ms CPU)", login,
             conn.peer_ip, img.folder.name if img.folder is not None else "-",
             f" ({how})" if how else "",
             (time.monotonic() - started) * 1000, (time.process_time() - cpu) * 1000)
    session.run(resumed=True)


def restore(s: Session, img: SessionImage) -> str:
    """Put the session back as its client last saw it (the user's process, the blob
    decoded). Rights are read again, not taken from the blob. How the folder view was
    made: "snapshot" (unchanged since: no scan), "rebuilt", or "" (none selected)."""
    s.utf8 = s.core.utf8 = img.utf8
    s.condstore, s.qresync = img.condstore, img.qresync
    s.counters.rcvd, s.counters.sent, s.counters.body = img.rcvd, img.sent, img.body
    s.started = time.monotonic() - img.elapsed
    s.hibernate_nap = hibernate.next_nap(img, s.cfg.hibernate_timeout, time.time())
    s.copied.clear()
    s.copied.update(img.copied)
    return _reselect(s, img.folder) if img.folder is not None else ""


def _reselect(s: Session, f: FolderImage) -> str:
    path = folder_path(s.root, f.name)
    if path is None or not (path / "cur").is_dir():
        raise FolderGone(f.name)
    rights = s._rights(path)
    if "r" not in rights:
        raise FolderGone(f"{f.name}: no read right any more")
    readonly = f.readonly or not set(rights) & set("iestw")
    maildir = keywordpolicy.folder(sharedfolders.open_folder(s.root, path), s.cfg.keywords)
    view = _from_snapshot(f, maildir, readonly) if f.snapshot is not None else None
    how = "snapshot" if view is not None else "rebuilt"
    if view is None:
        view = _as_told(f, maildir, readonly)
    view.cur_id = f.cur_id
    view.ghosts = set(f.ghosts)
    view.keywords = set(f.announced)
    view.recent = set(f.recent) | view.recent
    s.enter(view, path, rights)
    if f.tracked:
        s._track(view)
    return how


def _from_snapshot(f: FolderImage, maildir, readonly: bool) -> MailboxView | None:
    """The client saw only the SELECT's snapshot, and the folder is still as it
    recorded (open_summary checks the stamps) in that very file: the view is that
    lazy one again, no scan, nothing per message. None: rebuild from the blob."""
    summary = maildir.open_summary()
    if summary is None:
        return None       # changed since: no view made, which would scan (and take \Recent)
    summary.file.close()  # type: ignore[attr-defined]
    view = MailboxView(f.name, maildir, readonly)
    if view.snapshot_id() == f.snapshot and view.uidvalidity == f.uidvalidity:
        return view
    view.close()          # replaced in between (rare): the scan's \Recent is lost
    return None


def _as_told(f: FolderImage, maildir, readonly: bool) -> MailboxView:
    st = maildir.scan()        # new mail is moved to cur/ here: its \Recent is ours
    if st.uidvalidity != f.uidvalidity:
        raise FolderReplaced(f.name)
    disk = st.messages
    msgs = _told_columns(f, disk) if isinstance(disk, MessageList) else _told_refs(f, disk)
    told = FolderState(f.uidvalidity, st.uidnext, msgs,      # type: ignore[arg-type]
                       frozenset(f.recent) | st.recent)
    del disk, st
    return MailboxView(f.name, maildir, readonly, as_told=told)


# The name of each message carries the flags as told (a refresh compares names
# first; one another session renamed is found again by MailboxView.relocate, as
# awake). A message gone while the session slept gets a name that is nowhere: the
# refresh finds it missing and reports it when RFC 3501 allows; until then it
# keeps its number, as a ghost does.

def _told_columns(f: FolderImage, disk: MessageList) -> MessageList:
    """The list as told, built as columns from the scan's (no MessageRef, no stat)."""
    d_uids, d_names, d_sizes, d_mtimes, _kws = disk.columns()
    at = {u: j for j, u in enumerate(d_uids)}
    uids, sizes = array.array(d_uids.typecode), array.array(d_sizes.typecode)
    mtimes = array.array(d_mtimes.typecode)
    names: list[str] = []
    keywords: dict[int, frozenset[str]] = {}
    for k, (uid, flags, kws) in enumerate(zip(f.uids, f.flags, f.keywords, strict=True)):
        j = at.get(uid)
        if j is None:
            base, size, mtime = f"hibernated.{uid}", 0, 0.0
        else:
            name = d_names[j]
            cut = name.find(INFO_SEP)
            base = name[:cut] if cut >= 0 else split_name(name)[0]
            size, mtime = d_sizes[j], d_mtimes[j]
        uids.append(uid)
        names.append(join_name(base, flags))
        sizes.append(size)
        mtimes.append(mtime)
        if kws:
            keywords[k] = kws
    return MessageList(uids, names, sizes, mtimes, keywords, disk.cur)


def _told_refs(f: FolderImage, disk) -> tuple[MessageRef, ...]:
    on_disk = {m.uid: m for m in disk}
    refs: list[MessageRef] = []
    for uid, flags, kws in zip(f.uids, f.flags, f.keywords, strict=True):
        m = on_disk.get(uid)
        if m is None:
            base = f"hibernated.{uid}"
            refs.append(MessageRef(uid, base, join_name(base, flags), flags, 0, 0.0, kws))
        else:
            refs.append(MessageRef(uid, m.base, join_name(m.base, flags), flags, m.size,
                                   m.mtime, kws))
    return tuple(refs)
