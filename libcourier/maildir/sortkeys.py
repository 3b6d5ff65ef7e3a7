"""The SORT and THREAD keys of a message (RFC 5256), computed once from its header
fields and kept in its `courierpyindex` record, so a session's first SORT SUBJECT or
THREAD REFERENCES reads them instead of decoding every Subject: and Date: again.

What is kept, from the raw header values:

- the sent date (RFC 5256 §2.2): the Date: as a UTC time and the day as written, for
  SORT DATE, THREAD and SEARCH SENTON/SENTBEFORE/SENTSINCE; absent when it does not parse;
- the base subject (§2.1) in the form it is compared in (basesubject.sort_form), and
  whether it was a reply or forward (§4 step 5);
- the message's own Message-ID and its references (References:, else the first msg-id
  of In-Reply-To: §4 step 1), normalised as §4 says.

Encoding (little endian): `_HEAD` = UTC time (float64), day (proleptic Gregorian ordinal,
int32, 0: no date), base subject length (uint32), Message-ID length (int32, -1: none),
reply flag (uint8); then the base subject, the Message-ID, and the references joined by
one space (a normalised msg-id holds no white space, so the split is exact). Sans-I/O.
"""

from __future__ import annotations

import calendar
import datetime
import email.utils
import re
import struct
from typing import NamedTuple

from libcourier.rfc5322 import unfold
from libcourier.rfc5322.basesubject import base_subject, sort_form

MAX_REFERENCES = 1000     # msg-ids of one References: field looked at
MAX_PLAIN_SUBJECT = 1000  # Subject: values up to this long may take the plain way
_HEAD = struct.Struct("<diIiB")
_MAX_DAY = datetime.date.max.toordinal()

# Indices in libcourier.maildir.index.HEADER_FIELDS of what the keys are made from.
DATE, SUBJECT, MESSAGE_ID, IN_REPLY_TO, REFERENCES = 0, 1, 5, 6, 7
NEEDED = REFERENCES + 1   # header tuples shorter than this cannot give the keys


class KeysError(ValueError):
    """Stored keys that do not decode."""


# The Date: most messages carry (RFC 5322 §3.3 date-time: day name, 4-digit year,
# seconds, a numeric zone), read without email.utils; the answer is the one
# _parse_date_general gives (a differential test checks it). "-0000" (no zone known:
# local time there) and anything else go the general way.
_MONTHS = {m: k for k, m in enumerate((b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul",
                                       b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}
_COMMON_DATE = re.compile(
    rb"[ \t]*(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{1,2}) (" + b"|".join(_MONTHS)
    + rb") ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})[ \t]*\r?\n?"
).fullmatch


def parse_date(value: bytes | None) -> tuple[datetime.date, float] | None:
    """A Date: value -> (the day as written, in its own zone; the time in UTC), or None
    when there is none or it does not parse (RFC 5322 §3.3 and the obsolete forms)."""
    if value is None:
        return None
    m = _COMMON_DATE(value)
    if m is None or (m[7] == b"-" and m[8] == m[9] == b"00"):
        return _parse_date_general(value)
    year = int(m[3])
    if year < 100:                    # (as email.utils: a 2-digit year, even written 00yy)
        year += 1900 if year > 68 else 2000
    month, day = _MONTHS[m[2]], int(m[1])
    try:
        when = calendar.timegm((year, month, day, int(m[4]), int(m[5]), int(m[6]), 0, 1, -1))
        sent = datetime.date(year, month, day)
    except (ValueError, OverflowError):
        return None
    off = int(m[8]) * 3600 + int(m[9]) * 60
    return sent, float(when + off if m[7] == b"-" else when - off)


def _parse_date_general(value: bytes) -> tuple[datetime.date, float] | None:
    """parse_date of any value, through email.utils."""
    try:
        t = email.utils.parsedate_tz(unfold(value).decode("ascii", "replace"))
    except (ValueError, IndexError, OverflowError):
        return None
    if t is None:
        return None
    try:
        day = datetime.date(t[0], t[1], t[2])
        when = email.utils.mktime_tz(t)
    except (ValueError, OverflowError, TypeError):
        return None
    return day, float(when)


_MSGID = re.compile(rb"<([^<>]*)>")
_QUOTED_LOCAL = re.compile(rb'^"((?:[^"\\]|\\.)*)"@')
_SPACE = re.compile(rb"[ \t\r\n]+")


def normal_id(mid: bytes) -> bytes | None:
    """A msg-id without its brackets, quoting and white space (RFC 5256 §4:
    <"01KF8JCEOCBS0045PS"@xxx.yyy.com> and <01KF8JCEOCBS0045PS@xxx.yyy.com> are one)."""
    mid = _SPACE.sub(b"", mid)
    m = _QUOTED_LOCAL.match(mid)
    if m:
        mid = re.sub(rb"\\(.)", rb"\1", m.group(1)) + b"@" + mid[m.end():]
    return mid if b"@" in mid else None


def message_ids(value: bytes | None, limit: int = MAX_REFERENCES) -> list[bytes]:
    if value is None:
        return []
    out = []
    for m in _MSGID.finditer(unfold(value)):
        n = normal_id(m.group(1))
        if n is not None:
            out.append(n)
            if len(out) >= limit:
                break
    return out


def thread_ids(message_id: bytes | None, references: bytes | None,
               in_reply_to: bytes | None) -> tuple[bytes | None, tuple[bytes, ...]]:
    """The message's own Message-ID and its references (References:, else the first
    msg-id of In-Reply-To: RFC 5256 §4 step 1)."""
    own = message_ids(message_id, 1)
    refs = message_ids(references)
    if not refs:
        refs = message_ids(in_reply_to, 1)
    return (own[0] if own else None), tuple(refs)


# A Subject: with nothing for RFC 5256 §2.1 to take away or decode: printable ASCII,
# no encoded word ("="), no blob or "(fwd)" ("[", "("), not starting with what could be
# "re:" / "fw:" (r, f), no tab or fold; the base subject is the text itself (a
# differential test checks it against base_subject).
_PLAIN_SUBJECT = re.compile(
    rb"[ \t]*([^\x00-\x20\x7f-\xff\[(=rRfF][^\x00-\x1f\x7f-\xff\[(=]*)\r?\n?").fullmatch


def subject_key(raw: bytes | None) -> tuple[bytes, bool]:
    """(base subject in its sort form, is a reply or forward)."""
    if raw is not None and len(raw) < MAX_PLAIN_SUBJECT:
        m = _PLAIN_SUBJECT(raw)
        if m is not None:
            text = m[1]
            if not text.endswith(b" ") and b"  " not in text:
                return text.upper(), False      # (sort_form of ASCII: upper case)
    subj, reply = base_subject(raw)
    return sort_form(subj), reply


class SortKeys(NamedTuple):
    """A named tuple rather than a frozen dataclass: one is made per message of a
    SORT or THREAD from the index, and a tuple is built several times faster."""
    day: int                                      # parse_date()[0] as an ordinal; 0: no date
    when: float                                   # parse_date()[1] (0.0 when day is 0)
    subject: bytes                                # subject_key()[0]
    reply: bool                                   # subject_key()[1]
    message_id: bytes | None                      # thread_ids()[0]
    references: tuple[bytes, ...]                 # thread_ids()[1]

    @property
    def sent(self) -> tuple[datetime.date, float] | None:
        """parse_date() of the Date: (the day as a date again)."""
        return None if self.day == 0 else (datetime.date.fromordinal(self.day), self.when)


def compute(headers: tuple[bytes | None, ...]) -> SortKeys | None:
    """The keys of a message whose HEADER_FIELDS values are `headers`; None when the
    tuple is too short to hold what they are made from."""
    if len(headers) < NEEDED:
        return None
    subject, reply = subject_key(headers[SUBJECT])
    mid, refs = thread_ids(headers[MESSAGE_ID], headers[REFERENCES], headers[IN_REPLY_TO])
    sent = parse_date(headers[DATE])
    day, when = (0, 0.0) if sent is None else (sent[0].toordinal(), sent[1])
    return SortKeys(day, when, subject, reply, mid, refs)


def encode(k: SortKeys) -> bytes:
    mid = b"" if k.message_id is None else k.message_id
    return (_HEAD.pack(k.when, k.day, len(k.subject), -1 if k.message_id is None else len(mid),
                       k.reply)
            + k.subject + mid + b" ".join(k.references))


def decode(data: bytes) -> SortKeys:
    try:
        when, day, slen, mlen, reply = _HEAD.unpack_from(data)
    except struct.error:
        raise KeysError("keys shorter than their head") from None
    p = _HEAD.size + slen
    if not 0 <= day <= _MAX_DAY or mlen < -1 or reply > 1 or p + (mlen if mlen > 0 else 0) \
            > len(data):
        raise KeysError("bad keys")
    if mlen < 0:
        mid, rest = None, data[p:]
    else:
        mid, rest = data[p:p + mlen], data[p + mlen:]
    return SortKeys(day, when, data[_HEAD.size:p], reply == 1, mid,
                    tuple(rest.split(b" ")) if rest else ())
