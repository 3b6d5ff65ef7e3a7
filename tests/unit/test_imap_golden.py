"""Our FETCH answers for every corpus message against Dovecot's (golden files).

tests/data/imap-golden/<name>.txt was written by tests/data/tools/dovecot_golden.py
from a Dovecot 2.3 that had the message APPENDed with CRLF line ends; here the
message is stored with LF (as our Maildir delivery stores it) and the answers
must be byte for byte the same, sizes included, since we serve the CRLF form.
"""

from __future__ import annotations

import pathlib

import pytest
from courier_imapd import core as c
from courier_imapd import fetch as f

from libcourier.maildir.folder import MessageRef

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "imap-golden"
CORPUS = ROOT.parent / "shared" / "corpus"

# Where Dovecot is wrong by the RFC, we differ; each case with the reason.
DEVIATIONS: dict[tuple[str, str], str] = {
    # "Content-Type: text; charset=us-ascii" has no subtype, so it is syntactically
    # invalid (RFC 2045 §5.1 requires type "/" subtype). RFC 2045 §5.2: a syntactically
    # invalid Content-Type is to be taken as the default "text/plain; charset=us-ascii";
    # Dovecot reports type "" and subtype "" (not even valid body-fld-mtype strings)
    # and then omits the line count RFC 3501 §7.4.2 requires for text/* bodies.
    ("cpython_msg_14", "BODYSTRUCTURE"): "RFC 2045 §5.2 default for an invalid Content-Type",
    ("cpython_msg_14", "BODY"): "RFC 2045 §5.2 default for an invalid Content-Type",
}


def _escape(data: bytes) -> bytes:
    return data.replace(b"\\", b"\\\\").replace(b"\r", b"\\r").replace(b"\n", b"\\n")


def _golden(name: str) -> list[tuple[str, bytes]]:
    out = []
    for line in (GOLDEN / f"{name}.txt").read_bytes().splitlines():
        item, _, answer = line.partition(b"\t")
        out.append((item.decode(), answer))
    return out


def _ours(path: pathlib.Path, item: str) -> bytes:
    cmd = c.parse_command([(f"a FETCH 1 ({item})".encode(), None)], c.State.SELECTED)
    assert isinstance(cmd, c.Fetch), cmd
    msg = MessageRef(1, "x", "x", "", 0, 0.0)
    with open(path, "rb") as fh:
        parts, _ = f.message_parts(cmd.items, msg, fh, "()", None)
        wire = b"".join(c.fetch_response_pieces(1, parts))
    prefix = b"* 1 FETCH ("
    assert wire.startswith(prefix) and wire.endswith(b")\r\n"), wire[:80]
    return wire[len(prefix):-3]


# One file per corpus message; search-sort-thread.txt is test_imap_search_golden's.
NAMES = sorted(p.stem for p in GOLDEN.glob("*.txt") if p.stem != "search-sort-thread")


def test_golden_files_cover_the_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip("no ../shared/corpus beside the checkout")
    assert NAMES == sorted(p.stem for p in CORPUS.glob("*.eml"))
    assert len(NAMES) >= 50


@pytest.mark.parametrize("name", NAMES)
def test_matches_dovecot(name: str, tmp_path: pathlib.Path) -> None:
    src = CORPUS / f"{name}.eml"
    if not src.is_file():
        pytest.skip("corpus message missing")
    stored = tmp_path / "msg"
    stored.write_bytes(src.read_bytes().replace(b"\r\n", b"\n"))     # as delivered: LF
    wrong = []
    for item, answer in _golden(name):
        ours = _escape(_ours(stored, item))
        if (name, item) in DEVIATIONS:
            assert ours != answer       # the deviation is still there, and deliberate
            continue
        if ours != answer:
            wrong.append(f"{item}\n  ours: {ours[:400]!r}\n  gold: {answer[:400]!r}")
    assert not wrong, "\n".join(wrong)


def test_deviation_answer_is_rfc_default(tmp_path: pathlib.Path) -> None:
    src = CORPUS / "cpython_msg_14.eml"
    if not src.is_file():
        pytest.skip("no ../shared/corpus beside the checkout")
    stored = tmp_path / "msg"
    stored.write_bytes(src.read_bytes())
    assert _ours(stored, "BODY").startswith(b'BODY ("text" "plain" ("charset" "us-ascii")')
