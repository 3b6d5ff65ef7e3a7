"""Maildir file names as Courier writes them (FORMATS.md §3.3, maildir(5)).

Courier's deliverquota/maildrop name a delivered message

    <time>.M<usec>P<pid>[_<n>]V<dev>I<ino>.<host>,S=<size>

with dev and ino of the file as 16 hex digits each (upper case), so a name is
unique even across hosts sharing one Maildir over NFS: the time and pid make
it unique on one host at one moment, the counter within one process, the
inode within one filesystem. `,S=` lets quota code and POP3 read the size
without a stat.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

# Per-process delivery counter: the `_n` part, left out for the first name a
# process makes (Courier's example names have none). A forked child starts
# from its parent's value, and its pid differs anyway.
_counter = itertools.count()


def escape_hostname(host: str) -> str:
    r"""maildir(5): "/" and ":" cannot appear in a name part; Courier writes \057 and \072."""
    return host.replace("\\", "\\134").replace("/", "\\057").replace(":", "\\072")


def unique_name(size: int | None = None, *, hostname: str | None = None,
                now: float | None = None, dev: int | None = None,
                ino: int | None = None, pid: int | None = None,
                counter: int | None = None) -> str:
    """A new Maildir base name; `V<dev>I<ino>` only when dev/ino are known (after the tmp file)."""
    if now is None:
        now = time.time()
    if hostname is None:
        hostname = socket.gethostname()
    if pid is None:
        pid = os.getpid()
    if counter is None:
        counter = next(_counter)
    secs = int(now)
    usec = min(int(round((now - secs) * 1_000_000)), 999_999)
    name = f"{secs}.M{usec}P{pid}"
    if counter:
        name += f"_{counter}"
    if dev is not None and ino is not None:
        name += f"V{dev:016X}I{ino:016X}"
    name += "." + escape_hostname(hostname)
    if size is not None:
        name += f",S={size}"
    return name
