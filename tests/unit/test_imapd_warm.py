"""The warm worker's handover payload (courier_imapd.warm): what a login child writes
is read back exactly; anything else, or a payload for another login, is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from courier_imapd import warm
from courier_imapd.core import ImapConnection
from courier_imapd.login import Counters, LoginOK

LOGIN = "alice@example.com"


def payload(data: bytes = b"b SELECT INBOX\r\n", **over) -> bytes:
    core = ImapConnection()
    core.receive_data(data)
    raw = json.loads(warm.payload_of(LoginOK("a1", LOGIN, None), core, Counters(7, 9, 0)))
    raw.update(over)
    return json.dumps(raw).encode()


def test_round_trip_keeps_tag_octets_and_counters() -> None:
    rest = bytes(range(256)) + b"\r\n"
    h = warm.parse(payload(rest), LOGIN)
    assert (h.tag, h.rest, h.rcvd, h.sent) == ("a1", rest, 7, 9)


def test_unread_input_is_not_consumed() -> None:
    core = ImapConnection()
    core.receive_data(b"x NOOP\r\n")
    assert core.unread() == b"x NOOP\r\n"
    assert core.unread() == b"x NOOP\r\n"
    assert core.next_event().tag == "x"        # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [
    b"", b"not json", b"[]", b"{}",
    payload(v=2), payload(login="bob@example.net"), payload(login=LOGIN.upper()),
    payload(tag=""), payload(tag="a b"), payload(tag="a\r\nb"), payload(tag=7),
    payload(rest="\u0100"), payload(rcvd=-1), payload(sent="9"), payload(rcvd=True),
    payload(login="x" * 2000),
])
def test_anything_else_is_refused(bad: bytes) -> None:
    with pytest.raises(warm.HandoverError):
        warm.parse(bad, LOGIN)


def test_account_key_changes_with_what_the_session_uses() -> None:
    info = SimpleNamespace(gid=100, home="/home/a", maildir="", quota="", options={})
    key = warm.account_key(LOGIN, 1000, info)
    assert key == warm.account_key(LOGIN, 1000, SimpleNamespace(**vars(info)))
    for change in ({"gid": 101}, {"home": "/home/b"}, {"maildir": "M"}, {"quota": "10S"},
                   {"options": {"group": "staff"}}):
        assert warm.account_key(LOGIN, 1000, SimpleNamespace(**{**vars(info), **change})) != key
    assert warm.account_key(LOGIN, 1001, info) != key
    assert warm.account_key("bob@example.net", 1000, info) != key
