"""The IMAP core's mailbox-management commands (RFC 3501 §6.3, §6.4.7; RFC 6851; RFC 4315):
transcripts fed whole, byte by byte and pipelined."""

from __future__ import annotations

import datetime

import pytest
from courier_imapd import core as c

from libcourier.proto import NEED_DATA


def events(conn: c.ImapConnection, data: bytes, mode: str) -> list[object]:
    out: list[object] = []
    chunks = [data] if mode == "whole" else [data[i:i + 1] for i in range(len(data))]
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(1000):
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            out.append(ev)
    return out


MSG = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nSubject: afternoon meeting\r\n\r\nHello Joe\r\n"

# RFC 3501 §6.3.11's example, then §6.3.3-§6.3.7 and §6.4.7, pipelined.
TRANSCRIPT = (
    b'A003 APPEND saved-messages (\\Seen) {%d}\r\n' % len(MSG) + MSG + b"\r\n"
    b'A004 APPEND INBOX.Sent (\\Seen \\Draft) " 7-Feb-1994 21:52:25 -0800" {%d+}\r\n' % len(MSG)
    + MSG + b"\r\n"
    b"A005 APPEND inbox {0}\r\n\r\n"
    b"A142 CREATE owatagusiam.\r\n"
    b"A683 DELETE blurdybloop\r\n"
    b"A684 RENAME INBOX.foo INBOX.zowie\r\n"
    b"A002 SUBSCRIBE #news.comp.mail.mime\r\n"
    b"A003 UNSUBSCRIBE \"INBOX.Entw&APw-rfe\"\r\n"
    b"A003 COPY 2:4 MEETING\r\n"
    b"A004 UID COPY 1:*,7 INBOX.x\r\n"
    b"A005 MOVE 1 INBOX.Trash\r\n"
    b"A006 UID MOVE 42:43 INBOX.Trash\r\n"
)


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_transcript(mode: str) -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    evs = events(conn, TRANSCRIPT, mode)
    feb7 = datetime.datetime(1994, 2, 7, 21, 52, 25,
                             tzinfo=datetime.timezone(datetime.timedelta(hours=-8))).timestamp()
    assert evs == [
        c.Append("A003", "saved-messages", ("\\Seen",), None, MSG),
        c.Append("A004", "INBOX.Sent", ("\\Seen", "\\Draft"), feb7, MSG),
        c.Append("A005", "INBOX", (), None, b""),
        c.MailboxCommand("A142", "CREATE", "owatagusiam."),
        c.MailboxCommand("A683", "DELETE", "blurdybloop"),
        c.Rename("A684", "INBOX.foo", "INBOX.zowie"),
        c.MailboxCommand("A002", "SUBSCRIBE", "#news.comp.mail.mime"),
        c.MailboxCommand("A003", "UNSUBSCRIBE", "INBOX.Entwürfe"),   # mUTF-7 decoded
        c.Copy("A003", False, ((2, 4),), "MEETING"),
        c.Copy("A004", True, ((1, None), (7, 7)), "INBOX.x"),
        c.Copy("A005", False, ((1, 1),), "INBOX.Trash", move=True),
        c.Copy("A006", True, ((42, 43),), "INBOX.Trash", move=True),
    ]
    # One "+" for each synchronising literal (the two APPENDs without "+"), none for LITERAL+.
    assert conn.data_to_send() == b"+ go ahead\r\n" * 2
    assert "Hello Joe" not in repr(evs[0])


@pytest.mark.parametrize("line, why", [
    (b"A1 APPEND INBOX\r\n", "literal"),
    (b'A1 APPEND INBOX "32-Feb-2020 00:00:00 +0000" {1+}\r\nx\r\n', "date-time"),
    (b'A1 APPEND INBOX "1-Foo-2020 00:00:00 +0000" {1+}\r\nx\r\n', "date-time"),
    (b"A1 APPEND INBOX (\\Recent) {1+}\r\nx\r\n", "Recent"),
    (b"A1 APPEND INBOX {1+}\r\nx extra\r\n", "end"),
    (b"A1 COPY 1:x INBOX.a\r\n", "sequence"),
    (b"A1 COPY 1\r\n", "expected"),
    (b"A1 MOVE 1 &Jjo\r\n", "UTF-7"),
    (b"A1 CREATE INBOX.&AGE-\r\n", "UTF-7"),
    (b"A1 UID RENAME a b\r\n", "not a UID command"),
])
def test_bad_input_then_session_goes_on(line: bytes, why: str) -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    evs = events(conn, line + b"A2 NOOP\r\n", "whole")
    assert isinstance(evs[0], c.BadCommand) and evs[0].tag == "A1", evs
    assert why in evs[0].text
    assert evs[1:] == [c.Noop("A2")]


def test_state_rules() -> None:
    conn = c.ImapConnection(c.State.AUTHENTICATED, c.SESSION_LIMITS)
    evs = events(conn, b"A1 COPY 1 x\r\nA2 MOVE 1 x\r\nA3 CREATE x\r\nA4 APPEND x {0+}\r\n\r\n", "whole")
    assert [type(e).__name__ for e in evs] == ["BadCommand", "BadCommand", "MailboxCommand", "Append"]
    conn = c.ImapConnection()   # not authenticated: APPEND's literal is refused before it is read
    evs = events(conn, b"A1 APPEND INBOX {5000}\r\nA2 NOOP\r\n", "whole")
    assert evs[0] == c.BadCommand("A1", "Literal too large (limit 1024 bytes)")
    assert conn.data_to_send() == b""


def test_append_literal_limit() -> None:
    small = c.Limits(max_line=1024, max_literal=100, max_command=2000)
    conn = c.ImapConnection(c.State.AUTHENTICATED, small)
    evs = events(conn, b"A1 APPEND INBOX {101}\r\nA2 APPEND INBOX {100}\r\n" + b"x" * 100 + b"\r\n",
                 "whole")
    assert evs[0] == c.BadCommand("A1", "Literal too large (limit 100 bytes)")
    assert evs[1] == c.Append("A2", "INBOX", (), None, b"x" * 100)
    assert conn.data_to_send() == b"+ go ahead\r\n"
