"""Courier's VERP encoding (the XVERP=Courier ESMTP extension).

A message sent with `MAIL FROM:<list@example.com> VERP` is delivered to each
recipient with a return path that names that recipient, so a bounce from any
software (DSN or not) says which address failed:

    list@example.com + john@example.org -> list-john=example.org@example.com

The rules are Courier's (courier/libs/comverp.c, which follows
doc/draft-varshavchik-verp-smtpext.txt section 7 with two deviations kept
here for byte-identical addresses):
- the recipient's last "@" becomes "="; any other "@" is encoded;
- "@ : % ! + - [ ]" are written as "+" and two upper-case hex digits;
- "=" stays as it is in the local part (before the last "@"), and is encoded
  (+3D) after it or in an address without "@" (UUCP), so the last "=" always
  separates the recipient's local part from its domain;
- a sender without "@" (and the null sender) is used unchanged.
Pure functions: no I/O.
"""

from __future__ import annotations

_ENCODED = frozenset("@:%!+-[]")


def verp_encode(recipient: str) -> str:
    """The recipient as it appears inside a VERP return path."""
    last_at = recipient.rfind("@")
    out = []
    for i, ch in enumerate(recipient):
        if i == last_at:
            out.append("=")
        elif ch in _ENCODED or (ch == "=" and i > last_at):
            out.append(f"+{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def verp_sender(sender: str, recipient: str) -> str:
    """The return path for `recipient` of a VERP message from `sender`."""
    local, at, domain = sender.rpartition("@")
    if not sender or not at:
        return sender
    return f"{local}-{verp_encode(recipient)}@{domain}"
