"""A SELECT whose snapshot is stored after its reply holds cur/'s lock shared until
then (folder.Maildir.scan, `pending`): a client that does not read its SELECT reply
must not keep every other session's scan of the folder waiting with it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_imap_session import run_server, setup_maildir

SCAN = ("import sys; from pathlib import Path; "
        "from libcourier.maildir.folder import Maildir; "
        "print(len(Maildir(Path(sys.argv[1])).scan().messages))")


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    out = bytearray()
    while marker not in out:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(1 << 20)
        if not chunk or time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} from the server")
        out += chunk
    return bytes(out)


def test_a_stalled_select_reply_does_not_hold_the_folder(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "imapd").write_text("PORT=143\n")
    root = setup_maildir(tmp_path)
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    t = threading.Thread(target=run_server, args=(b, root, etc), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    scan = None
    try:
        a.sendall(b"a LOGIN alice pw\r\nb SELECT INBOX\r\nc CREATE INBOX.Other\r\nd SELECT INBOX.Other\r\n"
                  b"e UNSELECT\r\n")
        _read_until(a, b"e OK", deadline)    # the first SELECT made the snapshot
        # New mail: the next SELECT moves it into cur/, too recently to store its
        # snapshot at once, so it holds cur/'s lock until after its reply.
        (root / "new" / "2000.M1P1.h").write_bytes(b"Subject: new\n\nx\n")
        # The client reads nothing: the server's side of the connection is full.
        filler = socket.socket(fileno=os.dup(b.fileno()))
        try:
            for _ in range(10_000):
                filler.send(b"* junk\r\n" * 512, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        finally:
            filler.close()          # (a duplicate: the server's stays open)
        a.sendall(b"f SELECT INBOX\r\n")
        while any((root / "new").iterdir()):     # the server's scan has moved it
            assert time.monotonic() < deadline, "the SELECT did not scan"
            time.sleep(0.01)
        # Another session's scan of the folder, in its own process, goes on.
        scan = subprocess.Popen([sys.executable, "-c", SCAN, str(root)],
                                stdout=subprocess.PIPE, text=True)
        try:
            out, _ = scan.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("the scan waited for the stalled session") from None
        assert out.strip() == "3"
    finally:
        a.settimeout(1)
        try:
            a.sendall(b"z LOGOUT\r\n")
            _read_until(a, b"z OK", deadline)
        except (OSError, AssertionError):
            pass
        if scan is not None and scan.poll() is None:
            scan.kill()
            scan.wait()
        a.close()
        t.join(10)
