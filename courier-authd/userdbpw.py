"""userdbpw [-md5|-sha256|-sha512|-hmac-md5|-hmac-sha1|-hmac-sha256|-scram-sha-1|-scram-sha-256]:
read a password, print what userdb stores for it (userdbpw(8)).

Typical use: `userdbpw | userdb bob@example.com set systempw`, and for CRAM as
Courier documents it: `userdbpw -hmac-md5 | userdb bob@example.com set hmac-md5pw`
(the bare hex HMAC contexts Courier's userdbpw prints, byte for byte). Ours, as
courier-authlib has no SCRAM: `userdbpw -scram-sha-256 | userdb bob set
scram-sha-256pw` (Dovecot's {SCRAM-SHA-256} form). On a terminal the password is
asked twice; from a pipe one line is read. The default is SHA-512 crypt with
glibc's default 5000 rounds (Courier's default is the C library's crypt).
"""

from __future__ import annotations

import getpass
import sys

from courier_authd.passwords import hash_password

SCHEMES = {"-md5": "md5", "-sha256": "sha256", "-sha512": "sha512",
           "-hmac-md5": "hmac-md5", "-hmac-sha1": "hmac-sha1", "-hmac-sha256": "hmac-sha256",
           "-scram-sha-1": "scram-sha-1", "-scram-sha-256": "scram-sha-256"}
USAGE = "usage: userdbpw [" + "|".join(SCHEMES) + "]"
MAX_INPUT = 1024


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    scheme = "sha512"
    for a in argv:
        if a in SCHEMES:
            scheme = SCHEMES[a]
        else:
            print(USAGE, file=sys.stderr)
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
