"""System-wide aliases: Courier's `aliases` source, our compiled `aliases.dat`.

Source syntax (makealiases(8), FORMATS.md §4.4), ETC/aliases as a file or a
directory of files (read in name order, dotfiles and editor backups skipped):

    # comment
    postmaster: root, admin@example.com
    staff: alice,
        bob                             <- a line starting with white space continues
    list: :include:/etc/courier/list.members
    @virtual.example: alice             <- foo@virtual.example -> alice-foo@<me>

A name without "@" is a local alias: it matches that local part in every
local domain (`me`, `locals`) and the bare name. Names are case-insensitive.
Program and mailbox aliases (`| prog`, `/path`) need Courier's generated
.courier files, which we do not have: makealiases refuses them with file:line.

Compiled file (ETC/aliases.dat, written with libcourier.durable):

    courier-py-aliases 1
    <name>\t<target>\t<target>...       <- name lowercased, targets as written
    end

Lookups (AliasTable) re-read the compiled file when it changes, so a new
makealiases takes effect without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import write_atomic

FORMAT_LINE = "courier-py-aliases 1"
MAX_SOURCE_BYTES = 16 * 1024 * 1024
MAX_INCLUDE_DEPTH = 4
MAX_EXPANSION = 10000          # addresses one alias may expand to
MAX_DEPTH = 20                 # alias -> alias -> ... levels


class AliasError(Exception):
    """A source problem, with file:line."""


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SOURCE_BYTES + 1)
    except OSError as e:
        raise AliasError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise AliasError(f"{path}: too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AliasError(f"{path}: not UTF-8") from None


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Lines with their continuations joined; comments and blank lines dropped."""
    current: tuple[int, str] | None = None
    for n, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and current is not None:
            current = (current[0], current[1] + " " + line.strip())
            continue
        if current is not None:
            yield current
        current = (n, line.strip())
    if current is not None:
        yield current


def _targets(value: str, where: str, reader: Callable[[Path], str], depth: int) -> list[str]:
    out: list[str] = []
    for part in value.split(","):
        t = part.strip()
        if not t:
            continue
        if t.lower().startswith(":include:"):
            if depth >= MAX_INCLUDE_DEPTH:
                raise AliasError(f"{where}: :include: nested too deeply")
            inc = Path(t[len(":include:"):].strip())
            for n, line in _logical_lines(reader(inc)):
                out.extend(_targets(line, f"{inc}:{n}", reader, depth + 1))
            continue
        if t.startswith(("|", "/", "./")):
            raise AliasError(f"{where}: program and mailbox aliases ({t[:30]!r}) are not "
                             f"supported; use a .courier file of a real account")
        t = t.strip("<>")
        if any(c.isspace() or not c.isprintable() for c in t) or len(t) > 1024:
            raise AliasError(f"{where}: bad address {t[:40]!r}")
        out.append(t)
    return out


def parse_source(text: str, name: str = "aliases",
                 reader: Callable[[Path], str] = _read) -> dict[str, list[str]]:
    """name (lowercased) -> targets, several entries for one name merged in order."""
    table: dict[str, list[str]] = {}
    for n, line in _logical_lines(text):
        where = f"{name}:{n}"
        key, colon, value = line.partition(":")
        key = key.strip().lower()
        if not colon or not key or any(c.isspace() for c in key):
            raise AliasError(f"{where}: expected 'name: address, ...'")
        targets = _targets(value, where, reader, 0)
        if not targets:
            raise AliasError(f"{where}: {key} has no addresses")
        if key.startswith("@"):
            if len(targets) != 1 or "@" in targets[0]:
                raise AliasError(f"{where}: a virtual domain maps to one local user")
        merged = table.setdefault(key, [])
        merged.extend(t for t in targets if t not in merged)
    return table


def read_sources(src: Path) -> dict[str, list[str]]:
    """ETC/aliases as a file or a directory of files."""
    if src.is_dir():
        files = sorted(p for p in src.iterdir()
                       if p.is_file() and not p.name.startswith(".") and
                       not p.name.endswith(("~", ".bak", ".dpkg-old", ".dpkg-new")))
    elif src.exists():
        files = [src]
    else:
        return {}
    table: dict[str, list[str]] = {}
    for f in files:
        for k, v in parse_source(_read(f), str(f)).items():
            merged = table.setdefault(k, [])
            merged.extend(t for t in v if t not in merged)
    return table


def format_compiled(table: dict[str, list[str]]) -> bytes:
    lines = [FORMAT_LINE]
    for k in sorted(table):
        lines.append("\t".join([k, *table[k]]))
    lines.append("end")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_compiled(data: bytes) -> dict[str, tuple[str, ...]]:
    lines = data.decode("utf-8").split("\n")
    if not lines or lines[0] != FORMAT_LINE or len(lines) < 3 or lines[-2:] != ["end", ""]:
        raise AliasError("not a complete courier-py aliases.dat")
    out: dict[str, tuple[str, ...]] = {}
    for line in lines[1:-2]:
        parts = line.split("\t")
        if len(parts) < 2:
            raise AliasError(f"malformed aliases.dat line {line[:40]!r}")
        out[parts[0]] = tuple(parts[1:])
    return out


def compile_aliases(etc: Path, mode: int = 0o644) -> tuple[Path, int]:
    """ETC/aliases -> ETC/aliases.dat; returns (path, number of aliases)."""
    etc = Path(etc)
    table = read_sources(etc / "aliases")
    out = etc / "aliases.dat"
    write_atomic(out, format_compiled(table), mode=mode)
    return out, len(table)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    key: tuple[int, int, int, int] | None
    table: dict[str, tuple[str, ...]]


class AliasTable:
    """Lookups in ETC/aliases.dat, re-read when the file changes.

    `is_local(domain)` says whether a domain is ours (me/locals), for names
    without "@"; `me` is where virtual-domain entries send their users.
    """

    def __init__(self, path: Path, me: str, is_local: Callable[[str], bool]):
        self.path = Path(path)
        self.me = me.lower()
        self.is_local = is_local
        self._snap = _Snapshot(None, {})

    def _table(self) -> dict[str, tuple[str, ...]]:
        try:
            st = os.stat(self.path)
        except OSError:
            self._snap = _Snapshot(None, {})
            return self._snap.table
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_dev)
        if key != self._snap.key:
            try:
                with open(self.path, "rb") as fh:
                    table = parse_compiled(fh.read(MAX_SOURCE_BYTES + 1))
            except (OSError, UnicodeDecodeError, AliasError):
                # A half-made file cannot happen (atomic rename); an unreadable
                # or foreign one: keep the last good table.
                return self._snap.table
            self._snap = _Snapshot(key, table)
        return self._snap.table

    def lookup(self, address: str) -> tuple[str, ...] | None:
        """The targets of one address (one level), or None when it is no alias."""
        table = self._table()
        if not table:
            return None
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        domain = domain.lower()
        full = f"{local.lower()}@{domain}" if at else local.lower()
        if full in table:
            return table[full]
        if not at or self.is_local(domain):
            if local.lower() in table:
                return table[local.lower()]
        if at and f"@{domain}" in table:
            return (f"{table['@' + domain][0]}-{local}@{self.me}",)
        return None

    def expand(self, address: str) -> list[str] | None:
        """Every final address of an alias (recursively, deduplicated, in order),
        or None when `address` is not an alias. An alias reached again inside
        its own expansion is dropped (a loop, or `root: root` style lists)."""
        first = self.lookup(address)
        if first is None:
            return None
        out: list[str] = []
        seen = {address.lower()}
        stack: list[tuple[str, int]] = [(t, 1) for t in reversed(first)]
        while stack:
            t, depth = stack.pop()
            if t.lower() in seen:
                continue
            seen.add(t.lower())
            more = self.lookup(t) if depth < MAX_DEPTH else None
            if more is None:
                out.append(t if "@" in t else f"{t}@{self.me}")
                if len(out) > MAX_EXPANSION:
                    break
            else:
                stack.extend((m, depth + 1) for m in reversed(more))
        return out
