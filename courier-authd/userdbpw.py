"""userdbpw [-md5|-sha256|-sha512]: read a password, print its crypt hash (userdbpw(8)).

Typical use: `userdbpw | userdb bob@example.com set systempw`. On a terminal the
password is asked twice; from a pipe one line is read. The default is SHA-512
crypt with glibc's default 5000 rounds.
"""

from __future__ import annotations

import getpass
import sys

from courier_authd.passwords import hash_password

SCHEMES = {"-md5": "md5", "-sha256": "sha256", "-sha512": "sha512"}
MAX_INPUT = 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    scheme = "sha512"
    for a in argv:
        if a in SCHEMES:
            scheme = SCHEMES[a]
        elif a.startswith("-hmac"):
            print(f"userdbpw: {a}: HMAC secrets are not supported by courier-py", file=sys.stderr)
            return 1
        else:
            print("usage: userdbpw [-md5|-sha256|-sha512]", file=sys.stderr)
            return 1
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Reenter password: ") != pw:
            print("userdbpw: passwords don't match", file=sys.stderr)
            return 1
    else:
        line = sys.stdin.readline(MAX_INPUT + 2)
        if len(line) > MAX_INPUT + 1:
            print("userdbpw: password too long", file=sys.stderr)
            return 1
        pw = line.rstrip("\r\n")
    if not pw:
        print("userdbpw: empty password", file=sys.stderr)
        return 1
    print(hash_password(pw, scheme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
