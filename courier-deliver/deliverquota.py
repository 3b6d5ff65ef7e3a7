"""deliverquota: deliver the message on stdin to a Maildir under its Maildir++ quota.

    deliverquota [-c] [-w percent] [-W file] maildir [quota]

Courier's command line and exit codes (deliverquota(8), courier-libs
maildir/deliverquota.c), so it works from a `.courier` line
(`| deliverquota ./Maildir`), from maildrop, procmail or any other MDA:

- 0: delivered;
- 77 (EX_NOPERM): over quota, when stdin is a regular file (its size is known
  before anything is written) -- what the man page documents;
- 75 (EX_TEMPFAIL): over quota when stdin is a pipe (the size is known only
  after reading it: Courier's own build defers then), and a Maildir that cannot
  be written (missing, permissions);
- 74 (EX_IOERR): reading stdin or writing the message failed;
- 73: bad command line.

`-c` makes the Maildir (and missing parents) first. `-w N` delivers a warning
into INBOX once the Maildir is at least N% full, at most once a day, with the
text of `-W file` or of the config directory's `quotawarnmsg` (none there: no
warning, as in Courier). `quota` (obsolete in Courier, kept) sets a new quota,
as `maildirmake -q` would. Over quota, "Mail quota exceeded." goes to stdout.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from libcourier.config import config_dir
from libcourier.maildir.delivery import (
    CHUNK,
    DeliveryError,
    OverQuota,
    deliver_quota_warning,
    deliver_with_quota,
)

EX_OK = 0
EX_USAGE_COURIER = 73       # deliverquota.c exits 73 for a bad command line
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
SPOOL_IN_MEMORY = 1024 * 1024  # a piped message larger than this spills to a temp file
USAGE = "Usage: deliverquota [-c] [-w percent] [-W file] maildir [quota]"


def _parse(argv: list[str]) -> tuple[bool, int, str | None, str, str | None] | None:
    """(create, warn percent or -1, warn file, maildir, quota); None on a bad line.
    Options come first, as Courier's loop reads them."""
    create, percent, warnfile = False, -1, None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-c":
            create = True
        elif a in ("-w", "-W") and i + 1 < len(argv):
            if a == "-W":
                warnfile = argv[i + 1]
            else:
                try:
                    percent = int(argv[i + 1])
                except ValueError:
                    return None
            i += 1
        else:
            break
        i += 1
    rest = argv[i:]
    if not 1 <= len(rest) <= 2 or not -1 <= percent <= 100 or not rest[0]:
        return None
    return create, percent, warnfile, rest[0], rest[1] if len(rest) == 2 else None


def _chunks(f: BinaryIO):
    while True:
        block = f.read(CHUNK)
        if not block:
            return
        yield block


def _spool_stdin(stdin: BinaryIO) -> tuple[BinaryIO, int]:
    """A pipe is read to its end first (bounded memory: it spills to a file), so
    that the quota is checked before anything appears in the Maildir."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    for block in _chunks(stdin):
        spool.write(block)
        size += len(block)
    spool.seek(0)
    return spool, size  # type: ignore[return-value]


def main(argv: list[str] | None = None, stdin: BinaryIO | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parsed = _parse(args)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return EX_USAGE_COURIER
    create, percent, warnfile, maildir_arg, newquota = parsed
    maildir = Path(maildir_arg)
    stdin = sys.stdin.buffer if stdin is None else stdin
    if create:
        try:
            os.makedirs(maildir, 0o700, exist_ok=True)
        except OSError as e:
            print(f"{maildir}: {e.strerror}", file=sys.stderr)
            return EX_TEMPFAIL
    if not (maildir / "tmp").is_dir() and not create:
        # Courier: the tmp/ file cannot be made -> perror(dir), EX_TEMPFAIL.
        print(f"{maildir}: not a maildir", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        st = os.fstat(stdin.fileno())
        regular = stat.S_ISREG(st.st_mode) and st.st_size > 0
    except (OSError, ValueError, AttributeError):
        regular = False
    try:
        if regular:
            source, size = stdin, st.st_size
        else:
            source, size = _spool_stdin(stdin)
    except OSError as e:
        print(f"stdin: {e.strerror}", file=sys.stderr)
        return EX_IOERR
    warnmsg = Path(warnfile) if warnfile else config_dir(None) / "quotawarnmsg"
    try:
        deliver_with_quota(maildir, _chunks(source), size, newquota=newquota)
    except OverQuota:
        if percent >= 0:
            _warn(maildir, percent, warnmsg)
        print("Mail quota exceeded.")
        return EX_NOPERM if regular else EX_TEMPFAIL
    except DeliveryError as e:
        print(f"{maildir}: {e.text}", file=sys.stderr)
        return EX_TEMPFAIL if e.temporary else EX_IOERR
    except OSError as e:
        print(f"{maildir}: {e.strerror}", file=sys.stderr)
        return EX_IOERR
    if percent >= 0:
        _warn(maildir, percent, warnmsg)
    return EX_OK


def _warn(maildir: Path, percent: int, msgfile: Path) -> None:
    try:
        deliver_quota_warning(maildir, percent, msgfile)
    except (DeliveryError, OSError) as e:
        # The message itself is delivered (or refused) already; a warning that
        # cannot be written changes nothing about that.
        print(f"{maildir}: cannot deliver the quota warning: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
