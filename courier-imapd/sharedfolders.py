"""The ``shared.`` namespace of Courier's imapd: filesystem shared folders
(libcourier.maildir.shared) beside the user's own INBOX.* folders.

- LIST shows ``shared.<nick>.<Name>`` for every folder of the sharable maildirs in
  the user's ``shared-maildirs`` and the config directory's ``maildirshared``
  (Courier's maildir_list_sharable); LSUB the ones with a private copy
  (maildir_list_shared); ``shared`` and ``shared.<nick>`` are \\Noselect parents.
- Naming one in SELECT, EXAMINE, STATUS (or SUBSCRIBE) makes the private copy when
  missing and synchronises it, as Courier's decode_valid_mailbox; UNSUBSCRIBE and
  DELETE remove the private copy (the sharable folder stays).
- IDLE in one is woken by changes to the sharable folder's new/ and cur/ too
  (`open_watch`), and each wake-up synchronises the private copy.
- Rights on it are Courier's fixed ones (imapd's acl_read_folder for the legacy
  shared namespace): "anyone lrswixte" while the private copy's new/ can be written,
  else "lrsw"; "l" on the ``shared`` and ``shared.<nick>`` parents. What the
  filesystem allows decides the rest.
- APPEND, COPY and MOVE into one store the message in the sharable folder, as Courier's
  imapd does; APPENDUID/COPYUID give the UIDs of the user's private copy (Courier's
  give the sharable folder's own, which the client never sees). Messages in shared
  folders count toward no quota.

`folder_path` is the one resolver the session uses for every mailbox name.
"""

from __future__ import annotations

import os
from pathlib import Path

from libcourier.inotify import Watch
from libcourier.maildir import folder as folder_mod
from libcourier.maildir import folders, shared
from libcourier.maildir import watch as watchmod
from libcourier.maildir.folder import Maildir

RIGHTS = "eilrstwx"      # Courier: LOOKUP READ SEEN WRITE INSERT DELETEFOLDER DELETEMSGS EXPUNGE
READ_RIGHTS = "lrsw"     # ... when the private copy cannot be written
PARENT_RIGHTS = "l"      # "shared", "shared.<nick>"

_global_file: Path | None = None


def configure(etc: Path | None) -> None:
    """Where the global list lives (the config directory's ``maildirshared``); called
    once per session process, before any name is resolved."""
    global _global_file
    _global_file = None if etc is None else Path(etc) / shared.GLOBAL_FILE


def global_file() -> Path | None:
    return _global_file


def is_shared_name(name: str) -> bool:
    return shared.sharedname_of(name) is not None


def folder_path(root: Path, name: str) -> Path | None:
    """The directory of an IMAP name: INBOX.* as libcourier.maildir.folder, a
    ``shared.nick.Name`` its private copy (made and synchronised here)."""
    sub = shared.sharedname_of(name)
    if sub is None:
        return folder_mod.folder_path(root, name)
    return shared.open_private(root, _global_file, sub)


def is_private_copy(root: Path, path: Path) -> bool:
    return shared.is_private_copy(root, path)


def rights(path: Path) -> str:
    """The user's rights on a private copy (module docstring)."""
    return RIGHTS if os.access(Path(path) / "new", os.W_OK) else READ_RIGHTS


def name_rights(root: Path, name: str) -> str | None:
    """Rights on a name of the shared namespace without opening it (LIST's MYRIGHTS):
    "l" on ``shared`` and ``shared.<nick>``; a folder's as `rights` (Courier: "lrsw"
    until the private copy exists). None: not a shared name."""
    if name.lower() == "shared":
        return PARENT_RIGHTS
    sub = shared.sharedname_of(name)
    if sub is None:
        return None
    private = shared.private_dir(root, sub)
    return PARENT_RIGHTS if private is None else rights(private)


def fixed_rights(root: Path, path: Path | None) -> str | None:
    """The ACL commands' view: "anyone <rights>" for a private copy, None otherwise."""
    if path is None or not shared.is_private_copy(root, path):
        return None
    return rights(path)


def open_folder(root: Path, path: Path) -> Maildir:
    """The Maildir object for a resolved path: a private copy syncs at every scan and
    expunges from the sharable folder."""
    if shared.is_private_copy(root, path):
        return shared.PrivateCopy(path)
    return Maildir(path)


def listed(root: Path) -> list[str]:
    """IMAP names of every shared folder the user can see (LIST)."""
    return [shared.IMAP_PREFIX + n for n in shared.list_sharable(root, _global_file)]


def subscribed(root: Path) -> list[str]:
    """IMAP names of the shared folders with a private copy (LSUB)."""
    return [shared.IMAP_PREFIX + n for n in shared.list_subscribed(root)]


def subscribe(root: Path, name: str) -> None:
    """SUBSCRIBE shared.nick.Name: make the private copy (SharedError if impossible;
    one that exists already is subscribed, so that is not an error)."""
    sub = shared.sharedname_of(name)
    assert sub is not None
    path = shared.private_dir(root, sub)
    if path is not None and (path / "cur").is_dir():
        return
    shared.subscribe(root, _global_file, sub)


def unsubscribe(root: Path, name: str) -> None:
    """UNSUBSCRIBE (and DELETE) shared.nick.Name: the private copy goes; one that is
    not there is no error (Courier: "OK Already unsubscribed")."""
    sub = shared.sharedname_of(name)
    assert sub is not None
    path = shared.private_dir(root, sub)
    if path is None:
        raise shared.SharedError("Invalid shared folder name")
    if path.is_dir():
        shared.unsubscribe(root, sub)


def append_message(root: Path, path: Path, data: bytes, flags: str = "",
                   internaldate: float | None = None,
                   keywords: frozenset[str] = frozenset()) -> folders.Added:
    """folders.append_message, or into the sharable folder for a private copy."""
    if not shared.is_private_copy(root, path):
        return folders.append_message(path, data, flags, internaldate, keywords)
    uidv, uids = shared.store(path, [(data, len(data), flags, internaldate, frozenset(keywords))])
    return folders.Added(uidv, uids)


def copy_messages(root: Path, sources: list[tuple[Path, str, int]], path: Path,
                  keywords: list[frozenset[str]] | None = None) -> folders.Added:
    """folders.copy_messages, or into the sharable folder for a private copy."""
    if not shared.is_private_copy(root, path):
        return folders.copy_messages(sources, path, keywords)
    kws = keywords or [frozenset()] * len(sources)
    uidv, uids = shared.store(path, [(src, size, letters, None, kw) for (src, letters, size), kw
                                     in zip(sources, kws, strict=True)])
    return folders.Added(uidv, uids)


def open_watch(maildir: Maildir) -> Watch | None:
    """IDLE's inotify watch: the folder's own (libcourier.maildir.watch), and for a
    private copy the sharable folder's new/ and cur/ as well; None: poll."""
    if not isinstance(maildir, shared.PrivateCopy):
        return watchmod.open_watch(maildir.path)
    target = shared.link_target(maildir.path)
    if target is None:
        return watchmod.open_watch(maildir.path)
    own = [maildir.path / sub for sub in watchmod.WATCHED]
    theirs = [Path(target) / "new", Path(target) / "cur"]
    try:
        return Watch(own + theirs, watchmod.MASK, optional=own[1:] + theirs)
    except OSError:
        return watchmod.open_watch(maildir.path)
