"""maildirmake: create Maildirs and Maildir++ folders, set a Maildir++ quota.

    maildirmake [-q quota] [-f folder | -F folder] maildir

Courier's options (maildirmake(1)):

- `maildirmake DIR` makes DIR with tmp/ new/ cur/ (0700); DIR must not exist;
- `-f Name` (or `-F Name`: the same, the name in the locale's character set,
  which is how Python already decodes argv) makes the folder `.Name` in an
  existing Maildir, with its `maildirfolder` file; `Sent.2024` is a sub-folder;
- `-q 100000S,50C` installs a quota: the Maildir is made if it does not exist,
  otherwise its `maildirsize` is rewritten with the new quota and the current
  usage.

Not supported, refused with a message and exit 1 rather than half done:
`-S`/`-s` (filesystem-permission shared folders), `--add`/`--del` (links to
sharable Maildirs: our IMAP server does not read them, so adding one would do
nothing) and `--checkutf8`/`--convutf8`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from libcourier.durable import fsync_dir
from libcourier.maildir import quota
from libcourier.maildir.folders import FolderError, create_folder

UNSUPPORTED = {
    "-S": "sharable maildirs (-S) are not supported",
    "-s": "shared folders (-s) are not supported",
    "--add": "--add (sharable maildirs) is not supported",
    "--del": "--del (sharable maildirs) is not supported",
    "--checkutf8": "--checkutf8 is not supported (folder names are UTF-8 already)",
    "--convutf8": "--convutf8 is not supported (folder names are UTF-8 already)",
}
USAGE = "Usage: maildirmake [-q quota] [-f folder] maildir"


def _err(text: str) -> int:
    print(f"maildirmake: {text}", file=sys.stderr)
    return 1


def make_maildir(path: Path) -> None:
    """DIR/{tmp,new,cur}, 0700, durable; raises FileExistsError when DIR exists."""
    os.mkdir(path, 0o700)
    for sub in ("tmp", "new", "cur"):
        os.mkdir(path / sub, 0o700)
    fsync_dir(path)
    fsync_dir(path.parent if str(path.parent) else Path("."))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    folder: str | None = None
    spec_text: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        opt = a.split("=", 1)[0]
        if opt in UNSUPPORTED:
            return _err(UNSUPPORTED[opt])
        if a in ("-f", "-F", "-q"):
            if i + 1 >= len(args):
                return _err(USAGE)
            if a == "-q":
                spec_text = args[i + 1]
            else:
                folder = args[i + 1]
            i += 2
            continue
        if a.startswith("-") and a != "-":
            return _err(f"unknown option {a}\n{USAGE}")
        break
    rest = args[i:]
    if len(rest) != 1 or not rest[0]:
        return _err(USAGE)
    maildir = Path(rest[0])
    spec = None
    if spec_text is not None:
        spec = quota.parse_spec(spec_text)
        if spec is None or not (spec.bytes or spec.count):
            return _err(f"bad quota {spec_text!r}: expected e.g. 100000S,50C")
    try:
        if folder is not None:
            if not (maildir / "cur").is_dir():
                return _err(f"{maildir}: not a maildir")
            try:
                create_folder(maildir, "INBOX." + folder)
            except FolderError as e:
                return _err(f"{folder}: {e.text}")
        elif spec is None or not maildir.exists():
            try:
                make_maildir(maildir)
            except FileExistsError:
                return _err(f"{maildir}: File exists")
        if spec is not None:
            quota.set_quota(maildir, spec)
    except OSError as e:
        return _err(f"{maildir}: {e.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
