"""SEARCH, SORT and THREAD against a running imapd (`courier start`), driven by
imapclient and by raw bytes: the daemon after its privilege drop, the real
Maildir, the folder index shared between sessions."""

from __future__ import annotations

import os
import time

import pytest
from imapclient import IMAPClient

from tests.integration.test_imapd import IO_TIMEOUT, PASSWORD, USER, Raw, deliver

MSGS = [
    (b"From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: Lunch\n"
     b"Date: Tue, 15 Jun 2021 12:00:00 +0000\nMessage-ID: <1@t>\n\nzeppelin at noon?\n"),
    (b"From: =?utf-8?q?J=C3=BCrgen?= <jm@example.de>\nTo: alice@example.com\n"
     b"Subject: Re: Lunch\nDate: Wed, 16 Jun 2021 09:00:00 +0200\nMessage-ID: <2@t>\n"
     b"In-Reply-To: <1@t>\nContent-Type: text/plain; charset=utf-8\n"
     b"Content-Transfer-Encoding: base64\n\nR3LDvMOfZSBhdXMgTcO8bmNoZW4K\n"),
    (b"From: carol@example.org\nSubject: [team] report\nDate: Mon, 14 Jun 2021 08:00:00 +0000\n"
     b"Message-ID: <3@t>\n\nquarterly numbers\n"),
    (b"From: dave@example.org\nSubject: Re: Lunch\nDate: Thu, 17 Jun 2021 10:00:00 +0000\n"
     b"Message-ID: <4@t>\nReferences: <1@t> <2@t>\n\nsee you there\n"),
]


@pytest.fixture
def imap(new_instance):
    inst = new_instance
    inst.adduser(USER, PASSWORD)
    md = inst.maildir(USER)
    for i, m in enumerate(MSGS):
        base = deliver(md, m)
        when = time.mktime((2021, 6, 20 + i, 12, 0, 0, 0, 0, -1))
        os.utime(md / "new" / base, (when, when))
    inst.start("authdaemond", "imapd")
    return inst


def client(inst) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=inst.port("imap"), ssl=False, timeout=IO_TIMEOUT)
    c.login(USER, PASSWORD)
    return c


def test_search_sort_thread(imap) -> None:
    c = client(imap)
    try:
        assert {b"SORT", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"} <= set(c.capabilities())
        c.select_folder("INBOX")
        assert c.search(["TEXT", "zeppelin"]) == [1]
        assert c.search(["BODY", "grüße"], charset="UTF-8") == [2]
        assert c.search(["FROM", "jürgen"], charset="UTF-8") == [2]
        assert c.search(["OR", "SUBJECT", "report", "NOT", "SENTSINCE", "15-Jun-2021"]) == [3]
        assert c.search(["SINCE", "22-Jun-2021"]) == [3, 4]
        assert c.search(["HEADER", "Message-ID", "<4@t>"]) == [4]
        assert c.search(["LARGER", "150"]) == [2]
        c.add_flags([2], [b"\\Flagged"])
        assert c.search(["FLAGGED"]) == [2] and c.search(["UNFLAGGED", "UID", "2:*"]) == [3, 4]
        # SORT: base subjects "Lunch" x3 and "report"; then by sent date
        assert c.sort(["SUBJECT", "DATE"]) == [1, 2, 4, 3]
        assert c.sort(["REVERSE", "ARRIVAL"]) == [4, 3, 2, 1]
        assert c.sort(["FROM"], ["NOT", "FROM", "dave"]) == [1, 3, 2]
        # THREAD
        assert c.thread("REFERENCES") == ((3,), (1, 2, 4))
        assert c.thread("ORDEREDSUBJECT") == ((3,), (1, (2,), (4,)))
    finally:
        c.logout()


def test_raw_answers(imap) -> None:
    r = Raw(imap.port("imap"))
    r.line()
    r.cmd(b"a", f"LOGIN {USER} {PASSWORD}".encode())
    r.cmd(b"b", b"SELECT INBOX")
    # the literal: the server sends a continuation, then the rest of the command
    r.send(b"d SEARCH CHARSET UTF-8 SUBJECT {5}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"lunch\r\n")
    assert r.until(b"d") == [b"* SEARCH 1 2 4\r\n", b"d OK SEARCH completed.\r\n"]
    out = r.cmd(b"e", b"SEARCH CHARSET ISO-2022-JP FROM x")
    assert out == [b"e NO [BADCHARSET (US-ASCII UTF-8)] ISO-2022-JP is not supported\r\n"]
    assert r.cmd(b"f", b"SEARCH FROM")[-1].startswith(b"f BAD ")
    assert r.cmd(b"g", b"SEARCH " + b"NOT " * 100 + b"ALL")[-1].startswith(b"g BAD ")
    uids = r.cmd(b"h", b"UID SEARCH ALL")[0].split()[2:]
    assert len(uids) == 4
    assert r.cmd(b"i", b"UID THREAD REFERENCES UTF-8 ALL")[0] == \
        b"* THREAD (%s)(%s %s %s)\r\n" % (uids[2], uids[0], uids[1], uids[3])
    assert r.cmd(b"j", b"UID SORT (REVERSE SIZE) US-ASCII ALL")[0].startswith(b"* SORT " + uids[1])
    assert r.cmd(b"k", b"THREAD REFERENCES UTF-8 SUBJECT nothing-like-this") == \
        [b"* THREAD\r\n", b"k OK THREAD completed.\r\n"]
    assert r.cmd(b"l", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 3 1 2 4\r\n"
    assert r.cmd(b"m", b"NOOP")[-1].startswith(b"m OK")      # the session goes on
    r.cmd(b"z", b"LOGOUT")


def test_index_filled_by_one_session_serves_the_next(imap) -> None:
    c = client(imap)
    try:
        c.select_folder("INBOX", readonly=True)
        assert c.search(["FROM", "carol"]) == [3]
    finally:
        c.logout()
    index = imap.maildir(USER) / "courierpyindex"
    assert index.exists() and index.stat().st_size > 100
    c = client(imap)
    try:
        c.select_folder("INBOX", readonly=True)
        assert c.sort(["SUBJECT"]) == [1, 2, 4, 3]
    finally:
        c.logout()
