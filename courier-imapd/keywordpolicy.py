"""IMAP_KEYWORDS=0: custom keywords off, as Courier's imapd has them (checked against
Courier-IMAP 5.0.13 with IMAP_KEYWORDS=0):

- courierimapkeywords/ is not read: FETCH FLAGS, the FLAGS response and SEARCH KEYWORD
  see no keyword, whatever the folder holds (the files are left alone);
- PERMANENTFLAGS lists the system flags only, without \\* (RFC 3501 §7.1);
- a STORE or APPEND naming a keyword is refused whole with Courier's "NO Error in IMAP
  command received by server." (nothing of it done); COPY carries no keywords.

Off, the folder is opened through `folder()`, a Maildir whose scans report no keywords
and which never answers from a stored snapshot (that may hold keywords).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

from libcourier.maildir.folder import FolderState, Maildir

REFUSAL = "Error in IMAP command received by server."


class _NoKeywords:
    """Mixed in before a Maildir class: keywords are neither read nor written."""

    def scan(self, *args, **kwargs) -> FolderState:
        st = super().scan(*args, **kwargs)  # type: ignore[misc]
        has = getattr(st.messages, "has_keywords", None)   # a MessageList: its column
        if not (has() if has is not None else any(m.keywords for m in st.messages)):
            return st
        return replace(st, messages=tuple(replace(m, keywords=frozenset()) if m.keywords else m
                                          for m in st.messages))

    def read_keywords(self, *args, **kwargs):
        return {}

    def open_summary(self, *args, **kwargs):
        return None         # a warm snapshot would bring keywords back: always scan


@cache
def _without(cls: type[Maildir]) -> type[Maildir]:
    return type(cls.__name__ + "NoKeywords", (_NoKeywords, cls), {})


def folder(maildir: Maildir, enabled: bool) -> Maildir:
    """The folder as the session opens it: `maildir` itself when keywords are on."""
    if enabled:
        return maildir
    return _without(type(maildir))(maildir.path)


def select_lines(lines: list[str], enabled: bool) -> list[str]:
    """SELECT's responses; off, PERMANENTFLAGS without \\* (Courier)."""
    if enabled:
        return lines
    return [ln.replace(" \\*", "").replace("(\\* ", "(") if ln.startswith("OK [PERMANENTFLAGS")
            else ln for ln in lines]
