"""Small-file writes for the admin command (libcourier.durable: tmp, fsync, rename, fsync dir).

`courier init` and `courier adduser` write config and control files that live
daemons re-read on SIGHUP; a reader must see the old file or the new one,
never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path

from libcourier import durable


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    durable.write_atomic(path, data, mode=mode, owner=owner)


def make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """mkdir with an exact mode (umask ignored) and, as root, an owner."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
