"""ACL commands (RFC 4314: SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS) on Courier's
`courierimapacl` files (libcourier.maildir.acl), answered as Courier-IMAP 5.0.13 does.

Courier's replies, kept here: rights on the wire in RFC 2086 letters ("d" for e+t+x,
"c" for creating subfolders); a user is named without Courier's "user=", and an
identifier with "=" is refused; GETACL shows only owner/anyone/administrators and
users. Every answer needs the folder to exist; GETACL, SETACL and DELETEACL need "a",
MYRIGHTS and LISTRIGHTS any of l r i c x e a.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from courier_imapd.core import AclCommand, tagged, untagged

from libcourier.maildir import acl as aclfile

log = logging.getLogger("courier.imapd")

# LISTRIGHTS (RFC 4314 §3.7): what may be granted, in Courier's words.
_GRANTABLE = "c d i p r s w"
_VISIBLE = frozenset("lricxea")     # maildir_acl_canlistrights


@dataclass(frozen=True, slots=True)
class Who:
    """The logged-in user as ACLs see them."""
    user: str
    groups: tuple[str, ...] = ()

    @property
    def owner(self) -> str:
        return "user=" + self.user      # every folder of our Maildir is the user's own


def qs(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rights_of(root: Path, folder: Path, who: Who) -> str:
    """The user's rights on `folder` (Courier's letters, RFC 4314 ACL2=UNION)."""
    return aclfile.my_rights(aclfile.read(root, folder), who.user, who.owner, who.groups)


def list_data(opts: tuple[str, ...], rights: str, acl: aclfile.Acl | None) -> bytes:
    """Courier's LIST (ACL MYRIGHTS POSTADDRESS) data after a mailbox name (imapd's
    list_callback): the ACL only with "a", as stored (identifiers as in the file);
    MYRIGHTS only when the rights can be listed; POSTADDRESS always NIL. Nothing at
    all when nothing is left to show."""
    parts = []
    if "ACL" in opts and "a" in rights and acl is not None:
        parts.append('("ACL" (' + "".join(f"({qs(ident)} {qs(aclfile.rights_out_all(r))})"
                                         for ident, r in acl) + "))")
    if "MYRIGHTS" in opts and _VISIBLE & set(rights):
        parts.append(f'("MYRIGHTS" {qs(aclfile.rights_out_all(rights))})')
    if "POSTADDRESS" in opts:
        parts.append("(POSTADDRESS NIL)")
    return (" (" + "".join(parts) + ")").encode() if parts else b""


def denied(cmd: str, where: str, right: str) -> str:
    """Courier's accessdenied() text."""
    return f'Access denied for {cmd} on {where} (ACL "{right}" required)'


def answer(cmd: AclCommand, root: Path, folder: Path | None, who: Who,
           name_out: Callable[[str], str], fixed: str | None = None) -> bytes:
    """The reply to one ACL command; `folder` is the mailbox's directory (None: not
    one of ours), `name_out` the mailbox name as the reply shows it. `fixed`: the
    folder's ACL is "anyone <fixed>" and cannot be set (Courier's legacy shared.*)."""
    tag = cmd.tag
    if folder is None or not (folder / "cur").is_dir():
        return tagged(tag, "NO", "Mailbox does not exist, or must be subscribed to.")
    name = name_out(cmd.mailbox)
    verb = cmd.verb
    if fixed is not None:
        if verb in ("SETACL", "DELETEACL"):
            return tagged(tag, "NO", "Cannot set ACLs for this mailbox")
        acl: aclfile.Acl = [("anyone", fixed)]
    else:
        try:
            acl = aclfile.read(root, folder)
        except OSError as e:
            log.error("reading the ACL of %s for %s: %s", folder, who.user, e)
            return tagged(tag, "NO", "Cannot retrieve ACLs for mailbox.")
    # A fixed ACL is not the user's own folder: no owner's "a l" on top (Courier).
    mine = fixed if fixed is not None else aclfile.my_rights(acl, who.user, who.owner, who.groups)
    if verb in ("SETACL", "DELETEACL"):
        assert cmd.identifier is not None
        ident = aclfile.imap_to_stored(cmd.identifier)
        if ident is None:
            return tagged(tag, "NO", "Invalid ACL identifier.")
        if "a" not in mine:
            return tagged(tag, "NO", denied(verb, cmd.mailbox, "a"))
        new = aclfile.modify(acl, ident, cmd.rights if verb == "SETACL" else "")
        if new is not None:
            try:
                aclfile.write(root, folder, new, who.owner)
            except aclfile.AclError as e:
                log.info("user=%s: %s %s %s refused: %s", who.user, verb, cmd.mailbox,
                         cmd.identifier, e)
                return tagged(tag, "NO", "Cannot modify ACLs on this mailbox.")
            except OSError as e:
                log.error("writing the ACL of %s for %s: %s", folder, who.user, e)
                return tagged(tag, "NO", "Cannot modify ACLs on this mailbox.")
        return tagged(tag, "OK", "ACLs updated.")
    if verb == "GETACL":
        if "a" not in mine:
            return tagged(tag, "NO", denied("GETACL", cmd.mailbox, "a"))
        parts = [f"ACL {name}"]
        for ident, rights in acl:
            shown = aclfile.stored_to_imap(ident)
            if shown is not None:
                parts.append(f"{qs(shown)} {qs(aclfile.rights_out(rights))}")
        return untagged(" ".join(parts)) + tagged(tag, "OK", "GETACL completed.")
    if not _VISIBLE & set(mine):
        return tagged(tag, "NO", denied("GETACL", cmd.mailbox, "a"))   # Courier's words
    if verb == "MYRIGHTS":
        return untagged(f"MYRIGHTS {name} {qs(aclfile.rights_out(mine))}") + \
            tagged(tag, "OK", "MYRIGHTS completed.")
    assert verb == "LISTRIGHTS" and cmd.identifier is not None
    ident = cmd.identifier
    bare = ident[1:] if ident.startswith("-") else ident
    if ident.startswith("-") and (bare in ("anyone", "anonymous") or bare == who.user):
        rights = '"" ' + _GRANTABLE              # nothing must stay, l and a cannot go
    elif ident == who.user:
        rights = '"al" ' + _GRANTABLE            # the owner always keeps a and l
    else:
        rights = '"" a c d i l p r s w'
    return untagged(f"LISTRIGHTS {name} {qs(ident)} {rights}") + \
        tagged(tag, "OK", "LISTRIGHTS completed.")


def flags_allowed(rights: str, letters: str,
                  names: frozenset[str]) -> tuple[str, frozenset[str]]:
    """Courier's acl_flags_adjust: \\Deleted needs "t", \\Seen "s", the other flags
    and keywords "w"; what the rights do not allow is dropped."""
    keep = "".join(c for c in letters
                   if (c == "T" and "t" in rights) or (c == "S" and "s" in rights)
                   or (c not in "TS" and "w" in rights))
    return keep, (names if "w" in rights else frozenset())
