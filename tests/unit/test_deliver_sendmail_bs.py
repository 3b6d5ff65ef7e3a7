"""sendmail -bs driven in-process: the SMTP core plus a real maildrop sink in a
scratch directory (courier_deliver.sendmail.serve_bs)."""

from __future__ import annotations

import io
import os

from courier_deliver.localsubmit import Submitter
from courier_deliver.maildrop import read_block
from courier_deliver.sendmail import EX_OK, DropSink, SpoolSink, serve_bs
from courier_deliver.submit import MAX_HEADER_BYTES

from libcourier.layout import Layout
from libcourier.spool import ensure_spool, list_queue, read_envelope

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


FLAGS_SCRIPT = (b"EHLO c\r\n"
                b"MAIL FROM:<alice@mx.test> VERP SECURITY=STARTTLS SMTPUTF8\r\n"
                b"RCPT TO:<j\xc3\xb6rg@x.test>\r\nDATA\r\nSubject: f\r\n\r\nx\r\n.\r\n"
                b"MAIL FROM:<alice@mx.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nx\r\n.\r\n"
                b"QUIT\r\n")


def test_verp_security_and_smtputf8_go_into_the_maildrop_block(tmp_path):
    replies, files = run(tmp_path, FLAGS_SCRIPT)
    assert "250-XVERP=Courier" in replies and "250-XSECURITY=NONE,STARTTLS" in replies
    assert "250-SMTPUTF8" in replies and "250-XEXDATA" in replies
    assert sum(r.startswith("250 2.0.0 Ok: queued as ") for r in replies) == 2
    flags = sorted((env.smtputf8, env.verp, env.security) for env, _ in files)
    assert flags == [(False, False, None), (True, True, "STARTTLS")]
    flagged = next(env for env, _ in files if env.verp)
    assert [r.address for r in flagged.recipients] == ["j\u00f6rg@x.test"]


def test_verp_security_and_smtputf8_go_into_the_spool_directly(tmp_path):
    """The path of root and the daemon account: SpoolSink writes the spool envelope."""
    spool, run_dir = tmp_path / "spool", tmp_path / "run"
    ensure_spool(spool)
    run_dir.mkdir()
    layout = Layout(etc=tmp_path, spooldir=spool, rundir=run_dir, logdir=None,
                    mailuser="daemon", mailgroup="daemon", authsocket=run_dir / "authd")
    stdout = io.BytesIO()
    assert serve_bs(io.BytesIO(FLAGS_SCRIPT), stdout, lambda: SpoolSink(layout, WHO, "mx.test",
                                                                        100_000), WHO,
                    me="mx.test", domains=("mx.test",), domain="mx.test",
                    sizelimit=100_000) == EX_OK
    assert stdout.getvalue().count(b"250 2.0.0 Ok: queued as ") == 2
    envs = sorted((read_envelope(spool, q) for q in list_queue(spool)), key=lambda e: e.verp)
    assert [(e.smtputf8, e.verp, e.security) for e in envs] == [
        (False, False, None), (True, True, "STARTTLS")]
    assert envs[1].recipients[0].address == "j\u00f6rg@x.test"
