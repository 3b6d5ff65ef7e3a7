"""A warm SELECT answered from the folder snapshot (libcourier.maildir.snapshot) over
IMAP: the session holds no message list until a command needs one, and still reports
every delivery, flag change and expunge made elsewhere at the points RFC 3501 allows
(the client model and the oracle of test_imapd_concurrency)."""

from __future__ import annotations

import os
import random
import time

from libcourier.maildir.folder import Maildir
from libcourier.maildir.snapshot import STATE_NAME
from tests.integration.test_imapd import USER, deliver
from tests.integration.test_imapd_concurrency import Client, box, check_against, msg

__all__ = ["box"]      # the fixture, shared with test_imapd_concurrency


def _ino(path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def test_warm_selects_see_changes_made_elsewhere(box) -> None:
    md = box.maildir(USER)
    rng = random.Random(int(os.environ.get("IMAP_SEED", "5")))
    a = Client(box, "A")                  # the cold SELECT: moves new/, stores the snapshot
    oracle = Client(box, "O", examine=True)
    assert (md / STATE_NAME).exists()
    clients = [a, oracle]
    warm = tried = 0
    told: dict[str, int] = {}              # what the B sessions were told of others' changes
    delivered = 6
    try:
        for step in range(12):
            # Two SELECTs in a row with nothing between: the second is warm.
            Client(box, f"P{step}").close()
            # P's snapshot may be stored just after its reply (folder.store_snapshot):
            # B is measured against the file P leaves (a bounded wait, no assumption).
            settle_by = time.monotonic() + 2.0
            while time.monotonic() < settle_by:
                s = Maildir(md).open_summary()
                if s is not None:
                    s.file.close()
                    break
                time.sleep(0.01)
            before = _ino(md / STATE_NAME)
            b = Client(box, f"B{step}")
            clients.append(b)
            tried += 1
            warm += _ino(md / STATE_NAME) == before
            # Changes by others while B, lazy, holds nothing per message.
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(4)
                n = len(a.uids)
                if op == 0 or not n:
                    deliver(md, msg(delivered))
                    delivered += 1
                elif op == 1:
                    flag = rng.choice((b"\\Seen", b"\\Flagged", b"$Label1"))
                    a.run("STORE", b"STORE %d +FLAGS (%s)" % (rng.randint(1, n), flag))
                elif op == 2:
                    a.run("STORE", b"STORE %d +FLAGS (\\Deleted)" % rng.randint(1, n))
                    a.run("EXPUNGE", b"EXPUNGE")
                else:
                    a.run("STORE", b"STORE %d -FLAGS (\\Seen)" % rng.randint(1, n))
            check_against(b, oracle)
            check_against(a, oracle)
            for k in ("EXPUNGE-other", "FLAGS"):
                told[k] = told.get(k, 0) + b.seen.get(k, 0)
            b.run("LOGOUT", b"LOGOUT")
            b.close()
            clients.remove(b)
        # Not vacuous: most of those SELECTs were answered from the snapshot.
        print("warm", warm, tried, told)
        assert warm >= tried // 2, (warm, tried)
        assert told.get("EXPUNGE-other", 0) >= 1 and told.get("FLAGS", 0) >= 1, told
    finally:
        for c in clients:
            c.close()
