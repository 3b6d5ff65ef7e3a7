"""courierlocal's main loop as a real forked process: peer credentials, bad
requests, authd unreachable, the lifeline that stops it."""

from __future__ import annotations

import os
import socket
import time

import pytest
from courier_deliver.local import bind_local_socket, request_delivery, run_helper
from courier_deliver.localproto import Status


@pytest.fixture
def helper(tmp_path):
    """Start a helper; yield a function (allowed uids) -> socket path."""
    started = []

    def start(allowed: set[int]):
        path = tmp_path / "courierlocal.sock"
        listen = bind_local_socket(path, None)
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(w)
                code = run_helper(listen, tmp_path / "no-authd" / "socket", allowed,
                                  parent_pid=None, cleanup=(path,), lifeline=r)
            finally:
                os._exit(code)
        os.close(r)
        listen.close()
        started.append((pid, w, path))
        return path

    yield start
    for pid, w, _path in started:
        try:
            os.close(w)
        except OSError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("courierlocal did not stop when its lifeline closed")


def data_fd(tmp_path):
    p = tmp_path / "msg"
    p.write_bytes(b"Subject: x\n\nhi\n")
    return os.open(p, os.O_RDONLY)


def test_authd_unreachable_is_temporary(helper, tmp_path):
    path = helper({os.getuid()})
    fd = data_fd(tmp_path)
    try:
        reply = request_delivery(path, fd, "", "alice@example.com", timeout=10)
    finally:
        os.close(fd)
    assert reply.status is Status.TEMP and reply.text.startswith("4.4.3"), reply


def test_peer_not_allowed_gets_no_answer(helper, tmp_path):
    path = helper({os.getuid() + 12345})
    fd = data_fd(tmp_path)
    try:
        reply = request_delivery(path, fd, "", "alice@example.com", timeout=10)
    finally:
        os.close(fd)
    # Closed unanswered: depending on timing the client sees EOF, a reset (our
    # request still unread) or a broken pipe (closed before we finished sending).
    assert reply.status is Status.TEMP
    assert any(w in reply.text.lower() for w in ("closed", "reset", "broken pipe")), reply.text


def test_bad_request_is_refused_and_the_helper_goes_on(helper, tmp_path):
    path = helper({os.getuid()})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"DELIVER <> alice@example.com\n")  # no fd passed
        assert s.recv(1000).startswith(b"PERM 5.5.2 bad request")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"x" * 20000)
        assert s.recv(1000).startswith(b"PERM 5.5.2")
    fd = data_fd(tmp_path)
    try:
        assert request_delivery(path, fd, "", "a@b", timeout=10).status is Status.TEMP
    finally:
        os.close(fd)


def test_lifeline_stops_the_helper_and_removes_its_socket(helper, tmp_path):
    path = helper({os.getuid()})
    assert path.exists()
    # The fixture's teardown closes the lifeline and fails if the helper stays.


def test_no_helper_is_temporary(tmp_path):
    fd = data_fd(tmp_path)
    try:
        reply = request_delivery(tmp_path / "absent.sock", fd, "", "a@b")
    finally:
        os.close(fd)
    assert reply.status is Status.TEMP and "not running" in reply.text
