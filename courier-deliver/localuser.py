"""The delivery child of courierlocal: what runs as the recipient.

After the fork and the switch to the user (local.py), this reads the user's
`.courier` file and carries it out: Maildir lines under the account's quota,
mbox lines, `| program` and `|| program` lines with Courier's environment,
exit codes and the localtimeout deadline, forwards collected for the root
side to queue. A Delivered-To naming this recipient, or too many hops, is a
loop. The result goes back as a short report over a pipe.

Everything used here is imported at module load, before any switch: the
Python installation may be unreadable to the user.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from courier_deliver import dotcourier
from courier_deliver.dotcourier import (
    Context,
    DotCourierError,
    Forward,
    Mailbox,
    Program,
    ProgramOutcome,
)
from courier_deliver.localproto import (
    DeliverRequest,
    Reply,
    Status,
    format_reply,
    parse_reply_line,
    xtext_decode,
    xtext_encode,
)

from libcourier import privsep
from libcourier.authclient import AuthInfo
from libcourier.maildir.delivery import (
    CHUNK,
    DeliveryError,
    OverQuota,
    Staged,
    deliver_or_stage,
    deliver_with_quota,
    discard_staged,
    publish_staged,
)
from libcourier.mbox import deliver_to_mbox, from_line
from libcourier.proto import ClientError
from libcourier.spool import SpoolError, data_span

DELIVERY_TIMEOUT = 900.0     # one delivery child, start to finish: Courier's localtimeout
DELIVERY_GRACE = 30.0        # the delivery child's own watchdog fires this much earlier
RESULT_MAX = 1024            # bytes of the final reply line a delivery child reports
DEFAULT_MAILDIR = "./Maildir"
PROGRAM_OUTPUT_MAX = 400     # bytes of a failing program's output kept for the reply
DYNAMIC_MAX = 8191           # bytes of `|| program` output read as instructions (Courier's)
MAX_DYNAMIC_LEVEL = 3        # `||` inside instructions `||` made: at most 4 levels (Courier)
HEADER_SCAN_MAX = 256 * 1024 # bytes of header read to find loops
HEADER_SCAN_FIRST = 16 * 1024  # the first read: most headers end within it
MAX_HOPS = 100               # Received/Delivered-To lines before we call it a loop


def _pread_chunks(fd: int, span: tuple[int, int]) -> Iterator[bytes]:
    """The message in the spool file, at span (spool.data_span's (offset,
    length): a queue entry also holds its envelope), by offset: the
    descriptor's shared file position belongs to courierd's open file and is
    left alone."""
    offset, left = span
    while left > 0:
        block = os.pread(fd, min(CHUNK, left), offset)
        if not block:
            return
        offset += len(block)
        left -= len(block)
        yield block


def maildir_path(info: AuthInfo, default: str = DEFAULT_MAILDIR) -> Path:
    """AuthInfo.maildir, absolute or relative to HOME; else DEFAULTDELIVERY."""
    md = info.maildir or default
    p = Path(md)
    return p if p.is_absolute() else Path(info.home) / p


def delivery_prefix(sender: str, recipient: str) -> bytes:
    # RFC 5321 §4.4: the final delivery adds Return-Path with the reverse-path.
    # Delivered-To marks the mailbox this copy went to (loop detection, as
    # Courier and qmail do). Header bytes: addresses are UTF-8 (RFC 6532).
    ret = f"Return-Path: <{sender}>\n".encode("utf-8", "surrogateescape")
    return ret + f"Delivered-To: {recipient}\n".encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a delivery child reports: the reply and the addresses to forward to."""
    reply: Reply
    forwards: tuple[str, ...] = ()


class _Fail(Exception):
    def __init__(self, reply: Reply):
        super().__init__(reply.text)
        self.reply = reply


def _temp(text: str) -> _Fail:
    return _Fail(Reply(Status.TEMP, text))


def _perm(text: str) -> _Fail:
    return _Fail(Reply(Status.PERM, text))


def _message_span(fd: int) -> tuple[int, int]:
    """spool.data_span, read once per message and passed on (the spool file's
    header is one pread a read)."""
    try:
        return data_span(fd)
    except SpoolError as e:
        raise _temp(f"4.3.0 unreadable spool file: {e}") from None


def _check_loop(fd: int, span: tuple[int, int], recipient: str) -> None:
    """A copy that already went through this mailbox, or too many hops, is a
    loop (RFC 5321 §6.3): refuse it permanently rather than mail forever."""
    offset, length = span
    # A small first read: a 256 KB buffer for every message was an mmap, page
    # faults and a munmap in the delivery worker.
    head = os.pread(fd, min(HEADER_SCAN_FIRST, length), offset)
    if b"\n\n" not in head and len(head) == HEADER_SCAN_FIRST:
        head = os.pread(fd, min(HEADER_SCAN_MAX, length), offset)
    end = head.find(b"\n\n")
    if end >= 0:
        head = head[:end + 1]
    hops = 0
    mine = f"delivered-to: {recipient}".lower().encode("utf-8", "surrogateescape")
    for line in head.split(b"\n"):
        low = line.lower()
        if low.startswith((b"received:", b"delivered-to:")):
            hops += 1
        if low.rstrip(b"\r ") == mine:
            raise _perm(f"5.4.6 mail loop: the message was already delivered to {recipient}")
    if hops > MAX_HOPS:
        raise _perm(f"5.4.6 mail loop: more than {MAX_HOPS} hops")


def _read_dot_courier(ext: str | None) -> tuple[list[dotcourier.Instruction] | None, str | None]:
    """The instructions from HOME (the cwd), or None for the default delivery.
    Returns (instructions, DEFAULT). Raises _Fail."""
    for name, default in dotcourier.candidate_files(ext):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _temp(f"4.2.1 cannot open {name}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _temp(f"4.2.1 {name} is not a regular file")
            # Courier's rules: a file others may change is not trusted, and the
            # execute bit is the owner's way to hold mail for a while.
            if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
                raise _temp(f"4.7.0 {name} has unsafe ownership or permissions; "
                            f"delivery deferred")
            if st.st_mode & 0o111:
                raise _temp(f"4.2.1 {name} is executable: delivery deferred")
            data = os.read(fd, dotcourier.MAX_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if not data.strip():
            return None, default            # an empty file: the default delivery
        try:
            return dotcourier.parse(data), default
        except DotCourierError as e:
            # Never drop mail over a typo: defer, with the reason in the log.
            raise _temp(f"4.2.1 {name}: {e}") from None
    if ext is None:
        return None, None
    raise _perm("5.1.1 no such address (no .courier file for this extension)")


def _feed_stdin(wfd: int, fd: int, span: tuple[int, int]) -> None:
    try:
        for block in _pread_chunks(fd, span):
            write_all_pipe(wfd, block)
    except OSError:
        pass            # the program stopped reading: its exit code tells the rest
    finally:
        os.close(wfd)


def write_all_pipe(wfd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(wfd, view)
        view = view[n:]


def run_program(command: str, env: dict[str, str], fd: int, span: tuple[int, int],
                timeout: float = DELIVERY_TIMEOUT - DELIVERY_GRACE, *,
                dynamic: bool = False) -> tuple[int | None, bytes, bytes]:
    """Run `/bin/sh -c command` with the message on stdin, in its own process
    group. Returns (exit code, -signal when a signal ended it, or None when it
    ran past `timeout` and we killed it; the start of its output for the log;
    for a dynamic `||` program, its stdout up to DYNAMIC_MAX bytes: the
    instructions it generated, with its stderr as the output for the log)."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=rfd,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE if dynamic else subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    except OSError:
        os.close(rfd)
        os.close(wfd)
        raise
    os.close(rfd)
    feeder = threading.Thread(target=_feed_stdin, args=(wfd, fd, span), daemon=True)
    feeder.start()
    assert proc.stdout is not None
    # Two byte sinks with their limits: (what we keep, the most we keep).
    keep: dict[int, tuple[bytearray, int]] = {}
    output, generated = bytearray(), bytearray()
    if dynamic:
        assert proc.stderr is not None
        keep[proc.stdout.fileno()] = (generated, DYNAMIC_MAX)
        keep[proc.stderr.fileno()] = (output, PROGRAM_OUTPUT_MAX)
    else:
        keep[proc.stdout.fileno()] = (output, PROGRAM_OUTPUT_MAX)
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for pipe_fd in keep:
        sel.register(pipe_fd, selectors.EVENT_READ)
    killed = False
    try:
        open_fds = set(keep)
        while open_fds:
            left = deadline - time.monotonic()
            events = sel.select(left) if left > 0 else []
            if not events:
                killed = True
                break
            for key, _ in events:
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
                    continue
                sink, limit = keep[key.fd]
                if len(sink) < limit:
                    sink += chunk[:limit - len(sink)]
        if not killed:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = True
    finally:
        sel.close()
        if killed:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    feeder.join(5.0)
    if killed:
        return None, bytes(output), bytes(generated)
    return proc.returncode, bytes(output), bytes(generated)


def _store(path: str, is_maildir: bool, info: AuthInfo, fd: int, span: tuple[int, int],
           req: DeliverRequest, prefix: bytes) -> str:
    """One mailbox line: a Maildir (under the account's quota) or an mbox file."""
    if is_maildir or os.path.isdir(path):
        return deliver_with_quota(Path(path), _pread_chunks(fd, span), span[1],
                                  prefix=prefix, newquota=info.quota)
    deliver_to_mbox(Path(path), _pread_chunks(fd, span), sender=req.sender, prefix=prefix)
    return f"mbox {path}"


@dataclass
class _Run:
    """What one delivery run has done so far (shared by nested `||` levels)."""
    info: AuthInfo
    fd: int
    span: tuple[int, int]           # the message in fd (spool.data_span)
    req: DeliverRequest
    ctx: Context
    prefix: bytes
    deadline: float
    done: list[str]
    seen_mailboxes: set[str]
    forwards: list[str]


def _run_program(run: _Run, command: str, dynamic: bool, level: int) -> bool:
    """One `| program` or `|| program`; True when it said "stop" (exit 99)."""
    label = ("||" if dynamic else "|") + command[:40]
    if dynamic and level >= MAX_DYNAMIC_LEVEL:
        # Courier: EX_NOUSER, a permanent failure.
        raise _perm("5.3.0 maximum recursion level for dynamic delivery instructions "
                    "exceeded")
    env = dotcourier.program_environment(run.ctx, from_line(run.req.sender).decode(
        "utf-8", "surrogateescape"))
    left = run.deadline - time.monotonic()
    if left <= 0:
        raise _temp(f"4.3.0 local delivery time limit reached before {command[:60]!r}")
    try:
        code, output, generated = run_program(command, env, run.fd, run.span, timeout=left,
                                              dynamic=dynamic)
    except OSError as e:
        raise _temp(f"4.3.0 cannot run {command[:60]!r}: {e.strerror}") from None
    text = output.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
    if code is None:
        raise _temp(f"4.3.0 program {command[:60]!r} killed or timed out")
    if code < 0:
        # Courier's deliver.c: a program ended by a signal is EX_NOPERM, a
        # permanent failure (our own time limit above is temporary).
        raise _perm(f"5.3.0 program {command[:60]!r} killed by signal {-code}")
    match dotcourier.program_outcome(code):
        case ProgramOutcome.PERMANENT:
            raise _perm(f"5.3.0 program exited {code}: {text}")
        case ProgramOutcome.TEMPORARY:
            raise _temp(f"4.3.0 program exited {code}: {text}")
        case ProgramOutcome.STOP:
            run.done.append(f"{label} (stop)")
        case ProgramOutcome.CONTINUE:
            run.done.append(label)
    if dynamic:
        # dot-courier(5): the output is carried out only on exit 0 or 99, and
        # 99 still ends the original file afterwards.
        try:
            more = dotcourier.parse(generated)
        except DotCourierError as e:
            raise _temp(f"4.2.1 instructions from {command[:60]!r}: {e}") from None
        if _execute(run, more, level + 1):
            return True
    return code == dotcourier.EXIT_STOP


def _execute(run: _Run, instructions: list[dotcourier.Instruction], level: int) -> bool:
    """Carry out instructions in order; True when a program said stop."""
    for ins in instructions:
        match ins:
            case Mailbox(path=path, maildir=is_maildir):
                real = os.path.realpath(path)
                if real in run.seen_mailboxes:
                    continue            # the same mailbox twice in one run: one copy
                run.seen_mailboxes.add(real)
                run.done.append(_store(path, is_maildir, run.info, run.fd, run.span,
                                       run.req, run.prefix))
            case Program(command=command, dynamic=dynamic):
                if _run_program(run, command, dynamic, level):
                    return True
            case Forward(addresses=addrs):
                for a in addrs:
                    q = dotcourier.qualify_forward(a, run.req.recipient)
                    if q.lower() != run.req.recipient.lower() and q not in run.forwards:
                        if len(run.forwards) >= dotcourier.MAX_FORWARDS:
                            raise _temp(f"4.2.1 more than {dotcourier.MAX_FORWARDS} "
                                        f"forwarding addresses")
                        run.forwards.append(q)
    return False


def _run_instructions(info: AuthInfo, fd: int, span: tuple[int, int], req: DeliverRequest,
                      default_maildir: str, ext: str | None, deadline: float | None = None,
                      staging: list[Staged] | None = None,
                      unquoted: set[str] | None = None) -> Outcome | None:
    """The delivery's outcome; None when the message was only staged (appended
    to `staging`: the plain Maildir path, into a Maildir without quota;
    `unquoted`: deliver_or_stage's, for the batch)."""
    if deadline is None:
        deadline = time.monotonic() + DELIVERY_TIMEOUT - DELIVERY_GRACE
    instructions, default = _read_dot_courier(ext)
    prefix = delivery_prefix(req.sender, req.recipient)
    if instructions is None:
        # No .courier (or an empty one): the account's own Maildir, else
        # courierd's DEFAULTDELIVERY (module.local: `*defaultmail ? defaultmail
        # : DEFAULTDELIVERY`). A lone Maildir line keeps this short path.
        default_ins = dotcourier.default_instructions(default_maildir)
        if info.maildir or dotcourier.is_plain_maildir(default_ins):
            path = info.maildir or default_ins[0].path     # type: ignore[union-attr]
            name = deliver_or_stage(maildir_path(info, path), _pread_chunks(fd, span),
                                    span[1], prefix=prefix, newquota=info.quota,
                                    stage=staging is not None, unquoted=unquoted)
            if isinstance(name, Staged):
                assert staging is not None
                staging.append(name)
                return None
            return Outcome(Reply(Status.OK, name))
        instructions = default_ins
    ctx = Context(home=info.home, user=info.address or info.username or "", sender=req.sender,
                  recipient=req.recipient, ext=ext, default=default, quota=info.quota or "")
    run = _Run(info, fd, span, req, ctx, prefix, deadline, [], set(), [])
    _execute(run, instructions, 0)
    if run.forwards:
        run.done.append("forwarded to " + ", ".join(run.forwards))
    return Outcome(Reply(Status.OK, "; ".join(run.done) or "no delivery instructions"),
                   tuple(run.forwards))


def _become(info: AuthInfo) -> Outcome | None:
    """Switch to the account for good (a no-op the second time) and chdir HOME;
    the failure's Outcome, else None."""
    if info.uid is None:
        return Outcome(Reply(Status.TEMP, "authd returned no uid"))
    try:
        privsep.refuse_root(info.uid)
    except privsep.PrivsepError:
        return Outcome(Reply(Status.PERM, "5.7.1 refusing to deliver to an account with uid 0"))
    try:
        privsep.switch_to_user(info.uid, info.gid)
    except privsep.PrivsepError as e:
        return Outcome(Reply(Status.TEMP, f"4.3.0 {e}"))
    try:
        os.chdir(info.home)
    except OSError as e:
        return Outcome(Reply(Status.TEMP,
                             f"4.2.1 cannot chdir to home {info.home}: {e.strerror}"))
    os.umask(0o077)
    return None


def _failure(e: Exception) -> Outcome:
    if isinstance(e, _Fail):
        return Outcome(e.reply)
    if isinstance(e, OverQuota):
        # RFC 3463 X.2.2 mailbox full: temporary, retried until queuetime.
        return Outcome(Reply(Status.TEMP, "4.2.2 " + e.text))
    assert isinstance(e, DeliveryError)
    return Outcome(Reply(Status.TEMP if e.temporary else Status.PERM,
                         ("4.2.0 " if e.temporary else "5.2.0 ") + e.text))


def deliver_batch_as_user(info: AuthInfo, items: list[tuple[int, DeliverRequest, str | None]],
                          default_maildir: str, timeout: float = DELIVERY_TIMEOUT
                          ) -> list[Outcome]:
    """Several messages (fd, request, extension) for one account, in order, one
    Outcome each: a failure of one never fails the others. Messages that take
    the plain Maildir path into a Maildir without quota are written into tmp/
    as they come and published together at the end (publish_staged: each file
    fsync'd, linked into new/, new/ fsync'd once); anything else (a .courier
    file, a quota) is delivered at once, as alone. The batch shares one
    localtimeout: a message not begun before it is deferred."""
    deadline = time.monotonic() + max(1.0, timeout - DELIVERY_GRACE)
    failed = _become(info)
    if failed is not None:
        return [failed] * len(items)
    outcomes: list[Outcome | None] = []
    staging: list[Staged] = []
    waiting: list[int] = []         # indexes of the staged messages, in staging's order
    unquoted: set[str] = set()      # Maildirs found complete and without quota
    try:
        for fd, req, ext in items:
            if time.monotonic() >= deadline:
                outcomes.append(Outcome(Reply(Status.TEMP, "4.3.0 local delivery time limit "
                                                           "reached before this message")))
                continue
            try:
                span = _message_span(fd)
                _check_loop(fd, span, req.recipient)
                outcome = _run_instructions(info, fd, span, req, default_maildir, ext,
                                            deadline, staging, unquoted)
            except (_Fail, DeliveryError) as e:
                outcome = _failure(e)
            except Exception as e:  # noqa: BLE001 - this message's fault, not the others'
                outcome = Outcome(Reply(Status.TEMP,
                                        f"4.3.0 delivery failed: {type(e).__name__}: {e}"))
            if outcome is None:
                waiting.append(len(outcomes))
            outcomes.append(outcome)
        published, staging = publish_staged(staging), []
    finally:
        discard_staged(staging)     # only when something above raised
    for i, name in zip(waiting, published, strict=True):
        outcomes[i] = _failure(name) if isinstance(name, DeliveryError) \
            else Outcome(Reply(Status.OK, name))
    assert all(o is not None for o in outcomes)
    return outcomes                 # type: ignore[return-value]


def format_report(outcome: Outcome) -> bytes:
    """Delivery child -> connection child: `FWD <xtext>` lines, then the reply line."""
    lines = [f"FWD {xtext_encode(a)}\n".encode("ascii") for a in outcome.forwards]
    return b"".join(lines) + format_reply(outcome.reply)[:RESULT_MAX]


def parse_report(data: bytes) -> Outcome | None:
    """The complete report, or None when it is cut short; raises ClientError."""
    if not data.endswith(b"\n"):
        return None
    lines = data[:-1].split(b"\n")
    forwards = []
    for line in lines[:-1]:
        if not line.startswith(b"FWD "):
            raise ClientError("bad report line")
        forwards.append(xtext_decode(line[4:].decode("ascii", "replace")))
    return Outcome(parse_reply_line(lines[-1]), tuple(forwards))
