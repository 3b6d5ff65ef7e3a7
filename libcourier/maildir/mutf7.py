"""IMAP's modified UTF-7 for mailbox names (RFC 3501 §5.1.3), pure functions.

Kept apart from folders.py so the sans-I/O IMAP core can use it without
importing anything that touches the file system.
"""

from __future__ import annotations

import base64

# The codec module is loaded on first use; load it now, since imapd decodes names
# only after it has become the user, who cannot read the stdlib (INTERNALS.md).
import encodings.utf_16_be  # noqa: F401


def encode_mutf7(name: str) -> str:
    """UTF-8 (str) -> modified UTF-7: printable ASCII as is ("&" as "&-"), other runs as
    "&" + base64 of UTF-16BE with "," for "/" and no padding + "-"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).rstrip(b"=")
            out.append("&" + b.decode("ascii").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(name: str) -> str:
    """Modified UTF-7 -> str; ValueError when it is not valid (RFC 3501 §5.1.3)."""
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError("non-ASCII character in a modified UTF-7 name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = name.find("-", i + 1)
        if j < 0:
            raise ValueError("unterminated &-sequence")
        chunk = name[i + 1:j]
        if not chunk:
            out.append("&")
        else:
            if not all(c.isascii() and (c.isalnum() or c in "+,") for c in chunk):
                raise ValueError("bad character in an &-sequence")
            raw = chunk.replace(",", "/")
            try:
                data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
                text = data.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise ValueError("bad &-sequence") from None
            # Printable ASCII must not be encoded, and the encoding is canonical.
            if not text or any(0x20 <= ord(c) <= 0x7E for c in text) \
                    or encode_mutf7(text) != "&" + chunk + "-":
                raise ValueError("non-canonical &-sequence")
            out.append(text)
        i = j + 1
    return "".join(out)
