"""A tiny authpipe program for the tests (README_authlib "The authpipe protocol"):
requests on stdin, replies on stdout, one after another. Users: bob/bobpw (LOGIN
and CRAM-MD5 checked by the program itself), `temp` makes it exit (Courier's
tempfail), `slow` makes it hang. It counts its own starts in $AUTHPIPE_STARTS."""

from __future__ import annotations

import base64
import hmac
import os
import sys
import time

from libcourier.authproto import (
    AuthRequest,
    EnumerateRequest,
    PasswdRequest,
    PreRequest,
    RequestParser,
    format_auth_reply,
)
from libcourier.proto import NEED_DATA

BOB = {"UID": 1000, "GID": 1000, "HOME": "/home/bob", "ADDRESS": "bob@pipe.test",
       "NAME": "Bob Pipe", "MAILDIR": "/home/bob/Maildir"}


def answer(req) -> bytes | None:
    match req:
        case PreRequest(user=user) | AuthRequest(authdata=user):
            if isinstance(req, AuthRequest):
                parts = req.fields()
                if len(parts) != 2:
                    return b"FAIL\n"
                if req.authtype == "cram-md5":
                    # Checked here, with the program's own secret, as a Courier authProg may.
                    ch = base64.b64decode(parts[0])
                    user, _, digest = base64.b64decode(parts[1]).decode().rpartition(" ")
                    want = hmac.new(b"bobpw", ch, "md5").hexdigest()
                    if user != "bob" or not hmac.compare_digest(digest, want):
                        return b"FAIL\n"
                elif req.authtype != "login":
                    return b"FAIL\n"
                else:
                    user = parts[0].decode()
                    if user == "bob" and parts[1] != b"bobpw":
                        return b"FAIL\n"
            if user == "temp":
                return None
            if user == "slow":
                time.sleep(3600)
            return format_auth_reply(BOB) if user == "bob" else b"FAIL\n"
        case PasswdRequest(user=user, oldpw=old):
            return b"OK\n" if user == "bob" and old == "bobpw" else b"FAIL\n"
        case EnumerateRequest():
            return b"# authpipe\n\nbob@pipe.test\t1000\t1000\t/home/bob\t\t\n.\n"
    return b"FAIL\n"


def main() -> int:
    starts = os.environ.get("AUTHPIPE_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\n")
    while True:
        parser = RequestParser()
        while (req := parser.next_request()) is NEED_DATA:
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            parser.feed(chunk)
        out = answer(req)
        if out is None:
            return 1   # tempfail: exit without a reply
        os.write(1, out)


if __name__ == "__main__":
    sys.exit(main())
