"""The bench mailbox (../shared/bench/mailbench.py imap-populate: multipart, 8-bit
headers and bodies, RFC 2047, attachments, new/ and cur/) read by Courier's own
pop3d and by ours from no courierpop3dsizelist: the two lists must be the same
bytes (same order, sizes, UIDs, 8-bit flags), given Courier's UIDVALIDITY.
Skips when Courier's binary (../shared/bench/anchors-install) or mailbench is
not on this machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from courier_pop3d.maildrop import Maildrop

COURIERPOP3D = Path("/var/tmp/mail-anchors/courier/usr/lib/courier/courier/courierpop3d")
MAILBENCH = Path(__file__).resolve().parents[3] / "shared" / "bench" / "mailbench.py"
COUNT = 2000
# The bench mailbox has 8-bit bodies but RFC 2047 headers only: add 8-bit headers
# in the places Courier's rfc2045 looks (top, a part, an attached message: the
# last two only under MIME-Version 1.0), and 8-bit bodies that must not count.
EXTRA = [
    "Subject: café\n\nbody\n".encode(),
    ("Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
     "--b\nContent-Type: text/plain; name=\"é.txt\"\n\nx\n--b--\n").encode(),
    ("Subject: x\nContent-Type: message/rfc822\n\nSubject: grüße\n\nbody\n").encode(),
    ("Subject: x\nContent-Type:\n multipart/alternative; boundary=\"q\"\n\n--q\n\nnaïve\n"
     "--q--\n").encode(),
    ("Subject: x\nMime-Version: 1.0 (x)\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
     "Content-Type: message/rfc822\n\nFrom: Jürgen <j@x>\n\nhi\n--b--\n").encode(),
]


@pytest.mark.skipif(not os.access(COURIERPOP3D, os.X_OK),
                    reason=f"Courier's pop3d is not unpacked at {COURIERPOP3D}")
@pytest.mark.skipif(not MAILBENCH.is_file(), reason=f"{MAILBENCH} is not here")
def test_bench_mailbox_sizelist_same_bytes_as_courier(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "courier", tmp_path / "ours"
    subprocess.run([sys.executable, str(MAILBENCH), "imap-populate", "--maildir", str(theirs),
                    "--count", str(COUNT), "--fresh"], check=True, capture_output=True,
                   timeout=300)
    for i, m in enumerate(EXTRA):
        (theirs / "new" / f"{1800000000 + i}.M{i}P7.extra").write_bytes(m)
    shutil.copytree(theirs, ours, symlinks=True)
    env = {"TCPREMOTEIP": "127.0.0.1", "AUTHENTICATED": "bench", "MAILDIR": ".",
           "UTF8": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(COURIERPOP3D)], input=b"STAT\r\nQUIT\r\n", cwd=theirs, env=env,
                       capture_output=True, timeout=120, check=True)
    total = COUNT + len(EXTRA)
    assert r.stdout.startswith(b"+OK logged in.\r\n+OK %d " % total)
    listed = (theirs / "courierpop3dsizelist").read_bytes()
    uidv = int(listed.split(b"\n", 1)[0].split()[2])
    drop = Maildrop(ours)
    view = drop.open(now=uidv)
    assert (ours / "courierpop3dsizelist").read_bytes() == listed
    assert r.stdout.split(b"\r\n")[1] == b"+OK %d %d" % (total, sum(view.sizes))
    assert sorted(os.listdir(ours / "cur")) == sorted(os.listdir(theirs / "cur"))
    # Some of them are flagged 8-bit, some not: the check is not vacuous.
    flags = [line.rsplit(b":", 1)[1] for line in listed.splitlines()[1:]
             if b".extra:" in line]
    # (the third: no MIME-Version, so rfc2045 does not look inside)
    assert flags == [b"1", b"1", b"0", b"0", b"1"]
