"""Maildir++ quota: the `maildirsize` file (FORMATS.md §3.6, Courier maildir/maildirquota.C).

    <quota spec>\\n                  e.g. "100000S,50C": bytes (S) and/or messages (C)
    <bytes> <count>\\n               one line per change, "%12d %12d" as Courier writes;
    ...                             negative when messages go away (POP3 DELE, expunge)

The usage is the sum of all the lines after the first. Writers only append
(one short write with O_APPEND, which the kernel does not interleave with
another appender's); when the file grows large or looks wrong it is rebuilt
from the Maildir (`recalculate`), atomically (tmp, fsync, rename, fsync dir).

Rules kept from Courier:
- a Maildir without `maildirsize` has no quota: deletions do not create one;
- recalculate when the file is missing (and a quota is known), at least 5120
  bytes long, or over quota while longer than one line or older than 15 minutes;
- recalculation sums ``,S=`` from the file names (stat as a fallback) over
  new/ and cur/ of the top level and every folder except Trash.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from libcourier.durable import write_all, write_atomic

FILENAME = "maildirsize"
RECALC_SIZE = 5120            # Courier: a file this large is rebuilt
OVER_QUOTA_AGE = 15 * 60      # seconds; an over-quota file this old is rebuilt
MAX_READ = 1024 * 1024        # a maildirsize larger than this is not trusted, just rebuilt
_SPEC_ITEM = re.compile(r"^(\d+)([SC])$")
_SIZE_TAG = re.compile(r",S=(\d+)")


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """"100000S,50C": None means no limit of that kind."""
    bytes: int | None = None
    count: int | None = None

    def format(self) -> str:
        parts = []
        if self.bytes is not None:
            parts.append(f"{self.bytes}S")
        if self.count is not None:
            parts.append(f"{self.count}C")
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Usage:
    spec: QuotaSpec
    bytes: int
    count: int
    lines: int          # lines after the spec line

    def over(self, add_bytes: int = 0, add_count: int = 0) -> bool:
        # A zero limit is no limit (Courier's checkOneQuota).
        s = self.spec
        return ((bool(s.bytes) and self.bytes + add_bytes > s.bytes)  # type: ignore[operator]
                or (bool(s.count) and self.count + add_count > s.count))  # type: ignore[operator]

    def percent(self) -> int:
        """How full, 0..100, the larger of bytes and count (Courier's maildir_readquota);
        100 when over. Large byte quotas are divided in KB first, as Courier does, so
        the integer arithmetic gives the same answer."""
        if self.over():
            return 100
        best = 0
        for used, limit in ((self.bytes, self.spec.bytes), (self.count, self.spec.count)):
            if not limit:
                continue
            x = 1024 if limit > 20_000_000 else 1
            best = max(best, (max(used, 0) // x) * 100 // (limit // x))
        return best


def parse_spec(text: str) -> QuotaSpec | None:
    """Courier's quota string (also authd's QUOTA=); None when malformed."""
    size = count = None
    for item in text.strip().split(","):
        item = item.strip()
        if not item:
            continue
        m = _SPEC_ITEM.match(item)
        if m is None:
            return None
        if m.group(2) == "S":
            size = int(m.group(1))
        else:
            count = int(m.group(1))
    return QuotaSpec(size, count)


def parse(data: bytes) -> Usage | None:
    """The usage in a maildirsize file's bytes; None if the spec line is bad.

    A last line without its "\\n" is a torn append and is ignored; a line that
    is not two integers makes the file untrustworthy (None: recalculate).
    """
    lines = data.split(b"\n")
    try:
        spec = parse_spec(lines[0].decode("ascii"))
    except UnicodeDecodeError:
        return None
    if spec is None:
        return None
    total = count = n = 0
    for raw in lines[1:-1]:
        fields = raw.split()
        if len(fields) != 2:
            return None
        try:
            total += int(fields[0])
            count += int(fields[1])
        except ValueError:
            return None
        n += 1
    return Usage(spec, total, count, n)


def read(maildir: Path) -> tuple[Usage | None, int, float] | None:
    """(usage or None if corrupt, file size, mtime), or None when there is no maildirsize."""
    path = Path(maildir) / FILENAME
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_READ + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_READ:
        return None, st.st_size, st.st_mtime
    return parse(data), st.st_size, st.st_mtime


def needs_recalc(found: tuple[Usage | None, int, float] | None, now: float) -> bool:
    if found is None:
        return True
    usage, size, mtime = found
    if usage is None or size >= RECALC_SIZE:
        return True
    return usage.over() and (usage.lines > 1 or now - mtime >= OVER_QUOTA_AGE)


def line(bytes_delta: int, count_delta: int) -> bytes:
    return b"%12d %12d\n" % (bytes_delta, count_delta)


def append(maildir: Path, bytes_delta: int, count_delta: int) -> bool:
    """Record a change (e.g. -size, -1 per removed message); False when there is no
    maildirsize (no quota on this Maildir, Courier's rule: do not create one)."""
    try:
        fd = os.open(Path(maildir) / FILENAME, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        write_all(fd, line(bytes_delta, count_delta))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def message_size(name: str, path: Path | None = None) -> int:
    """A message's quota size: ``,S=`` from its name, else its file size (0 if gone)."""
    m = _SIZE_TAG.search(name.split(":", 1)[0])
    if m:
        return int(m.group(1))
    if path is not None:
        try:
            return path.stat().st_size
        except OSError:
            return 0
    return 0


def _folders(maildir: Path) -> list[Path]:
    out = [maildir]
    try:
        with os.scandir(maildir) as it:
            for ent in it:
                # Maildir++ folders are ".Name"; Trash does not count (Courier).
                if (ent.name.startswith(".") and ent.name not in (".", "..", ".Trash")
                        and ent.is_dir(follow_symlinks=False)):
                    out.append(Path(ent.path))
    except FileNotFoundError:
        pass
    return out


def _deleted(name: str) -> bool:
    # Courier's maildirquota_countfile: a message flagged T (deleted) does not count.
    _, sep, info = name.partition(":2,")
    return bool(sep) and "T" in info.split(",", 1)[0]


def measure(maildir: Path) -> tuple[int, int]:
    """(bytes, messages) in new/ and cur/ of the Maildir and its folders; Trash and
    messages flagged deleted are not counted (Courier's default build)."""
    total = count = 0
    for folder in _folders(Path(maildir)):
        for sub in ("new", "cur"):
            try:
                with os.scandir(folder / sub) as it:
                    for ent in it:
                        if ent.name.startswith(".") or _deleted(ent.name):
                            continue
                        total += message_size(ent.name, Path(ent.path))
                        count += 1
            except FileNotFoundError:
                continue
    return total, count


def recalculate(maildir: Path, spec: QuotaSpec) -> Usage:
    """Rebuild maildirsize from the Maildir itself, atomically, and return the usage."""
    maildir = Path(maildir)
    total, count = measure(maildir)
    data = spec.format().encode("ascii") + b"\n" + line(total, count)
    tmpdir = maildir / "tmp"
    tag = f"{os.getpid()}.{os.urandom(4).hex()}"
    tmp = (tmpdir if tmpdir.is_dir() else maildir) / f".{FILENAME}.{tag}"
    write_atomic(maildir / FILENAME, data, mode=0o644, tmp=tmp)
    return Usage(spec, total, count, 1)


def removed(maildir: Path, sizes: list[int]) -> None:
    """Account for messages that were removed (POP3 UPDATE, IMAP EXPUNGE).

    One "-size -1" line per message, as Courier's maildir_quota_deleted does;
    when the file has grown large or become unreadable it is rebuilt instead.
    """
    maildir = Path(maildir)
    found = read(maildir)
    if found is None:
        return                      # no quota on this Maildir
    usage = found[0]
    if usage is not None and found[1] < RECALC_SIZE:
        for size in sizes:
            append(maildir, -size, -1)
        return
    spec = usage.spec if usage is not None else _spec_only(maildir)
    if spec is not None:
        recalculate(maildir, spec)


def _spec_only(maildir: Path) -> QuotaSpec | None:
    try:
        with open(Path(maildir) / FILENAME, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    try:
        return parse_spec(first.decode("ascii").rstrip("\n"))
    except UnicodeDecodeError:
        return None


# --- delivery: Courier's maildir_quota_add_start / _add_end --------------------------

MAILDIRFOLDER = "maildirfolder"
RACE_RETRIES = 5             # recalculations that saw the Maildir change under them
WARN_FILE = "quotawarn"      # its mtime: when the last warning was delivered
WARN_INTERVAL = 24 * 3600    # at most one warning a day (deliverquota(8))


def quota_root(maildir: Path) -> Path:
    """The Maildir whose maildirsize covers `maildir`: a folder (it holds a
    `maildirfolder` file) is counted in its parent's quota."""
    maildir = Path(maildir)
    if (maildir / MAILDIRFOLDER).exists():
        return maildir.parent
    return maildir


def counts_folder(maildir: Path) -> bool:
    """Courier's maildirquota_countfolder: deliveries into Trash are not counted."""
    return Path(maildir).name != ".Trash"


def _dir_stamp(maildir: Path) -> float:
    """The newest mtime of new/ and cur/ over the Maildir and its counted folders:
    if it moves while we recalculate, someone delivered or expunged meanwhile."""
    newest = 0.0
    for folder in _folders(maildir):
        for sub in ("new", "cur"):
            try:
                newest = max(newest, os.stat(folder / sub).st_mtime)
            except OSError:
                continue
    return newest


def _recalculate_checked(maildir: Path, spec: QuotaSpec) -> Usage | None:
    """recalculate(), or None when the Maildir changed while it was counted."""
    before = _dir_stamp(maildir)
    usage = recalculate(maildir, spec)
    return usage if _dir_stamp(maildir) == before else None


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """The answer to "may this message go in?"."""
    allowed: bool
    usage: Usage | None      # None: the Maildir has no quota


def check_add(maildir: Path, add_bytes: int, add_count: int = 1,
              newquota: str | None = None, *, now: float | None = None) -> QuotaCheck:
    """May `add_bytes`/`add_count` go into `maildir` (or its folder)? Courier's rules:

    - no maildirsize and no quota given: no quota;
    - a quota given (authd's QUOTA, deliverquota's second argument) that differs
      from the file's, or no file yet: the file is (re)built with it;
    - under quota by the file's sum: yes, without a recount;
    - over by the sum of a one-line file younger than 15 minutes: no, without a
      recount; otherwise the Maildir is recounted (as when the file is at least
      5120 bytes, damaged or negative) and the recount decides;
    - a recount that keeps racing with other writers gives up and lets it in
      (a soft quota: Courier punts the same way).
    """
    root = quota_root(maildir)
    now = time.time() if now is None else now
    given = parse_spec(newquota) if newquota else None
    if given is not None and not (given.bytes or given.count):
        given = None                    # "0S" or garbage: no quota from the account
    found = read(root)
    if found is None and given is None:
        return QuotaCheck(True, None)
    usage = found[0] if found is not None else None
    spec = given if given is not None else (usage.spec if usage is not None
                                            else _spec_only(root))
    if spec is None or not (spec.bytes or spec.count):
        return QuotaCheck(True, None)   # a file whose quota line says nothing
    stale = (found is None or usage is None or found[1] >= RECALC_SIZE
             or usage.bytes < 0 or usage.count < 0 or usage.spec != spec)
    if not stale:
        assert usage is not None and found is not None
        if not usage.over(add_bytes, add_count):
            return QuotaCheck(True, usage)
        if usage.lines == 1 and now < found[2] + OVER_QUOTA_AGE:
            return QuotaCheck(False, usage)
    for _ in range(RACE_RETRIES):
        fresh = _recalculate_checked(root, spec)
        if fresh is not None:
            return QuotaCheck(not fresh.over(add_bytes, add_count), fresh)
    return QuotaCheck(True, recalculate(root, spec))


def add_end(maildir: Path, add_bytes: int, add_count: int = 1) -> None:
    """Record a delivery in the covering maildirsize (nothing when there is none)."""
    append(quota_root(maildir), add_bytes, add_count)


def set_quota(maildir: Path, spec: QuotaSpec) -> Usage:
    """`maildirmake -q`: write maildirsize with this quota and the current usage."""
    return recalculate(Path(maildir), spec)


def percent_full(maildir: Path) -> int | None:
    """How full the covering Maildir is (0..100), None without a quota."""
    root = quota_root(maildir)
    found = read(root)
    if found is None:
        return None
    usage = found[0]
    if usage is None or found[1] >= RECALC_SIZE:
        spec = _spec_only(root)
        if spec is None:
            return None
        usage = recalculate(root, spec)
    if not (usage.spec.bytes or usage.spec.count):
        return None
    return usage.percent()


def warning_due(maildir: Path, percent: int, *, now: float | None = None) -> bool:
    """Whether a quota warning should be delivered now: the Maildir is at least
    `percent` full and no warning went in during the last 24 hours. Marks the
    warning as sent (the `quotawarn` file's mtime), as Courier does before it
    delivers, so two concurrent deliveries do not both warn."""
    root = quota_root(maildir)
    full = percent_full(root)
    if full is None or full < percent:
        return False
    now = time.time() if now is None else now
    mark = root / WARN_FILE
    try:
        if os.stat(mark).st_mtime + WARN_INTERVAL > now:
            return False
    except FileNotFoundError:
        pass
    fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)
    os.utime(mark, (now, now))
    return True
