"""sendmail -bs driven in-process: the SMTP core plus a real maildrop sink in a
scratch directory (courier_deliver.sendmail.serve_bs)."""

from __future__ import annotations

import io
import os

from courier_deliver.localsubmit import Submitter
from courier_deliver.maildrop import read_block
from courier_deliver.sendmail import EX_OK, DropSink, serve_bs
from courier_deliver.submit import MAX_HEADER_BYTES

WHO = Submitter(1000, "alice", trusted=False)


def run(tmp_path, script: bytes, limit: int = 100_000) -> tuple[list[str], list[tuple]]:
    stdout = io.BytesIO()
    code = serve_bs(io.BytesIO(script), stdout, lambda: DropSink(tmp_path, limit), WHO,
                    me="mx.test", domains=("mx.test", "example.com"), domain="example.com",
                    sizelimit=limit)
    assert code == EX_OK
    files = []
    for name in sorted(os.listdir(tmp_path)):
        with open(tmp_path / name, "rb") as fh:
            files.append((read_block(fh), fh.read()))
    return stdout.getvalue().decode().split("\r\n")[:-1], files


def test_message_is_left_in_the_maildrop(tmp_path):
    replies, files = run(tmp_path, b"EHLO c\r\nMAIL FROM:<alice-web@mx.test> RET=FULL\r\n"
                                   b"RCPT TO:<Postmaster> NOTIFY=NEVER\r\nRCPT TO:<b@x.test>\r\n"
                                   b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert replies[-2].startswith("250 2.0.0 Ok: queued as ") and replies[-1].startswith("221")
    assert len(files) == 1
    env, data = files[0]
    assert env.sender == "alice-web@mx.test" and env.ret == "FULL"
    assert [(r.address, r.notify) for r in env.recipients] == [
        ("Postmaster@example.com", "NEVER"), ("b@x.test", None)]
    assert data.startswith(b"Subject: hi\nFrom: alice-web@mx.test\nDate: ")
    assert f"Message-ID: <courier-py.{replies[-2].rsplit(' ', 1)[1]}@mx.test>".encode() in data
    assert data.endswith(b"\n\nbody\n")


def test_too_big_and_bad_headers_leave_nothing(tmp_path):
    head = b"HELO c\r\nMAIL FROM:<alice@mx.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    replies, files = run(tmp_path, head + b"Subject: x\r\n\r\n" + b"y" * 300 + b"\r\n.\r\n"
                         + b"QUIT\r\n", limit=100)
    assert "552 5.3.4 Message size exceeds fixed maximum message size." in replies and files == []
    big_header = b"X-Long: " + b"z" * 500 + b"\r\n"
    replies, files = run(tmp_path, head + big_header * (MAX_HEADER_BYTES // 500 + 10)
                         + b"\r\nbody\r\n.\r\nQUIT\r\n", limit=0)
    assert any(r.startswith("554 5.6.0 Message refused: header section too large")
               for r in replies) and files == []
    assert replies[-1].startswith("221")


def test_the_user_cannot_send_as_someone_else(tmp_path):
    replies, files = run(tmp_path, b"EHLO c\r\nMAIL FROM:<bob@mx.test>\r\nMAIL FROM:<>\r\n"
                                   b"QUIT\r\n")
    assert replies[-3].startswith("553 5.7.1 user alice (uid 1000) may not use <bob@mx.test>")
    assert replies[-2].startswith("553 5.7.1 user alice (uid 1000) may not use the null sender")
    assert files == []
