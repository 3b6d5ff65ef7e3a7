"""IMAP core: transcripts fed whole, byte by byte and pipelined; BAD cases; limits; fuzz."""

from __future__ import annotations

import pytest
from courier_imapd import core as c
from hypothesis import given, settings
from hypothesis import strategies as st

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


# RFC 3501 §8 example (client side), adapted to what this milestone implements.
RFC_8 = (b"a001 login mrc secret\r\n"
         b"a002 select inbox\r\n"
         b"a003 fetch 12 full\r\n"
         b"a003 fetch 12 (flags internaldate rfc822.size)\r\n"
         b"a004 fetch 12 body[header]\r\n"
         b"a005 store 12 +flags \\deleted\r\n"
         b"a006 noop\r\n"
         b"a007 logout\r\n")


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_rfc3501_section8(mode: str) -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    evs = events(conn, RFC_8, mode)
    assert evs[0] == c.BadCommand("a001", "LOGIN is not valid in the selected state")
    assert evs[1] == c.Select("a002", "INBOX", False)
    assert evs[2] == c.Fetch("a003", False, ((12, 12),), (   # RFC 3501 §6.4.5 FULL macro
        c.FetchItem("FLAGS"), c.FetchItem("INTERNALDATE"), c.FetchItem("RFC822.SIZE"),
        c.FetchItem("ENVELOPE"), c.FetchItem("BODY.STRUCTURE")))
    assert evs[3] == c.Fetch("a003", False, ((12, 12),), (
        c.FetchItem("FLAGS"), c.FetchItem("INTERNALDATE"), c.FetchItem("RFC822.SIZE")))
    assert evs[4] == c.Fetch("a004", False, ((12, 12),), (c.FetchItem("BODY", "HEADER"),))
    assert evs[5] == c.Store("a005", False, ((12, 12),), c.StoreMode.ADD, False, ("\\deleted",))
    assert evs[6] == c.Noop("a006") and evs[7] == c.Logout("a007")
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_literals_sync_and_plus(mode: str) -> None:
    conn = c.ImapConnection()
    evs = events(conn, b'A1 LOGIN {5}\r\nalice {6+}\r\nse"cr\\\r\nA2 NOOP\r\n', mode)
    assert evs == [c.Login("A1", "alice", 'se"cr\\'), c.Noop("A2")]
    assert conn.data_to_send() == b"+ go ahead\r\n"   # only for the synchronising one
    assert "secr" not in repr(evs[0])


def test_pipelined_with_trailing_partial() -> None:
    conn = c.ImapConnection()
    conn.receive_data(b"1 CAPABILITY\r\n2 NOOP\r\n3 LOG")
    assert conn.next_event() == c.Capability("1")
    assert conn.next_event() == c.Noop("2")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"OUT\r\n")
    assert conn.next_event() == c.Logout("3")


@pytest.mark.parametrize("line,tag,fragment", [
    (b"\r\n", "*", "Empty"),
    (b"a1\r\n", "a1", "Syntax"),
    (b"a1 FROB\r\n", "a1", "Unknown command"),
    (b"a1 SELECT INBOX\r\n", "a1", "not valid in the not authenticated state"),
    (b"a1 LOGIN onlyuser\r\n", "a1", "Syntax"),
    (b'a1 LOGIN "unterminated\r\n', "a1", "unterminated"),
    (b"a1 UID LOGIN x y\r\n", "a1", "not a UID command"),
    (b"+x NOOP\r\n", "*", "Invalid tag"),
])
def test_bad_commands(line: bytes, tag: str, fragment: str) -> None:
    conn = c.ImapConnection()
    conn.receive_data(line + b"z NOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, c.BadCommand) and ev.tag == tag and fragment in ev.text
    assert conn.next_event() == c.Noop("z")   # the session goes on


@pytest.mark.parametrize("line", [
    b"a FETCH 0 FLAGS", b"a FETCH 1:x FLAGS", b"a FETCH 1 (FLAGS", b"a FETCH 1 BODY[1.0]", b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BODY[1.FOO]",
    b"a FETCH 1 BODY.PEEK", b"a FETCH 1 BODY[1.HEADER.FIELDS]", b"a FETCH 1 ALL FLAGS",
    b"a FETCH 1 BODY[]<1.0>", b"a STORE 1 FLAGS", b"a STORE 1 XFLAGS (\\Seen)",
    b"a SEARCH", b"a SEARCH FROMX x", b"a STATUS INBOX (FOO)", b"a EXAMINE",
])
def test_bad_selected(line: bytes) -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    conn.receive_data(line + b"\r\n")
    assert isinstance(conn.next_event(), c.BadCommand)


def test_line_limit_prelogin() -> None:
    conn = c.ImapConnection()
    conn.receive_data(b"a1 LOGIN " + b"x" * 9000 + b" y\r\na2 NOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, c.BadCommand) and "too long" in ev.text
    assert conn.next_event() == c.Noop("a2")


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_line_too_long_keeps_the_tag(mode: str) -> None:
    # A client waits for its own tag: an untagged BAD would leave it hanging.
    conn = c.ImapConnection()
    long_line = b"a1 LOGIN " + b"x" * 9000 + b" y\r\n"
    evs = events(conn, b"a0 NOOP\r\n" + long_line + b"a2 NOOP\r\n" + long_line[:20]
                 + b"\r\n" + b"\x01" * 9000 + b"\r\na3 NOOP\r\n", mode)
    assert evs[:3] == [c.Noop("a0"), c.BadCommand("a1", "Line too long (limit 8192 bytes)"),
                       c.Noop("a2")]
    assert isinstance(evs[3], c.BadCommand) and evs[3].tag == "a1"   # LOGIN without password
    assert evs[4:] == [c.BadCommand("*", "Line too long (limit 8192 bytes)"), c.Noop("a3")]


def test_sync_literal_over_limit_gets_no_go_ahead() -> None:
    conn = c.ImapConnection()
    conn.receive_data(b"a1 LOGIN {2000}\r\na2 NOOP\r\n")
    ev = conn.next_event()
    assert ev == c.BadCommand("a1", "Literal too large (limit 1024 bytes)")
    assert conn.data_to_send() == b""
    assert conn.next_event() == c.Noop("a2")


def test_nonsync_literal_over_limit_is_drained() -> None:
    conn = c.ImapConnection()
    conn.receive_data(b"a1 LOGIN {2000+}\r\n" + b"A\n" * 1000 + b" pw\r\na2 NOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, c.BadCommand) and ev.tag == "a1"
    assert conn.next_event() == c.Noop("a2")


def test_idle_done() -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    conn.receive_data(b"i IDLE\r\n")
    assert conn.next_event() == c.Idle("i")
    conn.idling = True
    conn.receive_data(b"done\r\n")
    assert isinstance(conn.next_event(), c.IdleDone)


def test_fetch_items_parse() -> None:
    conn = c.ImapConnection(c.State.SELECTED, c.SESSION_LIMITS)
    conn.receive_data(b"a UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To)]<0.10>)\r\n")
    ev = conn.next_event()
    assert ev == c.Fetch("a", True, ((1, None),), (
        c.FetchItem("UID"), c.FetchItem("BODY", "HEADER.FIELDS", ("From", "To"), True, (0, 10))))


def test_formatter() -> None:
    assert c.tagged("a", "NO", "x", "TRYCREATE") == b"a NO [TRYCREATE] x\r\n"
    assert c.quote('a"b\\') == b'"a\\"b\\\\"'
    assert c.quote("é") == b"{2}\r\n\xc3\xa9"
    assert c.astring_out("INBOX.Sent") == b"INBOX.Sent"
    assert c.astring_out("My Box") == b'"My Box"'


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(c.State)))
def test_fuzz_any_bytes_give_events(data: bytes, state: c.State) -> None:
    conn = c.ImapConnection(state, c.PRELOGIN_LIMITS)
    conn.receive_data(data + b"\r\n")
    for _ in range(1000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            break
        assert isinstance(ev, (c.BadCommand, c.IdleDone)) or hasattr(ev, "tag")
