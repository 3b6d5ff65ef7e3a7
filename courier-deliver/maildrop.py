"""SPOOLDIR/maildrop/: where a user who may not write the spool leaves a message.

Postfix's design from before postdrop: the directory belongs to the daemon
account with mode 3733 (sticky, setgid MAILGROUP, writable and searchable by
all, listable by nobody but its owner), so any user can create a file there
but cannot see, read, rename or remove anybody else's. sendmail creates
`<random id>` with mode 0600, writes, fsyncs, and only then gives it mode 0640
(the group, MAILGROUP, comes from the setgid directory): the group-read bit
says "complete", as the owner-execute bit does in Postfix's maildrop. A user
cannot fsync the directory (that needs read permission on it); the file's own
fsync persists its new entry on ext4 and XFS, which journal the create with
the inode. courierd's pickup (pickup.py) takes it from there: the submitting
uid is the file's owner, never anything the file says.

A file is the envelope block, then the message (LF line ends, headers as
sendmail prepared them, no Received: yet; pickup adds it):

    courier-py-maildrop 1
    sender <address>                      <- "sender" alone: the null sender <>
    ret FULL | HDRS                       <- optional (RFC 3461 RET)
    envid <xtext>                         <- optional (RFC 3461 ENVID, as sent in SMTP)
    smtputf8 1                            <- optional: MAIL FROM ... SMTPUTF8 (RFC 6531)
    verp 1                                <- optional: MAIL FROM ... VERP (XVERP=Courier)
    security STARTTLS                     <- optional: MAIL FROM ... SECURITY=STARTTLS
    rcpt <address> <notify>|- <orcpt>|-   <- one per recipient; orcpt = addr-type;xtext
    end

The three flags are the spool envelope's (libcourier.spool.envelope), which
`sendmail -bs` offers as esmtpd does. Each is written only when set, so a file
without them is byte for byte what earlier sendmails wrote, and their files
read as before (the version stays 1). Addresses are checked as sendmail's
command line is (no spaces, controls or angle brackets); every line and the
whole block have a limit, each optional line may come once with exactly the
values above, and anything else is a malformed file, which pickup quarantines.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from courier_deliver.submit import MAX_RECIPIENTS, DataError, check_address

from libcourier.proto.errors import ClientError
from libcourier.smtp.grammar import parse_envid, parse_notify, parse_orcpt, xtext_encode
from libcourier.spool import Envelope, Recipient
from libcourier.spool.envelope import SECURITY_LEVELS

DIRNAME = "maildrop"
MAGIC = b"courier-py-maildrop 1\n"
MAX_LINE = 2048                  # one block line; an address is at most 1024 bytes
MAX_BLOCK = 4 * 1024 * 1024      # the whole block (10,000 recipients fit)
PARTIAL_MODE = 0o600            # being written: pickup leaves it alone
FILE_MODE = 0o640               # complete: courierd (the group) may read it
COMPLETE_BIT = 0o040
DIR_MODE = 0o3733
BUFFER = 64 * 1024


class MaildropError(Exception):
    """A maildrop file that is not what sendmail writes."""


@dataclass(frozen=True, slots=True)
class DropEnvelope:
    sender: str                          # "" for the null sender
    recipients: tuple[Recipient, ...]
    ret: str | None = None
    envid: str | None = None             # decoded
    smtputf8: bool = False               # the client said SMTPUTF8
    verp: bool = False                   # Courier's VERP: a return path per recipient
    security: str | None = None          # Courier's SECURITY: "STARTTLS" or None

    def spool_envelope(self, received: float, eight_bit: bool, client: str) -> Envelope:
        """The spool entry's envelope for this message (sendmail, pickup)."""
        addrs = [self.sender, *(r.address for r in self.recipients)]
        return Envelope(
            sender=self.sender, recipients=self.recipients, received=received,
            body="8BITMIME" if eight_bit else "7BIT",
            # Files of older sendmails have no smtputf8 line: a UTF-8 address says it.
            smtputf8=self.smtputf8 or any(not a.isascii() for a in addrs),
            envid=self.envid, ret=self.ret, verp=self.verp, security=self.security,
            client=client)


def format_block(env: DropEnvelope) -> bytes:
    lines = [MAGIC.decode().rstrip("\n"), f"sender {env.sender}".rstrip(" ")]
    if env.ret:
        lines.append(f"ret {env.ret}")
    if env.envid is not None:
        lines.append(f"envid {xtext_encode(env.envid)}")
    if env.smtputf8:
        lines.append("smtputf8 1")
    if env.verp:
        lines.append("verp 1")
    if env.security is not None:
        if env.security not in SECURITY_LEVELS:
            raise ValueError(f"unknown security level {env.security!r}")
        lines.append(f"security {env.security}")
    for r in env.recipients:
        orcpt = "-"
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            orcpt = f"{kind};{xtext_encode(addr)}"
        lines.append(f"rcpt {r.address} {r.notify or '-'} {orcpt}")
    lines.append("end")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _address(value: str) -> str:
    try:
        return check_address(value)
    except DataError as e:
        raise MaildropError(str(e)) from None


def read_block(fh: BinaryIO) -> DropEnvelope:
    """Read the envelope block from `fh` (left just after `end`); raises MaildropError."""
    if fh.readline(len(MAGIC) + 1) != MAGIC:
        raise MaildropError("not a maildrop file (bad first line)")
    total = len(MAGIC)
    sender: str | None = None
    ret: str | None = None
    envid: str | None = None
    flags: dict[str, str] = {}           # smtputf8, verp, security: each at most once
    rcpts: list[Recipient] = []
    while True:
        raw = fh.readline(MAX_LINE + 1)
        total += len(raw)
        if not raw.endswith(b"\n") or len(raw) > MAX_LINE or total > MAX_BLOCK:
            raise MaildropError("envelope line too long, or the file ends in the envelope")
        try:
            line = raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise MaildropError("envelope is not UTF-8") from None
        key, _, value = line.partition(" ")
        try:
            if key == "end" and not value:
                break
            if key == "sender" and sender is None:
                sender = _address(value) if value else ""
            elif key == "ret" and ret is None and value in ("FULL", "HDRS"):
                ret = value
            elif key == "envid" and envid is None:
                envid = parse_envid(value)
            elif key in _FLAG_VALUES and key not in flags and value in _FLAG_VALUES[key]:
                flags[key] = value
            elif key == "rcpt":
                addr, notify, orcpt = _split3(value)
                rcpts.append(Recipient(_address(addr),
                                       parse_orcpt(orcpt) if orcpt != "-" else None,
                                       parse_notify(notify) if notify != "-" else None))
                if len(rcpts) > MAX_RECIPIENTS:
                    raise MaildropError("too many recipients")
            else:
                raise MaildropError(f"unexpected envelope line {line[:60]!r}")
        except ClientError as e:
            raise MaildropError(f"bad envelope line {line[:60]!r}: {e}") from None
    if sender is None or not rcpts:
        raise MaildropError("envelope without a sender or recipients")
    return DropEnvelope(sender, tuple(rcpts), ret, envid, smtputf8="smtputf8" in flags,
                        verp="verp" in flags, security=flags.get("security"))


# The optional flag lines and the only values each may have.
_FLAG_VALUES: dict[str, tuple[str, ...]] = {
    "smtputf8": ("1",), "verp": ("1",), "security": SECURITY_LEVELS}


def _split3(value: str) -> tuple[str, str, str]:
    parts = value.split(" ")
    if len(parts) != 3 or not all(parts):
        raise MaildropError(f"bad rcpt line {value[:60]!r}")
    return parts[0], parts[1], parts[2]


def new_name() -> str:
    """128 random bits: a user cannot guess (or collide with) another's file."""
    return secrets.token_hex(16)


class DropWriter:
    """One message into the maildrop, as the calling user (sendmail's side).

    The data is counted past `max_size` but not written (`too_big`), so the
    caller can read its input to the end and report the size.
    """

    def __init__(self, dropdir: Path, max_size: int):
        self.dropdir = Path(dropdir)
        self.max_size = max_size
        self.name = new_name()
        self._path = self.dropdir / self.name
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                     | os.O_NOFOLLOW, PARTIAL_MODE)
        self._fh = os.fdopen(fd, "wb", buffering=BUFFER)
        self._size = 0
        self.too_big = False
        self._done = False

    def begin(self, env: DropEnvelope) -> None:
        self._fh.write(format_block(env))

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self.too_big or (self.max_size > 0 and self._size > self.max_size):
            self.too_big = True
            return
        self._fh.write(data)

    def commit(self) -> str:
        """Durable, then marked complete (group-readable) for pickup."""
        if self.too_big:
            self.abort()
            raise DataError(f"message larger than the size limit ({self.max_size} bytes)")
        try:
            self._fh.flush()
            fd = self._fh.fileno()
            os.fsync(fd)
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
            self._fh.close()
        except OSError:
            self.abort()
            raise
        self._done = True
        return self.name

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._fh.close()
        except OSError:
            pass
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
