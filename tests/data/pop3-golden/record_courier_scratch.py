"""Record what Courier's own pop3d does to a scratch Maildir it has never seen.

Runs Debian's courierpop3d (courier-pop 5.0.13, unpacked under
/var/tmp/mail-anchors/courier by ../shared/bench/anchors-install) pre-authenticated
on stdin/stdout, as courierpop3login would exec it (TCPREMOTEIP, AUTHENTICATED,
MAILDIR=., UTF8=1 but in the last session), in a fresh Maildir built from
MESSAGES below, then runs SESSIONS one after another (files added between
sessions as listed), and writes courier-scratch.json: per session the
commands, Courier's whole reply, the courierpop3dsizelist it left, whether it
rewrote that file, and the Maildir's file names afterwards.

    python3 tests/data/pop3-golden/record_courier_scratch.py [COURIERPOP3D]

tests/unit/test_pop3_courier_scratch.py replays the same sessions against our
pop3d (with the clock set to the UIDVALIDITY Courier chose) and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COURIERPOP3D = "/var/tmp/mail-anchors/courier/usr/lib/courier/courier/courierpop3d"
HERE = Path(__file__).resolve().parent
OUT = HERE / "courier-scratch.json"

# (path in the Maildir, content). Names chosen for Courier's sort (cmpmsgs: the
# leading number as atol(), then the name byte by byte as signed char up to ":"),
# contents for its size (octets + one per LF) and its 8-bit-header flag.
MESSAGES: list[tuple[str, bytes]] = [
    ("new/1790000000.M1P100.golden,S=41",
     b"From: a@example.com\nSubject: plain\n\nbody\n"),
    ("cur/1790000000.M0P100.golden:2,S",
     b"Subject: already in cur, seen\n\nold\n"),
    ("new/999999999.M2P100.golden",
     b"Subject: nine digits of time\n\nsorts first by number, last by bytes\n"),
    ("new/1790000005.M3P100.golden",
     "Subject: café 8-bit header\nFrom: Jürgen <j@example.de>\n\nbody\n".encode()),
    ("new/1790000006.M4P100.golden",
     b"Subject: no final newline\n\nlast line"),
    ("new/1790000007.M5P100.golden",
     b"Subject: crlf\r\n\r\nline one\r\nline two\r\n"),
    ("new/1790000008.M6P100.golden", b""),
    ("new/1790000009.M7P100.golden",
     "Subject: 8-bit body only\n\nnaïve body\n".encode()),
    ("new/1790000010.M8P100.golden",
     ("Subject: 8-bit in a part header\nMIME-Version: 1.0\n"
      "Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\n"
      "Content-Type: text/plain; name=\"résumé.txt\"\n\npart\n--b--\n").encode()),
    ("new/1790000011.M9P100.golden",
     b"Subject: dots\n\n.leading dot\n..two dots\n.\nend\n"),
    ("cur/1790000012.M10P100.golden:2,FS",
     b"Subject: flagged in cur\n\nx\n"),
    ("new/1790000013.M11P100.golden",
     b"Subject: ascii twin\n\ny\n"),
    ("new/1790000013.M11P100.gölden",
     b"Subject: non-ascii file name\n\nz\n"),
    ("new/abc.not-a-number",
     b"Subject: atol gives 0\n\nw\n"),
    ("cur/.hidden", b"Subject: skipped, a dot file\n\n"),
    ("new/1790000014.M12P100.golden:2,",
     b"Subject: already has an info in new\n\nv\n"),
    # Where rfc2045 looks for 8-bit headers: parts and attached messages count only
    # under MIME-Version 1.0; preambles, epilogues and text bodies never.
    ("new/1790000050.M50P100.golden",
     "MIME-Version: 1.0\nContent-Type: message/rfc822\n\nSubject: grüße\n\nb\n".encode()),
    ("new/1790000051.M51P100.golden",
     ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
      "Content-Type: message/rfc822\n\nFrom: Jürgen <j@x>\n\nhi\n--b--\n").encode()),
    ("new/1790000052.M52P100.golden",
     ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
      "Content-Type: multipart/alternative; boundary=c\n\n--c\nX-Ä: 1\n\nz\n--c--\n"
      "--b--\n").encode()),
    ("new/1790000053.M53P100.golden",
     "Content-Type: multipart/mixed; boundary=b\n\n--b\nX-Ä: 1\n\nz\n--b--\n".encode()),
    ("new/1790000054.M54P100.golden",
     "MIME-Version: 1.0\nContent-Type: text/plain\n\n--b\nX-Ä: 1\n\nz\n--b--\n".encode()),
    ("new/1790000055.M55P100.golden",
     ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\npreamble ä\n--b\n"
      "\nz\n--b--\nepilogue ä\n").encode()),
    ("new/1790000056.M56P100.golden",
     "MIME-Version: 1.0\nContent-Type:\n message/global\n\nSubject: grüße\n\nb\n".encode()),
]

SESSIONS: list[dict] = [
    {"add": [], "commands": ["STAT", "LIST", "UIDL", "RETR 2", "TOP 9 1",
                             "DELE 3", "DELE 6", "QUIT"]},
    {"add": [
        ("new/1790000100.M20P100.golden", b"Subject: arrived later\n\nnew\n"),
        ("cur/1780000000.M21P100.golden:2,", b"Subject: older name, later arrival\n\nold\n"),
        ("new/1790000101.M22P100.golden", "Subject: später 8-bit\n\nä\n".encode()),
    ], "commands": ["STAT", "LIST", "UIDL", "QUIT"]},
    {"add": [], "commands": ["STAT", "LIST", "UIDL", "QUIT"]},
    # A client that did not send UTF8 (courierpop3login passes UTF8=0): messages with
    # 8-bit headers come inside Courier's notice (RFC 6856), TOP too.
    {"utf8": 0, "add": [
        ("new/1790000200.M30P100.golden", "Subject: ünterminated\n\nlast".encode()),
    ], "commands": ["LIST", "RETR 5", "TOP 5 0", "TOP 17 3", "RETR 24", "RETR 1", "QUIT"]},
]


def _write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.write_bytes(data)


def _snapshot(root: Path) -> list[str]:
    out = []
    for d in ("new", "cur"):
        out += sorted(f"{d}/{n}" for n in os.listdir(root / d))
    return out


def _sizelist(root: Path) -> tuple[bytes | None, int | None]:
    p = root / "courierpop3dsizelist"
    try:
        return p.read_bytes(), p.stat().st_ino
    except FileNotFoundError:
        return None, None


def run(binary: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "Maildir"
        for d in ("tmp", "new", "cur"):
            (root / d).mkdir(parents=True)
        for rel, data in MESSAGES:
            _write(root, rel, data)
        sessions = []
        for s in SESSIONS:
            env = {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": "0",
                   "AUTHENTICATED": "golden", "MAILDIR": ".", "UTF8": str(s.get("utf8", 1)),
                   "PATH": "/usr/bin:/bin"}
            for rel, data in s["add"]:
                _write(root, rel, data)
            _, ino_before = _sizelist(root)
            stdin = "".join(c + "\r\n" for c in s["commands"]).encode()
            r = subprocess.run([binary], input=stdin, cwd=root, env=env,
                               capture_output=True, timeout=60, check=True)
            after, ino_after = _sizelist(root)
            sessions.append({
                "add": [[os.fsencode(rel).hex(), data.hex()] for rel, data in s["add"]],
                "commands": s["commands"],
                "utf8": s.get("utf8", 1),
                "reply_hex": r.stdout.hex(),
                "sizelist": after.decode("utf-8", "surrogateescape") if after else None,
                "sizelist_hex": after.hex() if after is not None else None,
                "rewrote_sizelist": ino_after != ino_before,
                "files_after": [os.fsencode(n).hex() for n in _snapshot(root)],
            })
    return {
        "source": f"{binary} (Debian courier-pop 5.0.13), run by "
                  "tests/data/pop3-golden/record_courier_scratch.py",
        "messages": [[os.fsencode(rel).hex(), data.hex()] for rel, data in MESSAGES],
        "sessions": sessions,
    }


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else COURIERPOP3D
    data = run(binary)
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    for s in data["sessions"]:
        print(bytes.fromhex(s["reply_hex"]).decode("utf-8", "replace"))
        print(s["sizelist"], "rewritten" if s["rewrote_sizelist"] else "kept")


if __name__ == "__main__":
    main()
