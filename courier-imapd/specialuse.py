"""SPECIAL-USE (RFC 6154): which folders are the Drafts, Sent, Trash, Junk ... of a
Maildir, and making them at login so every client finds the same ones.

The Trash is Courier's IMAP_TRASHFOLDERNAME (the folder IMAP_EMPTYTRASH and
IMAP_MOVE_EXPUNGE_TO_TRASH use); the others come from IMAP_SPECIALUSE_FOLDERS
(courier-py's key: Courier has no special-use). All are top-level folders under
INBOX, as Courier's own Trash is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from courier_imapd.config import ImapdConfig

from libcourier.maildir import folders

log = logging.getLogger("courier.imapd")


def special_uses(cfg: ImapdConfig) -> dict[str, str]:
    """IMAP mailbox name -> its attribute, e.g. {"INBOX.Sent": "\\\\Sent"}."""
    out = {"INBOX." + name: "\\" + use for use, name in cfg.specialuse}
    out["INBOX." + cfg.trashfoldername] = "\\Trash"
    return out


def ensure_folders(root: Path, cfg: ImapdConfig) -> list[str]:
    """Create the special-use folders that are missing, and subscribe the ones made
    now (a folder the user unsubscribed stays unsubscribed). The names made."""
    if not cfg.specialuse_create:
        return []
    made = []
    for name in special_uses(cfg):
        if folders.exists(root, name):
            continue
        try:
            folders.create_folder(root, name)
            folders.subscribe(root, name)
        except folders.FolderError as e:
            # A file or a half-made directory in the way: the session goes on
            # without that folder, as it would after a failed CREATE.
            log.warning("cannot create %s in %s: %s", name, root, e.text)
            continue
        made.append(name)
    return made
