"""makeuserdb [-C ETC] [-f file]: compile the userdb source (makeuserdb(8)).

Source ETC/userdb (a file or a directory); output userdb.dat + userdbshadow.dat
beside it. With -f FILE: FILE.dat and FILEshadow.dat, as Courier's script names them.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from libcourier.config import ConfigError, config_dir
from libcourier.userdb import compile_userdb


def outputs(source: Path) -> tuple[Path, Path]:
    return Path(f"{source}.dat"), Path(f"{source}shadow.dat")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="makeuserdb", description="compile the userdb source")
    ap.add_argument("-C", dest="etc", help="configuration directory")
    ap.add_argument("-f", dest="file", help="userdb source file or directory")
    args = ap.parse_args(argv)
    source = Path(args.file) if args.file else config_dir(args.etc) / "userdb"
    try:
        mode = os.stat(source).st_mode
    except OSError as e:
        print(f"makeuserdb: {source}: {e.strerror}", file=sys.stderr)
        return 1
    if stat.S_IMODE(mode) & 0o077:
        # Courier insists the source (it holds password hashes) be private.
        print(f"makeuserdb: warning: {source} is readable by others (chmod 0600/0700 it)",
              file=sys.stderr)
    dat, shadow = outputs(source)
    try:
        n = compile_userdb(source, dat, shadow)
    except ConfigError as e:
        print(f"makeuserdb: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"makeuserdb: {e}", file=sys.stderr)
        return 1
    print(f"makeuserdb: {n} user(s) written to {dat}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
