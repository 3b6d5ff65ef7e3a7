"""sendmail: submit a message from the command line into the spool.

    sendmail [-t] [-i|-oi] [-f sender] [-F name] [-N dsn] [-R ret] [-V envid]
             [-C etcdir] [--] recipient...
    sendmail -bs            (SMTP on stdin/stdout: stdiosmtp.py)
    sendmail -bp            (the same as mailq)
    sendmail -bi / -I       (the same as makealiases)

The message comes on stdin; submit.py prepares it (headers, -t recipients).
Exit codes are sysexits(3): 0 queued, 64 usage, 65 bad message, 75 temporary
(the spool could not be written), 77 no permission, 78 configuration.

Two ways in, chosen by who runs it:
- root (who drops to the daemon account first), the daemon account and an
  instance's owner (when the instance runs without root, the same) write the
  spool directly with SpoolWriter, our Received: line on top, and tell
  courierd (`NEW <qid>`), the same path as esmtpd;
- anyone else leaves the message in SPOOLDIR/maildrop (maildrop.py), where
  courierd's pickup (pickup.py) checks it and queues it as that user.
The envelope sender a user may use is localsubmit.py's rule; sendmail refuses
any other -f (EX_NOPERM) before reading the message, and pickup enforces it.
"""

from __future__ import annotations

import email.utils
import os
import pwd
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from courier_deliver.localsubmit import (
    TRUSTED_USERS_FILE,
    Submitter,
    is_trusted,
    received_line,
    refusal,
    sender_allowed,
)
from courier_deliver.maildrop import DIRNAME, DropEnvelope, DropWriter
from courier_deliver.stdiosmtp import Abort, Begin, Chunk, Closed, End, Send, StdioSmtp
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
from libcourier.config.control import read_control_file, read_control_value
from libcourier.layout import Layout, load_layout
from libcourier.smtp.reply import Reply
from libcourier.spool import Recipient, SpoolError, SpoolWriter, notify

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
READ_CHUNK = 64 * 1024
DEFAULT_SIZELIMIT = 10 * 1024 * 1024     # Courier's, when the `sizelimit` file is absent
HEADER_ALLOWANCE = 8192                  # the headers we add may pass the limit by this


class NoPermission(Exception):
    pass


class NotReady(Exception):
    """The maildrop is not there (yet): a temporary failure, as Courier's sendmail
    says "Service temporarily unavailable" when submit cannot run."""


def _err(msg: str) -> None:
    print(f"sendmail: {msg}", file=sys.stderr)


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


# -- the two ways into the queue --

class Sink(Protocol):
    ident: str          # for the Message-ID we add

    @property
    def too_big(self) -> bool: ...
    def begin(self, env: DropEnvelope, date: str) -> None: ...
    def write(self, data: bytes) -> None: ...
    def commit(self) -> str: ...
    def abort(self) -> None: ...


class SpoolSink:
    """Straight into the spool (root, the daemon account, the instance owner)."""

    def __init__(self, layout: Layout, who: Submitter, me: str, max_size: int):
        self.layout, self.who, self.me = layout, who, me
        self.writer = SpoolWriter(layout.spooldir, max_size)
        self.ident = self.writer.qid
        self._env: DropEnvelope | None = None
        self._eight_bit = False

    @property
    def too_big(self) -> bool:
        return self.writer.too_big

    def begin(self, env: DropEnvelope, date: str) -> None:
        self._env = env
        self.writer.write(received_line(self.who, self.me, date, self.writer.qid))

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self._eight_bit = self._eight_bit or not data.isascii()

    def commit(self) -> str:
        env = self._env
        assert env is not None
        qid = self.writer.commit(env.spool_envelope(
            datetime.now().timestamp(), self._eight_bit,
            f"local uid={self.who.uid} user={self.who.login}"))
        notify(self.layout.queue_socket, qid)
        return qid

    def abort(self) -> None:
        self.writer.abort()


class DropSink:
    """Into SPOOLDIR/maildrop, for courierd's pickup (every other user)."""

    def __init__(self, dropdir: Path, max_size: int):
        self.writer = DropWriter(dropdir, max_size)
        self.ident = self.writer.name

    @property
    def too_big(self) -> bool:
        return self.writer.too_big

    def begin(self, env: DropEnvelope, date: str) -> None:
        self.writer.begin(env)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def commit(self) -> str:
        return self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


SinkFactory = Callable[[], Sink]


def choose_sink(layout: Layout, who: Submitter, me: str, max_size: int) -> SinkFactory:
    """Become someone who may write the spool, or use the maildrop; raises
    NoPermission or NotReady."""
    if os.geteuid() == 0:
        try:
            privsep.drop_to_daemon(layout.mailuser, layout.mailgroup)
        except privsep.PrivsepError as e:
            raise NoPermission(f"cannot switch to the mail account {layout.mailuser}: {e}") \
                from None
        return lambda: SpoolSink(layout, who, me, max_size)
    if os.access(layout.spooldir / "tmp", os.W_OK | os.X_OK):
        return lambda: SpoolSink(layout, who, me, max_size)
    drop = layout.spooldir / DIRNAME
    if not os.access(drop, os.W_OK | os.X_OK):
        raise NotReady(
            f"cannot write to {drop}: the mail queue takes mail from users once "
            f"courierd has prepared it (is courierd running?)")
    return lambda: DropSink(drop, max_size)


# -- one message from stdin (sendmail's usual mode) --

def envelope_sender(opts: Options, login: str, domain: str) -> str:
    if opts.sender is None:
        return qualify(login, domain)
    if opts.sender == "":
        return ""
    return qualify(check_address(opts.sender), domain)


def submit(opts: Options, stdin: BinaryIO, open_sink: SinkFactory, who: Caller, *,
           sender: str, me: str, domain: str, sizelimit: int = 0,
           environ: Mapping[str, str] | None = None) -> str:
    """Read the message from `stdin` (a binary file) and queue it; returns the id.
    Raises DataError, SpoolError, OSError."""
    env = os.environ if environ is None else environ
    now = datetime.now().astimezone()
    date = email.utils.format_datetime(now)
    mi = MessageInput(ignore_dots=opts.ignore_dots)
    sink: Sink | None = None
    try:
        while True:
            chunk = stdin.read(READ_CHUNK)
            out = mi.feed(chunk) if chunk else mi.eof()
            if mi.headers is not None and sink is None:
                sink = open_sink()
                prepared = prepare(mi.headers, opts, sender=sender,
                                   fullname=opts.fullname or who.fullname, domain=domain,
                                   date=date, message_id=f"<courier-py.{sink.ident}@{me}>",
                                   received=b"",
                                   add_date=not env.get("NOADDDATE"),
                                   add_msgid=not env.get("NOADDMSGID"))
                sink.begin(DropEnvelope(
                    sender, tuple(Recipient(r, None, opts.notify) for r in prepared.recipients),
                    opts.ret, opts.envid), date)
                sink.write(prepared.header_bytes)
            if out:
                assert sink is not None
                sink.write(out)
            if not chunk or mi.done:
                break
        assert sink is not None
        if sink.too_big:
            raise DataError(f"message larger than the size limit ({sizelimit} bytes)")
        return sink.commit()
    finally:
        if sink is not None:
            sink.abort()      # a no-op after commit


# -- sendmail -bs --

def serve_bs(stdin: BinaryIO, stdout: BinaryIO, open_sink: SinkFactory, who: Submitter,
             *, me: str, domains: tuple[str, ...], domain: str, sizelimit: int) -> int:
    """Drive StdioSmtp over stdin/stdout; each accepted message goes through a sink."""
    def check_sender(addr: str) -> str | None:
        return None if sender_allowed(who, addr, domains) else refusal(who, addr)

    core = StdioSmtp(hostname=me, max_size=sizelimit, check_sender=check_sender)
    stdout.write(core.greeting())
    stdout.flush()
    sink: Sink | None = None
    mi: MessageInput | None = None
    begin: Begin | None = None
    date = ""
    failed: Reply | None = None         # the answer to the dot, once something went wrong

    def deliver(data: bytes) -> None:
        nonlocal sink, failed
        assert mi is not None and begin is not None
        if failed is not None:
            return
        try:
            out = mi.feed(data) if data else mi.eof()
            if mi.headers is not None and sink is None:
                sink = open_sink()
                rcpts = tuple(Recipient(qualify(r.address, domain), r.orcpt, r.notify)
                              for r in begin.recipients)
                prepared = prepare(mi.headers, Options(recipients=tuple(r.address for r in rcpts),
                                                       ignore_dots=True),
                                   sender=begin.sender, fullname=None, domain=domain,
                                   date=date, message_id=f"<courier-py.{sink.ident}@{me}>",
                                   received=b"")
                sink.begin(DropEnvelope(begin.sender, rcpts, begin.ret, begin.envid,
                                        smtputf8=begin.smtputf8, verp=begin.verp,
                                        security=begin.security), date)
                sink.write(prepared.header_bytes)
            if out:
                assert sink is not None
                sink.write(out)
        except DataError as e:          # the message itself: permanent
            failed = Reply.make(554, "5.6.0", f"Message refused: {e}"[:400])
        except (SpoolError, OSError) as e:
            failed = Reply.make(451, "4.3.0", f"Cannot queue the message: {e}"[:400])

    def finish() -> Reply:
        nonlocal sink, failed
        deliver(b"")
        try:
            if failed is not None:
                return failed
            if sink is None:
                return Reply.make(451, "4.3.0", "Nothing to queue")
            if sink.too_big:
                return Reply.make(552, "5.3.4", "Message too big")
            ident = sink.commit()
            return Reply.make(250, "2.0.0", f"Ok: queued as {ident}")
        except (DataError, SpoolError, OSError) as e:
            return Reply.make(451, "4.3.0", f"Cannot queue the message: {e}"[:400])
        finally:
            if sink is not None:
                sink.abort()
            sink, failed = None, None

    pending: deque = deque()
    try:
        while True:
            if not pending:
                stdout.flush()
                data = stdin.read1(READ_CHUNK)
                pending.extend(core.feed(data) if data else core.eof())
                continue
            ev = pending.popleft()
            match ev:
                case Send(data):
                    stdout.write(data)
                case Begin():
                    begin, sink, failed = ev, None, None
                    mi = MessageInput(ignore_dots=True)
                    date = email.utils.format_datetime(datetime.now().astimezone())
                case Chunk(data):
                    deliver(data)
                case End():
                    # The core holds later input until the dot is answered.
                    pending.extendleft(reversed(core.data_result(finish())))
                case Abort():
                    if sink is not None:
                        sink.abort()        # the input ended inside DATA: nothing queued
                    sink = None
                case Closed():
                    stdout.flush()
                    return EX_OK
    except BrokenPipeError:
        if sink is not None:
            sink.abort()
        return EX_TEMPFAIL


# -- the command --

def _read_limit(etc: Path) -> int:
    v = read_control_value(etc / "sizelimit")
    return int(v) if v and v.isdigit() else DEFAULT_SIZELIMIT


def _daemon_uid(layout: Layout) -> int:
    try:
        return privsep.lookup_account(layout.mailuser, layout.mailgroup)[0]
    except privsep.PrivsepError:
        return -1


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
    try:
        trusted_logins = read_control_file(etc / TRUSTED_USERS_FILE)
    except ConfigError:
        # Unreadable for this user (an admin made it 0600): courierd's pickup
        # still reads it and decides; here the user is simply not trusted.
        trusted_logins = []
    me_caller = caller()
    who = Submitter(me_caller.uid, me_caller.login,
                    is_trusted(me_caller.uid, me_caller.login, daemon_uid=_daemon_uid(layout),
                               trusted_logins=trusted_logins))
    domains = (me, domain)
    limit = sizelimit + HEADER_ALLOWANCE if sizelimit else 0
    sender = ""
    if opts.mode is not Mode.SMTP:
        try:
            sender = envelope_sender(opts, who.login, domain)
        except DataError as e:
            _err(str(e))
            return EX_DATAERR
        if not sender_allowed(who, sender, domains):
            _err(refusal(who, sender))
            return EX_NOPERM
    try:
        open_sink = choose_sink(layout, who, me, limit)
    except NoPermission as e:
        _err(str(e))
        return EX_NOPERM
    except NotReady as e:
        _err(str(e))
        return EX_TEMPFAIL
    if opts.mode is Mode.SMTP:
        return serve_bs(sys.stdin.buffer, sys.stdout.buffer, open_sink, who, me=me,
                        domains=domains, domain=domain, sizelimit=sizelimit)
    try:
        submit(opts, sys.stdin.buffer, open_sink, me_caller, sender=sender, me=me,
               domain=domain, sizelimit=sizelimit)
    except DataError as e:
        _err(str(e))
        return EX_DATAERR
    except (SpoolError, OSError) as e:
        _err(f"cannot queue the message: {e}")
        return EX_TEMPFAIL
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
