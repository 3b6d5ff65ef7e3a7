"""The sendmail command line and message preparation, without I/O.

`parse_args` reads a Courier/Postfix-compatible sendmail command line;
`MessageInput` takes the message as it arrives on stdin (bytes in) and yields
the bytes to spool (LF line ends, headers completed) plus, with -t, the
recipients named in To/Cc/Bcc. The driver (sendmail.py) does the reading,
the spool write and the notice.

What Courier's submit does to a locally submitted message, and we too:
- a leading mbox `From ` line is dropped;
- without -i/-oi a line holding a single "." ends the message (classic
  sendmail; RFC 5321 §4.1.1.4 is the SMTP form of the same convention);
- Date: and Message-ID: are added when missing (RFC 5322 §3.6: both SHOULD/MUST
  be present), unless NOADDDATE / NOADDMSGID are set in the environment;
- From: is added when missing (RFC 5322 §3.6: From is required), from -F or the
  account's full name and the envelope sender;
- with -t, Bcc: fields are removed (RFC 5322 §3.6.3) after their addresses
  were taken as recipients.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import getaddresses

MAX_HEADER_BYTES = 1024 * 1024    # the whole header section; more is a data error
MAX_LINE_PIECE = 64 * 1024        # longer lines pass through in pieces (never a "." line)
MAX_ADDRESS = 1024                # bytes of one address (the courierlocal limit)
MAX_RECIPIENTS = 10000


class UsageError(Exception):
    """A bad command line (sysexits EX_USAGE)."""


class DataError(Exception):
    """A message we cannot submit (sysexits EX_DATAERR)."""


class Mode(enum.Enum):
    DELIVER = "deliver"       # -bm, the default: read a message, queue it
    LIST = "list"             # -bp: mailq
    SMTP = "smtp"             # -bs: SMTP on stdin/stdout (not implemented here)
    ALIASES = "aliases"       # -bi / -I: newaliases


@dataclass(frozen=True, slots=True)
class Options:
    mode: Mode = Mode.DELIVER
    sender: str | None = None          # -f; "" for the null sender <>
    fullname: str | None = None        # -F
    read_recipients: bool = False      # -t
    ignore_dots: bool = False          # -i / -oi
    notify: str | None = None          # -N (RFC 3461 NOTIFY)
    ret: str | None = None             # -R (RFC 3461 RET)
    envid: str | None = None           # -V (RFC 3461 ENVID)
    config: str | None = None          # -C config dir
    recipients: tuple[str, ...] = ()


# Flags of other sendmails accepted and ignored, as Postfix and Courier do.
_IGNORED_WITH_ARG = {"-B", "-h", "-L", "-O", "-q", "-X"}
_IGNORED_FLAGS = {"-m", "-n", "-U", "-v", "-G", "-em", "-ep", "-eq", "-ew", "-bm", "-odi",
                  "-odb", "-odq", "-oem", "-om", "-os", "-oee"}
_NOTIFY_WORDS = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}


def parse_args(argv: Iterable[str]) -> Options:
    """sendmail's arguments (without the program name); raises UsageError."""
    args = list(argv)
    o: dict[str, object] = {}
    rcpts: list[str] = []
    i = 0

    def value(flag: str) -> str:
        # "-fsender" and "-f sender" are both accepted, as every sendmail does.
        nonlocal i
        arg = args[i]
        if len(arg) > len(flag):
            return arg[len(flag):]
        i += 1
        if i >= len(args):
            raise UsageError(f"option {flag} needs a value")
        return args[i]

    while i < len(args):
        arg = args[i]
        if arg == "--":
            rcpts.extend(args[i + 1:])
            break
        if not arg.startswith("-") or arg == "-":
            rcpts.append(arg)
        elif arg in ("-i", "-oi"):
            o["ignore_dots"] = True
        elif arg == "-t":
            o["read_recipients"] = True
        elif arg in ("-bp",):
            o["mode"] = Mode.LIST
        elif arg == "-bs":
            o["mode"] = Mode.SMTP
        elif arg in ("-bi", "-I"):
            o["mode"] = Mode.ALIASES
        elif arg.startswith("-b") and arg not in _IGNORED_FLAGS:
            raise UsageError(f"unsupported mode {arg}")
        elif arg.startswith("-f") or arg.startswith("-r"):
            sender = value(arg[:2]).strip()
            o["sender"] = "" if sender in ("<>", "") else sender.strip("<>")
        elif arg.startswith("-F"):
            o["fullname"] = value("-F")
        elif arg.startswith("-N"):
            words = [w.strip().upper() for w in value("-N").split(",")]
            if not words or any(w not in _NOTIFY_WORDS for w in words) or \
                    ("NEVER" in words and len(words) > 1):
                raise UsageError("-N takes never or a list of success, failure, delay")
            o["notify"] = ",".join(words)
        elif arg.startswith("-R"):
            ret = value("-R").strip().upper()
            if ret not in ("FULL", "HDRS"):
                raise UsageError("-R takes full or hdrs")
            o["ret"] = ret
        elif arg.startswith("-V"):
            o["envid"] = value("-V")
        elif arg.startswith("-C"):
            o["config"] = value("-C")
        elif arg[:2] in _IGNORED_WITH_ARG:
            value(arg[:2])
        elif arg in _IGNORED_FLAGS or arg.startswith("-o"):
            pass
        else:
            raise UsageError(f"unknown option {arg}")
        i += 1
    if len(rcpts) > MAX_RECIPIENTS:
        raise UsageError("too many recipients")
    return Options(recipients=tuple(rcpts), **o)  # type: ignore[arg-type]


def check_address(address: str) -> str:
    """An envelope address as given by a user: no spaces, controls or brackets."""
    if not address or len(address.encode("utf-8", "surrogateescape")) > MAX_ADDRESS:
        raise DataError(f"bad address {address[:60]!r}")
    if any(c.isspace() or not c.isprintable() or c in "<>" for c in address):
        raise DataError(f"bad address {address[:60]!r}")
    return address


def qualify(address: str, domain: str) -> str:
    """Courier's submit appends the default domain to a bare local part."""
    check_address(address)
    return address if "@" in address else f"{address}@{domain}"


@dataclass(frozen=True, slots=True)
class Header:
    name: str        # as written
    raw: bytes       # the whole field with its continuation lines, LF-terminated

    @property
    def key(self) -> str:
        return self.name.lower()

    def value(self) -> str:
        _, _, v = self.raw.decode("utf-8", "replace").partition(":")
        return v.replace("\n", " ").strip()


def parse_header_line(line: bytes) -> str | None:
    """The field name of an RFC 5322 §2.2 header line, or None when the line is not one."""
    name, colon, _ = line.partition(b":")
    if not colon or not name:
        return None
    # ftext: printable ASCII except ":" and SP (RFC 5322 §3.6.8); trailing WSP
    # before the colon is the obsolete syntax (§4.5.3), tolerated.
    name = name.rstrip(b" \t")
    if not name or any(b < 33 or b > 126 for b in name):
        return None
    return name.decode("ascii")


def header_addresses(headers: Iterable[Header], names: Iterable[str]) -> list[str]:
    """Addresses in the named fields (RFC 5322 §3.4 address lists, groups flattened)."""
    wanted = {n.lower() for n in names}
    values = [h.value() for h in headers if h.key in wanted]
    out: list[str] = []
    for _name, addr in getaddresses(values):
        addr = addr.strip()
        if addr and addr not in out:
            out.append(addr)
    return out


class MessageInput:
    """Bytes of the message in; header section parsed, body passed through.

    feed() returns the body bytes ready to spool (LF line ends); the header
    section is held until it ends (at most MAX_HEADER_BYTES), then
    `headers` is set and the body streams. `done` is set once the message
    ended (a "." line without -i, or eof()).
    """

    def __init__(self, *, ignore_dots: bool):
        self.ignore_dots = ignore_dots
        self.headers: list[Header] | None = None
        self.done = False
        self._partial = bytearray()
        self._header_bytes = 0
        self._lines: list[bytes] = []     # header lines so far (LF-terminated)
        self._first = True
        self._pending_body: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        self._partial += data
        while not self.done:
            nl = self._partial.find(b"\n")
            if nl < 0:
                if len(self._partial) > MAX_LINE_PIECE:
                    self._long_piece(out)
                break
            line = bytes(self._partial[:nl + 1])
            del self._partial[:nl + 1]
            self._line(line, out)
        return b"".join(out)

    def eof(self) -> bytes:
        """End of stdin: the last line may lack its LF."""
        out: list[bytes] = []
        if not self.done and self._partial:
            line = bytes(self._partial) + b"\n"
            self._partial.clear()
            self._line(line, out)
        if self.headers is None:
            self._end_headers(out)
        self.done = True
        return b"".join(out)

    def _long_piece(self, out: list[bytes]) -> None:
        piece = bytes(self._partial[:MAX_LINE_PIECE])
        del self._partial[:MAX_LINE_PIECE]
        if self.headers is None:
            raise DataError("header line too long")
        # A CR at the piece's end may pair with an LF in the next piece.
        if piece.endswith(b"\r"):
            self._partial[:0] = b"\r"
            piece = piece[:-1]
        out.append(piece)

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        if not self.ignore_dots and line == b".\n":
            if self.headers is None:
                self._end_headers(out)
            self.done = True
            return
        first, self._first = self._first, False
        if self.headers is not None:
            out.append(line)
            return
        if first and line.startswith(b"From "):
            return      # an mbox From_ line is not part of the message
        self._header_bytes += len(line)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise DataError("header section too large")
        if line == b"\n":
            self._end_headers(out)
            out.append(line)
        elif line[:1] in (b" ", b"\t") and self._lines:
            self._lines.append(line)          # a folded continuation (RFC 5322 §2.2.3)
        elif parse_header_line(line) is not None:
            self._lines.append(line)
        else:
            # Not a header: the message has no (more) header section; this
            # line starts the body, after the blank line that must separate them.
            self._end_headers(out)
            out.append(b"\n")
            out.append(line)

    def _end_headers(self, out: list[bytes]) -> None:
        headers: list[Header] = []
        for line in self._lines:
            if line[:1] in (b" ", b"\t"):
                prev = headers[-1]
                headers[-1] = Header(prev.name, prev.raw + line)
            else:
                headers.append(Header(parse_header_line(line) or "", line))
        self.headers = headers
        self._lines = []


@dataclass(frozen=True, slots=True)
class Prepared:
    header_bytes: bytes                 # the finished header section (no blank line)
    recipients: tuple[str, ...]         # envelope recipients, qualified, deduplicated


def prepare(headers: list[Header], opts: Options, *, sender: str, fullname: str | None,
            domain: str, date: str, message_id: str, received: bytes,
            add_date: bool = True, add_msgid: bool = True) -> Prepared:
    """The headers to spool and the recipients; raises DataError."""
    rcpts: list[str] = []
    for r in opts.recipients:
        for part in r.split(","):           # "a,b" on the command line, as Postfix allows
            if part.strip():
                rcpts.append(qualify(part.strip(), domain))
    keep = list(headers)
    if opts.read_recipients:
        for a in header_addresses(headers, ("to", "cc", "bcc")):
            rcpts.append(qualify(a, domain))
        keep = [h for h in headers if h.key != "bcc"]
    seen: set[str] = set()
    unique = []
    for r in rcpts:
        if r.lower() not in seen:
            seen.add(r.lower())
            unique.append(r)
    if not unique:
        raise DataError("no recipients")
    if len(unique) > MAX_RECIPIENTS:
        raise DataError("too many recipients")
    present = {h.key for h in keep}
    added: list[bytes] = []
    if "from" not in present:
        shown = sender or f"MAILER-DAEMON@{domain}"
        if fullname:
            added.append(f"From: {_quote_phrase(fullname)} <{shown}>\n".encode())
        else:
            added.append(f"From: {shown}\n".encode())
    if add_date and "date" not in present:
        added.append(f"Date: {date}\n".encode())
    if add_msgid and "message-id" not in present:
        added.append(f"Message-ID: {message_id}\n".encode())
    body = b"".join(h.raw for h in keep)
    return Prepared(received + body + b"".join(added), tuple(unique))


def _quote_phrase(name: str) -> str:
    """A display name as an RFC 5322 §3.2.5 phrase: atoms stay, anything else is quoted."""
    name = "".join(c for c in name if c.isprintable())
    special = set('()<>[]:;@\\,."')
    if name and all(c.isalnum() or c in " !#$%&'*+-/=?^_`{|}~" for c in name) \
            and not special & set(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
