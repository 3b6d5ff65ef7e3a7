"""The listener as a real process: tests/integration/tcpd_echo_server.py on a free loopback port.

Each test starts its own server (subprocess, by pid), talks to it with plain
sockets and ssl, and stops it with SIGTERM; psutil proves no child is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from libcourier.tcpd import make_self_signed

SERVER = Path(__file__).with_name("tcpd_echo_server.py")
ROOT = Path(__file__).resolve().parents[2]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cert") / "echod.pem"
    make_self_signed(path, "localhost")
    return path


class Server:
    def __init__(self, tmp_path: Path, **cfg):
        self.dir = tmp_path
        self.port = cfg.pop("port", None) or free_port()
        self.pidfile = tmp_path / "echod.pid"
        self.cfg = {"addresses": [["127.0.0.1", self.port]], "pidfile": str(self.pidfile), **cfg}
        self.config = tmp_path / "echod.json"
        self.write()
        self.stderr = open(tmp_path / "echod.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(self.config)],
                                     stderr=self.stderr, cwd=ROOT)
        self.ps = psutil.Process(self.proc.pid)

    def write(self, **changes) -> None:
        self.cfg.update(changes)
        self.config.write_text(json.dumps(self.cfg))

    def wait_ready(self) -> Server:
        wait_for(lambda: self.pidfile.exists() or self.proc.poll() is not None, what="pid file")
        assert self.proc.poll() is None, self.log()
        assert self.pidfile.read_text().strip() == str(self.proc.pid)
        return self

    def log(self) -> str:
        return (self.dir / "echod.log").read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        alive = []
        for c in self.ps.children():
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    alive.append(c)
            except psutil.NoSuchProcess:  # exited and reaped since children() listed it
                pass
        return alive

    def connect(self, source: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection((host, self.port), timeout=5,
                                        source_address=(source, 0))
        return sock

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.stderr.close()


@pytest.fixture
def server_factory(tmp_path):
    started: list[Server] = []

    def start(**cfg) -> Server:
        server = Server(tmp_path, **cfg)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)
        if not server.stderr.closed:
            server.stderr.close()


def readline(sock) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def chat(sock, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return readline(sock)


def recv_all(sock) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_echo_env_pipelined_and_clean_stop(server_factory):
    srv = server_factory()
    with srv.connect() as s:
        assert readline(s) == b"+OK echod [127.0.0.1] tls=0\r\n"
        # Pipelined: three commands in one write, answered in order.
        s.sendall(b"ECHO one\r\nENV TCPREMOTEIP\r\nENV TCPLOCALPORT\r\n")
        assert readline(s) == b"+OK one\r\n"
        assert readline(s) == b"+OK 127.0.0.1\r\n"
        assert readline(s) == f"+OK {srv.port}\r\n".encode()
        assert chat(s, b"ENV TCPREMOTEPORT") == f"+OK {s.getsockname()[1]}\r\n".encode()
        assert chat(s, b"QUIT") == b"+OK bye\r\n"
        assert recv_all(s) == b""
    assert srv.stop() == 0
    assert not srv.pidfile.exists()


def test_maxperip(server_factory):
    srv = server_factory(maxperip=1, busy="-ERR too many from you\r\n")
    with srv.connect() as first:
        assert readline(first).startswith(b"+OK")
        with srv.connect() as second:
            assert recv_all(second) == b"-ERR too many from you\r\n"
        with srv.connect(source="127.0.0.2") as other_ip:
            assert readline(other_ip) == b"+OK echod [127.0.0.2] tls=0\r\n"
    # The first session ended: its slot is free again once the child is reaped.
    wait_for(lambda: not srv.children(), what="children to exit")
    with srv.connect() as again:
        assert readline(again).startswith(b"+OK")
    assert "Maximum connection limit per IP reached for 127.0.0.1" in srv.log()
    assert srv.stop() == 0


def test_maxdaemons(server_factory):
    srv = server_factory(maxdaemons=2, maxperip=0, busy="-ERR server busy\r\n")
    socks = [srv.connect(source=f"127.0.0.{i}") for i in (1, 2)]
    for s in socks:
        assert readline(s).startswith(b"+OK")
    with srv.connect(source="127.0.0.3") as third:
        assert recv_all(third) == b"-ERR server busy\r\n"
    assert len(srv.children()) == 2
    for s in socks:
        s.close()
    assert srv.stop() == 0


def test_access_file_deny_and_variables(server_factory, tmp_path):
    access = tmp_path / "access"
    access.write_text('# test\n*\tallow,RELAYCLIENT\n127.0.0.2\tdeny\n'
                      '127.0.0.1 allow,FOO="a, b"\n127.0.0.4 allow,MAXCPERIP=1\n')
    srv = server_factory(access=str(access), deny="-ERR go away\r\n")
    with srv.connect(source="127.0.0.2") as s:
        assert recv_all(s) == b"-ERR go away\r\n"
    with srv.connect() as s:
        readline(s)
        assert chat(s, b"ENV FOO") == b"+OK a, b\r\n"
        assert chat(s, b"ENV RELAYCLIENT") == b"+OK (unset)\r\n"
    with srv.connect(source="127.0.0.3") as s:
        readline(s)
        assert chat(s, b"ENV RELAYCLIENT") == b"+OK \r\n"
    with srv.connect(source="127.0.0.4") as s:   # per-entry MAXCPERIP overrides maxperip=4
        readline(s)
        with srv.connect(source="127.0.0.4") as s2:
            assert recv_all(s2) == b"-ERR busy\r\n"
    assert "Access denied for 127.0.0.2" in srv.log()
    assert srv.stop() == 0


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_tls_on_connect(server_factory, cert):
    srv = server_factory(cert=str(cert), tls_on_connect=True, maxperip=1)
    with _client_ctx().wrap_socket(srv.connect(), server_hostname="localhost") as s:
        assert readline(s) == b"+OK echod [127.0.0.1] tls=1\r\n"
        assert chat(s, b"ECHO secret") == b"+OK secret\r\n"
        # Over the limit on a TLS port: closed without a plaintext reply.
        with srv.connect() as busy:
            assert recv_all(busy) == b""
    # A client that never completes the handshake costs a child, not the listener.
    with srv.connect(source="127.0.0.2") as junk:
        junk.sendall(b"HELLO this is not TLS\r\n\r\n")
        try:
            assert not recv_all(junk).startswith(b"+OK")   # an alert at most
        except ConnectionResetError:
            pass
    wait_for(lambda: "TLS handshake failed with [127.0.0.2]" in srv.log(), what="handshake log")
    with _client_ctx().wrap_socket(srv.connect(), server_hostname="localhost") as s:
        assert readline(s).endswith(b"tls=1\r\n")
    assert srv.stop() == 0


def test_starttls(server_factory, cert):
    srv = server_factory(cert=str(cert))
    raw = srv.connect()
    assert readline(raw).endswith(b"tls=0\r\n")
    assert chat(raw, b"STARTTLS") == b"+OK begin TLS\r\n"
    with _client_ctx().wrap_socket(raw, server_hostname="localhost") as s:
        assert chat(s, b"ECHO inside") == b"+OK inside\r\n"
    assert srv.stop() == 0


def test_sighup_reload_and_bad_reload(server_factory):
    srv = server_factory(greeting="+OK first")
    old = srv.connect()
    assert readline(old).startswith(b"+OK first")
    srv.write(greeting="+OK second")
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in srv.log(), what="reload")
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK second")
    assert chat(old, b"ECHO still here") == b"+OK still here\r\n"   # old session untouched
    old.close()
    # A bad config on SIGHUP is logged; the running one stays.
    srv.write(fail=True, greeting="+OK third")
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in srv.log(), what="failed reload")
    assert "asked to fail" in srv.log()
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK second")
    assert srv.stop() == 0


def test_sigterm_kills_stubborn_children_after_grace(server_factory):
    srv = server_factory(grace=0.5)
    polite, stubborn = srv.connect(), srv.connect()
    for s in (polite, stubborn):
        readline(s)
    assert chat(stubborn, b"STUBBORN") == b"+OK ignoring SIGTERM\r\n"
    kids = srv.children()
    assert len(kids) == 2
    started = time.monotonic()
    assert srv.stop() == 0
    assert 0.4 < time.monotonic() - started < 5
    assert not srv.pidfile.exists()
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)
    assert "did not stop" in srv.log()
    for s in (polite, stubborn):
        s.close()


def test_handler_exception_does_not_kill_listener(server_factory):
    srv = server_factory()
    with srv.connect() as s:
        readline(s)
        s.sendall(b"RAISE\r\n")
        assert recv_all(s) == b""
    wait_for(lambda: "RuntimeError: asked to raise" in srv.log(), what="traceback")
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK")
    assert srv.proc.poll() is None
    assert srv.stop() == 0


@as_root
def test_child_user_drop(server_factory):
    srv = server_factory(child_user=["nobody", "nogroup"])
    with srv.connect() as s:
        readline(s)
        assert chat(s, b"WHOAMI") == b"+OK 65534 65534\r\n"
        assert chat(s, b"ECHO after drop") == b"+OK after drop\r\n"
    assert srv.stop() == 0


def test_wildcard_dual_stack(server_factory):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    srv = server_factory(port=port, addresses=[["", port]])
    with srv.connect() as s:   # IPv4 on the IPv6 wildcard: shown as plain IPv4
        assert readline(s) == b"+OK echod [127.0.0.1] tls=0\r\n"
        assert chat(s, b"ENV TCPLOCALIP") == b"+OK 127.0.0.1\r\n"
    with srv.connect(source="::1", host="::1") as s:
        assert readline(s) == b"+OK echod [::1] tls=0\r\n"
    assert srv.stop() == 0


def test_bad_config_and_busy_port_exit_1(tmp_path):
    bad = Server(tmp_path, fail=True)
    assert bad.proc.wait(timeout=10) == 1
    bad.stderr.close()
    assert "asked to fail" in bad.log()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Server(tmp_path, port=taken.getsockname()[1])
        assert busy.proc.wait(timeout=10) == 1
        busy.stderr.close()
    assert "cannot listen" in busy.log()
    assert not busy.pidfile.exists()


def test_burst_of_sessions_is_fully_reaped(server_factory):
    # Many children exit together; coalesced SIGCHLDs must still free every slot.
    srv = server_factory(maxdaemons=5, maxperip=5)
    socks = [srv.connect() for _ in range(5)]
    for s in socks:
        assert readline(s).startswith(b"+OK")
    for s in socks:
        s.sendall(b"QUIT\r\n")
    for s in socks:
        assert readline(s) == b"+OK bye\r\n"
        s.close()
    wait_for(lambda: not srv.children(), what="children to exit")
    for _ in range(3):   # the counters went back to zero: five fit again
        socks = [srv.connect() for _ in range(5)]
        for s in socks:
            assert readline(s).startswith(b"+OK")
            s.close()
        wait_for(lambda: not srv.children(), what="children to exit")
    assert "limit" not in srv.log()
    assert srv.stop() == 0


def test_idle_timeout_ends_session_quietly(server_factory):
    srv = server_factory(timeout=0.3)
    with srv.connect() as s:
        readline(s)
        assert recv_all(s) == b""   # the child gave up on us
    wait_for(lambda: "ended: timeout" in srv.log(), what="timeout log")
    assert "Traceback" not in srv.log()
    assert srv.stop() == 0


def child_pids(srv: Server) -> list[int] | None:
    """The live children's pids; None while one vanishes under psutil's listing."""
    try:
        return sorted(c.pid for c in srv.children())
    except psutil.NoSuchProcess:
        return None


def wait_connections(srv: Server, n: int) -> None:
    """Until the listener's title counts n connections: a finished child's `done` is
    read by then, so it is idle and takes the next one."""
    wait_for(lambda: f"({n} connections)" in " ".join(srv.ps.cmdline()),
             what=f"{n} connections in the listener's title")


def session_pid(srv: Server, source: str = "127.0.0.1", after: int = 0) -> tuple[int, str]:
    """One whole session: the serving child's pid and the port it saw for us; then
    wait until the listener counts `after` connections."""
    with srv.connect(source=source) as s:
        assert readline(s).startswith(b"+OK echod")
        pid = int(chat(s, b"PID").split()[1])
        port = chat(s, b"ENV TCPREMOTEPORT").split()[1].decode()
        assert port == str(s.getsockname()[1])
        assert chat(s, b"QUIT") == b"+OK bye\r\n"
        assert recv_all(s) == b""
    wait_connections(srv, after)
    return pid, port


@as_root
def test_reused_child_serves_the_next_connections(server_factory):
    """spec.reuse: a child that served a client is handed the next one (its socket and
    its own environment), up to `reuse` connections, then a fresh child is forked."""
    srv = server_factory(child_user=["nobody", "nogroup"], reuse=3)
    pids = [session_pid(srv)[0] for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3], pids
    wait_for(lambda: child_pids(srv) == [pids[3]], what="the first to exit")
    with srv.connect() as s:
        readline(s)
        assert chat(s, b"WHOAMI") == b"+OK 65534 65534\r\n"
    assert srv.stop() == 0
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), what="children gone")


@as_root
def test_reuse_keeps_the_per_ip_limit_and_reload_retires_idle_children(server_factory):
    srv = server_factory(child_user=["nobody", "nogroup"], reuse=10, maxperip=1,
                         busy="-ERR too many from you\r\n")
    first, _ = session_pid(srv)
    # Idle now: its slot for 127.0.0.1 is free, and it takes the next connection.
    with srv.connect() as s:
        assert readline(s).startswith(b"+OK")
        assert int(chat(s, b"PID").split()[1]) == first
        with srv.connect() as second:
            assert recv_all(second) == b"-ERR too many from you\r\n"
        assert session_pid(srv, "127.0.0.2", after=1)[0] != first     # busy: another child
    wait_connections(srv, 0)
    assert session_pid(srv)[0] == first         # the most recently idle one
    # A reload retires idle children (they run the old configuration).
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: child_pids(srv) == [], timeout=10, what="idle children to exit")
    last = session_pid(srv)[0]
    assert last != first
    assert srv.stop() == 0              # with an idle child: it goes too
    wait_for(lambda: not psutil.pid_exists(last), what="the idle child to exit")
