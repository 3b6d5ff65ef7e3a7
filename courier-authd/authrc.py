r"""courier-authlib's module config files: authpgsqlrc, authmysqlrc, authldaprc.

These are not shell files like authdaemonrc: authlib's authconfigfile reads

    # comment
    KEY<spaces or tabs>value to the end of the line
    KEY     first part \
            continued             a trailing backslash joins the next line

The value is taken literally (no quotes, no $VAR). A key may appear once; a
second assignment is an error (authlib keeps the first, which hides typos).
Each value remembers its file:line so a bad value is reported where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from libcourier.config import ConfigError

MAX_FILE = 1024 * 1024          # a module rc file is a few kB
MAX_VALUE = 64 * 1024           # one value, continuation lines included
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class RcEntry:
    value: str
    path: str
    line: int


class AuthRc:
    """The parsed file: typed getters that raise ConfigError with file:line."""

    def __init__(self, entries: dict[str, RcEntry], path: str):
        self.entries = entries
        self.path = path

    def get(self, key: str, default: str = "") -> str:
        e = self.entries.get(key)
        return e.value if e is not None else default

    def has(self, key: str) -> bool:
        return bool(self.get(key))

    def error(self, key: str, message: str) -> ConfigError:
        e = self.entries.get(key)
        if e is None:
            return ConfigError(f"{key}: {message}", self.path)
        return ConfigError(f"{key}: {message}", e.path, e.line)

    def get_int(self, key: str, default: int, lo: int = 0, hi: int = 2**31 - 1) -> int:
        raw = self.get(key)
        if not raw:
            return default
        try:
            n = int(raw)
        except ValueError:
            raise self.error(key, f"expected a whole number, got {raw!r}") from None
        if not lo <= n <= hi:
            raise self.error(key, f"must be between {lo} and {hi}, got {n}")
        return n

    def get_bool(self, key: str, default: bool) -> bool:
        raw = self.get(key)
        if not raw:
            return default
        if raw in ("0", "1"):
            return raw == "1"
        raise self.error(key, f"expected 0 or 1, got {raw!r}")


def parse_authrc(text: str, path: str = "<string>") -> AuthRc:
    entries: dict[str, RcEntry] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i]
        i += 1
        # A trailing backslash continues the value on the next line (authconfigfile).
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
            if len(line) > MAX_VALUE:
                raise ConfigError(f"value longer than {MAX_VALUE} characters", path, start)
        if line.endswith("\\"):
            line = line[:-1]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _KEY.match(stripped)
        if not m or (m.end() < len(stripped) and stripped[m.end()] not in " \t"):
            raise ConfigError(f"expected KEY value, got {stripped[:60]!r}", path, start)
        key = m.group(0)
        if key in entries:
            raise ConfigError(f"{key} set twice (first at line {entries[key].line})", path, start)
        entries[key] = RcEntry(stripped[m.end():].strip(), path, start)
    return AuthRc(entries, path)


def read_authrc(path: Path) -> AuthRc:
    try:
        data = path.read_bytes()[: MAX_FILE + 1]
    except FileNotFoundError:
        raise ConfigError("no such file (needed by the module in authmodulelist)",
                          str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", str(path)) from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"file larger than {MAX_FILE} bytes", str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not valid UTF-8", str(path), data[: e.start].count(b"\n") + 1) from None
    return parse_authrc(text, str(path))
