"""The authenticated IMAP session: the driver between the core, the socket and the Maildir.

Runs after the switch to the user. Each command from the core is handled here
against libcourier.maildir; the replies are built with the core's formatter.
"""

from __future__ import annotations

import glob
import logging
import os
import select
import selectors
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from courier_imapd import acl as aclmod
from courier_imapd import (
    condstore,
    ident,
    keywordpolicy,
    searchdata,
    sharedfolders,
    specialuse,
    trash,
)
from courier_imapd import fetch as fetchmod
from courier_imapd import hibernate as hibernatemod
from courier_imapd import modseq as modseqmod
from courier_imapd import quota as quotamod
from courier_imapd import search as searchmod
from courier_imapd import sort as sortmod
from courier_imapd import thread as threadmod
from courier_imapd.config import ImapdConfig, capability_line
from courier_imapd.core import (
    COURIER_LIST_OPTS,
    SESSION_LIMITS,
    AclCommand,
    Append,
    BadCommand,
    Capability,
    Check,
    Close,
    Copy,
    Enable,
    Expunge,
    Fetch,
    Id,
    Idle,
    IdleDone,
    ImapConnection,
    ListMailboxes,
    LiteralShort,
    Logout,
    MailboxCommand,
    Namespace,
    Noop,
    Quota,
    Rename,
    Search,
    Select,
    Sort,
    State,
    Status,
    Store,
    StoreMode,
    StreamedLiteral,
    Thread,
    Unselect,
    astring_out,
    bad,
    fetch_response_pieces,
    tagged,
    untagged,
)
from courier_imapd.listmatch import ListPattern
from courier_imapd.login import Counters, Wire, read_event, send
from courier_imapd.mailbox import (
    FolderReplaced,
    MailboxView,
    SequenceError,
    flags_text,
    split_flags,
)
from courier_imapd.modseq import Tracker
from courier_imapd.sharedfolders import folder_path

from libcourier import proctitle
from libcourier.maildir import folders
from libcourier.maildir.folder import Maildir
from libcourier.maildir.folders import FolderError
from libcourier.maildir.keywords import KeywordError
from libcourier.maildir.msglist import MessageList, Picked
from libcourier.maildir.mutf7 import encode_mutf7
from libcourier.maildir.shared import SharedError
from libcourier.maildir.watch import FolderWatch

log = logging.getLogger("courier.imapd")

NAMESPACE = '(("INBOX." ".")) NIL (("#shared." ".")("shared." "."))'   # Courier imapd.C
SUBSCRIBED = folders.SUBSCRIBED
OUT_CHUNK = 256 * 1024   # bytes of FETCH responses gathered before one send
IDLE_POLL = 1.0     # seconds between the cheap change checks of IDLE


@dataclass(slots=True)
class Session:
    conn: Wire
    core: ImapConnection
    root: Path                      # the Maildir (INBOX)
    cfg: ImapdConfig
    user: str
    counters: Counters = field(default_factory=Counters)
    view: MailboxView | None = None
    _last_view: MailboxView | None = None   # the folder just closed (_unselect)
    started: float = field(default_factory=time.monotonic)
    utf8: bool = False              # ENABLE UTF8=ACCEPT (RFC 6855): names go out as UTF-8
    condstore: bool = False         # RFC 7162 §3.1: MODSEQ in FETCH responses from now on
    qresync: bool = False           # ENABLE QRESYNC (RFC 7162 §3.2.3): VANISHED, not EXPUNGE
    copied: set[int] = field(default_factory=set)   # UIDs copied from the selected folder
    account_quota: str | None = None   # authd's QUOTA ("100000S,50C"), Courier's MAILDIRQUOTA
    acl_groups: tuple[str, ...] = ()   # authd's OPTIONS group=, for group=<name> ACL entries
    sel_rights: str = ""               # the user's ACL rights on the selected folder
    hibernate_nap: float = 0.0         # seconds idle before hibernating (hibernate.nap)
    hibernated: bool = False           # run() ended by handing the connection to the listener

    # -- helpers ----------------------------------------------------------------------------

    def out(self, *chunks: bytes) -> None:
        sock = self.conn.sock
        short = sock.gettimeout()
        if short is not None and short < self.cfg.autologout:
            # IDLE polls the socket with a 1 s timeout; a send must not inherit it,
            # or a client reading slowly loses its session mid-response.
            sock.settimeout(self.cfg.autologout)
            try:
                send(self.conn, b"".join(chunks), self.counters)
            finally:
                sock.settimeout(short)
            return
        send(self.conn, b"".join(chunks), self.counters)

    def title(self, state: str) -> None:
        proctitle.set_title(f"imapd: {self.user} [{self.conn.peer_ip}] {state}")

    def _untagged(self, lines: list[str]) -> bytes:
        return b"".join(untagged(x) for x in lines)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, resumed: bool = False) -> None:
        """The session until LOGOUT, EOF, autologout, or hibernation. `resumed`: a
        session woken from hibernation (resume.py) whose login chores are done."""
        if not resumed:
            self.core.set_state(State.AUTHENTICATED, SESSION_LIMITS)
        self.conn.sock.settimeout(self.cfg.autologout)
        self.title(f"SELECTED {self.view.name}" if self.view is not None else "AUTHENTICATED")
        if not resumed:
            self._maintain(login=True)
        asleep = False
        try:
            while True:
                try:
                    ev = self._next_command()
                except TimeoutError:
                    self.out(untagged("BYE Autologout; idle for too long"))
                    return
                if ev is hibernatemod.ASLEEP:
                    asleep = self.hibernated = True
                    return
                if ev is None:
                    return
                try:
                    if not self.handle(ev):
                        return
                except FileNotFoundError:
                    # Another session deleted or renamed the selected folder: there is
                    # nothing left to show, so end the session cleanly (RFC 3501 §7.1.5).
                    if self.view is None or (self.view.maildir.path / "cur").is_dir():
                        raise
                    log.info("user=%s: selected folder %s vanished", self.user, self.view.name)
                    self.out(untagged("BYE [ALERT] The selected mailbox was deleted or renamed"))
                    return
                except FolderReplaced:
                    # Deleted and made again: new UIDVALIDITY, old UIDs mean nothing.
                    log.info("user=%s: selected folder %s was replaced", self.user, self.view.name
                             if self.view else "?")
                    self.out(untagged("BYE [ALERT] The selected mailbox was deleted and "
                                      "created again"))
                    return
                except LiteralShort as e:
                    # A message file shrank under us mid-literal: the client cannot
                    # find the next response any more, so end the session.
                    log.error("user=%s, ip=[%s]: %s; closing", self.user, self.conn.peer_ip, e)
                    return
        finally:
            if not asleep:
                self._logout()

    def _next_command(self) -> object | None:
        """read_event, or hibernatemod.ASLEEP once IMAP_HIBERNATE_TIMEOUT passed without
        a command and the session handed itself to the listener."""
        nap = hibernatemod.nap(self)
        if not nap:
            return read_event(self.conn, self.core, self.counters)
        sock = self.conn.sock
        sock.settimeout(nap)
        try:
            return read_event(self.conn, self.core, self.counters)
        except TimeoutError:
            if hibernatemod.hibernate(self):
                return hibernatemod.ASLEEP
            sock.settimeout(self.cfg.autologout - nap)   # the rest of the autologout
            return read_event(self.conn, self.core, self.counters)
        finally:
            sock.settimeout(self.cfg.autologout)

    def _logout(self) -> None:
        self._maintain(login=False)
        log.info("LOGOUT, user=%s, ip=[%s], headers=0, body=%d, rcvd=%d, sent=%d, time=%d",
                 self.user, self.conn.peer_ip, self.counters.body, self.counters.rcvd,
                 self.counters.sent, int(time.monotonic() - self.started))

    def handle(self, ev: object) -> bool:
        """Answer one command; False when the session is over."""
        match ev:
            case BadCommand():
                self.out(bad(ev))
            case IdleDone():
                self.out(untagged("BAD Unexpected DONE"))
            case Capability(tag=tag):
                self.out(untagged("CAPABILITY " + capability_line(self.cfg, self.conn.tls)),
                         tagged(tag, "OK", "CAPABILITY completed"))
            case Noop(tag=tag) | Check(tag=tag):
                self.out(self._updates(), tagged(tag, "OK", f"{type(ev).__name__.upper()} completed"))
            case Logout(tag=tag):
                self.out(untagged("BYE Courier-IMAP server shutting down"),
                         tagged(tag, "OK", "LOGOUT completed"))
                return False
            case Namespace(tag=tag):
                self.out(untagged("NAMESPACE " + NAMESPACE), tagged(tag, "OK", "NAMESPACE completed"))
            case Select():
                self.select(ev)
            case ListMailboxes():
                self.list(ev)
            case Status():
                self.status(ev)
            case MailboxCommand():
                self.mailbox_command(ev)
            case Rename():
                self.rename(ev)
            case Append():
                self.append(ev)
            case Copy():
                self.copy(ev)
            case Close(tag=tag):
                assert self.view is not None
                if not self.view.readonly and "e" in self.sel_rights:
                    # Rescan first so \Deleted set by another session counts too;
                    # RFC 3501 §6.4.2: no untagged responses for CLOSE.
                    self.view.refresh(allow_expunge=False)
                    self.view.expunge()
                self._unselect()
                self.out(tagged(tag, "OK", "mailbox closed."))
            case Expunge():
                self.expunge(ev)
            case Fetch():
                self.fetch(ev)
            case Store():
                self.store(ev)
            case Search() | Sort() | Thread():
                self.search(ev)
            case Idle():
                return self.idle(ev)
            case Enable() | Unselect() | Id() | Quota():
                self.extension(ev)
            case AclCommand():
                path = folder_path(self.root, ev.mailbox)
                reply = aclmod.answer(ev, self.root, path, self._who(), self._acl_name,
                                      sharedfolders.fixed_rights(self.root, path))
                self.out(self._rights_changed(ev, path) + reply)
            case _:
                self.out(tagged(getattr(ev, "tag", "*"), "BAD", "Not allowed now"))
        return True

    # -- ACL rights (RFC 4314 §4, as Courier checks them) ---------------------------------

    def _who(self) -> aclmod.Who:
        return aclmod.Who(self.user, self.acl_groups)

    def _acl_name(self, name: str) -> str:
        return aclmod.qs(name if self.utf8 else encode_mutf7(name))

    def _rights(self, path: Path) -> str:
        """The user's rights on a folder; all of them when its ACL cannot be read
        (logged): a broken file must not lock the owner out."""
        if sharedfolders.is_private_copy(self.root, path):
            return sharedfolders.rights(path)     # Courier's fixed rights on shared.*
        try:
            return aclmod.rights_of(self.root, path, self._who())
        except OSError as e:
            log.error("reading the ACL of %s for %s: %s", path, self.user, e)
            return aclmod.aclfile.ALL

    def _myrights_line(self) -> str:
        # Courier's response code at SELECT and when the rights change; only when
        # ACL is advertised (IMAP_ACL=1), where clients know what it means.
        return f'OK [MYRIGHTS "{aclmod.aclfile.rights_out_all(self.sel_rights)}"] ACL'

    def _rights_changed(self, cmd: AclCommand, path: Path | None) -> bytes:
        """After SETACL/DELETEACL on the selected folder (`path`, cmd.mailbox's
        directory as resolved for the command): its rights from now on."""
        if cmd.verb not in ("SETACL", "DELETEACL") or self.view is None or \
                path != self.view.maildir.path:
            return b""
        new = self._rights(self.view.maildir.path)
        if new == self.sel_rights:
            return b""
        self.sel_rights = new
        return untagged(self._myrights_line()) if self.cfg.acl else b""

    def _allowed(self, tag: str, verb: str, where: str, path: Path, right: str) -> bool:
        if right in self._rights(path):
            return True
        self.out(tagged(tag, "NO", aclmod.denied(verb, where, right)))
        return False

    def _updates(self) -> bytes:
        if self.view is None:
            return b""
        return self._untagged(self.view.refresh(allow_expunge=True))

    def _unselect(self) -> None:
        # Kept until the next SELECT, which may take it again (MailboxView.reusable).
        self._last_view, self.view = self.view, None
        self.copied.clear()
        self.core.set_state(State.AUTHENTICATED)
        self.title("AUTHENTICATED")

    # -- extensions: ENABLE, UNSELECT, ID, QUOTA; upkeep at login and logout ---------------

    def _maintain(self, login: bool) -> None:
        """Courier's chores at login and logout: IMAP_EMPTYTRASH, and at login the
        special-use folders. A failure is logged; the session goes on."""
        try:
            if login:
                specialuse.ensure_folders(self.root, self.cfg)
            trash.empty_trash(self.root, self.cfg)
        except OSError as e:
            log.error("user=%s: %s upkeep failed: %s", self.user, "login" if login else "logout", e)

    def _name_out(self, name: str) -> bytes:
        """A mailbox name on the wire: modified UTF-7, or UTF-8 once UTF8=ACCEPT is on
        (RFC 6855 §3: a quoted string may then carry UTF-8)."""
        if not self.utf8:
            return mailbox_out(name)
        if name.isascii():
            return astring_out(name)      # "R&D" stays R&D: no modified UTF-7 now
        return b'"' + name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'

    def extension(self, ev: Enable | Unselect | Id | Quota) -> None:
        match ev:
            case Enable(tag=tag, extensions=names):
                # RFC 5161 §3.2: ENABLED names what we enabled; the rest is ignored.
                done = []
                if "UTF8=ACCEPT" in names:
                    self.utf8 = self.core.utf8 = True
                    done.append("UTF8=ACCEPT")
                if "CONDSTORE" in names or "QRESYNC" in names:
                    self.condstore = True
                    done.append("CONDSTORE")
                if "QRESYNC" in names:      # RFC 7162 §3.2.3: implies CONDSTORE
                    self.qresync = True
                    done.append("QRESYNC")
                self.out(untagged(" ".join(["ENABLED", *done])), tagged(tag, "OK", "Options enabled"))
            case Unselect(tag=tag):
                self._unselect()    # RFC 3691: no expunge, no untagged responses
                self.out(tagged(tag, "OK", "UNSELECT completed"))
            case Id(tag=tag, params=params):
                if self.cfg.id_fields is None:
                    self.out(tagged(tag, "BAD", "ID is not enabled"))
                    return
                log.info("ID, user=%s, ip=[%s], port=[%d]%s", self.user, self.conn.peer_ip,
                         self.conn.peer_port,
                         ident.id_log_text(params))
                self.out(untagged(ident.id_response(self.cfg.id_fields)),
                         tagged(tag, "OK", "ID completed"))
            case Quota():
                self.quota(ev)

    def _quota_allows(self, tag: str, target: Path, size: int, count: int) -> bool:
        """Courier's check before APPEND/COPY; NO [OVERQUOTA] (RFC 9208 §4.3) when over."""
        if sharedfolders.is_private_copy(self.root, target):
            return True         # shared folders count toward no quota (Courier)
        try:
            if quotamod.admit(target, size, count, self.account_quota):
                return True
        except OSError as e:
            log.error("user=%s: quota check failed: %s", self.user, e)
            return True         # a soft quota: an unreadable maildirsize refuses nothing
        self.out(tagged(tag, "NO", "You exceeded your mail quota.", "OVERQUOTA"))
        return False

    def _quota_settle(self, target: Path, size: int, count: int) -> None:
        if sharedfolders.is_private_copy(self.root, target):
            return
        try:
            quotamod.settle(target, size, count)
        except OSError as e:
            log.error("user=%s: cannot update maildirsize: %s", self.user, e)

    def quota(self, cmd: Quota) -> None:
        """RFC 9208 §4.2-4.4 with Courier's one quota root, ROOT."""
        if cmd.verb == "SETQUOTA":
            self.out(tagged(cmd.tag, "NO", "SETQUOTA No permission.", "NOPERM"))
            return
        try:
            use = quotamod.usage(self.root)
        except OSError as e:
            log.error("user=%s: cannot read the quota: %s", self.user, e)
            self.out(tagged(cmd.tag, "NO", f"{cmd.verb} failed"))
            return
        if cmd.verb == "GETQUOTA":
            if use is None or cmd.name != quotamod.ROOT:
                self.out(tagged(cmd.tag, "NO", "No such quota root", "NONEXISTENT"))
                return
            self.out(untagged(quotamod.quota_line(use)), tagged(cmd.tag, "OK", "GETQUOTA Ok."))
            return
        if not folders.exists(self.root, cmd.name):
            self.out(tagged(cmd.tag, "NO", "Mailbox does not exist", "NONEXISTENT"))
            return
        roots = f' "{quotamod.ROOT}"' if use is not None else ""
        lines = [b"QUOTAROOT " + self._name_out(cmd.name) + roots.encode()]
        if use is not None:
            lines.append(quotamod.quota_line(use).encode())
        self.out(*(untagged(x) for x in lines), tagged(cmd.tag, "OK", "GETQUOTAROOT Ok."))

    # -- mailboxes (RFC 3501 §6.3) ------------------------------------------------------------

    def select(self, cmd: Select) -> None:
        if cmd.qresync is not None and not self.qresync:
            # RFC 7162 §3.2.5: QRESYNC parameters only after ENABLE QRESYNC.
            self.out(tagged(cmd.tag, "BAD", "QRESYNC is not enabled"))
            return
        if self.view is not None:
            # RFC 7162 §3.2.11: the client learns where the old mailbox's responses end.
            self.out(untagged("OK [CLOSED] Previous mailbox closed"))
        self._unselect()   # §6.3.1: a failed SELECT leaves no mailbox selected
        if cmd.condstore or cmd.qresync is not None:
            self.condstore = True       # RFC 7162 §3.1: a CONDSTORE enabling command
        path = folder_path(self.root, cmd.mailbox)
        if path is None or not (path / "cur").is_dir():
            self.out(tagged(cmd.tag, "NO", "Mailbox does not exist, or must be subscribed to."))
            return
        rights = self._rights(path)
        if "r" not in rights:
            self.out(tagged(cmd.tag, "NO", aclmod.denied("SELECT/EXAMINE", cmd.mailbox, "r")))
            return
        # Courier: without any of i e s t w the folder can only be read.
        readonly = cmd.readonly or not set(rights) & set("iestw")
        try:
            folder = keywordpolicy.folder(sharedfolders.open_folder(self.root, path),
                                          self.cfg.keywords)
            last, self._last_view = self._last_view, None
            if last is not None and last.reusable(folder, readonly):
                view = last                 # the folder just closed, unchanged (mailbox.py)
                view.reopen(cmd.mailbox)
            else:
                del last
                view = MailboxView(cmd.mailbox, folder, readonly)
        except OSError as e:
            log.error("cannot open %s for %s: %s", path, self.user, e)
            self.out(tagged(cmd.tag, "NO", "Cannot open the mailbox"))
            return
        self.enter(view, path, rights)
        self.title(f"SELECTED {cmd.mailbox}")
        lines = keywordpolicy.select_lines(view.select_responses(), self.cfg.keywords)
        if self.cfg.acl:
            lines.append(self._myrights_line())
        if not self.condstore:
            # RFC 7162 §3.1.2.1: a folder with mod-sequences says its HIGHESTMODSEQ
            # at every SELECT; from the log's last line, no tracking for this session.
            top = modseqmod.peek_highest(path, view.uidvalidity)
            if top is not None:
                lines.append(f"OK [HIGHESTMODSEQ {top}] Highest")
        else:
            lines += self._track(view, just_opened=True)
            if cmd.qresync is not None and view.tracker is not None:
                lines += condstore.qresync_lines(
                    cmd.qresync, view.state.uidvalidity, view.state.uidnext, view.messages,
                    view.tracker, lambda m: flags_text(m.flags, m.uid in view.recent, m.keywords))
        reply = self._untagged(lines) + \
            tagged(cmd.tag, "OK", "Ok", "READ-ONLY" if readonly else "READ-WRITE")
        if view.holding() and (len(reply) > SHORT_REPLY or not _writable(self.conn.sock)):
            # A client not reading (or a stalled link) could keep the reply, and with
            # it cur/'s lock, for the autologout: every other scan of the folder waits.
            view.unhold()
        self.out(reply)
        view.after_select()     # a snapshot SELECT's reply did not wait for (mailbox.py)

    def enter(self, view: MailboxView, path: Path, rights: str) -> None:
        """Make `view` (of folder `path`, the user's `rights` on it) the selected one:
        SELECT's, and a resumed session's (resume.py)."""
        if not sharedfolders.is_private_copy(self.root, path):   # shared: no quota, no Trash
            view.disposer = trash.disposer_for(self.root, path, self.cfg)
            view.disposer.copied = self.copied
        self.view = view
        self.sel_rights = rights
        self.core.set_state(State.SELECTED)

    def _track(self, view: MailboxView, just_opened: bool = False) -> list[str]:
        """Start mod-sequences for the selected folder (RFC 7162); its HIGHESTMODSEQ line.
        A folder whose log cannot be written has none: NOMODSEQ (§3.1.2.2)."""
        if view.tracker is None:
            try:
                tracker = Tracker(view.maildir.path, view.state.uidvalidity)
                # A fresh scan (the SELECT's own when just opened): what the view
                # holds may be older than the disk, and an old digest would count
                # as one more change.
                msgs = view.state.messages if just_opened else view.maildir.scan().messages
                # Flags and keywords only: peeked, no mtime read (msglist.py).
                tracker.update(msgs.peeked() if isinstance(msgs, MessageList) else msgs,
                               complete=True)
            except OSError as e:
                log.error("user=%s: no mod-sequences for %s: %s", self.user, view.name, e)
                return ["OK [NOMODSEQ] No permanent modsequences"]
            view.tracker = tracker
            view.qresync = self.qresync
        return [f"OK [HIGHESTMODSEQ {view.tracker.highest}] Highest"]

    def _condstore_on(self) -> list[str]:
        """A CONDSTORE enabling command (RFC 7162 §3.1): on for the rest of the session;
        a HIGHESTMODSEQ for the selected folder the first time."""
        if self.condstore and (self.view is None or self.view.tracker is not None):
            return []
        self.condstore = True
        return self._track(self.view) if self.view is not None else []

    def _all_mailboxes(self) -> list[str]:
        return folders.all_folders(self.root) + sharedfolders.listed(self.root)

    def list(self, cmd: ListMailboxes) -> None:
        name = "LSUB" if cmd.lsub else "LIST"
        if not cmd.lsub and cmd.pattern == "" and not cmd.extended:
            # §6.3.8: an empty pattern asks for the hierarchy delimiter.
            self.out(untagged('LIST (\\Noselect) "." ""'), tagged(cmd.tag, "OK", "LIST completed"))
            return
        rxs = [ListPattern(cmd.reference + p) for p in (cmd.patterns or (cmd.pattern,))]
        real = self._all_mailboxes()
        allnames = set(real)
        # Maildir++ is flat: .a.b may exist without .a. Such a parent is listed as
        # \Noselect (RFC 3501 §6.3.8) so a client can still walk the tree.
        parents = {b.rsplit(".", k)[0] for b in real for k in range(1, b.count(".") + 1)}
        parents -= allnames
        # RFC 5258 options (parsed by the core): SUBSCRIBED selects like LSUB and
        # marks \Subscribed; SPECIAL-USE (RFC 6154 §3) keeps only special-use folders.
        want_subs = "SUBSCRIBED" in cmd.select_opts or "SUBSCRIBED" in cmd.return_opts
        subs = folders.read_subscriptions(self.root) + sharedfolders.subscribed(self.root) \
            if cmd.lsub or want_subs else []
        uses = specialuse.special_uses(self.cfg, self.root) if not cmd.lsub else {}
        childinfo: set[str] = set()
        if cmd.lsub or "SUBSCRIBED" in cmd.select_opts:
            boxes = list(subs)
            if "RECURSIVEMATCH" in cmd.select_opts:
                # RFC 5258 §3.5: a parent of a subscribed mailbox is named too, with
                # ("CHILDINFO" ("SUBSCRIBED")), whether or not it is subscribed itself.
                childinfo = {s.rsplit(".", k)[0] for s in subs for k in range(1, s.count(".") + 1)}
                boxes += sorted(childinfo - set(subs))
            noselect = {b for b in boxes if b not in allnames}
        else:
            boxes = sorted(allnames | parents, key=lambda b: (b != "INBOX", b))
            noselect = parents
        if "SPECIAL-USE" in cmd.select_opts:
            boxes = [b for b in boxes if b in uses and b in allnames]
        subscribed = set(subs) if want_subs else set()
        out = []
        for b in boxes:
            if not any(rx.fullmatch(b) for rx in rxs):
                continue
            kids = any(o.startswith(b + ".") for o in allnames)
            attrs = ["\\HasChildren" if kids else "\\HasNoChildren"]
            if b in noselect:
                # RFC 5258 §3.4: \NonExistent (implies \Noselect) in the extended LIST;
                # the classic one keeps Courier's \Noselect.
                attrs.insert(0, "\\NonExistent" if cmd.extended else "\\Noselect")
            if b in subscribed:
                attrs.append("\\Subscribed")
            if b in uses and b in allnames:
                attrs.append(uses[b])       # RFC 6154 §2: sent whether asked for or not
            line = f"{name} ({' '.join(attrs)}) \".\" ".encode() + self._name_out(b)
            if set(cmd.select_opts) & COURIER_LIST_OPTS:
                line += self._list_acl_data(b, cmd.select_opts)
            if b in childinfo:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            out.append(untagged(line))
            if cmd.status_items and b in allnames:
                # RFC 5819 §2: STATUS of each selectable mailbox listed, after its LIST
                path = folder_path(self.root, b)
                # RFC 5819 §2: no STATUS where it would be refused (no "r" right).
                if path is not None and (path / "cur").is_dir() and "r" in self._rights(path):
                    out.append(self._status_line(b, path, cmd.status_items))
        self.out(b"".join(out), tagged(cmd.tag, "OK", f"{name} completed"))

    def _list_acl_data(self, mailbox: str, opts: tuple[str, ...]) -> bytes:
        """Courier's LIST (ACL MYRIGHTS POSTADDRESS) data for one listed name; a
        shared.* name is not opened for it (no private copy made by a LIST)."""
        rights = sharedfolders.name_rights(self.root, mailbox)
        if rights is not None:
            return aclmod.list_data(opts, rights, [("anyone", rights)])
        path = folder_path(self.root, mailbox)
        if path is None:
            return b""
        rights = self._rights(path)
        acl = None
        if "ACL" in opts and "a" in rights:
            try:
                acl = aclmod.aclfile.read(self.root, path)
            except OSError as e:
                log.error("reading the ACL of %s for %s: %s", path, self.user, e)
        return aclmod.list_data(opts, rights, acl)

    def mailbox_command(self, cmd: MailboxCommand) -> None:
        """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE (RFC 3501 §6.3.3, 6.3.4, 6.3.6, 6.3.7)."""
        try:
            if cmd.verb in ("SUBSCRIBE", "UNSUBSCRIBE", "DELETE") and \
                    sharedfolders.is_shared_name(cmd.mailbox):
                # Courier: a shared folder's subscription is its private copy, and
                # DELETE of one unsubscribes ("UNSUBSCRIBEd a shared folder").
                if cmd.verb == "DELETE" and self.view is not None and \
                        self.view.name.lower() == cmd.mailbox.lower():
                    raise FolderError("Cannot delete the selected mailbox")
                (sharedfolders.subscribe if cmd.verb == "SUBSCRIBE" else
                 sharedfolders.unsubscribe)(self.root, cmd.mailbox)
            elif cmd.verb == "CREATE":
                if any(a not in specialuse.ATTRS for a in cmd.use) or len(cmd.use) > 1:
                    # RFC 6154 §3: a use we cannot honour fails the whole CREATE.
                    self.out(tagged(cmd.tag, "NO", "Unsupported special-use attribute",
                                    "USEATTR"))
                    return
                parent = cmd.mailbox.rsplit(".", 1)[0] if "." in cmd.mailbox else "INBOX"
                ppath = folder_path(self.root, parent)
                if ppath is not None and not self._allowed(cmd.tag, "CREATE", parent, ppath, "c"):
                    return
                folders.create_folder(self.root, cmd.mailbox)
                if cmd.use:
                    specialuse.remember(self.root, cmd.mailbox, cmd.use)
            elif cmd.verb == "DELETE":
                if self.view is not None and \
                        folder_path(self.root, self.view.name) == folder_path(self.root, cmd.mailbox):
                    raise FolderError("Cannot delete the selected mailbox")
                dpath = folder_path(self.root, cmd.mailbox)
                if dpath is not None and (dpath / "cur").is_dir() and \
                        not self._allowed(cmd.tag, "DELETE", cmd.mailbox, dpath, "x"):
                    return
                kept = aclmod.aclfile.read(self.root, dpath) if dpath is not None else None
                folders.delete_folder(self.root, cmd.mailbox)
                if dpath is not None and kept is not None and \
                        any(self.root.glob(glob.escape(dpath.name) + ".*")):
                    # Courier: a name that lives on as its children's parent keeps its
                    # ACL, now in courierimaphieracl/.
                    try:
                        aclmod.aclfile.write(self.root, dpath, kept, self._who().owner)
                    except aclmod.aclfile.AclError as e:
                        log.info("user=%s: ACL of %s not kept: %s", self.user, dpath, e)
            elif cmd.verb == "SUBSCRIBE":
                folders.subscribe(self.root, cmd.mailbox)
            else:
                folders.unsubscribe(self.root, cmd.mailbox)
        except (FolderError, SharedError) as e:
            self.out(tagged(cmd.tag, "NO", e.text))
            return
        except OSError as e:
            log.error("%s %s for %s: %s", cmd.verb, cmd.mailbox, self.user, e)
            self.out(tagged(cmd.tag, "NO", f"{cmd.verb} failed"))
            return
        self.out(tagged(cmd.tag, "OK", f"{cmd.verb} completed"))

    def rename(self, cmd: Rename) -> None:
        if self.view is not None and cmd.old != "INBOX" and \
                (self.view.name == cmd.old or self.view.name.startswith(cmd.old + ".")):
            # Our view's directory would move under us; Courier refuses this too.
            self.out(tagged(cmd.tag, "NO", "Cannot rename the selected mailbox"))
            return
        # Courier: "x" on the folder renamed, "c" on the new parent.
        old = folder_path(self.root, cmd.old)
        if old is not None and old.is_dir() and \
                not self._allowed(cmd.tag, "RENAME", cmd.old, old, "x"):
            return
        parent = cmd.new.rsplit(".", 1)[0] if "." in cmd.new else "INBOX"
        ppath = folder_path(self.root, parent)
        if ppath is not None and ppath.is_dir() and \
                not self._allowed(cmd.tag, "RENAME", parent, ppath, "c"):
            return
        try:
            folders.rename_folder(self.root, cmd.old, cmd.new)
        except FolderError as e:
            self.out(tagged(cmd.tag, "NO", e.text))
            return
        except OSError as e:
            log.error("RENAME %s for %s: %s", cmd.old, self.user, e)
            self.out(tagged(cmd.tag, "NO", "RENAME failed"))
            return
        if self.view is not None and self.view.name.upper() == "INBOX" and cmd.old == "INBOX":
            self.out(self._updates())
        self.out(tagged(cmd.tag, "OK", "RENAME completed"))

    def _target(self, tag: str, mailbox: str) -> Path | None:
        """The folder a message goes into, or None after NO [TRYCREATE] (§6.3.11, §6.4.7)."""
        path = folder_path(self.root, mailbox)
        if path is None or not (path / "cur").is_dir():
            self.out(tagged(tag, "NO", "Mailbox does not exist", "TRYCREATE"))
            return None
        return path

    def append(self, cmd: Append) -> None:
        path = self._target(cmd.tag, cmd.mailbox)
        if path is None:
            return
        rights = self._rights(path)
        if "i" not in rights:
            self.out(tagged(cmd.tag, "NO", aclmod.denied("APPEND", cmd.mailbox, "i")))
            return
        letters, names = split_flags(cmd.flags)
        if names and not self.cfg.keywords:
            self.out(tagged(cmd.tag, "NO", keywordpolicy.REFUSAL))    # IMAP_KEYWORDS=0
            return
        letters, names = aclmod.flags_allowed(rights, letters, names)
        size, count = quotamod.charge(path, quotamod.stored_size(cmd.message), 1)
        if not self._quota_allows(cmd.tag, path, size, count):
            return
        try:
            added = sharedfolders.append_message(self.root, path, cmd.message, letters,
                                                 cmd.internaldate, names)
        except KeywordError as e:
            self.out(tagged(cmd.tag, "NO", str(e)))
            return
        except OSError as e:
            log.error("APPEND to %s for %s: %s", cmd.mailbox, self.user, e)
            self.out(tagged(cmd.tag, "NO", "APPEND failed"))
            return
        self._quota_settle(path, size, count)
        # RFC 3501 §6.3.11: a client appending to the selected mailbox is told at once.
        updates = self._updates() if self.view is not None and \
            folder_path(self.root, self.view.name) == path else b""
        self.out(updates, tagged(cmd.tag, "OK", "APPEND completed",
                                 f"APPENDUID {added.uidvalidity} {added.uids[0]}"))

    def copy(self, cmd: Copy) -> None:
        """COPY / MOVE (RFC 3501 §6.4.7, RFC 6851) with COPYUID (RFC 4315 §3)."""
        view = self.view
        assert view is not None
        verb = "MOVE" if cmd.move else "COPY"
        if cmd.move and view.readonly:
            self.out(tagged(cmd.tag, "NO", "Mailbox is read-only"))
            return
        idx = self._resolve(cmd.tag, cmd.sequence, cmd.uid)
        if idx is None:
            return
        path = self._target(cmd.tag, cmd.mailbox)
        if path is None:
            return
        rights = self._rights(path)
        if "i" not in rights:
            self.out(tagged(cmd.tag, "NO", aclmod.denied(verb, cmd.mailbox, "i")))
            return
        if cmd.move and not {"e", "t"} <= set(self.sel_rights):
            # RFC 6851 §3.3 with RFC 4314: moving out deletes and expunges.
            self.out(tagged(cmd.tag, "NO", aclmod.denied(verb, "current mailbox", "te")))
            return
        picked = [view.messages[i] for i in idx]
        if any(m.uid in view.ghosts for m in picked):
            self.out(tagged(cmd.tag, "NO", "Some messages were expunged by another session"))
            return
        if not picked:
            # A UID range with no messages is not an error (§6.4.8).
            self.out(tagged(cmd.tag, "OK", f"{verb} completed"))
            return
        # A message moved out of a shared folder was in no quota: it only comes in.
        source = None if sharedfolders.is_private_copy(self.root, view.maildir.path) \
            else view.maildir.path
        size, count = quotamod.charge(path, sum(m.size for m in picked), len(picked),
                                      source, cmd.move)
        if not self._quota_allows(cmd.tag, path, size, count):
            return
        try:
            try:
                added = sharedfolders.copy_messages(
                    self.root,
                    [(view.maildir.path_of(m), aclmod.flags_allowed(rights, m.flags, frozenset())[0], m.size)
                     for m in picked], path,
                    [aclmod.flags_allowed(rights, "", m.keywords)[1] for m in picked])
            except FileNotFoundError:
                # All or nothing was copied. Another session's flag change renames a
                # file: follow the renames and try once more before saying expunged.
                if not view.relocate():
                    raise
                picked = [view.messages[i] for i in idx]
                added = sharedfolders.copy_messages(
                    self.root,
                    [(view.maildir.path_of(m), aclmod.flags_allowed(rights, m.flags, frozenset())[0], m.size)
                     for m in picked], path,
                    [aclmod.flags_allowed(rights, "", m.keywords)[1] for m in picked])
        except FileNotFoundError:
            view.refresh(allow_expunge=False)   # they become ghosts; expunged later
            self.out(tagged(cmd.tag, "NO", "Some messages were expunged by another session"))
            return
        except OSError as e:
            log.error("%s to %s for %s: %s", verb, cmd.mailbox, self.user, e)
            self.out(tagged(cmd.tag, "NO", f"{verb} failed"))
            return
        self._quota_settle(path, size, count)
        code = (f"COPYUID {added.uidvalidity} {uid_set([m.uid for m in picked])} "
                f"{uid_set(list(added.uids))}")
        if not cmd.move:
            # IMAP_MOVE_EXPUNGE_TO_TRASH deletes these on EXPUNGE instead (Courier's
            # copiedflag): the client has put them where it wanted.
            self.copied.update(m.uid for m in picked)
            self.out(tagged(cmd.tag, "OK", "COPY completed", code))
            return
        # RFC 6851 §4.3/§4.4: COPYUID in an untagged OK before the EXPUNGEs.
        gone = {m.uid for m in picked}
        lines = []
        for i in range(len(view.messages) - 1, -1, -1):
            m = view.messages[i]
            if m.uid in gone:
                view.maildir.remove(m)
                lines.append(f"{i + 1} EXPUNGE")
                view.recent.discard(m.uid)
                view.sizes.pop(m.uid, None)
                del view.messages[i]
        if view.tracker is not None:
            view.tracker.forget(sorted(gone))
        self.out(untagged(f"OK [{code}] Moved"),
                 self._untagged(view.expunged_lines(lines, sorted(gone))),
                 tagged(cmd.tag, "OK", "MOVE completed"))

    def status(self, cmd: Status) -> None:
        path = folder_path(self.root, cmd.mailbox)
        if path is None or not (path / "cur").is_dir():
            self.out(tagged(cmd.tag, "NO", "Mailbox does not exist"))
            return
        if not self._allowed(cmd.tag, "STATUS", cmd.mailbox, path, "r"):   # RFC 4314 §4
            return
        self.out(self._status_line(cmd.mailbox, path, cmd.items),
                 tagged(cmd.tag, "OK", "STATUS Completed."))

    def _status_line(self, mailbox: str, path: Path, wanted: tuple[str, ...]) -> bytes:
        """`* STATUS name (...)` (RFC 3501 §7.2.4), and what must come before it."""
        st = Maildir(path).scan()
        vals = {
            "MESSAGES": len(st.messages),
            "RECENT": len(st.recent),
            "UIDNEXT": st.uidnext,
            "UIDVALIDITY": st.uidvalidity,
            "UNSEEN": st.messages.count_unseen() if isinstance(st.messages, MessageList)
            else sum(1 for m in st.messages if "S" not in m.flags),
            "DELETED": sum(1 for m in st.messages if "T" in m.flags),
            # RFC 9208 §4.2.2: what EXPUNGE would free, in units of 1024 octets.
            "DELETED-STORAGE": (sum(m.size for m in st.messages if "T" in m.flags) + 1023) // 1024,
        }
        if self.view is not None and folder_path(self.root, self.view.name) == path:
            # This scan may have moved new arrivals to cur/: their \Recent belongs
            # to this session, which announces them on its next NOOP (§2.3.2).
            self.view.recent |= st.recent
            on_disk = {m.uid for m in st.messages}
            vals["RECENT"] = len(self.view.recent & on_disk)
        pre = b""
        if "HIGHESTMODSEQ" in wanted:
            # RFC 7162 §3.1.10; a CONDSTORE enabling command (§3.1).
            pre = self._untagged(self._condstore_on())
            try:
                tracker = Tracker(path, st.uidvalidity)
                tracker.update(st.messages, complete=True)
                vals["HIGHESTMODSEQ"] = tracker.highest
            except OSError as e:
                log.error("user=%s: no mod-sequences for %s: %s", self.user, mailbox, e)
                vals["HIGHESTMODSEQ"] = 0      # §3.1.10: 0 for a mailbox without them
        items = " ".join(f"{k} {vals[k]}" for k in wanted)
        return pre + untagged(b"STATUS " + self._name_out(mailbox) + f" ({items})".encode())

    # -- messages (RFC 3501 §6.4) ---------------------------------------------------------------

    def _resolve(self, tag: str, seq: tuple, uid: bool) -> list[int] | None:
        assert self.view is not None
        try:
            return self.view.resolve(seq, uid)
        except SequenceError as e:
            self.out(tagged(tag, "BAD", str(e)))
            return None

    def fetch(self, cmd: Fetch) -> None:
        view = self.view
        assert view is not None
        idx = self._resolve(cmd.tag, cmd.sequence, cmd.uid)
        if idx is None:
            return
        sets_seen = not view.readonly and any(fetchmod.sets_seen(i) for i in cmd.items)
        wants_flags = any(i.name == "FLAGS" for i in cmd.items)
        missing = False
        relocated = False     # cur/ listed again once for this command (view.relocate)
        # Responses are gathered up to OUT_CHUNK bytes per send: one sendall per
        # message made FETCH 1:* (FLAGS) of 100,000 messages a syscall-bound loop.
        pending = bytearray(self._fetch_condstore(cmd))
        tracker = view.tracker
        base_items = cmd.items
        if tracker is not None:
            if cmd.changedsince is not None:
                idx = [i for i in idx if tracker.modseq(view.messages[i].uid) > cmd.changedsince]
            if (wants_flags or sets_seen) and not any(i.name == "MODSEQ" for i in base_items):
                base_items = (*base_items, fetchmod.FetchItem("MODSEQ"))   # RFC 7162 §3.1
        # The usual sync item sets of a warm folder come from the index in one pass
        # (None: the items need more; a None line: that message goes the long way,
        # as do the messages expunged by another session, view.ghosts).
        msgs = view.messages
        fast = fetchmod.indexed_responses(base_items, view.maildir,
                                          Picked(msgs, idx),
                                          view.recent, view.sizes,
                                          tracker.modseq if tracker is not None else None,
                                          view.ghosts)
        # (with header sections too: the records the long way needs, made in parallel)
        ahead = fetchmod.cold_records(base_items, view.maildir, Picked(msgs, idx), view.sizes,
                                      view.ghosts) if fast is None else None
        for i in idx:
            if ahead is not None:
                next(ahead, None)
            if fast is not None:
                line = next(fast)
                if line is not None:
                    pending += line
                    if len(pending) >= OUT_CHUNK:
                        self.out(bytes(pending))
                        pending.clear()
                    continue
            msg = view.messages[i]
            if msg.uid in view.ghosts:
                missing = True
                continue
            items = base_items
            if sets_seen and "S" not in msg.flags:
                try:
                    msg = view.maildir.change_flags(msg, add="S")
                    view.update(i, msg)
                    if tracker is not None:
                        tracker.update([msg], complete=False)
                except FileNotFoundError:
                    view.ghosts.add(msg.uid)
                    missing = True
                    continue
                if not wants_flags:   # §6.4.5: report the \Seen we just set
                    items = (*items, fetchmod.FetchItem("FLAGS"))
            size = view.sizes.get(msg.uid)
            try:
                # Message files are never rewritten, only renamed or removed; an open
                # file keeps its bytes, so the size and the streamed body agree.
                # What the folder's index holds is answered without opening the file.
                need = fetchmod.needs_file(items, size is not None)
                path = fetchmod.message_path(view.maildir, msg) if need else ""
                index = fetchmod.folder_index(path) if need else None
                cached = index.get(msg.base, msg.size) if index is not None else None
                fh = open(path, "rb") \
                    if need and fetchmod.needs_file(items, size is not None, cached) else None
            except FileNotFoundError:
                fh = None
                if not relocated:
                    # Another session's flag change renamed the file: follow it (once
                    # per command) before calling the message expunged.
                    relocated = True
                    if view.relocate():
                        msg = view.messages[i]
                        try:
                            fh = open(fetchmod.message_path(view.maildir, msg), "rb")
                        except FileNotFoundError:
                            fh = None
                if fh is None:
                    view.ghosts.add(msg.uid)
                    missing = True
                    continue
            try:
                parts, size = fetchmod.message_parts(
                    items, msg, fh, flags_text(msg.flags, msg.uid in view.recent, msg.keywords),
                    size, index, cached,
                    modseq=tracker.modseq(msg.uid) if tracker is not None else None)
                if size is not None:
                    view.sizes[msg.uid] = size
                self.counters.body += sum(
                    p.size if isinstance(p, StreamedLiteral) else len(p)
                    for p in parts
                    if isinstance(p, StreamedLiteral) or p.startswith((b"BODY[", b"RFC822 ")))
                for piece in fetch_response_pieces(i + 1, parts):
                    pending += piece
                    if len(pending) >= OUT_CHUNK:
                        self.out(bytes(pending))
                        pending.clear()
            finally:
                if fh is not None:
                    fh.close()
        if missing:
            # RFC 2180 §4.1.2: messages expunged by another session.
            self.out(bytes(pending),
                     tagged(cmd.tag, "NO", "Some messages were expunged by another session"))
        else:
            self.out(bytes(pending), tagged(cmd.tag, "OK", "FETCH completed."))

    def _fetch_condstore(self, cmd: Fetch) -> bytes:
        """RFC 7162 for FETCH: MODSEQ and CHANGEDSINCE turn CONDSTORE on (§3.1); with
        VANISHED, the UIDs of the set expunged since that modseq (§3.2.6)."""
        if cmd.changedsince is None and not any(i.name == "MODSEQ" for i in cmd.items):
            return b""
        view = self.view
        assert view is not None
        out = self._untagged(self._condstore_on())
        if cmd.vanished and view.tracker is not None:
            assert cmd.changedsince is not None
            gone = condstore.vanished(view.tracker, {m.uid for m in view.messages},
                                      cmd.changedsince, view.state.uidnext, cmd.sequence)
            if gone:
                out += untagged(f"VANISHED (EARLIER) {condstore.uid_set(gone)}")
        return out

    def store(self, cmd: Store) -> None:
        view = self.view
        assert view is not None
        if view.readonly:
            self.out(tagged(cmd.tag, "NO", "Mailbox is read-only"))
            return
        idx = self._resolve(cmd.tag, cmd.sequence, cmd.uid)
        if idx is None:
            return
        # System flags are letters of the file name, changed by rename against the
        # file's current name (a concurrent change of another flag is kept); keywords
        # go to courierimapkeywords/ in one locked read-merge-write for the command.
        # \Recent cannot be stored and is ignored (RFC 3501 §7.1).
        letters, names = split_flags(cmd.flags)
        if names and not self.cfg.keywords:
            self.out(tagged(cmd.tag, "NO", keywordpolicy.REFUSAL))    # IMAP_KEYWORDS=0
            return
        # RFC 4314 §4 (Courier's acl_flags_adjust): a flag the user may not change is
        # left as it is, also by FLAGS (Courier 5.0.13 clears it there; we do not).
        rights = self.sel_rights
        letters, names = aclmod.flags_allowed(rights, letters, names)
        missing = False
        changed: list[int] = []
        pre, idx, modified = self._unchangedsince(cmd, idx)
        tracker = view.tracker
        for i in idx:
            msg = view.messages[i]
            if msg.uid in view.ghosts:
                missing = True
                continue
            try:
                if cmd.mode is StoreMode.REPLACE:
                    held = "".join(sorted(set(msg.flags) - set(
                        aclmod.flags_allowed(rights, msg.flags, frozenset())[0])))
                    msg = view.maildir.change_flags(msg, exact=letters + held)
                elif cmd.mode is StoreMode.ADD:
                    msg = view.maildir.change_flags(msg, add=letters)
                else:
                    msg = view.maildir.change_flags(msg, remove=letters)
            except FileNotFoundError:
                view.ghosts.add(msg.uid)
                missing = True
                continue
            view.update(i, msg)
            changed.append(i)
        if names or (cmd.mode is StoreMode.REPLACE and "w" in rights
                     and any(view.messages[i].keywords for i in changed)):
            mode = {StoreMode.REPLACE: "=", StoreMode.ADD: "+"}.get(cmd.mode, "-")
            try:
                new = view.maildir.change_keywords([view.messages[i] for i in changed],
                                                   mode, names)
            except KeywordError as e:
                self.out(tagged(cmd.tag, "NO", str(e)))
                return
            except OSError as e:
                log.error("user=%s: keywords in %s: %s", self.user, view.name, e)
                self.out(tagged(cmd.tag, "NO", "Cannot store keywords"))
                return
            for i, m in zip(changed, new, strict=True):
                view.update(i, m)
        if tracker is not None and changed:
            tracker.update([view.messages[i] for i in changed], complete=False)
        lines = view.announce({k for i in changed for k in view.messages[i].keywords})
        if tracker is not None:
            # RFC 7162 §3.1, §3.1.3: UID and MODSEQ in every such FETCH, .SILENT too.
            for i in changed:
                m = view.messages[i]
                fl = "" if cmd.silent else \
                    f"FLAGS {flags_text(m.flags, m.uid in view.recent, m.keywords)} "
                lines.append(f"{i + 1} FETCH ({fl}UID {m.uid} MODSEQ ({tracker.modseq(m.uid)}))")
        elif not cmd.silent:
            uidpart = " UID {}" if cmd.uid else ""
            for i in changed:
                m = view.messages[i]
                lines.append(f"{i + 1} FETCH (FLAGS {flags_text(m.flags, m.uid in view.recent, m.keywords)}"
                             + uidpart.format(m.uid) + ")")
        self.out(pre, self._untagged(lines))
        if missing:
            self.out(tagged(cmd.tag, "NO", "Some messages were expunged by another session"))
        elif modified:
            self.out(tagged(cmd.tag, "OK", "Conditional STORE failed",
                            f"MODIFIED {condstore.uid_set(modified)}"))
        else:
            self.out(tagged(cmd.tag, "OK", "STORE completed."))

    def _unchangedsince(self, cmd: Store, idx: list[int]) -> tuple[bytes, list[int], list[int]]:
        """RFC 7162 §3.1.3 STORE (UNCHANGEDSINCE n): turns CONDSTORE on; the messages
        whose modseq is above n are left alone and named in [MODIFIED] (UIDs for UID
        STORE, else sequence numbers). Others' changes count: the folder is rescanned."""
        view = self.view
        assert view is not None
        if cmd.unchangedsince is None:
            return b"", idx, []
        pre = self._untagged(self._condstore_on())
        tracker = view.tracker
        if tracker is None:
            return pre, idx, []
        tracker.update(view.maildir.scan().messages, complete=True)
        keep, modified = [], []
        for i in idx:
            uid = view.messages[i].uid
            if tracker.modseq(uid) > cmd.unchangedsince:
                modified.append(uid if cmd.uid else i + 1)
            else:
                keep.append(i)
        return pre, keep, modified

    def expunge(self, cmd: Expunge) -> None:
        view = self.view
        assert view is not None
        if "e" not in self.sel_rights:
            self.out(tagged(cmd.tag, "NO", aclmod.denied("EXPUNGE", "current mailbox", "e")))
            return
        if view.readonly:
            self.out(tagged(cmd.tag, "NO", "Mailbox is read-only"))
            return
        # §6.4.3 removes every message with \Deleted, also where another session
        # set it: rescan first (EXPUNGE may report others' changes, §7.4.1).
        updates = view.refresh(allow_expunge=True)
        if cmd.uid_set is not None:
            # RFC 4315 §2.1: only the \Deleted messages among these UIDs.
            keep = set(range(len(view.messages))) - set(view.resolve(cmd.uid_set, True))
            saved = {}
            for i in keep:
                m = view.messages[i]
                if "T" in m.flags:
                    saved[m.uid] = m
                    view.messages[i] = type(m)(m.uid, m.base, m.filename,
                                               m.flags.replace("T", ""), m.size, m.mtime)
            lines = view.expunge()
            for i, m in enumerate(view.messages):
                if m.uid in saved:
                    view.messages[i] = saved[m.uid]
        else:
            lines = view.expunge()
        self.out(self._untagged(updates + lines), tagged(cmd.tag, "OK", "EXPUNGE completed"))

    def search(self, cmd: Search | Sort | Thread) -> None:
        """SEARCH (RFC 3501 §6.4.4), SORT and THREAD (RFC 5256): the keys in search.py,
        the message data in searchdata.py. No untagged EXPUNGE here (§7.4.1)."""
        view = self.view
        assert view is not None
        verb = type(cmd).__name__.upper()
        program = cmd.program
        if self.utf8 and program.charset not in (None, "UTF-8"):
            # RFC 6855 §3 (Courier's words): after ENABLE UTF8=ACCEPT only UTF-8.
            self.out(tagged(cmd.tag, "BAD", "Only UTF-8 charset is valid after enabling "
                            "RFC 6855 support", "BADCHARSET (UTF-8)"))
            return
        if program.charset is not None and program.charset not in searchmod.CHARSETS:
            self.out(tagged(cmd.tag, "NO", f"{program.charset[:40]} is not supported",
                            searchmod.BADCHARSET))
            return
        pre = b""
        by_modseq = condstore.uses_modseq(program.key)
        if by_modseq:
            pre = self._untagged(self._condstore_on())    # RFC 7162 §3.1: enabling
        box = searchdata.MailboxFacts(view)
        bounds = searchmod.Bounds(len(view.messages), view.messages[-1].uid if view.messages else 0)
        # SORT and THREAD read the hits' header fields again: keep what was looked up
        hits = searchmod.search(program.key, box.facts, bounds,
                                None if verb != "SEARCH" else searchdata.MessageFacts.forget)

        def number(m: searchdata.MessageFacts) -> int:
            return m.uid if cmd.uid else m.seq

        if isinstance(cmd, Sort):
            line = "SORT" + "".join(f" {number(m)}" for m in sortmod.sort_messages(
                cmd.criteria, hits))  # type: ignore[arg-type]
        elif isinstance(cmd, Thread):
            text = threadmod.format_threads(threadmod.thread(cmd.algorithm, hits),  # type: ignore[arg-type]
                                            number)  # type: ignore[arg-type]
            line = "THREAD" + (" " + text if text else "")
        else:
            line = "SEARCH" + "".join(f" {number(m)}" for m in hits)
        if by_modseq and hits and not isinstance(cmd, Thread):
            # RFC 7162 §3.1.5/§3.1.6: the highest mod-sequence of what was found
            line += f" (MODSEQ {max(m.modseq() for m in hits)})"
        self.out(pre, untagged(line), tagged(cmd.tag, "OK", f"{verb} completed."))

    # -- IDLE (RFC 2177) ------------------------------------------------------------------------

    def _fingerprint(self) -> tuple[int | None, ...]:
        """mtimes of new/ and cur/: a delivery, an expunge or another session's
        flag change renames a file in one of them, which changes its mtime."""
        if self.view is None:
            return ()
        out: list[int | None] = []
        for sub in ("new", "cur"):
            try:
                out.append(os.stat(self.view.maildir.path / sub).st_mtime_ns)
            except OSError:
                out.append(None)
        return tuple(out)

    def idle(self, cmd: Idle) -> bool:
        # Courier tells idling clients at once when FAM/inotify is there, and
        # polls every IMAP_IDLE_TIMEOUT seconds when not. We stat new/ and cur/
        # every IDLE_POLL seconds (two syscalls) and rescan when they changed,
        # plus a full rescan every IMAP_IDLE_TIMEOUT for changes that could hide
        # inside one coarse directory timestamp tick.
        # With inotify a change wakes us at once; the stat poll stays as the fallback
        # (no inotify, or a partial DONE that left the socket waiting). The watch is
        # set before the scan below: a delivery between the two would otherwise wait
        # for the next full rescan (seen with imapclient delivering right after IDLE).
        watch = sharedfolders.open_watch(self.view.maildir) if self.view is not None else None
        self.out(self._updates(), b"+ entering IDLE mode\r\n")
        self.core.idling = True
        self.title("IDLE")
        now = time.monotonic()
        deadline = now + self.cfg.autologout
        next_full = now + self.cfg.idle_timeout
        seen = self._fingerprint()
        self.conn.sock.settimeout(min(IDLE_POLL, self.cfg.idle_timeout))
        try:
            while True:
                if watch is not None and not self.core.buffered() \
                        and not _tls_pending(self.conn.sock):
                    now = time.monotonic()
                    client, changed = _idle_wait(self.conn.sock, watch,
                                                 max(0.0, min(deadline, next_full) - now))
                    if changed:
                        watch.drain()   # before the scan: a change after it wakes us again
                        self.out(self._updates())
                        seen = self._fingerprint()
                        continue
                    if not client:
                        now = time.monotonic()
                        if now > deadline:
                            self.out(untagged("BYE Autologout; idle for too long"))
                            return False
                        if now >= next_full:
                            self.out(self._updates())
                            next_full = now + self.cfg.idle_timeout
                        continue
                try:
                    ev = read_event(self.conn, self.core, self.counters)
                except TimeoutError:
                    now = time.monotonic()
                    if now > deadline:
                        self.out(untagged("BYE Autologout; idle for too long"))
                        return False
                    fp = self._fingerprint()
                    if fp != seen or now >= next_full:
                        self.out(self._updates())
                        seen = self._fingerprint()   # after our own new/ -> cur/ moves
                        next_full = now + self.cfg.idle_timeout
                    continue
                if ev is None:
                    return False
                if isinstance(ev, IdleDone):
                    self.out(self._updates(), tagged(cmd.tag, "OK", "IDLE completed"))
                else:
                    self.core.idling = False
                    self.out(tagged(cmd.tag, "BAD", "Expected DONE"))
                    if not isinstance(ev, BadCommand):
                        return self.handle(ev)
                return True
        finally:
            if watch is not None:
                watch.close()
            self.core.idling = False
            self.conn.sock.settimeout(self.cfg.autologout)
            self.title("SELECTED" if self.view else "AUTHENTICATED")


SHORT_REPLY = 2048      # octets of a SELECT reply sent while cur/'s lock is still held


def _writable(sock: object) -> bool:
    """Whether the connection takes a short reply now (its peer has been reading)."""
    try:
        return bool(select.select([], [sock], [], 0)[1])
    except (OSError, ValueError, TypeError):
        return False


def _tls_pending(sock: object) -> bool:
    """Decrypted bytes an SSL socket holds: select() cannot see them."""
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())


def _idle_wait(sock: object, watch: FolderWatch, timeout: float) -> tuple[bool, bool]:
    """Wait for the client or the folder: (client readable, folder changed)."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ, "client")   # type: ignore[arg-type]
        sel.register(watch, selectors.EVENT_READ, "watch")
        ready = {key.data for key, _ in sel.select(timeout)}
    return "client" in ready, "watch" in ready


read_subscriptions = folders.read_subscriptions


def mailbox_out(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 §5.1.3), quoted as needed."""
    return astring_out(encode_mutf7(name))


def uid_set(uids: list[int]) -> str:
    """UIDs in order as a compact set, "4:6,9" (RFC 4315 §3 uid-set; order kept, since
    COPYUID pairs the source and destination sets element by element)."""
    out: list[str] = []
    start = prev = None
    for u in uids:
        if prev is not None and u == prev + 1:
            prev = u
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = u
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def account_settings(info: Any) -> tuple[str | None, tuple[str, ...]]:
    """What a Session takes from authd's answer: (account_quota, acl_groups)."""
    group = getattr(info, "options", {}).get("group")
    return getattr(info, "quota", None) or None, (group,) if group else ()


def open_maildir_root(home: str, maildir: str | None, default: str) -> Path:
    """The user's Maildir: authd's MAILDIR (absolute or relative to home), else MAILDIRPATH."""
    m = maildir or default
    p = Path(m)
    return p if p.is_absolute() else Path(home) / p


