"""Pid files: written atomically once a daemon is ready, removed when it exits.

`courier start` treats the appearance of the pid file as "this daemon accepts
connections", so a daemon writes it only after binding its sockets.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_pidfile(path: Path, pid: int | None = None) -> None:
    pid = os.getpid() if pid is None else pid
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); ask /proc.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def remove_pidfile(path: Path) -> None:
    """Remove the pid file only if it still names this process."""
    if read_pidfile(path) == os.getpid():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
