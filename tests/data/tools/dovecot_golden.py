#!/usr/bin/env python3
"""Record Dovecot's FETCH answers for every corpus message as golden files.

Each message of ../shared/corpus/*.eml is APPENDed (LF turned into CRLF) to a
scratch mailbox of the Dovecot anchor (127.0.0.1:10143, benchuser), FETCHed,
and the scratch mailbox is deleted again, so the anchor's INBOX is untouched.
For each message tests/data/imap-golden/<name>.txt holds one line per item:
`<ITEM> <answer>` with literals written inline as `{n}\\r\\n<bytes>` and the
line ends of the answer escaped (\\r\\n -> \\\\r\\\\n) so the file stays one item per
line. tests/unit/test_imap_golden.py compares courier-py's answers with them.

Usage: python3 tests/data/tools/dovecot_golden.py [--corpus DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import imaplib
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "BODY.PEEK[HEADER]",
         "BODY.PEEK[TEXT]", "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]",
         "BODY.PEEK[1.1]", "BODY.PEEK[2.HEADER]", "BODY.PEEK[1.TEXT]",
         "BODY.PEEK[HEADER.FIELDS (From Subject)]", "BODY.PEEK[HEADER.FIELDS.NOT (Subject)]",
         "BODY.PEEK[2.1]", "BODY.PEEK[1.2]", "BODY.PEEK[3]")
BOX = "mgolden-scratch"


def escape(data: bytes) -> bytes:
    return data.replace(b"\\", b"\\\\").replace(b"\r", b"\\r").replace(b"\n", b"\\n")


def flatten(resp: list) -> bytes:
    """imaplib's FETCH answer (tuples for literals) back into the wire form."""
    out = b""
    for piece in resp:
        if isinstance(piece, tuple):
            out += piece[0] + b"\r\n" + piece[1]
        elif piece is not None:
            out += piece
    return out


def item_answer(wire: bytes, item: str) -> bytes:
    """The value after `* n FETCH (UID u ` and the data item name."""
    m = re.match(rb"\d+ \(UID \d+ ", wire)
    assert m, wire[:80]
    rest = wire[m.end():]
    assert rest.endswith(b")"), rest[-80:]
    return rest[:-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(HERE.parents[3] / "shared" / "corpus"))
    ap.add_argument("--out", default=str(HERE.parent / "imap-golden"))
    ap.add_argument("--port", type=int, default=10143)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(exist_ok=True)
    imap = imaplib.IMAP4("127.0.0.1", args.port)
    imap.login("benchuser", "benchpass")
    imap.create(BOX)
    try:
        imap.select(BOX)
        for eml in sorted(pathlib.Path(args.corpus).glob("*.eml")):
            data = eml.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            typ, resp = imap.append(BOX, None, None, data)
            assert typ == "OK", resp
            uid = re.search(rb"APPENDUID \d+ (\d+)", resp[0]).group(1).decode()
            lines = []
            for item in ITEMS:
                typ, resp = imap.uid("FETCH", uid, f"({item})")
                assert typ == "OK", resp
                wire = flatten(resp)
                name = item.replace(".PEEK", "")
                lines.append(name.encode() + b"\t" + escape(item_answer(wire, item)))
            (out / (eml.stem + ".txt")).write_bytes(b"\n".join(lines) + b"\n")
            imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
            imap.expunge()
    finally:
        imap.select("INBOX", readonly=True)
        imap.delete(BOX)
        imap.logout()


if __name__ == "__main__":
    main()
