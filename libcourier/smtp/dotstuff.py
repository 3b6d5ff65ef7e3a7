"""Transparency (RFC 5321 §4.5.2): dot-stuffing for the sender, unstuffing for the receiver.

The receiver side lives in the server core's DATA state (it needs the line
framing the core already does); here are the pieces both sides share.
"""

from __future__ import annotations

END_OF_DATA = b".\r\n"          # the line that ends DATA, after a CRLF


def unstuff_line(line: bytes) -> bytes:
    """One received DATA line with the leading transparency dot removed (§4.5.2 item 2)."""
    return line[1:] if line.startswith(b".") else line


def is_end_of_data(line: bytes) -> bool:
    """Only "." CRLF ends DATA; "." LF does not (SMTP smuggling, CVE-2023-51766)."""
    return line == END_OF_DATA


def dot_stuff(message: bytes) -> bytes:
    """A message (LF or CRLF line ends) as DATA sends it: CRLF lines, leading dots
    doubled, ending with CRLF, without the final ".CRLF" (§4.5.2 item 1).

    Bare CR is left as it is inside a line; LF always becomes CRLF, so the
    result can never contain a line the receiver would take as the end.
    """
    if not message:
        return b""
    lines = message.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = bytearray()
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(b"."):
            out += b"."
        out += line
        out += b"\r\n"
    return bytes(out)
