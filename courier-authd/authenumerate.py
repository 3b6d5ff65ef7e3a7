"""authenumerate [-C ETC] [-s]: every account authd's modules can list, one per line as
Courier's authenumerate prints them: name TAB uid TAB gid TAB home TAB maildir (an empty
maildir field when there is none; options are not printed). -s is accepted as in
Courier (it sorts nothing there either). Exit 1 when authd cannot be asked."""

from __future__ import annotations

import argparse
import sys

from libcourier.authclient import AuthTempFail, auth_enumerate
from libcourier.config import ConfigError, config_dir
from libcourier.layout import load_layout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="authenumerate", description="list accounts via authdaemond")
    ap.add_argument("-C", dest="etc", help="configuration directory")
    ap.add_argument("-s", action="store_true", help="accepted for Courier compatibility")
    args = ap.parse_args(argv)
    try:
        sock = load_layout(config_dir(args.etc)).authsocket
        entries = auth_enumerate(sock)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except AuthTempFail as e:
        print(f"authenumerate: {e}", file=sys.stderr)
        return 1
    out = sys.stdout
    for name, uid, gid, home, maildir, _options in entries:
        out.write(f"{name}\t{uid}\t{gid}\t{home}\t{maildir}\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
