"""Authentication modules. Only authuserdb for now (courier-authlib's authuserdb.c,
preauthuserdbcommon.c): the compiled userdb.dat + userdbshadow.dat in the config dir.

The module notices a new compile by the files' (inode, mtime, size) on each request,
so `makeuserdb` takes effect without a SIGHUP, as Courier's gdbm-backed module does.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from libcourier.config import ConfigError
from libcourier.userdb import (
    compile_userdb,
    is_password_field,
    load_compiled,
    parse_userdb,
    set_user,
)

log = logging.getLogger("courier.authd")


class BackendTempFail(Exception):
    """The module cannot answer now (unreadable database): the client sees a temporary failure."""


@dataclass(frozen=True, slots=True)
class Account:
    address: str                      # the login name, as the module stores it
    uid: int
    gid: int
    home: str
    maildir: str | None = None
    quota: str | None = None
    fullname: str | None = None
    options: str = ""
    passwords: Mapping[str, str] = field(default_factory=dict)  # the *pw fields

    def __repr__(self) -> str:  # keep hashes out of tracebacks and logs
        return f"Account({self.address!r}, uid={self.uid}, gid={self.gid}, home={self.home!r})"


class Module(Protocol):
    name: str

    def lookup(self, user: str) -> Account | None: ...

    def enumerate(self) -> list[Account]: ...

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool: ...


def _account(name: str, f: Mapping[str, str]) -> Account | None:
    try:
        uid, gid = int(f["uid"]), int(f["gid"])
        home = f["home"]
    except (KeyError, ValueError):
        log.error("userdb: entry %r lacks a numeric uid/gid or a home: ignored", name)
        return None
    if not home:
        log.error("userdb: entry %r has an empty home: ignored", name)
        return None
    gecos = f.get("gecos")
    return Account(
        address=name, uid=uid, gid=gid, home=home,
        maildir=f.get("mail") or None, quota=f.get("quota") or None,
        # Courier's NAME is the GECOS up to the first comma.
        fullname=gecos.split(",", 1)[0] if gecos else None,
        options=f.get("options", ""),
        passwords={k: v for k, v in f.items() if is_password_field(k)},
    )


def _stamp(p: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class UserdbModule:
    name = "authuserdb"

    def __init__(self, etc: Path):
        self.etc = Path(etc)
        self.dat = self.etc / "userdb.dat"
        self.shadow = self.etc / "userdbshadow.dat"
        self.source = self.etc / "userdb"
        self._stamps: tuple[object, object] | None = None
        self._users: dict[str, dict[str, str]] = {}
        self.reload(force=True)

    def reload(self, *, force: bool = False) -> None:
        stamps = (_stamp(self.dat), _stamp(self.shadow))
        if not force and stamps == self._stamps:
            return
        if stamps[0] is None:
            if force or self._stamps is None or self._stamps[0] is not None:
                log.warning("userdb: %s does not exist (run makeuserdb): no users", self.dat)
            self._users, self._stamps = {}, stamps
            return
        try:
            # No shadow file: accounts without passwords (PRE still works).
            users = load_compiled(self.dat, self.shadow if stamps[1] is not None else self.dat)
        except ConfigError as e:
            if self._stamps is None:
                raise BackendTempFail(str(e)) from None
            # Keep serving the last good copy rather than failing every login.
            log.error("userdb: cannot reload, keeping the previous copy: %s", e)
            return
        self._users, self._stamps = users, stamps

    def lookup(self, user: str) -> Account | None:
        self.reload()
        f = self._users.get(user.lower())
        return _account(user.lower(), f) if f is not None else None

    def enumerate(self) -> list[Account]:
        self.reload()
        out = []
        for name in sorted(self._users):
            a = _account(name, self._users[name])
            if a is not None:
                out.append(a)
        return out

    def sasl_mechanisms(self) -> frozenset[str]:
        """PLAIN/LOGIN, plus CRAM-<h> when some account has an hmac-<h>pw field (userdbpw
        -hmac-<h>), a {CRAM-<H>} or {PLAIN} password; SCRAM-* likewise."""
        self.reload()
        cached = getattr(self, "_mechs", None)
        if cached is not None and cached[0] == self._stamps:
            return cached[1]   # the parent asks every few seconds: rescan only a new compile
        out = {"PLAIN", "LOGIN"}
        every = ("CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", "SCRAM-SHA-1", "SCRAM-SHA-256")
        for f in self._users.values():
            for k, v in f.items():
                if not k.endswith("pw"):
                    continue
                up = v[:16].upper()
                for h in ("md5", "sha1", "sha256"):
                    if k.endswith(f"hmac-{h}pw") or up.startswith(f"{{CRAM-{h.upper()}}}"):
                        out.add(f"CRAM-{h.upper()}")
                for m in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
                    if k.endswith(f"{m.lower()}pw") or up.startswith(f"{{{m}}}"):
                        out.add(m)
                if up.startswith(("{PLAIN}", "{CLEAR}", "{CLEARTEXT}")):
                    out.update(every)
            if len(out) == 2 + len(every):
                break
        self._mechs = (self._stamps, frozenset(out))
        return self._mechs[1]

    def change_password(self, user: str, pwfield: str, new_hash: str) -> bool:
        """The `userdb name set <field>` + makeuserdb that Courier's authuserdb passwd runs."""
        key = user.lower()
        f = self._users.get(key)
        if f is None:
            return False
        src = self.source / f["_"] if self.source.is_dir() and f.get("_") else self.source
        try:
            entries = [e for e in parse_userdb(src) if e.name == key]
            if not entries:
                log.error("userdb: %s not found in %s; password unchanged", key, src)
                return False
            fields = dict(entries[0].fields)
            fields[pwfield] = new_hash
            set_user(src, key, fields)
            compile_userdb(self.source, self.dat, self.shadow)
        except (ConfigError, OSError, ValueError) as e:
            log.error("userdb: cannot change the password of %s: %s", key, e)
            return False
        self.reload()
        return True


def make_modules(names: tuple[str, ...], etc: Path) -> list[Module]:
    mods: list[Module] = []
    for n in names:
        if n == "authuserdb":
            mods.append(UserdbModule(etc))
        elif n in ("authpgsql", "authmysql", "authldap",
                   "authpwd", "authshadow", "authpam", "authpipe"):
            # Imported only when listed: each needs its driver (psycopg, PyMySQL, ldap3).
            try:
                mod = importlib.import_module(f"courier_authd.{n}")
            except ImportError as e:
                raise ConfigError(f"{n}: its driver is not installed ({e})") from None
            mods.append(mod.load(etc))
        else:  # config.py refuses these at load; this guards a programming error
            raise ConfigError(f"unknown module {n!r}")
    return mods
