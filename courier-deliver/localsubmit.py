"""Who submitted a local message, and which envelope sender they may use.

Shared by sendmail (which refuses early, with a clear message) and courierd's
pickup (which enforces it: the maildrop file's owner is the only identity it
trusts). No I/O here: the callers look the account up and read the control
files.

The rule (ours; Courier's sendmail lets anyone set any -f, Postfix does the
same unless `local_login_sender_maps` says otherwise, and sendmail(8) only
adds an X-Authentication-Warning):

- root, the daemon account (MAILUSER) and the logins listed in the control
  file `trustedusers` (one login a line, as sendmail's trusted-users file) may
  use any envelope sender, the null sender <> included;
- any other user may use only their own address: `login` or `login-ext`
  (Courier's address extensions) at `me` or `defaultdomain`, domain and local
  part compared without case; a bare `-f login` is qualified with
  defaultdomain first. Anything else, the null sender included, is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TRUSTED_USERS_FILE = "trustedusers"


@dataclass(frozen=True, slots=True)
class Submitter:
    uid: int
    login: str
    trusted: bool          # root, the daemon account, or listed in trustedusers


def is_trusted(uid: int, login: str, *, daemon_uid: int, trusted_logins: Iterable[str]) -> bool:
    return uid == 0 or uid == daemon_uid or login in set(trusted_logins)


def sender_allowed(who: Submitter, sender: str, domains: Iterable[str]) -> bool:
    """May `who` use `sender` (already qualified; "" = the null sender)?"""
    if who.trusted:
        return True
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return False
    if domain.lower() not in {d.lower() for d in domains if d}:
        return False
    login = who.login.lower()
    local = local.lower()
    return local == login or local.startswith(login + "-")


def refusal(who: Submitter, sender: str) -> str:
    shown = f"<{sender}>" if sender else "the null sender <>"
    return (f"user {who.login} (uid {who.uid}) may not use {shown} as the envelope "
            f"sender: only its own address, unless listed in `{TRUSTED_USERS_FILE}`")


def received_line(who: Submitter, me: str, date: str, ident: str) -> bytes:
    """The Received: field of a locally submitted message (RFC 5321 §4.4 allows
    a comment for the source; `uid` names the account, as Courier's submit does)."""
    return (f"Received: (from {who.login}@localhost uid {who.uid})\n"
            f"  by {me} (courier-py) with local id {ident}; {date}\n").encode()
