"""Process titles that say role and state: `imapd: alice@example.com [192.0.2.7] IDLE`.

Titles show client-supplied text (login names), so control characters are
replaced and the length is capped: `ps` output must stay one honest line.
"""

from __future__ import annotations

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover - the dependency is declared; degrade quietly
    _setproctitle = None

MAX_TITLE = 200


def clean_title(text: str) -> str:
    if text.isprintable():
        return text[:MAX_TITLE]
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned[:MAX_TITLE]


_last: str | None = None      # the text last set: this module is the title's only writer


def set_title(text: str) -> None:
    # Sessions set their title at every state step; setproctitle is a prctl and a
    # copy of the title area, so an unchanged title is not set again.
    global _last
    if _setproctitle is not None and text != _last:
        _last = text
        _setproctitle(clean_title(text))


def current_title() -> str | None:
    """The title last set here (None: none yet), for a helper process to extend."""
    return _last
