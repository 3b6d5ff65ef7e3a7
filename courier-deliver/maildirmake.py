"""maildirmake: create Maildirs, Maildir++ folders and shared folders; set a quota.

    maildirmake [-S] [-q quota] [-s mode] [-f folder | -F folder] maildir
    maildirmake --add nick=/path/to/sharable/maildir maildir
    maildirmake --del nick maildir

Courier's options (maildirmake(1), courier-libs maildir/maildirmake.c):

- `maildirmake DIR` makes DIR with tmp/ new/ cur/ (0700); DIR must not exist;
- `-f Name` (or `-F Name`: the same, the name in the locale's character set,
  which is how Python already decodes argv) makes the folder `.Name` in an
  existing Maildir, with its `maildirfolder` file; `Sent.2024` is a sub-folder;
  as in Courier the value may also be attached (`-fName`);
- `-q 100000S,50C` installs a quota: the Maildir is made if it does not exist,
  otherwise its `maildirsize` is rewritten with the new quota and the current
  usage; with `-f Name` that is done to DIR/.Name as Courier does (made without
  `maildirfolder` when missing, so it is a quota root of its own; an existing
  folder's quota root is DIR);
- `-S` makes a sharable maildir: the directory 0755 (tmp/ new/ cur/ stay 0700);
- `-s read|write[,group] -f Name` makes a shared folder in a sharable maildir:
  `read` 0755 (only the owner adds messages), `write` 01777 on tmp/ new/ cur/
  (anyone adds, the sticky bit keeps others' messages), `group` drops the world
  bits; the folder directory itself never has group/world write (Courier masks
  022);
- `--add nick=/path` records a sharable maildir in DIR/shared-maildirs (exit 2 if
  the nick is there already, or in the config directory's `maildirshared`);
  `--del nick` removes it. The IMAP server then shows its folders as
  `shared.nick.Name` (libcourier.maildir.shared).

`--checkutf8 DIR` / `--convutf8 DIR` check / rename folders whose names are in
modified UTF-7 (Courier-IMAP 4) to UTF-8 (Courier 5, us) and convert
`courierimapsubscribed` the same way, printing what they do as Courier's
convertutf8() does (libcourier.maildir.utf8conv, where we differ: stricter and
all or nothing). Exit 0 done (or nothing to do), 1 an error and nothing changed.

Not supported, refused with a message and exit 1 rather than half done: the
optional mail filter file after `--checkutf8/--convutf8 DIR` (sqwebmail's
maildirfilter rules, whose folder references Courier also rewrites).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from libcourier.config import config_dir
from libcourier.durable import fsync_dir
from libcourier.maildir import quota, shared, utf8conv
from libcourier.maildir.folders import FolderError, create_folder

USAGE = "Usage: maildirmake [ options ] maildir"


def _usage() -> int:
    print(USAGE)          # Courier's usage(): on stdout, exit 1
    return 1


def _err(text: str) -> int:
    print(f"maildirmake: {text}", file=sys.stderr)
    return 1


def make_maildir(path: Path, mode: int = 0o700, submode: int = 0o700) -> None:
    """DIR/{tmp,new,cur}, durable; raises FileExistsError when DIR exists."""
    os.mkdir(path, 0o700)
    for sub in ("tmp", "new", "cur"):
        os.mkdir(path / sub, 0o700)
        if submode != 0o700:
            os.chmod(path / sub, submode)     # chmod: mkdir's mode is cut by the umask
    if mode != 0o700:
        os.chmod(path, mode)
    fsync_dir(path)
    fsync_dir(path.parent if str(path.parent) else Path("."))


def _take(args: list[str], i: int) -> tuple[str | None, int]:
    """The value of option args[i]: attached ("-fName") or the next argument."""
    a = args[i]
    if len(a) > 2:
        return a[2:], i + 1
    if i + 1 < len(args):
        return args[i + 1], i + 2
    return None, i + 1


def _global_file() -> Path:
    """Courier's global list, @sysconfdir@/maildirshared: the config directory's."""
    return config_dir(None) / shared.GLOBAL_FILE


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    folder: str | None = None
    spec_text: str | None = None
    perm = 0o700
    must_have_folder = False
    add: str | None = None
    delete: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") or a == "-":
            break
        if a in ("--checkutf8", "--convutf8") and i + 1 < len(args):
            # Courier: the maildir and an optional mail filter follow; the rest is ignored.
            if i + 2 < len(args):
                return _err(f"{a}: converting the mail filter file {args[i + 2]} is "
                            "not supported")
            return convert_utf8(args[i + 1], a == "--convutf8")
        if a in ("--add", "--del") and i + 1 < len(args):
            if a == "--add":
                add = args[i + 1]
            else:
                delete = args[i + 1]
            i += 2
            continue
        if a == "-S":
            perm = 0o755
            i += 1
            continue
        if a[:2] in ("-f", "-F", "-q", "-s") and not a.startswith("--"):
            value, i = _take(args, i)
            if value is None:
                return _usage()
            if a[:2] == "-q":
                spec_text = value
            elif a[:2] == "-s":
                perm = shared.make_permissions(value)
                must_have_folder = True
            else:
                folder = value
            continue
        return _usage()
    rest = args[i:]
    if len(rest) != 1 or not rest[0]:
        return _usage()
    maildir = Path(rest[0])
    if add is not None or delete is not None:
        return _shared_list(maildir, add, delete)
    if folder is not None and folder.startswith("."):
        return _err(f"Invalid folder name: {folder}")
    if folder is None and must_have_folder:
        return _usage()
    spec = None
    if spec_text is not None:
        spec = quota.parse_spec(spec_text)
        if spec is None or not (spec.bytes or spec.count):
            return _err(f"bad quota {spec_text!r}: expected e.g. 100000S,50C")
    try:
        if folder is not None and spec is not None:
            # Courier: -q with -f works on DIR/.Name as a maildir of its own: made
            # (without maildirfolder, so it is its own quota root) when missing, and
            # its maildirsize written.
            target = maildir / ("." + folder)
            if not target.exists():
                make_maildir(target, perm & ~0o022, perm & ~0o022)
            # An existing folder (with maildirfolder) is counted in its parent's.
            quota.set_quota(quota.quota_root(target), spec)
            return 0
        if folder is not None:
            if not (maildir / "cur").is_dir():
                return _err(f"{maildir}: not a maildir")
            try:
                made = create_folder(maildir, "INBOX." + folder)
            except FolderError as e:
                return _err(f"{folder}: {e.text}")
            if perm != 0o700:
                # Courier: the folder perm & ~022, its tmp/ new/ cur/ the full -s perm.
                for sub in ("tmp", "new", "cur"):
                    os.chmod(made / sub, perm)
                os.chmod(made, perm & ~0o022)
        elif spec is None or not maildir.exists():
            try:
                make_maildir(maildir, perm & ~0o022, 0o700 if spec is None else perm & ~0o022)
            except FileExistsError:
                return _err(f"{maildir}: File exists")
        if spec is not None:
            quota.set_quota(maildir, spec)
    except OSError as e:
        return _err(f"{maildir}: {e.strerror}")
    return 0


def _say(text: str, err: bool = False) -> None:
    """One line out; folder names may hold bytes that are not UTF-8 (surrogateescape)."""
    stream = sys.stderr if err else sys.stdout
    stream.flush()
    raw = getattr(stream, "buffer", None)
    if raw is None:
        print(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), file=stream)
        return
    raw.write(text.encode("utf-8", "surrogateescape") + b"\n")
    raw.flush()


def convert_utf8(maildir: str, doit: bool) -> int:
    """--checkutf8 (doit False) / --convutf8: Courier's convertutf8() words and order."""
    root = Path(maildir)
    _say(f"Checking {maildir}:")
    if not (root / "cur").is_dir():
        return _err(f"{maildir}: not a maildir")
    try:
        plan = utf8conv.plan(root)
    except OSError as e:
        return _err(f"{maildir}: {e.strerror}")
    if not plan.folder_errors:
        for old, new in plan.subscriptions:
            _say(f"Subscription to {old} changed to {new}")
    for line in plan.errors:
        _say(line, err=True)
    if plan.errors:
        return 1
    for old, new in plan.renames:
        _say(f"Rename {old} to {new}")
    subscribed = f"{maildir}/{utf8conv.SUBSCRIBED}"
    if not doit:
        if plan.new_subscribed is not None:
            _say(f"Verified {subscribed}")
        return 0
    if plan.new_subscribed is not None:
        _say(f"Updating {subscribed}")
    errors = utf8conv.apply(root, plan)
    for line in errors:
        _say(line, err=True)
    return 1 if errors else 0


def _shared_list(maildir: Path, add: str | None, delete: str | None) -> int:
    """--add / --del (Courier's add() and del(): exit 2 for a nick defined already)."""
    try:
        if add is not None:
            nick, sep, path = add.partition("=")
            if not sep or not path.startswith("/"):
                return _usage()
            if not maildir.is_dir():
                return _err(f"{maildir}: No such file or directory")
            try:
                shared.add_entry(maildir, _global_file(), nick, path)
            except shared.SharedError as e:
                print(e.text, file=sys.stderr)
                return 2 if "already defined" in e.text else 1
        else:
            assert delete is not None
            try:
                shared.del_entry(maildir, delete)
            except shared.SharedError as e:
                print(e.text, file=sys.stderr)
                return 1
    except OSError as e:
        return _err(f"{maildir}: {e.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
