"""mailq: list the mail queue.

    mailq [-C etcdir] [--batch]

The layout is Postfix's (which scripts and monitoring parse most), one entry
per message:

    -Queue ID-            --Size-- ----Arrival Time---- -Sender/Recipient-------
    0017a2c3e9f1b2c4.1f3.1     1234 Mon Jan  1 12:00:00  alice@example.com
                                                          bob@example.org

    -- 2 Kbytes in 1 Request.

"Mail queue is empty" when there is nothing. --batch prints one line per
message, tab-separated: qid, size, arrival (unix time), sender, recipients
(comma-separated) -- for scripts, as Courier's `mailq -batch`.

Reading the spool needs the daemon account's rights: root drops to it first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from libcourier import privsep
from libcourier.config import ConfigError, config_dir
from libcourier.layout import Layout, load_layout
from libcourier.spool import SpoolError, list_queue, read_envelope

EX_NOPERM = 77
EX_CONFIG = 78


@dataclass(frozen=True, slots=True)
class Entry:
    qid: str
    size: int
    received: float
    sender: str
    recipients: tuple[str, ...]
    damaged: str | None = None      # why the envelope could not be read


def scan(layout: Layout) -> list[Entry]:
    out = []
    for qid in list_queue(layout.spooldir):
        try:
            size = (layout.spooldir / "msgs" / f"{qid}.dat").stat().st_size
        except FileNotFoundError:
            continue        # delivered while we were listing
        try:
            env = read_envelope(layout.spooldir, qid)
        except SpoolError as e:
            if not (layout.spooldir / "msgs" / f"{qid}.env").exists():
                continue
            out.append(Entry(qid, size, 0.0, "", (), str(e)))
            continue
        out.append(Entry(qid, size, env.received, env.sender,
                         tuple(r.address for r in env.recipients)))
    return out


def _printable(s: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in s)


def format_listing(entries: Iterable[Entry], *, localtime=time.localtime) -> str:
    entries = list(entries)
    if not entries:
        return "Mail queue is empty\n"
    lines = ["-Queue ID-            --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    pad = " " * 54
    for e in entries:
        total += e.size
        when = time.strftime("%a %b %e %H:%M:%S", localtime(e.received)) if e.received \
            else "?" * 19
        sender = _printable(e.sender) or "MAILER-DAEMON"
        lines.append(f"{e.qid:<22}{e.size:>8} {when:<20}  {sender}")
        if e.damaged:
            lines.append(f"{pad}(damaged envelope: {_printable(e.damaged)})")
        for r in e.recipients:
            lines.append(f"{pad}{_printable(r)}")
        lines.append("")
    n = len(entries)
    kb = (total + 1023) // 1024
    lines.append(f"-- {kb} Kbytes in {n} Request{'s' if n != 1 else ''}.")
    return "\n".join(lines) + "\n"


def format_batch(entries: Iterable[Entry]) -> str:
    return "".join(f"{e.qid}\t{e.size}\t{int(e.received)}\t{_printable(e.sender)}\t"
                   f"{','.join(_printable(r) for r in e.recipients)}\n" for e in entries)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mailq", description="list the courier-py mail queue")
    ap.add_argument("-C", dest="etc", help="config directory")
    ap.add_argument("--batch", "-batch", action="store_true",
                    help="one tab-separated line per message")
    args = ap.parse_args(argv)
    etc = config_dir(args.etc)
    try:
        layout = load_layout(etc)
    except ConfigError as e:
        print(f"mailq: {e}", file=sys.stderr)
        return EX_CONFIG
    if os.geteuid() == 0:
        try:
            privsep.drop_to_daemon(layout.mailuser, layout.mailgroup)
        except privsep.PrivsepError as e:
            print(f"mailq: {e}", file=sys.stderr)
            return EX_NOPERM
    msgs = layout.spooldir / "msgs"
    if not os.access(msgs, os.R_OK | os.X_OK):
        print(f"mailq: cannot read the mail queue {layout.spooldir}: only root and the "
              f"mail account ({layout.mailuser}) may list it", file=sys.stderr)
        return EX_NOPERM
    entries = scan(layout)
    sys.stdout.write(format_batch(entries) if args.batch else format_listing(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
