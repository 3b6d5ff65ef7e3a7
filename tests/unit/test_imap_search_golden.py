"""SEARCH, SORT and THREAD on the corpus against Dovecot's answers (golden data).

tests/data/imap-golden/search-sort-thread.txt was written by
tests/data/tools/dovecot_search_golden.py: every corpus message APPENDed to a
Dovecot 2.3 with an INTERNALDATE and flags given by its position, then each
command's untagged answer. Here the same messages are stored in a Maildir (LF
line ends, as our delivery stores them) with the same dates and flags, a real
Session answers the same commands over a socketpair, and the answers must be
the same, but for the cases listed in DEVIATIONS with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

from tests.unit.test_imap_session import session

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "imap-golden" / "search-sort-thread.txt"
CORPUS = ROOT.parent / "shared" / "corpus"
TOOL = ROOT / "tests" / "data" / "tools" / "dovecot_search_golden.py"

# Where we answer differently from Dovecot, and why.
DEVIATIONS: dict[str, str] = {
    # cpython_msg_14 has "Content-Type: text; charset=us-ascii" (no subtype): RFC 2045
    # §5.2 says to take an invalid Content-Type as text/plain, so its body is text and
    # holds the words "Content-Type: header"; Dovecot takes the part as non-text and
    # does not look inside (as it reports type "" in BODYSTRUCTURE, test_imap_golden.py).
    'SEARCH BODY "content-type"': "RFC 2045 §5.2 default for an invalid Content-Type",
}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir() or not GOLDEN.exists(),
                                reason=f"corpus {CORPUS} or golden file not present")


def _tool():
    spec = importlib.util.spec_from_file_location("dovecot_search_golden", TOOL)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LETTERS = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D"}


def _golden() -> list[tuple[str, bytes]]:
    out = []
    for line in GOLDEN.read_bytes().splitlines():
        cmd, _, answer = line.partition(b"\t")
        out.append((cmd.decode("utf-8").replace("\\r\\n", "\r\n"), answer))
    return out


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tool = _tool()
    tmp = tmp_path_factory.mktemp("golden")
    root = tmp / "Maildir"
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    for i, eml in enumerate(sorted(CORPUS.glob("*.eml"))):
        when, flags = tool.placement(i)
        letters = "".join(sorted(LETTERS[f] for f in flags))
        p = root / "cur" / f"{1600000000 + i}.M{i:03d}P1.golden:2,{letters}"
        p.write_bytes(eml.read_bytes())
        os.utime(p, (when.timestamp(), when.timestamp()))
    golden = _golden()
    script = b"a LOGIN alice pw\r\nb SELECT INBOX\r\n"
    for n, (cmd, _) in enumerate(golden):
        script += b"t%d " % n + cmd.encode("utf-8") + b"\r\n"
    script += b"z LOGOUT\r\n"
    out = session(tmp, script)
    got: dict[str, bytes] = {}
    pending = b""
    for line in out.split(b"\r\n"):
        if line.startswith((b"* SEARCH", b"* SORT", b"* THREAD")):
            pending = line
        elif line.startswith(b"t") and b" " in line:
            tag, status = line.split(b" ", 2)[:2]
            n = int(tag[1:])
            got[golden[n][0]] = pending if status == b"OK" else line
            pending = b""
    return got


@pytest.mark.parametrize("cmd, want", _golden() if GOLDEN.exists() else [],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_same_as_dovecot(answers: dict[str, bytes], cmd: str, want: bytes) -> None:
    if cmd in DEVIATIONS:
        assert answers[cmd] != want, f"deviation no longer needed: {DEVIATIONS[cmd]}"
        return
    assert answers[cmd] == want
