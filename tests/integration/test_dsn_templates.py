"""`courier init` ships Courier's DSN template files, and courierd's bounces
use what an admin writes in them (through the real courierd, courierlocal
and authd)."""

from __future__ import annotations

import email
import email.policy
import os
import time

from waiting import wait_for

from libcourier.control.init import DSN_FILES
from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify


def test_bounce_uses_the_admins_templates(new_instance):
    inst = new_instance
    for name in DSN_FILES:
        assert (inst.etc / name).is_file(), name
    (inst.etc / "dsnfailed.txt").write_text("\nTHE SITE'S OWN WORDS FOR A FAILURE:\n")
    (inst.etc / "dsnsubjectnotice.txt").write_text("Site notice\n")
    inst.adduser("alice@example.com", "pw")
    inst.adduser("bob@example.com", "pw")
    dot = inst.maildir("alice@example.com").parent / ".courier"
    dot.write_text("| exit 100\n")           # permanent failure (dot-courier(5))
    os.chmod(dot, 0o644)
    with open(inst.etc / "courierd", "a") as fh:
        fh.write("RETRYFIRST=1\nRETRYMAX=1\n")
    inst.start("authdaemond", "courierd")
    w = SpoolWriter(inst.layout.spooldir, 1 << 20)
    w.write(b"Subject: doomed\n\nhello\n")
    notify(inst.layout.queue_socket, w.commit(Envelope(
        "bob@example.com", (Recipient("alice@example.com"),), time.time())))
    new = inst.maildir("bob@example.com") / "new"
    files = wait_for(lambda: sorted(new.iterdir()) and not list_queue(inst.layout.spooldir))
    assert files, inst.logs()
    [f] = sorted(new.iterdir())
    msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Site notice"
    text = msg.get_payload()[0].get_content()
    me = (inst.etc / "me").read_text().strip()
    assert text.startswith(f"This is a delivery status notification from {me},\n")
    assert "\nTHE SITE'S OWN WORDS FOR A FAILURE:\n\n <alice@example.com>:\n" in text
    assert "program exited 100" in text
