"""The base subject of RFC 5256 §2.1, for SORT SUBJECT and THREAD.

    subject      = *subj-leader [subj-middle] *subj-trailer
    subj-refwd   = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
    subj-blob    = "[" *BLOBCHAR "]" *WSP
    subj-fwd     = subj-fwd-hdr subject subj-fwd-trl
    subj-fwd-hdr = "[fwd:"
    subj-fwd-trl = "]"
    subj-leader  = (*subj-blob subj-refwd) / WSP
    subj-middle  = *subj-blob (subj-base / subj-fwd)
    subj-trailer = "(fwd)" / WSP
    subj-base    = NONWSP *(*WSP NONWSP)
    BLOBCHAR     = %x01-5a / %x5c / %x5e-ff      ; anything but "[" and "]"

All matching is case-insensitive. `base_subject` also says whether the
message is a reply or forward (RFC 5256 §4, REFERENCES step 5: a subj-refwd,
a "(fwd)" trailer or a [fwd: ...] wrapper was removed), which THREAD needs.
"""

from __future__ import annotations

import re
import unicodedata

from libcourier.rfc5322 import decode_words, unfold

MAX_SUBJECT = 4096      # characters of a decoded subject looked at

_WSP = re.compile(r"[ \t]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])\Z", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-leader: *subj-blob subj-refwd, or one WSP
_LEADER = re.compile(r"(?:(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:|[ \t])",
                     re.IGNORECASE)
_BLOB_RX = re.compile(_BLOB)


def _strip_leaders(s: str) -> tuple[str, bool]:
    """Steps (3)-(5): subj-leader and subj-blob prefixes, repeated; True when a
    subj-refwd went."""
    refwd = False
    while True:
        m = _LEADER.match(s)
        if m and m.end() > 0:
            if m.group(0).rstrip()[-1:] == ":":
                refwd = True
            s = s[m.end():]
            continue
        m = _BLOB_RX.match(s)
        if m and s[m.end():].strip(" \t"):
            # (4) a blob goes only when a non-empty subj-base is left
            s = s[m.end():]
            continue
        return s, refwd


def base_subject(raw: bytes | str | None) -> tuple[str, bool]:
    """(base subject, is a reply or forward) of a Subject: value as in the header
    (raw bytes, folded, maybe RFC 2047-encoded), or already decoded text."""
    if raw is None:
        return "", False
    # (1) decode RFC 2047 words; tabs and continuations to space; runs of space to one
    s = decode_words(unfold(raw)) if isinstance(raw, bytes) else raw
    s = _WSP.sub(" ", s.replace("\r", "").replace("\n", " ")[:MAX_SUBJECT])
    reply = False
    while True:
        # (2) trailing subj-trailer: "(fwd)" or WSP, repeated
        while True:
            m = _TRAILER.search(s)
            if m is None:
                break
            if m.group(0) != " " and m.group(0) != "\t":
                reply = True
            s = s[:m.start()]
        # (3)-(5)
        s, refwd = _strip_leaders(s)
        reply = reply or refwd
        # (6) [fwd: ... ] around all of it: unwrap and start again from (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


def sort_form(s: str) -> bytes:
    """The form base subjects are compared in. RFC 5256 names i;ascii-casemap (only
    a-z folded); like Dovecot we fold all of Unicode (upper case, then NFKD, as
    i;unicode-casemap does with title case), so "Ağustos" sorts between "Agenda"
    and "Airport" rather than after every ASCII subject. ASCII is unchanged from
    i;ascii-casemap."""
    if s.isascii():
        return s.upper().encode("ascii")
    return unicodedata.normalize("NFKD", s.upper()).encode("utf-8", "surrogateescape")
