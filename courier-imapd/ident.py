"""The ID reply (RFC 2971) and its log line, as Courier's imapd builds them.

IMAP_ID_FIELDS is Courier's bit mask of what to tell: 1 the version, 2 the
operating system, 4 its release; name and vendor are always said.
"""

from __future__ import annotations

import os

from libcourier import __version__

NAME = "courier-py"
VENDOR = "courier-py"


def id_response(fields: int) -> str:
    """`ID ("name" "courier-py" ...)` for the untagged reply."""
    pairs = [("name", NAME)]
    if fields & 1:
        pairs.append(("version", __version__))
    if fields & 6:
        uts = os.uname()
        if fields & 2:
            pairs.append(("os", uts.sysname))
        if fields & 4:
            pairs.append(("os-version", uts.release))
    pairs.append(("vendor", VENDOR))
    return "ID (" + " ".join(f'"{k}" "{_q(v)}"' for k, v in pairs) + ")"


def _q(v: str) -> str:
    return "".join(c for c in v if c.isprintable() and c not in '"\\')[:200]


def id_log_text(params: tuple[tuple[str, str | None], ...] | None) -> str:
    """", name=Thunderbird, version=115" for Courier's `INFO: ID, user=...` line."""
    if not params:
        return ""
    return "".join(f", {_q(k)}={'(nil)' if v is None else _q(v)}" for k, v in params)
