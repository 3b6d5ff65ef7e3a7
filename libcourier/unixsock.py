"""Listening Unix stream sockets (courierd.sock, courierlocal.sock).

Bound under a tight umask so the socket never exists with wider rights than
asked for, then chowned (when root) and chmodded to the final mode.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def bind_unix(path: Path, mode: int, owner: tuple[int, int] | None = None,
              backlog: int = 64) -> socket.socket:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock
