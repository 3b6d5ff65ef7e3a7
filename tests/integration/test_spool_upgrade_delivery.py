"""The one-file queue entry through the real courierd + courierlocal: the
Maildir gets the message alone (no header, no envelope), for a message written
in one go and one larger than SpoolWriter's buffer; and a queue written in the
former layout (.dat + .env) before courierd starts is delivered the same way."""

from __future__ import annotations

import time

import pytest
from waiting import wait_for

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, new_qid, notify
from libcourier.spool.envelope import format_envelope

SMALL = b"Received: from client\nSubject: small\n\nline one\n.dot line\n"
LARGE = b"Received: from client\nSubject: large\n\n" + b"".join(
    b"%06d " % i + b"x" * 72 + b"\n" for i in range(2000))        # 160 KB: past the buffer
OLD = b"Received: from client\nSubject: old layout\n\nwritten before the upgrade\n"
PREFIX = b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.com\n"


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    return new_instance


def bodies(inst) -> list[bytes]:
    d = inst.maildir("alice@example.com") / "new"
    return sorted(p.read_bytes() for p in d.iterdir()) if d.is_dir() else []


def env() -> Envelope:
    return Envelope("bob@example.net", (Recipient("alice@example.com"),), time.time(),
                    client="test")


def test_entries_of_both_layouts_are_delivered_as_the_message_alone(inst):
    spooldir = inst.layout.spooldir
    spooldir.joinpath("msgs").mkdir(parents=True, exist_ok=True)
    spooldir.joinpath("tmp").mkdir(parents=True, exist_ok=True)
    # Written before courierd starts, as the former SpoolWriter left them.
    old = new_qid()
    (spooldir / "msgs" / f"{old}.dat").write_bytes(OLD)
    (spooldir / "msgs" / f"{old}.env").write_bytes(format_envelope(env()))
    inst.start("authdaemond", "courierd")
    for body in (SMALL, LARGE):
        w = SpoolWriter(spooldir, 0)
        w.write(body)
        notify(inst.layout.queue_socket, w.commit(env()))
    assert wait_for(lambda: not list_queue(spooldir) and len(bodies(inst)) == 3, timeout=60), \
        inst.logs()
    assert bodies(inst) == sorted(PREFIX + b for b in (SMALL, LARGE, OLD))
    assert list((spooldir / "msgs").iterdir()) == []
