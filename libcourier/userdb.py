"""Courier's userdb: the text source and our compiled form (FORMATS.md §3.2, makeuserdb(8), userdb(8)).

Source: a file, or a directory of files read recursively (dotfiles skipped: they
are the `.lock.*`/`.tmp.*` files of the userdb tool). Each line is

    name<TAB>field=value|field=value|...

with `#` comments and blank lines ignored. A line `1012=<TAB>vmail` is the reverse
uid map (uid -> account name) that Courier's userdb keeps; it is not an account.

Compiled form: Courier's makeuserdb pipes these lines through makedat into GDBM.
This Python has no gdbm module we can count on, so userdb.dat and userdbshadow.dat
are our own simple format: a header comment line, then sorted `name<TAB>fields`
lines in the source syntax. userdb.dat carries every field not ending in `pw` plus
`_=<file relative to the userdb directory>` (only when the source is a directory,
as the userdb script uses it to find where an entry lives); userdbshadow.dat (0600)
carries the `*pw` fields. Both are written atomically (tmp, fsync, rename, fsync dir).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from libcourier.config.errors import ConfigError
from libcourier.durable import write_atomic

MAX_USERDB_FILE = 64 * 1024 * 1024
MAX_LINE = 64 * 1024
COMPILED_HEADER = "# courier-py compiled userdb v1: name<TAB>field=value|...\n"


@dataclass(frozen=True, slots=True)
class UserdbEntry:
    name: str                # lowercased: lookups are case-insensitive
    fields: dict[str, str]
    path: str
    line: int


def _is_ctl(s: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in s)


def _bad_name(name: str) -> bool:
    return not name or _is_ctl(name) or " " in name or "\t" in name


def _parse_fields(text: str, path: str, lineno: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    if not text:
        return fields
    for item in text.split("|"):
        if not item:
            continue  # "a=1||b=2": an empty field is harmless
        k, eq, v = item.partition("=")
        if not k or _is_ctl(k) or " " in k:
            raise ConfigError(f"bad field name {k[:40]!r}", path, lineno)
        fields[k] = v if eq else ""
    return fields


def _parse_text(text: str, path: str, out: list[UserdbEntry]) -> None:
    for lineno, raw in enumerate(text.split("\n"), 1):
        if len(raw) > MAX_LINE:
            raise ConfigError(f"line longer than {MAX_LINE} characters", path, lineno)
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" not in line:
            raise ConfigError("expected name<TAB>field=value|...", path, lineno)
        name, _, rest = line.partition("\t")
        rest = rest.strip(" \t")
        if name.endswith("=") and name[:-1].isdigit():
            continue  # reverse uid map line: not an account
        if _bad_name(name):
            raise ConfigError(f"bad account name {name[:40]!r}", path, lineno)
        out.append(UserdbEntry(name.lower(), _parse_fields(rest, path, lineno), path, lineno))


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_USERDB_FILE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", str(path)) from None
    if len(data) > MAX_USERDB_FILE:
        raise ConfigError(f"larger than {MAX_USERDB_FILE} bytes", str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not valid UTF-8", str(path), data[: e.start].count(b"\n") + 1) from None


def _source_files(source: Path) -> list[Path]:
    if not source.is_dir():
        return [source]
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and not f.endswith("~"):
                files.append(Path(dirpath) / f)
    return files


def parse_userdb(source: Path) -> list[UserdbEntry]:
    """Every account in a userdb file or directory; ConfigError(file:line) on a bad line
    or an account defined twice."""
    source = Path(source)
    if not source.exists():
        raise ConfigError("no such file or directory", str(source))
    out: list[UserdbEntry] = []
    for f in _source_files(source):
        _parse_text(_read_text(f), str(f), out)
    seen: dict[str, UserdbEntry] = {}
    for e in out:
        if e.name in seen:
            first = seen[e.name]
            raise ConfigError(f"account {e.name!r} already defined at {first.path}:{first.line}",
                              e.path, e.line)
        seen[e.name] = e
    return out


def format_entry(name: str, fields: Mapping[str, str]) -> str:
    """One source line (with its LF). ValueError for what the format cannot hold."""
    if _bad_name(name):
        raise ValueError(f"bad account name {name!r}")
    parts = []
    for k, v in fields.items():
        if not k or "=" in k or "|" in k or " " in k or _is_ctl(k):
            raise ValueError(f"bad field name {k!r}")
        if "|" in v or _is_ctl(v):
            raise ValueError(f"field {k}: value must not contain '|' or control characters")
        parts.append(f"{k}={v}")
    return f"{name}\t{'|'.join(parts)}\n"


class _Lock:
    """The userdb tool's lock file `.lock.<file>`, held with flock."""

    def __init__(self, source_file: Path):
        self.path = source_file.with_name(f".lock.{source_file.name}")
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _rewrite(source_file: Path, name: str, new_line: str | None) -> bool:
    """Replace (or drop, new_line None) the entry for `name`; append when absent.
    Comments and other lines are kept as they are. Returns whether it existed."""
    source_file = Path(source_file)
    key = name.lower()
    try:
        text = _read_text(source_file)
    except ConfigError:
        if source_file.exists():
            raise
        text = ""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    found = False
    for raw in lines:
        n, tab, _ = raw.partition("\t")
        if tab and not raw.lstrip().startswith("#") and n.lower() == key:
            if not found and new_line is not None:
                out.append(new_line.rstrip("\n"))
            found = True
            continue
        out.append(raw)
    if not found and new_line is not None:
        out.append(new_line.rstrip("\n"))
    body = "\n".join(out) + ("\n" if out else "")
    write_atomic(source_file, body.encode("utf-8"), mode=0o600)
    return found


def set_user(source_file: Path, name: str, fields: Mapping[str, str]) -> None:
    """Add or replace the entry `name` (its whole field set) in a userdb text file, atomically."""
    source_file = Path(source_file)
    line = format_entry(name, fields)  # validate before taking the lock
    with _Lock(source_file):
        _rewrite(source_file, name, line)


def delete_user(source_file: Path, name: str) -> bool:
    """Remove the entry `name`; False if it was not there."""
    source_file = Path(source_file)
    with _Lock(source_file):
        if not source_file.exists():
            return False
        return _rewrite(source_file, name, None)


def is_password_field(name: str) -> bool:
    return name.endswith("pw")


def compile_userdb(source: Path, dat: Path, shadow: Path) -> int:
    """makeuserdb: write dat (non-*pw fields + `_`) and shadow (0600, *pw fields); return #users."""
    source = Path(source)
    entries = parse_userdb(source)
    is_dir = source.is_dir()
    pub: list[str] = []
    sec: list[str] = []
    for e in sorted(entries, key=lambda e: e.name):
        fields = {k: v for k, v in e.fields.items() if not is_password_field(k)}
        if is_dir:
            fields["_"] = os.path.relpath(e.path, source)
        pw = {k: v for k, v in e.fields.items() if is_password_field(k)}
        try:
            pub.append(format_entry(e.name, fields))
            sec.append(format_entry(e.name, pw))
        except ValueError as err:
            raise ConfigError(str(err), e.path, e.line) from None
    write_atomic(Path(dat), (COMPILED_HEADER + "".join(pub)).encode("utf-8"), mode=0o644)
    write_atomic(Path(shadow), (COMPILED_HEADER + "".join(sec)).encode("utf-8"), mode=0o600)
    return len(entries)


def load_compiled(dat: Path, shadow: Path) -> dict[str, dict[str, str]]:
    """The compiled userdb as {name: fields}, shadow fields merged in."""
    users: dict[str, dict[str, str]] = {}
    for path in (Path(dat), Path(shadow)):
        entries: list[UserdbEntry] = []
        _parse_text(_read_text(path), str(path), entries)
        for e in entries:
            users.setdefault(e.name, {}).update(e.fields)
    return users
