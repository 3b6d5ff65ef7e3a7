"""Courier control files: one item a line (`me`, `locals`, `hosteddomains`, ...).

A control file NAME may be accompanied by a directory NAME.dir whose files are
read too (after NAME, in name order), the way Courier's makeacceptmailfor and
friends merge `esmtpacceptmailfor` with `esmtpacceptmailfor.dir/*`. Blank lines
and `#` comments are dropped; items keep their case (callers lowercase domains).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from libcourier.config.errors import ConfigError

MAX_CONTROL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ControlLine:
    text: str
    path: str
    line: int


def _read_one(path: Path, out: list[ControlLine]) -> None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONTROL_BYTES + 1)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", str(path)) from None
    if len(data) > MAX_CONTROL_BYTES:
        raise ConfigError(f"larger than {MAX_CONTROL_BYTES} bytes", str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not valid UTF-8", str(path), data[: e.start].count(b"\n") + 1) from None
    for n, raw in enumerate(text.splitlines(), 1):
        item = raw.strip()
        if item and not item.startswith("#"):
            out.append(ControlLine(item, str(path), n))


def read_control_lines(path: str | os.PathLike[str]) -> list[ControlLine]:
    """Items of NAME and NAME.dir/* with their file:line; missing files give nothing."""
    path = Path(path)
    out: list[ControlLine] = []
    _read_one(path, out)
    d = Path(str(path) + ".dir")
    if d.is_dir():
        for child in sorted(d.iterdir()):
            # Editor backups and dotfiles are not configuration.
            if child.name.startswith(".") or child.name.endswith("~") or not child.is_file():
                continue
            _read_one(child, out)
    return out


def read_control_file(path: str | os.PathLike[str]) -> list[str]:
    return [c.text for c in read_control_lines(path)]


def read_control_value(path: str | os.PathLike[str], default: str | None = None) -> str | None:
    """A single-value control file such as `me`: its first item."""
    items = read_control_file(path)
    return items[0] if items else default
