"""A queue entry's file, `msgs/<qid>`: a fixed-size header line, the message, the envelope.

    courier-py-queue 1 <message length: 16 hex digits> <envelope length: 8 hex digits>\\n
    <the message, as it will be delivered>
    <the envelope, in envelope.py's format>

One file, so a commit is one fsync and one rename (issue 7: the second file of
the former .dat + .env pair cost an O_CREAT, an fsync and a rename a message).
The header has a fixed size (HEADER_LEN), so a reader finds the message with
one small pread. The message comes before the envelope because a writer streams
it as it arrives and learns the envelope only at commit: the header is a
placeholder until then (SpoolWriter).

The envelope inside never changes: courierd's later envelopes go into a
separate state file, `msgs/<qid>.st` (queue.py), so the message file keeps
its identity (courierlocal's journal keys on dev:ino:size:mtime).

Files of the former layout, `msgs/<qid>.dat`, are the message alone, without
a header. Their first line is always one of our writers' own header fields
(Received:, a DSN's or a forward's first field), and a field name holds no
space, so they never start with MAGIC: data_span tells the two apart by the
content, and courierlocal, which gets only a descriptor, needs no other hint.
"""

from __future__ import annotations

import os
import re

from libcourier.spool.envelope import MAX_ENVELOPE_BYTES, SpoolError

MAGIC = b"courier-py-queue 1 "
_HEADER = re.compile(rb"courier-py-queue 1 ([0-9a-f]{16}) ([0-9a-f]{8})\n")
HEADER_LEN = len(MAGIC) + 16 + 1 + 8 + 1
PLACEHOLDER = b"\0" * HEADER_LEN        # what a writer puts first until it commits


def format_header(data_len: int, env_len: int) -> bytes:
    if env_len > MAX_ENVELOPE_BYTES:
        raise SpoolError("envelope too large")
    head = MAGIC + f"{data_len:016x} {env_len:08x}\n".encode("ascii")
    assert len(head) == HEADER_LEN
    return head


def parse_header(head: bytes) -> tuple[int, int]:
    """(message length, envelope length) of an entry's first HEADER_LEN octets."""
    m = _HEADER.fullmatch(head)
    if m is None:
        raise SpoolError("not a courier-py queue entry (or an unknown version)")
    data_len, env_len = int(m.group(1), 16), int(m.group(2), 16)
    if env_len > MAX_ENVELOPE_BYTES:
        raise SpoolError("envelope too large")
    return data_len, env_len


def read_entry_envelope(fd: int) -> bytes:
    """The envelope octets embedded in an open entry file."""
    data_len, env_len = parse_header(os.pread(fd, HEADER_LEN, 0))
    data = os.pread(fd, env_len, HEADER_LEN + data_len)
    if len(data) != env_len:
        raise SpoolError("queue entry is truncated")
    return data


def data_span(fd: int) -> tuple[int, int]:
    """(offset, length) of the message in an open spool file: an entry file
    (after its header) or a former-layout .dat (all of it)."""
    head = os.pread(fd, HEADER_LEN, 0)
    if head.startswith(MAGIC):
        return HEADER_LEN, parse_header(head)[0]
    return 0, os.fstat(fd).st_size


class DataFile:
    """The message of one queue entry, read by offset: an open descriptor (for
    courierlocal: SCM_RIGHTS, flock) and where the message lies in it. The
    descriptor's own file position is not used (courierlocal shares it)."""

    __slots__ = ("_fd", "offset", "length", "_pos")

    def __init__(self, fd: int, offset: int, length: int):
        self._fd = fd
        self.offset = offset
        self.length = length
        self._pos = 0

    @classmethod
    def of(cls, fd: int) -> DataFile:
        """Takes ownership of fd (closed here if it is no spool file)."""
        try:
            return cls(fd, *data_span(fd))
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on a closed spool file")
        return self._fd

    def read(self, n: int = -1) -> bytes:
        """Up to n octets of the message from where the last read ended (all the
        rest for n < 0); b"" at its end."""
        left = self.length - self._pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self.fileno(), n, self.offset + self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
