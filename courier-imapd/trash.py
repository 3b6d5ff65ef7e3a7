"""What EXPUNGE does with a message, and IMAP_EMPTYTRASH, as Courier's imapd does them.

- IMAP_MOVE_EXPUNGE_TO_TRASH=1 (Courier's XMAGICTRASH): an expunged message
  outside the Trash is moved into the Trash folder (made if missing) without its
  \\Deleted and \\Draft flags, unless this session copied it somewhere first (a
  client that copies to the Trash itself would get it twice).
- The quota: a message leaving a folder that counts (all but the Trash) is taken
  off `maildirsize` ("-size -1"), as Courier's maildir_quota_deleted.
- IMAP_EMPTYTRASH: at login and logout, messages older than N days (by ctime:
  the time they were moved into the folder) are deleted from the folders named.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from courier_imapd.config import ImapdConfig

from libcourier.maildir import folders
from libcourier.maildir import quota as mdquota
from libcourier.maildir.flags import join_name, split_name
from libcourier.maildir.folder import Maildir, MessageRef, folder_path

log = logging.getLogger("courier.imapd")


def _counts(root: Path, folder: Path, trash: str) -> bool:
    """Whether messages in `folder` count toward the quota (Courier: all but .Trash)."""
    return Path(folder) == Path(root) or Path(folder).name != "." + trash


@dataclass(slots=True)
class Disposer:
    """Removes expunged messages of one selected folder; `done()` settles the quota."""
    root: Path
    folder: Path
    trash: Path | None                    # move here instead of deleting; None: delete
    trash_name: str = "Trash"
    copied: set[int] = field(default_factory=set)   # UIDs this session copied
    _gone: list[int] = field(default_factory=list)  # quota sizes leaving a counted folder

    def dispose(self, maildir: Maildir, msg: MessageRef) -> None:
        path = maildir.path_of(msg)
        size = mdquota.message_size(msg.filename, path)
        counted = _counts(self.root, self.folder, self.trash_name)
        if self.trash is not None and msg.uid not in self.copied:
            base, letters = split_name(msg.filename)
            target = self.trash / "cur" / join_name(base, letters.replace("T", "").replace("D", ""))
            try:
                os.rename(path, target)
            except FileNotFoundError:
                maildir.remove(msg)      # renamed by another session meanwhile, or gone
            if counted:
                self._gone.append(size)
            return
        maildir.remove(msg)
        if counted:
            self._gone.append(size)

    def done(self) -> None:
        if self._gone:
            try:
                mdquota.removed(self.root, self._gone)
            except OSError as e:
                log.error("%s: cannot update maildirsize: %s", self.root, e)
            self._gone = []


def disposer_for(root: Path, folder: Path, cfg: ImapdConfig) -> Disposer:
    trash = None
    if cfg.move_expunge_to_trash and Path(folder).name != "." + cfg.trashfoldername:
        trash = folder_path(root, "INBOX." + cfg.trashfoldername)
        if trash is not None and not (trash / "cur").is_dir():
            try:
                folders.create_folder(root, "INBOX." + cfg.trashfoldername)
            except folders.FolderError as e:
                log.warning("%s: no Trash to move expunged mail to: %s", root, e.text)
                trash = None
    return Disposer(root, Path(folder), trash, cfg.trashfoldername)


def empty_trash(root: Path, cfg: ImapdConfig, now: float | None = None) -> int:
    """IMAP_EMPTYTRASH; the number of messages deleted."""
    now = time.time() if now is None else now
    n = 0
    for name, days in cfg.emptytrash:
        folder = folder_path(root, "INBOX." + (name or cfg.trashfoldername))
        if folder is None or not (folder / "cur").is_dir():
            continue
        sizes = []
        for sub in ("cur", "new"):
            try:
                entries = list(os.scandir(folder / sub))
            except OSError:
                continue
            for ent in entries:
                if ent.name.startswith("."):
                    continue
                try:
                    st = ent.stat(follow_symlinks=False)
                    if st.st_ctime >= now - days * 86400:
                        continue
                    os.unlink(ent.path)
                except OSError:
                    continue
                n += 1
                sizes.append(mdquota.message_size(ent.name) or st.st_size)
        if sizes and _counts(root, folder, cfg.trashfoldername):
            mdquota.removed(root, sizes)
    return n
