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
Anyone else asks courierd over its socket (`MAILQ`): courierd takes the
caller's uid from SO_PEERCRED and answers with that user's own messages
only -- those submitted locally by that uid (sendmail, the maildrop pickup),
as Courier's mailq shows everyone but the superuser. The answer (MAILQ_MAX
entries at most) is one line per message and recipient:

    M <qid> <size> <arrival> <sender>       fields percent-encoded (UTF-8)
    R <recipient>
    END
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from libcourier import privsep
from libcourier.config import ConfigError, config_dir
from libcourier.layout import Layout, load_layout
from libcourier.spool import SpoolError, entry_exists, list_queue, open_data, read_envelope

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
            data = open_data(layout.spooldir, qid)
        except FileNotFoundError:
            continue        # delivered while we were listing
        except (OSError, SpoolError) as e:
            out.append(Entry(qid, 0, 0.0, "", (), str(e)))
            continue
        with data:
            # The size is the message's octets (the file also holds the envelope).
            size = data.length
            try:
                env = read_envelope(layout.spooldir, qid, data)
            except SpoolError as e:
                if not entry_exists(layout.spooldir, qid):
                    continue
                out.append(Entry(qid, size, 0.0, "", (), str(e)))
                continue
        out.append(Entry(qid, size, env.received, env.sender,
                         tuple(r.address for r in env.recipients)))
    return out


MAILQ_MAX = 10000              # messages in one MAILQ answer
ANSWER_MAX = 64 * 1024 * 1024   # bytes of an answer the client reads
QUERY_TIMEOUT = 60.0
_LOCAL_UID = re.compile(r"local uid=([0-9]+)(?: |$)")


def submitted_by(client: str) -> int | None:
    """The uid that submitted a message locally ("local uid=N user=..." in the
    envelope, written by sendmail and the pickup), else None."""
    m = _LOCAL_UID.match(client)
    return int(m.group(1)) if m else None


def scan_for(layout: Layout, uid: int | None, limit: int = MAILQ_MAX) -> list[Entry]:
    """The queue as one user may see it: every message for uid None (root, the
    mail account), else only those that uid submitted."""
    out = []
    for qid in list_queue(layout.spooldir):
        if len(out) >= limit:
            break
        try:
            with open_data(layout.spooldir, qid) as data:
                env = read_envelope(layout.spooldir, qid, data)
                size = data.length
        except (OSError, SpoolError):
            continue            # delivered meanwhile, or damaged (root sees those)
        if uid is not None and submitted_by(env.client) != uid:
            continue
        out.append(Entry(qid, size, env.received, env.sender,
                         tuple(r.address for r in env.recipients)))
    return out


def format_answer(entries: Iterable[Entry]) -> bytes:
    lines = []
    for e in entries:
        lines.append(f"M {e.qid} {e.size} {int(e.received)} {quote(e.sender, safe='@')}")
        lines.extend(f"R {quote(r, safe='@')}" for r in e.recipients)
    lines.append("END")
    return ("\n".join(lines) + "\n").encode("ascii")


def parse_answer(data: bytes) -> list[Entry]:
    """Raises ValueError on anything but a complete, well-formed answer."""
    text = data.decode("ascii")
    if not text.endswith("END\n"):
        raise ValueError("the answer is cut short")
    out: list[Entry] = []
    rcpts: list[str] = []
    head: tuple[str, int, float, str] | None = None
    for line in text.split("\n")[:-2]:
        kind, _, rest = line.partition(" ")
        if kind == "M":
            if head is not None:
                out.append(Entry(*head, tuple(rcpts)))
            qid, size, when, sender = rest.split(" ")
            head, rcpts = (qid, int(size), float(when), unquote(sender)), []
        elif kind == "R" and head is not None:
            rcpts.append(unquote(rest))
        else:
            raise ValueError(f"bad answer line {line[:40]!r}")
    if head is not None:
        out.append(Entry(*head, tuple(rcpts)))
    return out


def query_courierd(layout: Layout, timeout: float = QUERY_TIMEOUT) -> list[Entry]:
    """Ask the running courierd for the caller's own messages. Raises OSError
    (courierd not running) or ValueError (a garbled answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(layout.queue_socket))
        s.sendall(b"MAILQ\n")
        buf = bytearray()
        while len(buf) <= ANSWER_MAX:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    return parse_answer(bytes(buf))


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
    if os.access(msgs, os.R_OK | os.X_OK):
        entries = scan(layout)
    else:
        # An ordinary user: courierd shows them their own messages.
        try:
            entries = query_courierd(layout)
        except (OSError, ValueError) as e:
            print(f"mailq: courierd did not answer ({e}); only root and the mail account "
                  f"({layout.mailuser}) may read the queue {layout.spooldir} directly",
                  file=sys.stderr)
            return EX_NOPERM
    sys.stdout.write(format_batch(entries) if args.batch else format_listing(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
