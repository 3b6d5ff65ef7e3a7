"""A bounded receive buffer for line protocols (after h11's _receivebuffer).

Bytes are appended with `feed`; `next_line` hands out complete lines, `take`
a fixed number of bytes (IMAP literals, BDAT chunks). The buffer never holds
more than `max_line` bytes of an unfinished line: past that, the line is
reported once as LineTooLong and its remaining bytes are discarded up to the
next LF, so a hostile client cannot grow our memory and the session can answer
and go on. A bytearray with a read offset keeps taking short lines from a long
buffer linear.
"""

from __future__ import annotations

from typing import Final


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


HEAD_KEPT = 256


class LineTooLong(Exception):
    """The current line exceeded the limit; it has been (or is being) discarded.

    `head` is the start of that line (up to HEAD_KEPT bytes), so a protocol can
    still name the command it answers (an IMAP tag) after the bytes are gone.
    """

    def __init__(self, head: bytes = b""):
        super().__init__("line too long")
        self.head = head


class ReceiveBuffer:
    __slots__ = ("_buf", "_pos", "max_line", "_discarding", "_scan")

    def __init__(self, max_line: int):
        self._buf = bytearray()
        self._pos = 0
        self._scan = 0  # where to resume looking for LF, so a slow line is scanned once
        self.max_line = max_line
        self._discarding = False

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        self._buf += data

    def _compact(self) -> None:
        if self._pos > 4096 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0

    def next_line(self) -> bytes | _NeedData:
        """The next line including its line end (LF or CRLF), NEED_DATA, or raise LineTooLong.

        LineTooLong is raised once per long line, as soon as it is known to be too
        long; the rest of that line is dropped silently as it arrives.
        """
        while True:
            start = max(self._pos, self._scan)
            nl = self._buf.find(b"\n", start)
            if self._discarding:
                if nl < 0:
                    # Drop everything buffered: it belongs to the over-long line.
                    self._buf.clear()
                    self._pos = self._scan = 0
                    return NEED_DATA
                self._pos = self._scan = nl + 1
                self._discarding = False
                self._compact()
                continue
            if nl < 0:
                if len(self._buf) - self._pos > self.max_line:
                    head = bytes(self._buf[self._pos:self._pos + HEAD_KEPT])
                    self._discarding = True
                    self._buf.clear()
                    self._pos = self._scan = 0
                    raise LineTooLong(head)
                self._scan = len(self._buf)
                return NEED_DATA
            if nl + 1 - self._pos > self.max_line:
                head = bytes(self._buf[self._pos:min(nl + 1, self._pos + HEAD_KEPT)])
                self._pos = self._scan = nl + 1
                self._compact()
                raise LineTooLong(head)
            line = bytes(self._buf[self._pos: nl + 1])
            self._pos = self._scan = nl + 1
            self._compact()
            return line

    def peek(self) -> bytes:
        """A copy of everything buffered, nothing consumed: a protocol that can handle
        many lines at once (SMTP DATA) looks at them whole, then skip()s what it used."""
        return bytes(self._buf[self._pos:])

    def take(self, n: int) -> bytes:
        """Up to n buffered bytes (fewer if fewer are buffered)."""
        data = bytes(self._buf[self._pos:self._pos + n])
        self.skip(n)
        return data

    def skip(self, n: int) -> None:
        """Consume up to n buffered bytes without copying them (what peek() showed)."""
        end = min(self._pos + n, len(self._buf))
        self._pos = end
        if self._scan < end:
            self._scan = end
        self._compact()

    def take_all(self) -> bytes:
        return self.take(len(self))
