"""`courierimapacl`: Courier's per-folder access control lists (FORMATS.md §3.8).

Format (Courier maildir/maildiraclt.c), one entry a line::

    <identifier> <rights>\\n

Identifiers as Courier stores them: ``owner``, ``anyone`` (``anonymous`` is the
same), ``authuser``, ``administrators`` / ``group=administrators``,
``user=<login>``, ``group=<name>`` (the account's OPTIONS ``group=``), each
possibly prefixed with ``-`` for rights taken away. Rights are Courier's
letters kept sorted, without repeats: ``a c e i l p r s t w x`` (``c`` creates
subfolders, Courier's RFC 2086 meaning; ``x`` deletes the folder, ``t`` sets
\\Deleted, ``e`` expunges). IMAP's legacy ``d`` stands for ``e t x``.

Where the file lives: ``<folder>/courierimapacl``; a folder with no file of its
own takes ``courierimaphieracl/<name>`` (moved into the folder) or else its
parent's list, which is then written for it (Courier does the same, so a new
folder starts with its parent's rights). INBOX without a file has the default:
``owner`` and ``administrators`` with all rights. ``administrators`` always keeps
every right and ``-administrators`` is dropped, whatever the file says.

Rights are the union of what every matching identifier grants minus the union of
what every matching ``-identifier`` takes (RFC 4314 ACL2=UNION); the owner always
keeps ``a``. A list may only be written if ``owner`` keeps ``l`` and ``a`` and
``administrators`` keep everything (maildir_acl_write's checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from libcourier.durable import fsync_dir, write_atomic

ACLFILE = "courierimapacl"
ACLHIERDIR = "courierimaphieracl"
ALL = "aceilrstwx"          # Courier's ACL_ALL
DELETE_SPECIAL = "d"        # legacy RFC 2086 "d" = e + t + x
MAX_FILE = 64 * 1024        # bytes of one ACL file read
MAX_ENTRIES = 500           # entries kept from one file or set by clients
MAX_IDENTIFIER = 255        # characters of one identifier
MAX_DEPTH = 100             # parent levels followed for an inherited list

Acl = list[tuple[str, str]]   # (identifier, rights) in file order


class AclError(Exception):
    """A list that may not be written (owner or administrators would lose rights)."""


def rights_set(rights: Iterable[str]) -> str:
    """Courier's maildir_aclt: the letters sorted, each once."""
    return "".join(sorted(set(rights)))


def valid_identifier(ident: str) -> bool:
    # maildir_aclt_list_add: no byte at or below space, not empty.
    return 0 < len(ident) <= MAX_IDENTIFIER and all(ord(c) > 0x20 and c != "\x7f" for c in ident)


def parse(data: bytes) -> Acl:
    """The entries of an ACL file, leniently as Courier reads them: a line is the
    identifier up to the first space and the rights after the spaces; a bad
    identifier is skipped; a repeated one replaces the earlier rights in place.
    The administrators' rule is applied (module docstring)."""
    acl: Acl = []
    for raw in data[:MAX_FILE].split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        ident, _, rights = line.partition(" ")
        if not valid_identifier(ident):
            continue
        _set(acl, ident, rights_set(rights.lstrip(" ")))
        if len(acl) >= MAX_ENTRIES:
            break
    return with_default_admin(acl)


def format_acl(acl: Acl) -> bytes:
    return "".join(f"{i} {r}\n" for i, r in acl).encode("utf-8", "surrogateescape")


def _set(acl: Acl, ident: str, rights: str) -> None:
    for n, (i, _) in enumerate(acl):
        if i == ident:
            acl[n] = (ident, rights)
            return
    acl.append((ident, rights))


def lookup(acl: Acl, ident: str) -> str | None:
    return next((r for i, r in acl if i == ident), None)


def with_default_admin(acl: Acl) -> Acl:
    """maildir_aclt_add_default_admin: administrators (or group=administrators when
    listed) keep every right; -administrators entries are dropped."""
    out = list(acl)
    admin = "group=administrators" if lookup(out, "group=administrators") is not None \
        else "administrators"
    _set(out, admin, rights_set(ALL + (lookup(out, admin) or "")))
    return [(i, r) for i, r in out if i not in ("-administrators", "-group=administrators")]


def default_inbox() -> Acl:
    return [("owner", ALL), ("administrators", ALL)]


# -- computing rights (maildir_acl_compute) ---------------------------------------------

def compute(acl: Acl, matches: Callable[[str], bool], owner_admin: bool = True) -> str:
    """ACL2=UNION: rights of every identifier `matches` accepts, less every matching
    negative entry; anyone/anonymous match everybody; the owner keeps "a"."""
    def applies(ident: str) -> bool:
        if ident in ("anyone", "anonymous"):
            return True
        if ident in ("administrators", "group=administrators"):
            return matches("administrators") or matches("group=administrators")
        return matches(ident)
    granted = set().union(*(r for i, r in acl if not i.startswith("-") and applies(i)))
    denied = set().union(*(r for i, r in acl if i.startswith("-") and applies(i[1:])))
    rights = granted - denied
    if owner_admin and matches("owner"):
        rights.add("a")
    return rights_set(rights)


def identities(me: str, folder_owner: str, groups: Iterable[str] = ()) -> frozenset[str]:
    """The identifiers that name `me` (maildir_acl_computerights): user=<me>, owner
    when the folder is mine, group=<g> for each OPTIONS group."""
    ids = {"user=" + me}
    if "user=" + me == folder_owner:
        ids.add("owner")
    ids.update("group=" + g for g in groups)
    return frozenset(ids)


def my_rights(acl: Acl, me: str, folder_owner: str, groups: Iterable[str] = ()) -> str:
    ids = identities(me, folder_owner, groups)
    return compute(acl, ids.__contains__)


def check_writable(acl: Acl, folder_owner: str | None) -> None:
    """maildir_acl_write's checks; AclError names who would lose what."""
    for who in (("owner",), ("owner", folder_owner) if folder_owner else None):
        if who is None:
            continue
        r = compute(acl, lambda i, w=who: i in w, owner_admin=False)
        if "l" not in r or "a" not in r:
            raise AclError(f"{who[-1]} must keep the l and a rights")
    r = compute(acl, lambda i: i == "administrators")
    # Courier 5.0.13 also refuses an administrators entry short of any right.
    if set(ALL) - set(r) or any(set(ALL) - set(rr) for i, rr in acl
                                if i in ("administrators", "group=administrators")):
        raise AclError("administrators must keep every right")


# -- IMAP's view: identifiers and rights on the wire (Courier imapd.C) -------------------

def imap_to_stored(ident: str) -> str | None:
    """acl2_identifier: anyone/anonymous/authuser/owner as they are, administrators
    as group=administrators, any other name as user=<name>; a name with "=" is
    refused (None), as Courier does."""
    neg = "-" if ident.startswith("-") else ""
    bare = ident[len(neg):]
    if bare in ("anyone", "anonymous", "authuser", "owner"):
        return ident
    if "=" in bare or not valid_identifier(bare):
        return None
    return neg + ("group=" if bare == "administrators" else "user=") + bare


def stored_to_imap(ident: str) -> str | None:
    """How GETACL shows an entry: user= dropped; other key=value entries hidden."""
    neg = "-" if ident.startswith("-") else ""
    bare = ident[len(neg):]
    if "=" in bare:
        if not bare.startswith("user="):
            return None
        bare = bare[5:]
    return neg + bare


def rights_in(rights: str) -> str:
    """fix_acl_delete: the legacy "d" becomes e, t and x."""
    if DELETE_SPECIAL in rights:
        rights = rights.replace(DELETE_SPECIAL, "") + "xte"
    return rights_set(rights)


def rights_out(rights: str) -> str:
    """writeacl1 (GETACL, MYRIGHTS): with x and t, "e" is shown as "d"; e, t and x
    themselves are not shown (RFC 2086 clients know only "d")."""
    if "x" in rights and "t" in rights:
        rights = rights.replace("e", DELETE_SPECIAL, 1)
    return "".join(c for c in rights if c not in "etx")


def rights_out_all(rights: str) -> str:
    """writeacl ([MYRIGHTS] at SELECT): "d" only when e, t and x are all there."""
    if not {"e", "t", "x"} <= set(rights):
        return rights
    return rights.replace("e", DELETE_SPECIAL, 1).replace("t", "").replace("x", "")


def modify(acl: Acl, ident: str, mod: str) -> Acl | None:
    """SETACL's mod-rights on a copy (RFC 4314 §3.1): "+r" adds, "-r" takes away
    (the entry goes when empty), "" deletes, anything else replaces. None: nothing
    to do ("+" alone)."""
    out = list(acl)
    if mod.startswith("+"):
        if len(mod) == 1:
            return None
        _set(out, ident, rights_set(rights_in(mod[1:]) + (lookup(out, ident) or "")))
    elif mod.startswith("-"):
        old = lookup(out, ident)
        if old is not None:
            left = rights_set(set(old) - set(rights_in(mod[1:])))
            out = [(i, r) for i, r in out if i != ident] if not left else out
            if left:
                _set(out, ident, left)
    elif not mod:
        out = [(i, r) for i, r in out if i != ident]
    else:
        _set(out, ident, rights_in(mod))
    if len(out) > MAX_ENTRIES:
        raise AclError("too many ACL entries")
    return out


# -- the files ----------------------------------------------------------------------------

def _dir_name(root: Path, folder: Path) -> str:
    """"." for INBOX, ".Sub.Folder" for a folder of `root`."""
    return "." if Path(folder) == Path(root) else Path(folder).name


def _read_file(path: Path) -> Acl | None:
    try:
        with open(path, "rb") as f:
            return parse(f.read(MAX_FILE))
    except FileNotFoundError:
        return None


def read(root: Path, folder: Path) -> Acl:
    """The list of `folder` (a directory of the Maildir `root`, or INBOX = root),
    as maildir_acl_read finds it (module docstring)."""
    root = Path(root)
    name = _dir_name(root, folder)
    chain: list[str] = []
    acl: Acl | None = None
    for _ in range(MAX_DEPTH):
        acl = _read_one(root, name)
        if acl is not None:
            break
        chain.append(name)
        name = name.rsplit(".", 1)[0] or "."
    if acl is None:
        acl = default_inbox()
    for missing in reversed(chain):
        # Courier saves the inherited list for the folder that had none.
        try:
            write(root, root / missing, acl, None)
        except (OSError, AclError):
            pass
    return acl


def _read_one(root: Path, name: str) -> Acl | None:
    own = root / ACLFILE if name == "." else root / name / ACLFILE
    acl = _read_file(own)
    if acl is not None or name == ".":
        return acl if acl is not None else default_inbox()
    hier = root / ACLHIERDIR / name[1:]
    if (root / name).is_dir():
        try:
            os.rename(hier, own)
        except OSError:
            pass
        acl = _read_file(own)
        if acl is not None:
            return acl
    return _read_file(hier)


def write(root: Path, folder: Path, acl: Acl, folder_owner: str | None) -> None:
    """Replace the list of `folder` durably after the checks (AclError); a folder
    that is only a parent of others (no directory) keeps its list in
    courierimaphieracl/ as Courier does."""
    check_writable(acl, folder_owner)
    root = Path(root)
    folder = Path(folder)
    data = format_acl(acl)
    if folder.is_dir():
        write_atomic(folder / ACLFILE, data, mode=0o644)
        fsync_dir(folder)
        return
    hier = root / ACLHIERDIR
    hier.mkdir(mode=0o755, exist_ok=True)
    write_atomic(hier / _dir_name(root, folder)[1:], data, mode=0o644)
    fsync_dir(hier)
