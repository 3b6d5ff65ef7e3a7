"""courierlocal's batches through the real helper, authd and delivery workers:
several requests sent at once (as courierd's LocalBatches sends them) are
answered one by one, a failing recipient fails only itself, and a delivery
worker killed in the middle of a batch loses nothing and publishes nothing
of the batch (the next attempt delivers each message once)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from courier_deliver.local import LocalClient
from courier_deliver.localproto import DeliverRequest, Status, format_request

from libcourier.spool import Envelope, Recipient, SpoolWriter, ensure_spool, open_data

WAIT = 60.0


@pytest.fixture
def inst(new_instance):
    new_instance.adduser("alice@example.com", "pw")
    new_instance.adduser("bob@example.com", "pw")
    new_instance.start("authdaemond", "courierd")
    return new_instance


def _message(spooldir, n: int) -> str:
    """A spool entry of courierd's format, in a spool courierd does not scan."""
    w = SpoolWriter(spooldir, 1 << 20)
    w.write(b"Received: from client\nSubject: batch %d\n\nbody %d\n" % (n, n))
    return w.commit(Envelope("carol@example.net", (Recipient("x@example.com"),), time.time()))


def _send(inst, spooldir, qids: list[str], rcpts: list[str]):
    """One batch: every request in one send, on one connection; the replies."""
    client = LocalClient(timeout=WAIT)
    files = [open_data(spooldir, q) for q in qids]
    try:
        lines = [format_request(DeliverRequest("carol@example.net", r)) for r in rcpts]
        return asyncio.run(client.request_batch_async(inst.layout.local_socket, lines,
                                                      [f.fileno() for f in files]))
    finally:
        client.close()
        for f in files:
            f.close()


def _new(inst, address: str, folder: str = "") -> list[bytes]:
    d = inst.maildir(address) / folder / "new"
    return sorted(p.read_bytes().split(b"Subject: ")[1].split(b"\n")[0]
                  for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture
def spooldir(tmp_path):
    d = tmp_path / "other-spool"
    ensure_spool(d)
    return d


def test_batch_with_failing_recipients_answers_each(inst, spooldir):
    home = inst.maildir("alice@example.com").parent
    dot = home / ".courier-later"
    dot.write_text("| exit 75\n")           # EX_TEMPFAIL: a temporary failure
    os.chmod(dot, 0o644)
    qids = [_message(spooldir, i) for i in range(6)]
    replies = _send(inst, spooldir, qids,
                    ["alice@example.com", "nobody@example.com", "bob@example.com",
                     "alice-later@example.com", "alice@example.com", "bob@example.com"])
    assert [r.status for r in replies] == [Status.OK, Status.PERM, Status.OK, Status.TEMP,
                                           Status.OK, Status.OK], replies
    assert "no such user" in replies[1].text and "exited 75" in replies[3].text
    assert _new(inst, "alice@example.com") == [b"batch 0", b"batch 4"]
    assert _new(inst, "bob@example.com") == [b"batch 2", b"batch 5"]
    # Each OK is in the journal: asked again (a restarted courierd), no second copy.
    again = _send(inst, spooldir, qids[:1], ["alice@example.com"])
    assert again[0].status is Status.OK and again[0].text == "already delivered"
    assert _new(inst, "alice@example.com") == [b"batch 0", b"batch 4"]


def test_worker_killed_mid_batch_loses_nothing_and_repeats_nothing(inst, spooldir):
    home = inst.maildir("alice@example.com").parent
    dot = home / ".courier-crash"
    # The first run kills the delivery worker (the program's parent) after the
    # batch's first message was written into tmp/; later runs deliver.
    dot.write_text(f"| test -e {home}/crashed || {{ touch {home}/crashed; kill -9 $PPID; }}\n"
                   "./Maildir/.crash/\n")
    os.chmod(dot, 0o644)
    owner = os.stat(home)
    for sub in ("", "tmp", "new", "cur"):
        d = home / "Maildir" / ".crash" / sub
        os.makedirs(d)
        os.chown(d, owner.st_uid, owner.st_gid)      # made by the test, as root
    qids = [_message(spooldir, i) for i in range(3)]
    rcpts = ["alice@example.com", "alice-crash@example.com", "alice@example.com"]
    first = _send(inst, spooldir, qids, rcpts)
    assert [r.status for r in first] == [Status.TEMP] * 3, first
    assert (home / "crashed").exists()
    assert _new(inst, "alice@example.com") == []          # nothing of the batch published
    assert _new(inst, "alice@example.com", ".crash") == []
    second = _send(inst, spooldir, qids, rcpts)
    assert [r.status for r in second] == [Status.OK] * 3, second
    assert _new(inst, "alice@example.com") == [b"batch 0", b"batch 2"]
    assert _new(inst, "alice@example.com", ".crash") == [b"batch 1"]
