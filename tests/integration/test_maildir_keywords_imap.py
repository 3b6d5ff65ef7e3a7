"""IMAP keywords end to end over a real imapd with imaplib: STORE +FLAGS/-FLAGS/FLAGS with
keywords, FLAGS and PERMANENTFLAGS (\\*) at SELECT and when a new keyword appears,
another session seeing the change, APPEND and COPY carrying keywords, and the files
left in courierimapkeywords/ in Courier's format (FORMATS.md §3.5)."""

from __future__ import annotations

import imaplib
import re

import pytest

from libcourier.maildir import keywords as kw
from tests.integration.test_imapd import IO_TIMEOUT, MSGS, PASSWORD, USER, deliver


@pytest.fixture
def inst(new_instance):
    new_instance.adduser(USER, PASSWORD)
    for m in MSGS:
        deliver(new_instance.maildir(USER), m)
    new_instance.start("authdaemond", "imapd")
    return new_instance


def client(inst) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", inst.port("imap"), timeout=IO_TIMEOUT)
    assert c.login(USER, PASSWORD)[0] == "OK"
    return c


def flags_of(c: imaplib.IMAP4) -> dict[int, set[str]]:
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    out = {}
    for line in data:
        if b"UID" not in line:
            continue   # an unsolicited FETCH (another session's change) imaplib kept
        m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
        assert m, line
        uid = int(m.group(1) or m.group(4))
        out[uid] = set((m.group(2) or m.group(3) or b"").decode().split()) - {"\\Recent"}
    return out


def test_keywords_store_fetch_select(inst) -> None:
    md = inst.maildir(USER)
    a, b = client(inst), client(inst)
    try:
        typ, _ = a.select("INBOX")
        assert typ == "OK"
        assert "\\*" in a.untagged_responses["PERMANENTFLAGS"][0].decode()
        typ, data = a.store("1", "+FLAGS", "(\\Seen $Label1 Work)")
        assert typ == "OK"
        # RFC 3501 §7.2.6: the new keywords were announced in FLAGS before their use.
        assert b"Work" in a.untagged_responses["FLAGS"][-1]
        assert b"$Label1" in data[0] and b"Work" in data[0]
        assert a.store("2", "+FLAGS", "(work)")[0] == "OK"      # same keyword, other case
        assert a.store("1", "-FLAGS", "($label1)")[0] == "OK"
        assert flags_of(a) == {1: {"\\Seen", "Work"}, 2: {"Work"}, 3: set()}
        # The other session sees the change (SELECT's FLAGS and FETCH).
        assert b.select("INBOX")[0] == "OK"
        assert "Work" in b.untagged_responses["FLAGS"][0].decode()
        assert flags_of(b) == {1: {"\\Seen", "Work"}, 2: {"Work"}, 3: set()}
        # ... and a later change by `a` on its next NOOP.
        assert a.store("2", "FLAGS", "(\\Flagged Other)")[0] == "OK"
        typ, _ = b.noop()
        assert typ == "OK"
        assert b"Other" in b.untagged_responses["FLAGS"][-1]
        assert flags_of(b) == {1: {"\\Seen", "Work"}, 2: {"\\Flagged", "Other"}, 3: set()}
        # APPEND and COPY keep keywords.
        assert a.create("INBOX.Dst")[0] == "OK"
        typ, data = a.append("INBOX.Dst", "(\\Draft Appended)", None,
                             b"Subject: app\r\n\r\nbody\r\n")
        assert typ == "OK"
        assert a.copy("1:2", "INBOX.Dst")[0] == "OK"
        assert a.select("INBOX.Dst")[0] == "OK"
        assert flags_of(a) == {1: {"\\Draft", "Appended"}, 2: {"\\Seen", "Work"},
                               3: {"\\Flagged", "Other"}}
        # A keyword that is not an atom: BAD from the parser, nothing stored.
        with pytest.raises(imaplib.IMAP4.error):
            a.store("1", "+FLAGS", '(a"b)')
        assert flags_of(a)[1] == {"\\Draft", "Appended"}
    finally:
        for c in (a, b):
            try:
                c.logout()
            except Exception:
                pass
    # On disk: Courier's :list after the readers merged the updates.
    listed, damaged = kw.parse_list((md / kw.KEYWORDDIR / kw.LIST).read_bytes())
    assert not damaged and sorted(listed.values(), key=sorted) == [{"Other"}, {"Work"}]
