"""Maildir flag letters (FORMATS.md §3.3) and their IMAP names (RFC 3501 §2.3.2).

A file in cur/ is named ``base:2,FLAGS``; the flags are single letters sorted
in ASCII order. Uppercase letters are the standard ones below; lowercase
letters are Dovecot-style keyword slots which we do not interpret but must
keep when we rename a file, so another program's keywords survive us.
"""

from __future__ import annotations

from functools import lru_cache

# Maildir letter -> IMAP system flag (man maildir(5); Courier maildir/maildirflags).
LETTER_TO_FLAG: dict[str, str] = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FLAG_TO_LETTER: dict[str, str] = {v.lower(): k for k, v in LETTER_TO_FLAG.items()}

# The order Courier lists them in FLAGS / PERMANENTFLAGS responses.
IMAP_FLAG_ORDER: tuple[str, ...] = ("\\Draft", "\\Answered", "\\Flagged", "\\Deleted", "\\Seen")

INFO_SEP = ":2,"


def split_name(filename: str) -> tuple[str, str]:
    """Split a maildir file name into (base, flag letters); flags "" when no info."""
    i = filename.find(INFO_SEP)
    if i < 0:
        # A name with ":" but not ":2," carries experimental info (":1,");
        # the base is still everything before the colon.
        j = filename.find(":")
        if j >= 0:
            return filename[:j], ""
        return filename, ""
    return filename[:i], normalize(filename[i + len(INFO_SEP):])


@lru_cache(maxsize=4096)   # a folder has few distinct flag strings; called per message per scan
def normalize(letters: str) -> str:
    """Sorted, de-duplicated flag letters; anything that is not a letter is dropped."""
    return "".join(sorted({c for c in letters if c.isascii() and c.isalpha()}))


def join_name(base: str, letters: str) -> str:
    return f"{base}{INFO_SEP}{normalize(letters)}"


def letters_to_imap(letters: str) -> list[str]:
    """IMAP system flags for the letters, in Courier's order; unknown letters are skipped."""
    have = {LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG}
    return [f for f in IMAP_FLAG_ORDER if f in have]


def imap_to_letter(flag: str) -> str | None:
    """The maildir letter for an IMAP system flag (case-insensitive), or None."""
    return FLAG_TO_LETTER.get(flag.lower())
