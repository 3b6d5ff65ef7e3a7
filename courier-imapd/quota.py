"""QUOTA (RFC 9208) over Courier's Maildir++ quota, as Courier's imapd answers it.

One quota root, "ROOT", covers the whole Maildir (INBOX and every folder but the
Trash, Courier's rule in libcourier.maildir.quota). Its limits and usage come from
the `maildirsize` file; a Maildir without one has no quota (Courier again), so its
mailboxes have no quota root. Resources: STORAGE in units of 1024 octets, rounded
up (Courier's quotainfo_out), and MESSAGE. Nothing here changes a quota: SETQUOTA
is refused as Courier refuses it.
"""

from __future__ import annotations

import time
from pathlib import Path

from libcourier.maildir import quota as mdquota

ROOT = "ROOT"


def usage(maildir: Path) -> mdquota.Usage | None:
    """The Maildir's quota and usage, or None when it has no quota."""
    found = mdquota.read(maildir)
    if found is None:
        return None
    use = found[0]
    if use is None or mdquota.needs_recalc(found, time.time()):
        # The same rebuild a delivery would do; without a readable spec line
        # there is no quota to report.
        spec = use.spec if use is not None else mdquota.parse_spec(_first_line(maildir))
        if spec is None:
            return None
        use = mdquota.recalculate(maildir, spec)
    if use.spec.bytes is None and use.spec.count is None:
        return None
    return use


def _first_line(maildir: Path) -> str:
    try:
        with open(maildir / mdquota.FILENAME, "rb") as f:
            return f.readline(256).decode("ascii", "replace").strip()
    except OSError:
        return ""


def quota_line(use: mdquota.Usage) -> str:
    """`QUOTA "ROOT" (STORAGE used limit MESSAGE used limit)` (RFC 9208 §5.1)."""
    res = []
    if use.spec.bytes is not None:
        res.append(f"STORAGE {max(0, use.bytes + 1023) // 1024} {(use.spec.bytes + 1023) // 1024}")
    if use.spec.count is not None:
        res.append(f"MESSAGE {max(0, use.count)} {use.spec.count}")
    return f'QUOTA "{ROOT}" ({" ".join(res)})'


# -- APPEND, COPY and MOVE against the quota (Courier's maildir_quota_add_start/_end) ------

def charge(target: Path, nbytes: int, count: int, source: Path | None = None,
           move: bool = False) -> tuple[int, int]:
    """What `maildirsize` must gain (negative: lose) when messages totalling `nbytes`
    go into `target`: from outside (APPEND), copied, or moved from `source`.
    Only folders other than the Trash count (Courier's maildirquota_countfolder)."""
    into = int(mdquota.counts_folder(target))
    out_of = int(move and source is not None and mdquota.counts_folder(source))
    net = into - out_of
    return net * nbytes, net * count


def admit(target: Path, nbytes: int, count: int, account_quota: str | None) -> bool:
    """May this much more go in? Courier's check, with the account's QUOTA from authd
    (which makes or fixes maildirsize, as Courier's imapd does with MAILDIRQUOTA)."""
    if nbytes <= 0 and count <= 0:
        return True
    return mdquota.check_add(target, nbytes, count, account_quota).allowed


def settle(target: Path, nbytes: int, count: int) -> None:
    """Record the change in the covering maildirsize, if the Maildir has one."""
    if nbytes or count:
        mdquota.append(mdquota.quota_root(target), nbytes, count)


def stored_size(message: bytes) -> int:
    """The quota size of an APPENDed message: its ,S= size as folders.append_message
    writes it (the bytes as received)."""
    return len(message)
