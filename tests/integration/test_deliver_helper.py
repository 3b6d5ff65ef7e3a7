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


def test_kept_connection_serves_many_requests(helper, tmp_path):
    """courierd's LocalClient sends request after request on one connection: one
    connection child answers them all (the same socket comes back each time)."""
    from courier_deliver.local import LocalClient
    path = helper({os.getuid()})
    client = LocalClient(timeout=10)
    fd = data_fd(tmp_path)
    seen = []
    try:
        for _ in range(3):
            reply = client.request(path, fd, "", "alice@example.com")
            assert reply.status is Status.TEMP and reply.text.startswith("4.4.3"), reply
            assert len(client._idle) == 1
            seen.append(client._idle[0][1])
    finally:
        os.close(fd)
        client.close()
    assert seen[0] is seen[1] is seen[2]
    assert seen[0].fileno() == -1          # closed by client.close()


def _one_shot_server(path, answers: int):
    """A peer that answers one request per connection and closes it, as a
    connection child does at its idle timeout; counts its connections."""
    import threading
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(10)
    conns = []

    def run():
        for _ in range(answers):
            conn, _ = srv.accept()
            with conn:
                conns.append(conn)
                data, fds, _f, _a = socket.recv_fds(conn, 4096, 4)
                for f in fds:
                    os.close(f)
                assert data.startswith(b"DELIVER ")
                conn.sendall(b"OK stored\n")
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, conns


def test_kept_connection_closed_by_the_helper_is_replaced(tmp_path):
    from courier_deliver.local import LocalClient
    path = tmp_path / "one-shot.sock"
    thread, conns = _one_shot_server(path, 2)
    client = LocalClient(timeout=10)
    fd = data_fd(tmp_path)
    try:
        assert client.request(path, fd, "", "a@b").status is Status.OK
        # The kept connection is closed on the other side now: the client finds
        # out (EOF or EPIPE before any reply byte) and asks on a new one.
        reply = client.request(path, fd, "", "a@b")
        assert reply.status is Status.OK and reply.text == "stored", reply
    finally:
        os.close(fd)
        client.close()
    thread.join(10)
    assert len(conns) == 2
