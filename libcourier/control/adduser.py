"""`courier adduser -C ETC ADDRESS PASSWORD`: a virtual user (INTERNALS.md "Users").

Login = the full address; uid/gid = the owner of DIR/mail (so every virtual
mailbox belongs to one account, never root); home DIR/mail/<domain>/<local>;
mail = home/Maildir. The domain becomes a hosted domain unless it is local.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TextIO

from libcourier.config.control import read_control_file
from libcourier.control.files import make_dir, write_atomic
from libcourier.control.services import hup_if_running
from libcourier.layout import load_layout

MAX_ADDRESS = 254  # RFC 5321 §4.5.3.1.3 path limit, minus the brackets
MAX_PASSWORD = 1024
# Conservative on purpose: the local part becomes a directory name, so no
# '/', no leading dot, nothing a shell or a path would read specially.
_LOCAL = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,63}")
_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                     r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
SHA512_ROUNDS = 5000  # glibc's default; what `userdbpw` and chpasswd -c SHA512 make


class AddUserError(Exception):
    pass


def split_address(address: str) -> tuple[str, str]:
    if len(address) > MAX_ADDRESS or address.count("@") != 1:
        raise AddUserError(f"{address!r} is not an address of the form local@domain")
    local, domain = address.split("@")
    domain = domain.lower().rstrip(".")
    if not _LOCAL.fullmatch(local) or ".." in local or local.endswith("."):
        raise AddUserError(f"local part {local!r}: use letters, digits and . _ + = -")
    if not _DOMAIN.fullmatch(domain):
        raise AddUserError(f"domain {domain!r} is not a domain name")
    return local, domain


def hash_password(password: str) -> str:
    from passlib.hash import sha512_crypt
    return sha512_crypt.using(rounds=SHA512_ROUNDS).hash(password)


def make_maildir(path: Path, owner: tuple[int, int]) -> None:
    """A Maildir (tmp, new, cur), 0700, owned by the user it is delivered to."""
    make_dir(path, 0o700, owner)
    for sub in ("tmp", "new", "cur"):
        make_dir(path / sub, 0o700, owner)


def adduser(etc: Path, address: str, password: str, *, out: TextIO = sys.stdout) -> int:
    if not password or len(password) > MAX_PASSWORD or any(c in password for c in "\r\n\0"):
        raise AddUserError("the password must be 1-1024 characters without line breaks")
    local, domain = split_address(address)
    name = f"{local}@{domain}"
    # userdb keys are lowercase (FORMATS.md §3.2); logins match case-insensitively.
    key = name.lower()
    etc = Path(etc).absolute()
    if not (etc / "courierd").is_file():
        raise AddUserError(f"{etc} is not a courier config directory (no courierd file)")
    mailroot = etc.parent / "mail"
    try:
        st = mailroot.stat()
    except FileNotFoundError:
        raise AddUserError(f"{mailroot} does not exist (make the instance with courier init)"
                           ) from None
    owner = (st.st_uid, st.st_gid)
    if st.st_uid == 0:
        raise AddUserError(f"{mailroot} is owned by root: a mailbox must never be served as root")

    from libcourier.userdb import compile_userdb, set_user

    home = mailroot / domain / local.lower()
    maildir = home / "Maildir"
    make_dir(mailroot / domain, 0o755, owner)
    make_dir(home, 0o700, owner)
    make_maildir(maildir, owner)
    fields = {"uid": str(owner[0]), "gid": str(owner[1]), "home": str(home),
              "mail": str(maildir), "systempw": hash_password(password)}
    set_user(etc / "userdb", key, fields)
    compile_userdb(etc / "userdb", etc / "userdb.dat", etc / "userdbshadow.dat")

    locals_ = {d.lower() for d in read_control_file(etc / "locals")}
    hosted = [d.lower() for d in read_control_file(etc / "hosteddomains")]
    if domain not in locals_ and domain not in hosted:
        path = etc / "hosteddomains"
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        write_atomic(path, old + domain + "\n", 0o644)
        print(f"courier adduser: {domain} added to hosteddomains", file=out)

    # Running daemons cache userdb and the control files: tell them.
    layout = load_layout(etc)
    told = hup_if_running(layout, ["authdaemond", "esmtpd", "esmtpd-msa", "esmtpd-ssl"])
    print(f"courier adduser: {key} (uid {owner[0]}, gid {owner[1]}), Maildir {maildir}"
          + (f"; reloaded {' '.join(told)}" if told else ""), file=out)
    if os.geteuid() != 0 and owner[0] != os.geteuid():
        print(f"courier adduser: warning: {mailroot} is not yours; the Maildir may be "
              "unreachable", file=out)
    return 0
