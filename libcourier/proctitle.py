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


def set_title(text: str) -> None:
    if _setproctitle is not None:
        _setproctitle(clean_title(text))
