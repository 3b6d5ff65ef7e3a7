"""Both directions against Courier-IMAP's own imapd (5.0.13, Debian's .deb unpacked as
../shared/bench/anchors-install does): a folder Courier has served opens here with the
same UIDVALIDITY, UIDs, flags and keywords, and one we changed opens in Courier the same.

Courier's imapd runs pre-authenticated on stdin/stdout (AUTHENTICATED set, the Maildir
as its argument; IMAP_KEYWORDS=1 as Debian's /etc/courier/imapd sets it): no network,
no authdaemond. Skipped where the binary is not unpacked; CI checks our reading of
Courier's files through the golden copy in tests/data/courier-keywords
(tests/unit/test_maildir_keywords.py::test_reads_courier_written_folder), which
`python -m tests.integration.test_maildir_courier <dir>` records again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from libcourier.maildir import folders
from libcourier.maildir.flags import letters_to_imap
from libcourier.maildir.folder import Maildir

COURIER_IMAPD = Path(os.environ.get("COURIER_IMAPD",
                                    "/var/tmp/mail-anchors/courier/usr/bin/imapd"))
TIMEOUT = 60
FETCH = re.compile(rb"^\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\)\)\r?$", re.M)

needs_courier = pytest.mark.skipif(not os.access(COURIER_IMAPD, os.X_OK),
                                   reason=f"Courier's imapd not unpacked at {COURIER_IMAPD}")

MESSAGES = [b"From: a@example.com\nSubject: one\n\nfirst\n",
            b"From: b@example.com\nSubject: two\n\nsecond\n",
            b"From: c@example.com\nSubject: three\n\nthird\n",
            b"From: d@example.com\nSubject: four\n\nfourth\n"]


def courier(md: Path, script: bytes) -> bytes:
    """Run Courier's imapd on `md` with the commands in `script`; its output."""
    env = {"AUTHENTICATED": "test", "HOME": str(md.parent), "IMAP_KEYWORDS": "1",
           "PATH": "/usr/bin:/bin", "HOSTNAME": "courier.test"}
    r = subprocess.run([str(COURIER_IMAPD), str(md)], input=script + b"z LOGOUT\r\n",
                       capture_output=True, env=env, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def courier_view(out: bytes) -> tuple[int, list[tuple[int, set[str]]]]:
    """UIDVALIDITY and (uid, flags+keywords without \\Recent) from SELECT + FETCH output."""
    uidv = int(re.findall(rb"\[UIDVALIDITY (\d+)\]", out)[-1])
    seen: dict[int, set[str]] = {}
    for _seq, uid, flags in FETCH.findall(out):
        seen[int(uid)] = {f for f in flags.decode().split() if f != "\\Recent"}
    return uidv, sorted(seen.items())


def our_view(md: Path) -> tuple[int, list[tuple[int, set[str]]]]:
    st = Maildir(md).scan()
    return st.uidvalidity, [(m.uid, set(letters_to_imap(m.flags)) | set(m.keywords))
                            for m in st.messages]


def make_maildir(md: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for i, body in enumerate(MESSAGES):
        (md / "new" / f"{1_700_000_000 + i}.M{i}P1.courier.test,S={len(body)}").write_bytes(body)


APPENDED = b"Subject: appended\r\n\r\nbody\r\n"
COURIER_SCRIPT = (
    b"a SELECT INBOX\r\n"
    b"b STORE 1 +FLAGS (\\Seen $Label1 Work)\r\n"
    b"c STORE 2 +FLAGS (\\Deleted Junk)\r\n"
    b"d STORE 3 +FLAGS (\\Flagged \\Answered Work)\r\n"
    b"e STORE 1 -FLAGS (Work)\r\n"
    b"f EXPUNGE\r\n"
    b"g APPEND INBOX (\\Seen Appended $Label2) {%d}\r\n%s\r\n"
    b"h NOOP\r\n"
    b"i FETCH 1:* (UID FLAGS)\r\n"
) % (len(APPENDED), APPENDED)


def courier_then_ours(md: Path) -> tuple[int, list[tuple[int, set[str]]]]:
    make_maildir(md)
    out = courier(md, COURIER_SCRIPT)
    assert b"g OK" in out and b"f OK" in out, out
    return courier_view(out)


@needs_courier
def test_courier_writes_we_read(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    uidv, msgs = courier_then_ours(md)
    assert [u for u, _ in msgs] == [1, 3, 4, 5]
    assert dict(msgs)[1] == {"\\Seen", "$Label1"}
    assert dict(msgs)[5] == {"\\Seen", "Appended", "$Label2"}
    assert our_view(md) == (uidv, msgs)
    # And once more after our reader folded Courier's update files into :list.
    assert our_view(md) == (uidv, msgs)


@needs_courier
def test_we_write_courier_reads(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    courier_then_ours(md)
    box = Maildir(md)
    st = box.scan()
    by_uid = {m.uid: m for m in st.messages}
    box.change_flags(by_uid[1], add="F")
    box.change_keywords([by_uid[1]], "+", frozenset({"Ours"}))
    box.change_keywords([by_uid[3]], "-", frozenset({"work"}))     # Courier wrote "Work"
    box.change_flags(by_uid[4], add="T")
    box.remove(by_uid[4])
    folders.append_message(md, b"Subject: ours\r\n\r\nx\r\n", "D", None, ["FromUs"])
    ours = our_view(md)
    out = courier(md, b"a SELECT INBOX\r\nb FETCH 1:* (UID FLAGS)\r\n")
    assert courier_view(out) == ours
    assert dict(ours[1])[1] == {"\\Seen", "\\Flagged", "$Label1", "Ours"}
    assert dict(ours[1])[3] == {"\\Flagged", "\\Answered"}
    assert dict(ours[1])[6] == {"\\Draft", "FromUs"}
    # Courier changes keywords again on top of ours; we read its change.
    out = courier(md, b"a SELECT INBOX\r\nb UID STORE 6 FLAGS (\\Seen Final)\r\n"
                      b"c FETCH 1:* (UID FLAGS)\r\n")
    assert our_view(md) == courier_view(out)


def record(target: Path) -> None:
    """Write tests/data/courier-keywords/courier-wrote(.expected) from a live Courier run."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        md = Path(d) / "Maildir"
        uidv, msgs = courier_then_ours(md)
        shutil.rmtree(target / "courier-wrote", ignore_errors=True)
        shutil.copytree(md, target / "courier-wrote",
                        ignore=lambda _d, names: [n for n in names if n in ("new", "tmp")])
        st = Maildir(md).scan()   # our reading, checked equal to Courier's answer
        assert (st.uidvalidity, [(m.uid, set(letters_to_imap(m.flags)) | set(m.keywords))
                                 for m in st.messages]) == (uidv, msgs)
    lines = [f"UIDVALIDITY {st.uidvalidity}"] + [
        f"{m.uid} {m.flags} {' '.join(sorted(m.keywords))}".rstrip() for m in st.messages]
    (target / "courier-wrote.expected").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]))
