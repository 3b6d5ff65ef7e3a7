"""Spool file recycling through the real esmtpd and courierd: delivered entries'
files go into the pool in SPOOLDIR/tmp once courierd's msgs/ fsync covered
their removal, esmtpd takes them for later messages, and every message arrives
intact, none with a byte of the large message its file held before."""

from __future__ import annotations

import smtplib
import time

from waiting import wait_for

from libcourier.spool import list_queue
from libcourier.spool.pool import FREE, HELD

DEADLINE = 60.0     # seconds for a batch to be delivered / the pool to be used


def message(tag: str, body: bytes) -> bytes:
    return (b"From: bob@example.net\r\nTo: alice@example.com\r\n"
            b"Subject: " + tag.encode() + b"\r\nMessage-ID: <" + tag.encode() + b"@test>\r\n"
            b"\r\n" + body)


def delivered(inst) -> dict[str, bytes]:
    """Message-ID tag -> body (after the header) of every delivered message."""
    d = inst.maildir("alice@example.com") / "new"
    out = {}
    for p in d.iterdir() if d.is_dir() else ():
        data = p.read_bytes()
        head, _, body = data.partition(b"\n\n")
        for line in head.split(b"\n"):
            if line.startswith(b"Message-ID: <"):
                out[line[13:].split(b"@")[0].decode()] = body
    return out


def pool_names(inst, prefix: str) -> set[str]:
    return {p.name for p in (inst.layout.spooldir / "tmp").iterdir() if p.name.startswith(prefix)}


def test_recycled_spool_files_carry_every_message_intact(running_instance):
    inst = running_instance
    sent: dict[str, bytes] = {}
    # Batch one: large messages (past SpoolWriter's buffer) with a marker.
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=30) as s:
        for i in range(12):
            tag = f"big{i}"
            body = b"".join(b"BATCH-ONE-SECRET %04d %06d\r\n" % (i, n) for n in range(4000))
            assert s.sendmail("bob@example.net", ["alice@example.com"], message(tag, body)) == {}
            sent[tag] = body
    assert wait_for(lambda: len(delivered(inst)) == len(sent), timeout=DEADLINE), inst.logs()
    # After the msgs/ fsync (half a second after the first removal), held -> free.
    assert wait_for(lambda: len(pool_names(inst, FREE)) == 12 and not pool_names(inst, HELD),
                    timeout=DEADLINE), sorted((inst.layout.spooldir / "tmp").iterdir())
    pooled = pool_names(inst, FREE)

    # Batch two: small messages, one at a time, until esmtpd took pool files (a
    # writer that found the pool empty lists it again only pool.LIST_INTERVAL
    # later).
    deadline = time.monotonic() + DEADLINE
    i = 0
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=30) as s:
        while pool_names(inst, FREE) & pooled == pooled or i < 12:
            assert time.monotonic() < deadline, "esmtpd never took a file from the pool"
            tag = f"small{i}"
            body = b"small message %d\r\n" % i
            assert s.sendmail("bob@example.net", ["alice@example.com"], message(tag, body)) == {}
            sent[tag] = body
            i += 1
    assert wait_for(lambda: len(delivered(inst)) == len(sent) and not list_queue(
        inst.layout.spooldir), timeout=DEADLINE), inst.logs()
    got = delivered(inst)
    for tag, body in sent.items():
        assert got[tag] == body.replace(b"\r\n", b"\n"), tag
        if tag.startswith("small"):
            assert b"SECRET" not in got[tag]
    assert len(pooled - pool_names(inst, FREE)) >= 1        # some pool files were used
    # The pool never shows up in the queue.
    assert list_queue(inst.layout.spooldir) == []
