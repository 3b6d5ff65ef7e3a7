"""`.courier` delivery instructions (man dot-courier(5), FORMATS.md §4.3), without I/O.

What is here: which files to look for for an address extension, the parse of
one file into instructions, the exit-code rule for programs, and the
environment a program gets. local.py runs them in the delivery child, after
the switch to the user (never as root).

Line kinds (dot-courier(5)):
- blank lines and `#` comments are ignored;
- `./path` or `/path`: a mailbox; a Maildir when the path ends with "/" (or
  names an existing directory, decided by the runner), else an mbox file;
- `| command`: run with /bin/sh -c, the message on stdin; a trailing
  backslash continues the command on the next line;
- `|| command`: dynamic delivery, the program's stdout (up to 8191 bytes) is
  read as more instructions and carried out when it exits 0 or 99, at most
  four levels deep (the runner enforces both);
- anything else: a comma-separated list of addresses to forward to; a leading
  `&` or `!` is the legacy marker and ignored.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

MAX_FILE_BYTES = 64 * 1024      # a .courier larger than this is refused (deferred)
MAX_INSTRUCTIONS = 100
MAX_FORWARDS = 100              # addresses forwarded to, over the whole file
MAX_EXT_PARTS = 8               # user-a-b-c...: how many dashes we try

# Courier's permanent failures for a program's exit code (dot-courier(5)):
# sysexits EX_USAGE, EX_DATAERR, EX_NOUSER, EX_NOHOST, EX_UNAVAILABLE,
# EX_SOFTWARE, EX_PROTOCOL, EX_NOPERM, EX_CONFIG, and qmail's 100 and 112.
PERMANENT_EXITS = frozenset({64, 65, 67, 68, 69, 70, 76, 77, 78, 100, 112})
EXIT_CONTINUE = 0
EXIT_STOP = 99


class DotCourierError(Exception):
    """A file that cannot be understood: the delivery is deferred, never dropped."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    path: str                   # as written; relative paths are relative to HOME
    maildir: bool               # written with a trailing "/"


@dataclass(frozen=True, slots=True)
class Program:
    command: str
    dynamic: bool = False       # `||`: the output is more delivery instructions


@dataclass(frozen=True, slots=True)
class Forward:
    addresses: tuple[str, ...]


Instruction = Mailbox | Program | Forward


class ProgramOutcome(enum.Enum):
    CONTINUE = "continue"       # exit 0: go on with the next line
    STOP = "stop"               # exit 99: delivered, ignore the rest of the file
    PERMANENT = "permanent"
    TEMPORARY = "temporary"


def program_outcome(exit_code: int) -> ProgramOutcome:
    """Courier's rule for `| program` exit codes (a signal counts as temporary)."""
    if exit_code == EXIT_CONTINUE:
        return ProgramOutcome.CONTINUE
    if exit_code == EXIT_STOP:
        return ProgramOutcome.STOP
    if exit_code in PERMANENT_EXITS:
        return ProgramOutcome.PERMANENT
    return ProgramOutcome.TEMPORARY


def candidate_files(ext: str | None) -> list[tuple[str, str | None]]:
    """(.courier file name, DEFAULT value) to try in order for an extension.

    No extension: `.courier`. For `foo-bar`: `.courier-foo-bar`, then
    `.courier-foo-default` (DEFAULT=bar), then `.courier-default`
    (DEFAULT=foo-bar). Periods become ":" so that no name starts a hidden or
    relative path component (dot-courier(5)); extensions are lowercased.
    """
    if ext is None:
        return [(".courier", None)]
    ext = ext.lower().replace(".", ":").replace("/", ":")
    out = [(f".courier-{ext}", None)]
    parts = ext.split("-")
    for i in range(len(parts) - 1, 0, -1):
        out.append((".courier-" + "-".join(parts[:i]) + "-default", "-".join(parts[i:])))
    out.append((".courier-default", ext))
    return out


def split_extension(local: str) -> list[tuple[str, str | None]]:
    """(account local part, extension) to try for `user-ext`: the whole local
    part first, then shorter prefixes at each "-" (Courier's user-ext rule)."""
    out: list[tuple[str, str | None]] = [(local, None)]
    parts = local.split("-")
    for i in range(len(parts) - 1, 0, -1):
        if len(out) > MAX_EXT_PARTS:
            break
        head = "-".join(parts[:i])
        if head:
            out.append((head, "-".join(parts[i:])))
    return out


def parse(data: bytes) -> list[Instruction]:
    """The instructions of one file; raises DotCourierError (file line number)."""
    if len(data) > MAX_FILE_BYTES:
        raise DotCourierError(f"file larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DotCourierError("file is not UTF-8") from None
    lines = text.split("\n")
    out: list[Instruction] = []
    forwards = 0
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].rstrip("\r")
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("|"):
            dynamic = stripped.startswith("||")
            command = stripped[2 if dynamic else 1:].strip()
            # A trailing backslash continues the command (dot-courier(5)).
            while command.endswith("\\") and i < len(lines):
                command = command[:-1] + "\n" + lines[i].rstrip("\r")
                i += 1
            command = command.rstrip("\\").strip()
            if not command:
                raise DotCourierError(f"line {lineno}: empty program")
            out.append(Program(command, dynamic))
        elif stripped.startswith(("./", "/")):
            if any(not c.isprintable() for c in stripped):
                raise DotCourierError(f"line {lineno}: control character in a path")
            out.append(Mailbox(stripped, stripped.endswith("/")))
        else:
            addrs = []
            for part in stripped.split(","):
                a = part.strip().lstrip("&!").strip().strip("<>")
                if not a:
                    continue
                if any(c.isspace() or not c.isprintable() for c in a) or len(a) > 1024:
                    raise DotCourierError(f"line {lineno}: bad forwarding address {a[:40]!r}")
                addrs.append(a)
            if not addrs:
                raise DotCourierError(f"line {lineno}: cannot parse {stripped[:40]!r}")
            forwards += len(addrs)
            if forwards > MAX_FORWARDS:
                raise DotCourierError(f"more than {MAX_FORWARDS} forwarding addresses")
            out.append(Forward(tuple(addrs)))
        if len(out) > MAX_INSTRUCTIONS:
            raise DotCourierError(f"more than {MAX_INSTRUCTIONS} instructions")
    return out


@functools.lru_cache(maxsize=4)
def default_instructions(text: str) -> tuple[Instruction, ...]:
    """courierd's DEFAULTDELIVERY: `.courier` lines (possibly several, e.g.
    "|| dotforward" then "./Maildir"), used when an account has no .courier
    file. Nothing is substituted in it per user (Courier neither); programs
    get HOME, USER, ... in their environment. A mailbox line whose last
    component is "Maildir" is a Maildir, made when missing (Courier would
    start an mbox file of that name). Checked when courierd loads its config
    (config.to_defaultdelivery), so this does not raise for a loaded value."""
    out: list[Instruction] = []
    for ins in parse(text.encode("utf-8")):
        if isinstance(ins, Mailbox) and ins.path.rstrip("/").rpartition("/")[2] == "Maildir":
            ins = Mailbox(ins.path, True)
        out.append(ins)
    return tuple(out)


def is_plain_maildir(instructions: tuple[Instruction, ...]) -> bool:
    """One Maildir line and nothing else: the common default, delivered without
    the instruction runner."""
    return len(instructions) == 1 and isinstance(instructions[0], Mailbox) \
        and instructions[0].maildir


@dataclass(frozen=True, slots=True)
class Context:
    """Who the message is for: what programs see in their environment."""
    home: str
    user: str                   # the account name
    sender: str
    recipient: str
    ext: str | None = None
    default: str | None = None
    quota: str = ""             # the account's Maildir++ quota (authd QUOTA=)


def program_environment(ctx: Context, ufline: str) -> dict[str, str]:
    """Courier's variables for `| program` (dot-courier(5), module.local/deliver.c
    docommand): the *LINE values are whole header lines without the newline, as
    Courier sets them, so `(echo "$RPLINE"; echo "$DTLINE"; cat)` is preline;
    MAILDIRQUOTA is the account's quota (what deliverquota and maildrop honour)."""
    local, at, host = ctx.recipient.rpartition("@")
    if not at:
        local, host = ctx.recipient, "localhost"
    ext = ctx.ext or ""
    parts = ext.split("-") if ext else []
    env = {
        "HOME": ctx.home, "USER": ctx.user, "LOGNAME": ctx.user,
        "SENDER": ctx.sender, "RECIPIENT": ctx.recipient, "HOST": host.lower(),
        "LOCAL": local, "EXT": ext,
        "EXT2": "-".join(parts[1:]), "EXT3": "-".join(parts[2:]), "EXT4": "-".join(parts[3:]),
        "DEFAULT": ctx.default or "",
        "UFLINE": ufline.rstrip("\n"),
        "RPLINE": f"Return-Path: <{ctx.sender}>",
        "DTLINE": f"Delivered-To: {ctx.recipient}",
        "MAILDIRQUOTA": ctx.quota,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SHELL": "/bin/sh",
    }
    return env


def qualify_forward(address: str, recipient: str) -> str:
    """A bare name in a forward line is in the recipient's own domain."""
    if "@" in address:
        return address
    _, at, domain = recipient.rpartition("@")
    return f"{address}@{domain}" if at else address
