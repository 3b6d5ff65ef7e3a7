"""userdb: edit the userdb source (userdb(8)).

    userdb [-C ETC] [-f file] [path/]name set field=value... | unset field... | del
    userdb [-C ETC] [-f file] -show [path/][name]

The source is ETC/userdb (or -f). When it is a directory, `path/name` names the
file within it (`userdb users/john set ...`). A `set field` without `=value`
reads the value from stdin (`userdbpw | userdb john set systempw`). As in
Courier, changes take effect after `makeuserdb`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from libcourier.config import ConfigError, config_dir
from libcourier.userdb import delete_user, parse_userdb, set_user

USAGE = ("usage: userdb [-C ETC] [-f file] [path/]name set field=value... | unset field... | del\n"
         "       userdb [-C ETC] [-f file] -show [path/][name]")
MAX_STDIN = 64 * 1024


def _split_target(source: Path, target: str) -> tuple[Path, str]:
    if source.is_dir():
        path, _, name = target.rpartition("/")
        if not path:
            raise ValueError(f"{source} is a directory: say path/{name}")
        if ".." in Path(path).parts or path.startswith("/"):
            raise ValueError(f"bad path {path!r}")
        return source / path, name
    return source, target


def _current(file: Path, name: str) -> dict[str, str] | None:
    if not file.exists():
        return None
    for e in parse_userdb(file):
        if e.name == name.lower():
            return dict(e.fields)
    return None


def _show(source: Path, target: str | None) -> int:
    if target is None:
        for e in sorted(parse_userdb(source), key=lambda e: e.name):
            print(e.name)
        return 0
    file, name = _split_target(source, target) if source.is_dir() and "/" in target \
        else (source, target)
    for e in parse_userdb(file):
        if e.name == name.lower():
            for k, v in e.fields.items():
                print(f"{k}={v}")
            return 0
    print(f"userdb: {name} not found", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    etc: str | None = None
    file: str | None = None
    while args and args[0] in ("-C", "-f"):
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 1
        if args[0] == "-C":
            etc = args[1]
        else:
            file = args[1]
        args = args[2:]
    source = Path(file) if file else config_dir(etc) / "userdb"
    try:
        if args and args[0] == "-show":
            if len(args) > 2:
                print(USAGE, file=sys.stderr)
                return 1
            return _show(source, args[1] if len(args) == 2 else None)
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 1
        target, verb, rest = args[0], args[1], args[2:]
        fpath, name = _split_target(source, target)
        if verb == "del":
            if rest or not delete_user(fpath, name):
                print(f"userdb: {name} not found" if not rest else USAGE, file=sys.stderr)
                return 1
            return 0
        fields = _current(fpath, name) or {}
        if verb == "set" and rest:
            for item in rest:
                k, eq, v = item.partition("=")
                if not eq:
                    v = sys.stdin.readline(MAX_STDIN).rstrip("\r\n")
                fields[k] = v
        elif verb == "unset" and rest:
            for k in rest:
                fields.pop(k, None)
        else:
            print(USAGE, file=sys.stderr)
            return 1
        fpath.parent.mkdir(parents=True, exist_ok=True)
        set_user(fpath, name, fields)
    except ConfigError as e:
        print(f"userdb: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"userdb: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
