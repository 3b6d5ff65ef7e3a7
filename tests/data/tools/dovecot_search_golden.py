#!/usr/bin/env python3
"""Record Dovecot's SEARCH, SORT and THREAD answers on the corpus as golden data.

All ../shared/corpus/*.eml (sorted by name, LF turned into CRLF) are APPENDed
to a scratch mailbox of the Dovecot anchor (127.0.0.1:10143, benchuser) with
an INTERNALDATE and flags that depend only on their position (`placement`),
each command of COMMANDS is sent, and the scratch mailbox is deleted again,
so the anchor's INBOX is untouched. tests/data/imap-golden/search-sort-thread.txt
gets one line per command: `<command>\\t<the untagged answer line>`.
tests/unit/test_imap_search_golden.py stores the same messages in a Maildir
with the same dates and flags and compares courier-py's answers.

Usage: python3 tests/data/tools/dovecot_search_golden.py [--corpus DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import imaplib
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
BOX = "sgolden-scratch"
OUT_NAME = "search-sort-thread.txt"
START = datetime.datetime(2021, 3, 1, 9, 0, 0, tzinfo=datetime.UTC)



def lit(text: str) -> str:
    """A LITERAL+ literal (RFC 7888) of UTF-8 text, inline in a command."""
    return f"{{{len(text.encode('utf-8'))}+}}\r\n{text}"


COMMANDS = [
    # flags and sets
    "SEARCH ALL", "SEARCH SEEN", "SEARCH UNSEEN", "SEARCH FLAGGED", "SEARCH ANSWERED",
    "SEARCH DRAFT", "SEARCH UNDELETED", "SEARCH OR SEEN FLAGGED", "SEARCH NOT SEEN FLAGGED",
    "SEARCH 2:7,40:*", "SEARCH UID 5:9", "SEARCH NOT (UID 1:10 OR SEEN ANSWERED)",
    # sizes and internal dates (one message a day from 1 Mar 2021, 09:00 UTC)
    "SEARCH LARGER 3000", "SEARCH SMALLER 600", "SEARCH LARGER 1000 SMALLER 2000",
    "SEARCH BEFORE 5-Mar-2021", "SEARCH ON 10-Mar-2021", "SEARCH SINCE 20-Apr-2021",
    # Date: headers
    "SEARCH SENTBEFORE 1-Jan-2003", "SEARCH SENTSINCE 1-Jan-2024", "SEARCH SENTON 26-Nov-2026",
    "SEARCH NOT SENTSINCE 1-Jan-1990",
    # header fields, RFC 2047
    "SEARCH FROM barry", "SEARCH FROM \"carol jones\"", "SEARCH FROM example.com",
    "SEARCH TO python.org", "SEARCH CC example", "SEARCH BCC example",
    "SEARCH SUBJECT test", "SEARCH SUBJECT \"re:\"", "SEARCH SUBJECT lyrics",
    "SEARCH SUBJECT bicycle", "SEARCH SUBJECT zeppelin",
    "SEARCH CHARSET UTF-8 SUBJECT " + lit("réunion"),
    "SEARCH CHARSET UTF-8 SUBJECT " + lit("málaga"), "SEARCH CHARSET UTF-8 FROM " + lit("иван"),
    "SEARCH HEADER Message-ID example", "SEARCH HEADER X-Mailer \"\"",
    "SEARCH HEADER Content-Type multipart", "SEARCH HEADER In-Reply-To \"<\"",
    "SEARCH HEADER List-Id \"\"", "SEARCH OR FROM alice FROM dave",
    # decoded content
    "SEARCH BODY zeppelin", "SEARCH TEXT zeppelin", "SEARCH BODY dingus", "SEARCH TEXT dingus",
    "SEARCH BODY lyrics", "SEARCH TEXT lyrics", "SEARCH BODY python", "SEARCH TEXT \"x-mailer\"",
    "SEARCH CHARSET UTF-8 BODY " + lit("été"), "SEARCH BODY forecast", "SEARCH BODY \"deployment\"",
    "SEARCH TEXT \"multipart/alternative\"", "SEARCH BODY \"content-type\"",
    "SEARCH NOT BODY the", "SEARCH BODY base64",
    # SORT (RFC 5256, RFC 5957)
    "SORT (ARRIVAL) UTF-8 ALL", "SORT (REVERSE ARRIVAL) UTF-8 ALL", "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL", "SORT (SIZE) UTF-8 ALL", "SORT (REVERSE SIZE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL", "SORT (REVERSE SUBJECT) UTF-8 ALL", "SORT (FROM) UTF-8 ALL",
    "SORT (TO) UTF-8 ALL", "SORT (CC) UTF-8 ALL", "SORT (SUBJECT DATE) UTF-8 ALL",
    "SORT (FROM REVERSE DATE) UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL",
    "SORT (DISPLAYTO) UTF-8 ALL", "SORT (SUBJECT) UTF-8 UNSEEN", "UID SORT (DATE) UTF-8 10:20",
    # THREAD (RFC 5256)
    "THREAD ORDEREDSUBJECT UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
    "THREAD REFERENCES UTF-8 SEEN", "UID THREAD REFERENCES UTF-8 UID 20:*",
]


def placement(i: int) -> tuple[datetime.datetime, tuple[str, ...]]:
    """INTERNALDATE and flags of the i-th corpus message (0-based)."""
    flags = []
    if i % 3 == 0:
        flags.append("\\Seen")
    if i % 5 == 1:
        flags.append("\\Flagged")
    if i % 7 == 2:
        flags.append("\\Answered")
    if i % 11 == 3:
        flags.append("\\Draft")
    return START + datetime.timedelta(days=i, minutes=i), tuple(flags)


def send(imap: imaplib.IMAP4, command: str) -> bytes:
    """Send one command (LITERAL+ literals inline) and return its untagged answer line."""
    tag = imap._new_tag()
    imap.send(tag + b" " + command.encode("utf-8") + b"\r\n")
    answer = b""
    while True:
        line = imap._get_line()
        if line.startswith(tag + b" "):
            assert line.split()[1] == b"OK", (command, line)
            return answer
        if line.startswith((b"* SEARCH", b"* SORT", b"* THREAD")):
            answer = line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(HERE.parents[3] / "shared" / "corpus"))
    ap.add_argument("--out", default=str(HERE.parent / "imap-golden" / OUT_NAME))
    ap.add_argument("--port", type=int, default=10143)
    args = ap.parse_args()
    imap = imaplib.IMAP4("127.0.0.1", args.port)
    imap.login("benchuser", "benchpass")
    imap.delete(BOX)     # left over from an interrupted run (NO when there is none)
    typ, resp = imap.create(BOX)
    assert typ == "OK", resp
    try:
        for i, eml in enumerate(sorted(pathlib.Path(args.corpus).glob("*.eml"))):
            data = eml.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            when, flags = placement(i)
            typ, resp = imap.append(BOX, "(" + " ".join(flags) + ")", when, data)
            assert typ == "OK", resp
        imap.select(BOX)
        lines = [c.replace("\r\n", "\\r\\n").encode() + b"\t" + send(imap, c) for c in COMMANDS]
        pathlib.Path(args.out).write_bytes(b"\n".join(lines) + b"\n")
    finally:
        imap.select("INBOX", readonly=True)
        imap.delete(BOX)
        imap.logout()


if __name__ == "__main__":
    main()
