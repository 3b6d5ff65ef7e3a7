"""`courierimapkeywords/`: Courier's IMAP keywords of a folder (FORMATS.md §3.5).

Layout (courier-libs maildir/maildirkeywords2.c, checked against Courier-IMAP
5.0.13's own imapd, see tests/data/courier-keywords)::

    courierimapkeywords/:list          the merged state:
        <keyword>\\n ...                 every keyword in use, one a line
        \\n                              a blank line
        <base>:<i> <i> ...\\n            a message with keywords: 0-based list positions
    courierimapkeywords/<base>          an update: the message's whole new keyword
                                        set, one a line (empty file: no keywords)
    courierimapkeywords/.<N>.<base>     an update a reader has folded into :list,
                                        N = time/300 when it did

A writer puts the whole new set into a file in tmp/ and renames it to
`<base>`. A reader (every scan) reads :list, then for each message takes the
newest update: the plain `<base>` if there is one, else the `.<N>.` file with
the largest N. If anything changed it rewrites :list (tmp + rename; removed
when no message has a keyword), renames a plain `<base>` to `.<T+1>.<base>`
(T = now/300), drops `.<N>.` files older than the current 300 s window once
they are the only update of their message, drops updates of messages that
are gone once older than 15 minutes, and drops `.tmp.` scratch files older
than 2 minutes. Files of the current window are kept and read again: another
reader may have read :list before our merge and may write it after.

Concurrency among our processes: `read`/`update` hold ``flock`` on the
courierimapkeywords directory fd for their read-merge-write, so a STORE
computes its new set from the latest one and no keyword change of ours is
lost. Courier's own imapd takes no lock; against it we are as safe as
Courier is against itself. Update files are not fsynced (Courier does not;
flag renames are not either): a crash may lose the last keyword change,
never the message.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

KEYWORDDIR = "courierimapkeywords"
LIST = ":list"
WINDOW = 300                  # seconds per update generation (Courier: t/300)
ORPHAN_AGE = 15 * 60          # an update for a message that is gone is dropped after this
SCRATCH_AGE = 120             # ".tmp." files younger than this are someone's work in progress
MAX_LIST_BYTES = 256 << 20    # a larger :list is not read (treated as damaged)
MAX_UPDATE_BYTES = 64 << 10   # an update file is read up to this
MAX_KEYWORD = 255             # bytes of one keyword name
MAX_PER_MESSAGE = 255         # keywords on one message
READ_TRIES = 5                # an update vanishing under us (Courier's tryagain)


class KeywordError(ValueError):
    """A keyword name that cannot be stored (empty, too long, a newline, a system flag)."""


@dataclass(slots=True)
class _Updates:
    """What the directory holds for one message (Courier's keywordUpdateInfo)."""
    highest_n: int = 0        # largest N of an old (< T) ".N." file
    highest_t: int = 0        # largest N of a current-window file (a plain file counts T+1)
    total: int = 0
    plain: bool = False       # a plain "<base>" update exists


def check_name(name: str) -> str:
    """`name` if it can be a stored keyword; KeywordError otherwise."""
    if not name or name.startswith("\\") or len(name.encode("utf-8", "surrogateescape")) > \
            MAX_KEYWORD or any(c in "\r\n\0 " for c in name):
        raise KeywordError(f"invalid keyword {name!r}")
    return name


# -- the file formats (no I/O) -----------------------------------------------------

def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").split("\n")


def parse_list(data: bytes) -> tuple[dict[str, frozenset[str]], bool]:
    """(base -> keywords, damaged). `damaged` is Courier's "rewrite needed": a line
    without ":" or an index beyond the keyword list was skipped."""
    lines = _lines(data)
    names: list[str] = []
    i = 0
    while i < len(lines) and lines[i]:
        names.append(lines[i])
        i += 1
    out: dict[str, frozenset[str]] = {}
    damaged = False
    for line in lines[i + 1:]:
        if not line:
            continue
        base, sep, rest = line.partition(":")
        if not sep:
            damaged = True
            continue
        got = set()
        for tok in rest.split():
            # Courier: atoi(), then indexes past the list are ignored.
            if tok.isdigit() and int(tok) < len(names):
                got.add(names[int(tok)])
            else:
                damaged = True
        got.discard("")
        if got:
            out[base] = frozenset(got)
        else:
            out.pop(base, None)
    return out, damaged


def format_list(keywords: Mapping[str, Iterable[str]]) -> bytes:
    """The :list text for base -> keywords; b"" when no message has a keyword."""
    names = sorted({k for ks in keywords.values() for k in ks})
    if not names:
        return b""
    pos = {n: i for i, n in enumerate(names)}
    out = [n + "\n" for n in names] + ["\n"]
    for base in sorted(keywords):
        ks = keywords[base]
        if ks:
            out.append(base + ":" + " ".join(str(pos[k]) for k in sorted(ks, key=pos.__getitem__))
                       + "\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def parse_update(data: bytes) -> frozenset[str]:
    """An update file: keywords one a line, up to the first empty line (as Courier reads)."""
    got = []
    for line in _lines(data):
        if not line:
            break
        got.append(line)
    return frozenset(got)


def format_update(keywords: Iterable[str]) -> bytes:
    return "".join(k + "\n" for k in sorted(keywords)).encode("utf-8", "surrogateescape")


def _generation(name: str) -> tuple[int, str] | None:
    """".<N>.<base>" -> (N, base); None for anything else."""
    digits, dot, base = name[1:].partition(".")
    if not dot or not digits.isdigit() or not base or int(digits) == 0:
        return None
    return int(digits), base


# -- on disk -----------------------------------------------------------------------

class _Locked:
    """flock(LOCK_EX) on the keyword directory for one read-merge-write."""

    def __init__(self, kwdir: Path):
        self.fd = os.open(kwdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> _Locked:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)   # releases the lock


def ensure_dir(folder: Path) -> Path:
    """courierimapkeywords/, made as Courier makes it (mode of the folder) when missing
    (folder.py also makes it before a scan stamps the folder: snapshot.py)."""
    kwdir = folder / KEYWORDDIR
    try:
        os.mkdir(kwdir, 0o700)
    except FileExistsError:
        return kwdir
    try:
        os.chmod(kwdir, os.stat(folder).st_mode & 0o777)
    except OSError:
        pass
    return kwdir


def _read_file(path: Path, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        return None
    return data[:limit] if len(data) > limit else data


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Vanished(Exception):
    """An update file went away between listing and reading it (Courier's tryagain)."""


def _merge(folder: Path, kwdir: Path, bases: Collection[str], now: float) -> dict[str, frozenset[str]]:
    t = int(now)
    tn = t // WINDOW
    raw = _read_file(kwdir / LIST, MAX_LIST_BYTES)
    listed, rewrite = parse_list(raw) if raw is not None else ({}, False)
    state = {b: k for b, k in listed.items() if b in bases}
    rewrite |= len(state) != len(listed)        # stale entries go at the next write
    info: dict[str, _Updates] = {}
    with os.scandir(kwdir) as it:
        entries = [(e.name, e.path) for e in it]
    for name, path in entries:
        if name.startswith(":"):
            continue
        if not name.startswith("."):
            base, n = name, tn + 1
        else:
            gen = _generation(name)
            if gen is None:
                if name.startswith(".tmp."):
                    digits = "".join(c for c in name[5:15] if c.isdigit())
                    if digits and int(digits) >= t - SCRATCH_AGE:
                        continue
                    _unlink(Path(path))
                continue
            n, base = gen
        if base not in bases:
            try:
                if os.stat(path).st_mtime < t - ORPHAN_AGE:
                    _unlink(Path(path))
            except FileNotFoundError:
                pass
            continue
        u = info.setdefault(base, _Updates())
        u.total += 1
        if not name.startswith("."):
            u.plain = True
        if n >= tn:
            u.highest_t = max(u.highest_t, n)
        elif n > u.highest_n:
            if u.highest_n:
                _unlink(kwdir / f".{u.highest_n}.{base}")   # superseded
                u.total -= 1
            u.highest_n = n
        else:
            _unlink(Path(path))   # older than an old one we keep: superseded
            u.total -= 1
    for base, u in info.items():
        n = max(u.highest_n, u.highest_t)
        path = kwdir / base if u.plain else kwdir / f".{n}.{base}"
        data = _read_file(path, MAX_UPDATE_BYTES)
        if data is None:
            raise _Vanished(str(path))
        new = parse_update(data)
        if new != state.get(base, frozenset()):
            rewrite = True
            if new:
                state[base] = new
            else:
                state.pop(base, None)
    if rewrite:
        text = format_list(state)
        if text:
            tmp = folder / "tmp" / f"{t}.{os.getpid()}_{os.urandom(4).hex()}.keywords"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                try:
                    _write_all(fd, text)
                finally:
                    os.close(fd)
                os.rename(tmp, kwdir / LIST)
            except BaseException:
                _unlink(tmp)
                raise
        else:
            _unlink(kwdir / LIST)
    for base, u in info.items():
        if u.plain:
            try:
                os.rename(kwdir / base, kwdir / f".{tn + 1}.{base}")
            except FileNotFoundError:
                pass
        elif u.total == 1 and u.highest_n and not u.highest_t:
            _unlink(kwdir / f".{u.highest_n}.{base}")
    return state


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read(folder: Path, bases: Collection[str], now: float | None = None) -> dict[str, frozenset[str]]:
    """base -> keywords for the messages named by `bases` (only those with keywords),
    folding pending updates into :list as Courier's reader does."""
    folder = Path(folder)
    kwdir = ensure_dir(folder)
    with _Locked(kwdir):
        for _ in range(READ_TRIES):
            try:
                return _merge(folder, kwdir, bases, time.time() if now is None else now)
            except _Vanished:
                continue   # a Courier reader renamed it meanwhile: read again
    return _merge(folder, kwdir, bases, time.time() if now is None else now)


def _write_update(folder: Path, kwdir: Path, base: str, keywords: Iterable[str]) -> None:
    tmp = folder / "tmp" / f"{int(time.time())}.{os.getpid()}_{os.urandom(4).hex()}.kw"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, format_update(keywords))
        finally:
            os.close(fd)
        os.rename(tmp, kwdir / base)
    except BaseException:
        _unlink(tmp)
        raise


def update(folder: Path, bases: Collection[str],
           change: Mapping[str, tuple[str, frozenset[str]]],
           now: float | None = None) -> dict[str, frozenset[str]]:
    """Apply keyword changes atomically among our processes and return the new
    base -> keywords of the whole folder (as `read`).

    `change` maps a base to (mode, names): mode "=" replaces the set, "+" adds,
    "-" removes. Names compare case-insensitively (RFC 9051 §2.3.2); a name
    already used in the folder keeps that spelling.
    """
    folder = Path(folder)
    for _mode, names in change.values():
        for n in names:
            check_name(n)
    kwdir = ensure_dir(folder)
    with _Locked(kwdir):
        state: dict[str, frozenset[str]] | None = None
        for _ in range(READ_TRIES):
            try:
                state = _merge(folder, kwdir, bases, time.time() if now is None else now)
                break
            except _Vanished:
                continue
        if state is None:
            state = _merge(folder, kwdir, bases, time.time() if now is None else now)
        spelling = {k.lower(): k for ks in state.values() for k in ks}
        for base, (mode, names) in change.items():
            names = frozenset(spelling.setdefault(n.lower(), n) for n in names)
            old = state.get(base, frozenset())
            if mode == "=":
                new = names
            elif mode == "+":
                new = old | names
            elif mode == "-":
                drop = {n.lower() for n in names}
                new = frozenset(k for k in old if k.lower() not in drop)
            else:
                raise ValueError(f"bad mode {mode!r}")
            if len(new) > MAX_PER_MESSAGE:
                raise KeywordError("too many keywords on one message")
            if new == old:
                continue
            _write_update(folder, kwdir, base, new)
            if new:
                state[base] = new
            else:
                state.pop(base, None)
    return state


def write(folder: Path, keywords: Mapping[str, Iterable[str]]) -> None:
    """Set the keywords of new messages (APPEND, COPY): one update file each, as
    Courier's imapd writes them beside a message it adds."""
    folder = Path(folder)
    todo = {b: frozenset(check_name(k) for k in ks) for b, ks in keywords.items() if ks}
    if not todo:
        return
    kwdir = ensure_dir(folder)
    with _Locked(kwdir):
        for base, ks in todo.items():
            _write_update(folder, kwdir, base, ks)
