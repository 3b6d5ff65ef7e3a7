"""sendmail: submit a message from the command line into the spool.

    sendmail [-t] [-i|-oi] [-f sender] [-F name] [-N dsn] [-R ret] [-V envid]
             [-C etcdir] [--] recipient...
    sendmail -bp            (the same as mailq)
    sendmail -bi / -I       (the same as makealiases)

The message comes on stdin; submit.py prepares it (headers, -t recipients),
this driver writes it with SpoolWriter and tells courierd (`NEW <qid>`), the
same path as esmtpd. Exit codes are sysexits(3): 0 queued, 64 usage,
65 bad message, 75 temporary (the spool could not be written), 77 no
permission, 78 configuration.

Who may submit: the spool belongs to the daemon account (MAILUSER). root
drops to that account before touching it; the daemon account itself and an
instance's owner (when the instance runs without root, they are the same)
write directly. Anyone else gets a clear EX_NOPERM: Courier solves this with
a setgid `submit` helper, which this milestone does not have.
"""

from __future__ import annotations

import email.utils
import os
import pwd
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from courier_deliver.submit import (
    DataError,
    MessageInput,
    Mode,
    Options,
    UsageError,
    check_address,
    parse_args,
    prepare,
    qualify,
)

from libcourier import privsep
from libcourier.config import ConfigError, config_dir
from libcourier.config.control import read_control_value
from libcourier.layout import Layout, load_layout
from libcourier.spool import Envelope, Recipient, SpoolError, SpoolWriter, notify

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
READ_CHUNK = 64 * 1024


class NoPermission(Exception):
    pass


def _err(msg: str) -> None:
    print(f"sendmail: {msg}", file=sys.stderr)


def enter_spool(layout: Layout) -> None:
    """Become someone who may write the spool, or raise NoPermission."""
    if os.geteuid() == 0:
        try:
            privsep.drop_to_daemon(layout.mailuser, layout.mailgroup)
        except privsep.PrivsepError as e:
            raise NoPermission(f"cannot switch to the mail account {layout.mailuser}: {e}") \
                from None
        return
    tmp = layout.spooldir / "tmp"
    if not os.access(tmp, os.W_OK | os.X_OK):
        raise NoPermission(
            f"cannot write to the mail queue {layout.spooldir}: only root and the mail "
            f"account ({layout.mailuser}) may submit mail on this system "
            f"(there is no setgid submit helper yet)")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who ran sendmail; taken before root drops to the mail account."""
    uid: int
    login: str
    fullname: str | None


def caller() -> Caller:
    """The real uid's login and full name, as Courier's submit names the sender."""
    uid = os.getuid()
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Caller(uid, str(uid), None)
    return Caller(uid, pw.pw_name, pw.pw_gecos.split(",")[0].strip() or None)


def submit(opts: Options, stdin: BinaryIO, layout: Layout, who: Caller, *, me: str,
           domain: str, sizelimit: int = 0, environ: Mapping[str, str] | None = None) -> str:
    """Read the message from `stdin` (a binary file) and queue it; returns the qid.
    Raises DataError, SpoolError, OSError."""
    env = os.environ if environ is None else environ
    login, gecos = who.login, who.fullname
    if opts.sender is None:
        sender = qualify(login, domain)
    elif opts.sender == "":
        sender = ""
    else:
        sender = qualify(check_address(opts.sender), domain)
    now = datetime.now().astimezone()
    date = email.utils.format_datetime(now)
    mi = MessageInput(ignore_dots=opts.ignore_dots)
    writer: SpoolWriter | None = None
    prepared = None
    eight_bit = False
    try:
        while True:
            chunk = stdin.read(READ_CHUNK)
            out = mi.feed(chunk) if chunk else mi.eof()
            if mi.headers is not None and writer is None:
                writer = SpoolWriter(layout.spooldir, sizelimit + 8192 if sizelimit else 0)
                received = (f"Received: (from {login}@localhost uid {who.uid})\n"
                            f"  by {me} (courier-py) with local; {date}\n").encode()
                prepared = prepare(mi.headers, opts, sender=sender,
                                   fullname=opts.fullname or gecos, domain=domain, date=date,
                                   message_id=f"<courier-py.{writer.qid}@{me}>",
                                   received=received,
                                   add_date=not env.get("NOADDDATE"),
                                   add_msgid=not env.get("NOADDMSGID"))
                writer.write(prepared.header_bytes)
                eight_bit = eight_bit or any(b > 127 for b in prepared.header_bytes)
            if out:
                assert writer is not None
                writer.write(out)
                eight_bit = eight_bit or not out.isascii()
            if not chunk or mi.done:
                break
        assert writer is not None and prepared is not None
        if writer.too_big:
            raise DataError(f"message larger than the size limit ({sizelimit} bytes)")
        addrs = [sender, *prepared.recipients]
        envelope = Envelope(
            sender=sender,
            recipients=tuple(Recipient(r, None, opts.notify) for r in prepared.recipients),
            received=now.timestamp(),
            body="8BITMIME" if eight_bit else "7BIT",
            smtputf8=any(not a.isascii() for a in addrs),
            envid=opts.envid, ret=opts.ret,
            client=f"local uid={who.uid} user={login}")
        qid = writer.commit(envelope)
    finally:
        if writer is not None:
            writer.abort()      # a no-op after commit
    notify(layout.queue_socket, qid)
    return qid


def _read_limit(etc: Path) -> int:
    v = read_control_value(etc / "sizelimit")
    return int(v) if v and v.isdigit() else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except UsageError as e:
        _err(f"{e}\nusage: sendmail [-t] [-i] [-f sender] [-F name] [-C etcdir] "
             f"[--] recipient...")
        return EX_USAGE
    if opts.mode is Mode.LIST:
        from courier_deliver import mailq
        return mailq.main(["-C", opts.config] if opts.config else [])
    if opts.mode is Mode.ALIASES:
        from courier_deliver import makealiases
        return makealiases.main(["-C", opts.config] if opts.config else [])
    if opts.mode is Mode.SMTP:
        _err("-bs (SMTP on stdin) is not supported; connect to the SMTP port instead")
        return EX_USAGE
    etc = config_dir(opts.config)
    try:
        layout = load_layout(etc)
        me = (read_control_value(etc / "me") or socket.getfqdn()).lower()
        domain = (read_control_value(etc / "defaultdomain") or me).lower()
        sizelimit = _read_limit(etc)
    except ConfigError as e:
        _err(str(e))
        return EX_CONFIG
    except OSError as e:
        _err(f"cannot read the configuration in {etc}: {e}")
        return EX_CONFIG
    who = caller()
    try:
        enter_spool(layout)
    except NoPermission as e:
        _err(str(e))
        return EX_NOPERM
    try:
        submit(opts, sys.stdin.buffer, layout, who, me=me, domain=domain, sizelimit=sizelimit)
    except DataError as e:
        _err(str(e))
        return EX_DATAERR
    except (SpoolError, OSError) as e:
        _err(f"cannot queue the message: {e}")
        return EX_TEMPFAIL
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
