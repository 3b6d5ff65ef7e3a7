"""Folder index records made from message files: one at a time (the long way of FETCH),
or many at once by forked worker processes (a cold FETCH 1:*).

A folder nobody has indexed yet costs its first FETCH 1:* (ENVELOPE, BODYSTRUCTURE,
RFC822.SIZE) one MIME parse per message, ~0.1 ms of CPU each: 10 s for 100,000 messages
in one process. With more than one CPU, `Workers` shares that parse: it forks
min(CPUs, MAX_WORKERS) processes (the session is already the user, so they are too;
everything they run is imported before the fork) that take the messages a CHUNK at a
time in turn with the session and send each record back over their pipe; the session
reads them in the messages' order (making its own chunks when it comes to them) and
writes them to the index itself, so the file looks as if it had done the work alone. A worker that dies, or goes silent for READ_TIMEOUT, ends the
parallel build: the rest goes the long way. Nothing outlives `close()`: the workers
are killed by PID and reaped.

The record of a message is what `entry_of` makes, the same function the long way
calls, so the two cannot drift apart.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
from collections.abc import Callable
from typing import BinaryIO

from libcourier.durable import write_all
from libcourier.maildir import index as mindex
from libcourier.mime import Part, imapview, parse
from libcourier.proctitle import current_title, set_title

MAX_WORKERS = 4
CHUNK = 64                   # messages a worker takes at a time (neighbours: one readahead)
PIPE_SIZE = 1 << 20          # asked of each pipe, so a worker can run a chunk or two ahead
READ_TIMEOUT = 300.0         # seconds without a byte from the worker whose record is next
READ_SIZE = 1 << 16
_HEAD = struct.Struct("<Id")    # record length (or _NONE), the file's mtime (NaN: unknown)
_NONE = 0xFFFFFFFF           # "no record" (a file that has gone, a record over MAX_RECORD)


class WorkerFailed(Exception):
    """A worker died, sent something that is not a record, or went silent."""


def entry_of(disk_size: int, root: Part | None, head: Part | None, size: int | None,
             cached: mindex.Entry | None, want_body: bool,
             made: dict[str, bytes]) -> mindex.Entry:
    """What a parse (full `root`, or header-only `head`) and a counted `size` tell of a
    message of `disk_size` bytes. Views the index already has (`cached`), or that a FETCH
    `made` on its way, are not computed again; BODY (no extension data) only when it was
    asked for (`want_body`), since clients rarely do."""
    src = root if root is not None else head
    headers = None if src is None else tuple(src.fields.get(n) for n in mindex.HEADER_FIELDS)
    env = made.get("envelope")
    if env is None and src is not None and (cached is None or cached.envelope is None):
        env = imapview.envelope(src)
    if root is None:
        return mindex.Entry(disk_size, crlf_size=size, envelope=env, headers=headers)
    return mindex.Entry(disk_size, crlf_size=root.body_end, header_len=root.body_start,
                        envelope=env,
                        body=made.get("body") or (imapview.body(root) if want_body else None),
                        bodystructure=made.get("bodystructure") or imapview.bodystructure(root),
                        headers=headers)


def record(fh: BinaryIO, disk_size: int, tree: bool, want_body: bool) -> bytes:
    """The payload (index.encode) the long way appends for a message the index does not
    know: from the whole MIME tree (`tree`: BODYSTRUCTURE or RFC822.SIZE was asked),
    else from the header alone (ENVELOPE)."""
    if tree:
        return mindex.encode(entry_of(disk_size, parse(fh), None, None, None, want_body, {}))
    return mindex.encode(entry_of(disk_size, None, parse(fh, header_only=True), None, None,
                                  False, {}))


def worker_count(jobs: int, least: int) -> int:
    """Workers for `jobs` records: none (build them the long way) for fewer than `least`
    or on one CPU, else one per CPU up to MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    n = min(cpus, MAX_WORKERS)
    return n if jobs >= least and n >= 2 else 0


class Workers:
    """`job(k)` for k in 0..count-1, made by `n` forked processes and the caller, handed
    out in order.

    The chunks go round in rounds of 2n + 1 (owner()): two for each worker, the last
    for the caller, who makes those jobs itself when it comes to them (it would
    otherwise only wait there, and on a machine others keep busy one more runnable
    process is one more share of the CPUs; a smaller share than a worker's, since it
    also writes the index and the responses). The caller reads only from the worker whose record is next, and a worker
    only ever waits for the caller to read its pipe, so nobody waits in a circle; each
    worker is at most its pipe's worth ahead."""

    def __init__(self, count: int, job: Callable[[int], tuple[bytes | None, float]], n: int):
        self.count = count
        self.next_job = 0
        self._job = job
        self._n = n
        self._pids: list[int] = []
        self._fds: list[int] = []
        self._bufs: list[bytearray] = []
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(n):
                pipes.append(os.pipe())
        except OSError:
            for r, wfd in pipes:              # (out of descriptors: none left open)
                os.close(r)
                os.close(wfd)
            raise
        try:
            for w, (_, wfd) in enumerate(pipes):
                pid = os.fork()
                if pid == 0:                                    # the worker
                    code = 1
                    try:
                        for r, x in pipes:
                            os.close(r)
                            if x != wfd:
                                os.close(x)
                        _work(count, job, w, n, wfd)
                        code = 0
                    finally:
                        os._exit(code)
                self._pids.append(pid)
                self._fds.append(pipes[w][0])
                self._bufs.append(bytearray())
        except BaseException:
            for r, _ in pipes[len(self._fds):]:
                os.close(r)
            self.close()              # (a fork that failed: the workers made so far go)
            raise
        finally:
            for _, wfd in pipes:
                os.close(wfd)

    def next(self) -> tuple[bytes | None, float]:
        """The next job's answer: its record (None: it made none) and the mtime of the
        file it read (NaN: none). WorkerFailed: the workers are no use any more (the
        caller closes them and goes on without)."""
        if self.next_job >= self.count or not self._fds:
            raise WorkerFailed("no job left")
        k = self.next_job
        w = owner(k // CHUNK, self._n)
        if w == self._n:                              # the caller's own chunk
            try:
                got = self._job(k)
            except Exception as e:                    # (as a worker's would: a failure)
                raise WorkerFailed(f"{type(e).__name__}: {e}") from None
            self.next_job += 1
            return got
        n, mtime = _HEAD.unpack(self._take(w, _HEAD.size))
        self.next_job += 1
        if n == _NONE:
            return None, mtime
        if n > mindex.MAX_RECORD:
            raise WorkerFailed("a record longer than any")
        return self._take(w, n), mtime

    def _take(self, w: int, n: int) -> bytes:
        buf, fd = self._bufs[w], self._fds[w]
        while len(buf) < n:
            ready, _, _ = select.select([fd], [], [], READ_TIMEOUT)
            if not ready:
                raise WorkerFailed("a worker went silent")
            try:
                got = os.read(fd, max(READ_SIZE, n - len(buf)))
            except OSError as e:
                raise WorkerFailed(str(e)) from None
            if not got:
                raise WorkerFailed("a worker ended early")
            buf += got
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def close(self) -> None:
        """Kill the workers still running and reap them all; close the pipes."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)      # (one that has finished is a zombie: no-op)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass                               # SIGCHLD ignored: reaped by the kernel
        self._pids.clear()


def owner(chunk: int, n: int) -> int:
    """Who makes a chunk when n workers share them with the caller: 0..n-1 a worker,
    n the caller (one chunk in every 2n + 1)."""
    r = chunk % (2 * n + 1)
    return n if r == 2 * n else r % n


def _work(count: int, job: Callable[[int], tuple[bytes | None, float]], w: int, n: int,
          wfd: int) -> None:
    """A worker's life: its chunks (owner()) in order, each record framed and written."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)        # not the session's handlers
    # `ps` tells it from its session: "imapd: alice [192.0.2.7] SELECTED INBOX: index 1/2"
    set_title(f"{current_title() or 'index'}: index {w + 1}/{n}")
    try:
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass                                       # the default (64 KB) is only slower
    out = bytearray()
    for first in range(w * CHUNK, count, CHUNK):
        if owner(first // CHUNK, n) != w:
            continue
        for k in range(first, min(first + CHUNK, count)):
            payload, mtime = job(k)
            if payload is None or len(payload) > mindex.MAX_RECORD:
                out += _HEAD.pack(_NONE, mtime)
            else:
                out += _HEAD.pack(len(payload), mtime)
                out += payload
            if len(out) >= READ_SIZE:
                write_all(wfd, out)
                out.clear()
        write_all(wfd, out)      # the chunk's tail: the parent may be waiting for it
        out.clear()
