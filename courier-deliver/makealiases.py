"""makealiases: compile ETC/aliases (a file or a directory) into ETC/aliases.dat.

    makealiases [-C etcdir] [-chk] [-dump]

-chk only checks the source (exit 1 with file:line on the first problem);
-dump prints the compiled table. courierd and esmtpd notice the new file by
itself (they re-read aliases.dat when it changes): no restart is needed.
"""

from __future__ import annotations

import argparse
import sys

from libcourier.aliases import AliasError, compile_aliases, format_compiled, read_sources
from libcourier.config import config_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="makealiases", description="compile the aliases")
    ap.add_argument("-C", dest="etc", help="config directory")
    ap.add_argument("-chk", "--check", action="store_true", help="only check the source")
    ap.add_argument("-dump", "--dump", action="store_true", help="print the compiled table")
    args = ap.parse_args(argv)
    etc = config_dir(args.etc)
    try:
        if args.check or args.dump:
            table = read_sources(etc / "aliases")
            if args.dump:
                sys.stdout.write(format_compiled(table).decode("utf-8"))
            return 0
        path, n = compile_aliases(etc)
    except AliasError as e:
        print(f"makealiases: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"makealiases: cannot write {etc / 'aliases.dat'}: {e}", file=sys.stderr)
        return 1
    print(f"makealiases: {n} aliases in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
