"""SPECIAL-USE (RFC 6154): which folders are the Drafts, Sent, Trash, Junk ... of a
Maildir, and making them at login so every client finds the same ones.

The Trash is Courier's IMAP_TRASHFOLDERNAME (the folder IMAP_EMPTYTRASH and
IMAP_MOVE_EXPUNGE_TO_TRASH use); the others come from IMAP_SPECIALUSE_FOLDERS
(courier-py's key: Courier has no special-use). All are top-level folders under
INBOX, as Courier's own Trash is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from courier_imapd.config import SPECIAL_USES, ImapdConfig

from libcourier.durable import write_atomic
from libcourier.maildir import folders

log = logging.getLogger("courier.imapd")

# CREATE ... (USE (...)) (RFC 6154 §3) is kept per user in the Maildir, one
# "\Use<TAB>mailbox" a line (courier-py's file: Courier has no special-use).
USERFILE = "courierpyspecialuse"
MAX_USERFILE = 64 * 1024
ATTRS = frozenset("\\" + u for u in SPECIAL_USES)


def _user_uses(root: Path) -> dict[str, str]:
    try:
        with open(Path(root) / USERFILE, "rb") as f:
            data = f.read(MAX_USERFILE)
    except OSError:
        return {}
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        attr, _, name = line.partition("\t")
        if attr in ATTRS and name:
            out[name] = attr
    return out


def special_uses(cfg: ImapdConfig, root: Path | None = None) -> dict[str, str]:
    """IMAP mailbox name -> its attribute, e.g. {"INBOX.Sent": "\\\\Sent"}: the
    configured folders, then what the user made with CREATE (USE)."""
    out = {"INBOX." + name: "\\" + use for use, name in cfg.specialuse}
    out["INBOX." + cfg.trashfoldername] = "\\Trash"
    if root is not None:
        out.update(_user_uses(root))
    return out


def remember(root: Path, mailbox: str, attrs: tuple[str, ...]) -> None:
    """Record CREATE's USE attributes (one per mailbox is all LIST shows: the first)."""
    uses = {n: a for n, a in _user_uses(root).items() if n != mailbox}
    uses[mailbox] = attrs[0]
    data = "".join(f"{a}\t{n}\n" for n, a in sorted(uses.items())).encode("utf-8")
    if len(data) > MAX_USERFILE:
        raise folders.FolderError("Too many special-use mailboxes")
    write_atomic(Path(root) / USERFILE, data, mode=0o600,
                 tmp=Path(root) / "tmp" / f".{USERFILE}.{os.getpid()}.{os.urandom(4).hex()}")


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
