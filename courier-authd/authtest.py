"""authtest [-C ETC] [-s service] user [password [newpassword]]: ask authdaemond, print
what it says in Courier's authtest layout; exit 1 on failure."""

from __future__ import annotations

import argparse
import sys

from libcourier.authclient import AuthTempFail, auth_passwd, auth_raw
from libcourier.authproto import AuthRequest, PreRequest, login_authdata
from libcourier.config import ConfigError, config_dir
from libcourier.layout import load_layout


def show(fields: dict[str, str]) -> None:
    who = fields.get("USERNAME") or fields.get("ADDRESS", "")
    if "UID" in fields:
        ident = f"{who}  (uid {fields['UID']}, gid {fields.get('GID', '?')})"
    else:
        ident = f"{who}  (system username {fields.get('USERNAME', '')}, gid {fields.get('GID', '?')})"
    print("Authentication succeeded.\n")
    print(f"     Authenticated: {ident}")
    print(f"    Home Directory: {fields.get('HOME', '')}")
    print(f"           Maildir: {fields.get('MAILDIR') or '(none)'}")
    print(f"             Quota: {fields.get('QUOTA') or '(none)'}")
    print(f"Encrypted Password: {fields.get('PASSWD') or '(none)'}")
    # Courier's authtest prints the daemon's PASSWD2, never the password typed.
    print(f"Cleartext Password: {fields.get('PASSWD2') or '(none)'}")
    print(f"           Options: {fields.get('OPTIONS') or '(none)'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="authtest", description="test authentication via authdaemond")
    ap.add_argument("-C", dest="etc", help="configuration directory")
    ap.add_argument("-s", dest="service", default="login", help="service name (imap, pop3, ...)")
    ap.add_argument("user")
    ap.add_argument("password", nargs="?")
    ap.add_argument("newpassword", nargs="?")
    args = ap.parse_args(argv)
    try:
        sock = load_layout(config_dir(args.etc)).authsocket
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        if args.newpassword is not None:
            if auth_passwd(sock, args.service, args.user, args.password, args.newpassword):
                print("Password change succeeded.", file=sys.stderr)   # as Courier's, on stderr
                return 0
            print("Password change failed.", file=sys.stderr)
            return 1
        if args.password is None:
            req: PreRequest | AuthRequest = PreRequest(".", args.service, args.user)
        else:
            try:
                data = login_authdata(args.user, args.password)
            except ValueError:
                print("Authentication FAILED: Operation not permitted", file=sys.stderr)
                return 1
            req = AuthRequest(args.service, "login", data)
        try:
            reply = auth_raw(sock, req)
        except ValueError:
            print("Authentication FAILED: Operation not permitted", file=sys.stderr)
            return 1
    except AuthTempFail as e:
        print(f"Authentication FAILED: Input/output error ({e})", file=sys.stderr)
        return 1
    if reply is None:
        print("Authentication FAILED: Operation not permitted", file=sys.stderr)
        return 1
    show(dict(reply.fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
