"""The esmtpd core's bulk DATA pass (whole clean lines at once) against its line-by-line
rules: for any bytes, cut anywhere, both give the same replies, message text, sizes and
8-bit flag, so the fast path can never read a message differently (smuggling, limits)."""

from __future__ import annotations

import pytest
from courier_smtpd.core import (
    AcceptAll,
    Close,
    DataChunk,
    DataStart,
    Limits,
    MessageAborted,
    MessageReady,
    Send,
    SessionInfo,
    SmtpServer,
)
from hypothesis import given, settings
from hypothesis import strategies as st

START = b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<r@foo.com>\r\nDATA\r\n"


class LineByLine(SmtpServer):
    """The reference: the bulk pass never applies."""

    def _data_bulk(self):
        return None


def run(cls: type[SmtpServer], chunks: list[bytes], limits: Limits) -> list[tuple]:
    core = cls(SessionInfo("foo.com"), AcceptAll(), limits)
    record: list[tuple] = []
    text = bytearray()
    for chunk in chunks:
        queue = list(core.feed(chunk))
        while queue:
            ev = queue.pop(0)
            match ev:
                case Send(data):
                    record.append(("send", data))
                case DataStart():
                    text.clear()
                case DataChunk(data):
                    text += data
                case MessageReady(txn):
                    record.append(("message", bytes(text), txn))
                    queue += core.message_accepted("Q")
                case MessageAborted(reason):
                    record.append(("aborted", reason))
                case Close():
                    record.append(("close",))
                case _:
                    raise AssertionError(ev)
    record.append(("state", core.state))
    return record


def both(chunks: list[bytes], limits: Limits | None = None) -> list[tuple]:
    limits = limits or Limits(max_size=3000, max_text_line=40, max_errors=1000)
    fast = run(SmtpServer, chunks, limits)
    assert fast == run(LineByLine, chunks, limits)
    return fast


PIECES = [b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n", b"\0",
          b"\xc3\xa9", b"x" * 45, b"MAIL FROM:<c@d.e>\r\n", b"RCPT TO:<r@foo.com>\r\n",
          b"DATA\r\n", b"QUIT\r\n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.lists(st.integers(0, 400), max_size=8))
def test_bulk_and_line_by_line_agree(pieces, cuts):
    data = START + b"".join(pieces) + b"\r\n.\r\nNOOP\r\n"
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]
    both(chunks)


def test_bulk_unstuffs_and_counts():
    body = b"Subject: s\r\n\r\n..leading dot\r\n.\r\n"
    rec = both([START + body[:-3], body[-3:]], Limits())
    (_, text, txn), = [r for r in rec if r[0] == "message"]
    assert text == b"Subject: s\r\n\r\n.leading dot\r\n"
    assert txn.size == len(text)


@pytest.mark.parametrize("body, reply", [
    (b"ok\r\n" + b"z" * 41 + b"\r\n", b"550 5.6.0"),        # 41 + CRLF > 40
    (b"bare\nlf\r\n", b"550 5.6.2"),
    (b"nul\0\r\n", b"550 5.6.0 Message contains NUL"),
    (b"y" * 38 + b"\r\n" * 100, b"552 5.3.4"),              # over max_size=100
])
def test_bulk_leaves_refusals_to_the_line_rules(body, reply):
    limits = Limits(max_size=100, max_text_line=40)
    rec = both([START + body + b".\r\nNOOP\r\n"], limits)
    sends = [r[1] for r in rec if r[0] == "send"]
    assert sends[-2].startswith(reply) and sends[-1] == b"250 2.0.0 Ok.\r\n"
    assert not [r for r in rec if r[0] == "message"]


def test_line_of_exactly_the_limit_is_taken():
    limits = Limits(max_text_line=40)
    rec = both([START + b"w" * 38 + b"\r\n.\r\n"], limits)
    assert [r for r in rec if r[0] == "message"]


@pytest.mark.parametrize("n", [37, 38, 39, 40])
@pytest.mark.parametrize("tail", [b"", b"\r", b"\r\r\n", b"\n\r\n", b"\r\n\n"])
def test_lines_around_the_limit_and_stray_line_ends_agree(n, tail):
    # The bulk pass finds both at the CRLF split: each side of every boundary.
    both([START + b"w" * n + b"\r\n" + b"v" * (n - 1) + tail + b"\r\n.\r\nNOOP\r\n"],
         Limits(max_text_line=40))
