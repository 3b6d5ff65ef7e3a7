"""Small receiving SMTP servers for the remote delivery tests, each with one
behaviour: accept, refuse recipients (5xx), refuse the first session (4xx),
talk garbage, offer STARTTLS and hang up when it is taken (broken-starttls);
with a TLS context, STARTTLS too, or TLS from the first byte (smtps), and any
extra EHLO keywords (e.g. Courier's XSECURITY). A thread per connection;
every limit bounded; what the client said is recorded for the test to check.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass, field

MAX_LINE = 4096
MAX_MESSAGE = 16 * 1024 * 1024
TIMEOUT = 30.0


@dataclass
class Transaction:
    mail: str
    rcpts: list[str]
    data: bytes
    tls: bool = False            # the session had done STARTTLS


@dataclass
class SinkState:
    sessions: int = 0
    active: int = 0
    max_active: int = 0
    messages: list[Transaction] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)     # client addresses, per session
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    timeout = TIMEOUT

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def readline(self) -> str | None:
        raw = self.rfile.readline(MAX_LINE)
        if not raw:
            return None
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        with self.server.state.lock:   # type: ignore[attr-defined]
            if len(self.server.state.lines) < 10000:   # type: ignore[attr-defined]
                self.server.state.lines.append(line)   # type: ignore[attr-defined]
        return line

    def handle(self) -> None:
        srv = self.server
        st: SinkState = srv.state                # type: ignore[attr-defined]
        with st.lock:
            st.sessions += 1
            number = st.sessions
            if len(st.peers) < 1000:
                st.peers.append(self.client_address[0])
            st.active += 1
            st.max_active = max(st.max_active, st.active)
        try:
            self.session(srv.mode, number)       # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass
        finally:
            with st.lock:
                st.active -= 1

    def _start_tls(self, ctx: ssl.SSLContext) -> None:
        """A failed handshake raises OSError, which ends the session."""
        self.request = ctx.wrap_socket(self.request, server_side=True)
        self.rfile = self.request.makefile("rb")
        self.wfile = self.request.makefile("wb")

    def session(self, mode: str, number: int) -> None:
        st: SinkState = self.server.state       # type: ignore[attr-defined]
        if mode == "silent":
            self.rfile.readline(MAX_LINE)       # says nothing; waits for the client to go
            return
        if mode == "refuse":
            self.reply("554 5.7.1 no service for you")
            self.rfile.readline(MAX_LINE)
            return
        if mode == "garbage":
            self.wfile.write(b"\x00\xffTHIS IS NOT SMTP AT ALL\r\n" * 3)
            self.wfile.flush()
            self.rfile.readline(MAX_LINE)
            return
        tls_ctx: ssl.SSLContext | None = self.server.tls     # type: ignore[attr-defined]
        in_tls = False
        if self.server.smtps and tls_ctx is not None:       # type: ignore[attr-defined]
            self._start_tls(tls_ctx)            # TLS from the first byte (port 465 style)
            in_tls = True
        self.reply("220 sink.test ESMTP")
        mail: str | None = None
        rcpts: list[str] = []
        for _ in range(1000):
            line = self.readline()
            if line is None:
                return
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                exts = ["PIPELINING", "SIZE 10000000", "8BITMIME", "DSN", "SMTPUTF8"]
                if mode == "7bit":          # an old server: no 8BITMIME, no SMTPUTF8
                    exts = ["PIPELINING", "SIZE 10000000", "DSN"]
                exts += list(self.server.extensions)   # type: ignore[attr-defined]
                if (tls_ctx is not None or mode == "broken-starttls") and not in_tls:
                    exts.append("STARTTLS")
                text = ["sink.test"] + exts
                for t in text[:-1]:
                    self.wfile.write(f"250-{t}\r\n".encode())
                self.reply(f"250 {text[-1]}")
            elif line.upper() == "STARTTLS" and mode == "broken-starttls":
                self.reply("220 2.0.0 go ahead")
                return                          # ... and hang up: no handshake
            elif line.upper() == "STARTTLS" and tls_ctx is not None and not in_tls:
                self.reply("220 2.0.0 go ahead")
                # RFC 3207 §4.2: a new session inside TLS.
                self._start_tls(tls_ctx)
                in_tls, mail, rcpts = True, None, []
            elif verb == "MAIL":
                mail, rcpts = line, []
                self.reply("250 2.1.0 ok")
            elif verb == "RCPT":
                if mode == "reject":
                    self.reply("550 5.1.1 no such user here")
                elif mode == "tempfail-first" and number == 1:
                    self.reply("451 4.3.0 try again later")
                else:
                    rcpts.append(line)
                    self.reply("250 2.1.5 ok")
            elif verb == "DATA":
                if not rcpts:
                    self.reply("554 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                data = bytearray()
                while len(data) < MAX_MESSAGE:
                    raw = self.rfile.readline(MAX_LINE * 256)
                    if not raw or raw == b".\r\n":
                        break
                    data += raw[1:] if raw.startswith(b"..") else raw
                with st.lock:
                    st.messages.append(Transaction(mail or "", rcpts, bytes(data), in_tls))
                mail, rcpts = None, []
                self.reply("250 2.0.0 queued")
                if mode == "one-per-session":
                    return                      # hang up without QUIT, as some servers do
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            elif verb in ("RSET", "NOOP"):
                self.reply("250 2.0.0 ok")
            else:
                self.reply("502 5.5.1 not here")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class Sink:
    def __init__(self, host: str, port: int, mode: str = "accept", *,
                 tls: ssl.SSLContext | None = None, extensions: tuple[str, ...] = (),
                 smtps: bool = False):
        self.state = SinkState()
        self.server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self.server.state = self.state   # type: ignore[attr-defined]
        self.server.mode = mode          # type: ignore[attr-defined]
        self.server.tls = tls            # type: ignore[attr-defined]
        self.server.extensions = extensions   # type: ignore[attr-defined]
        self.server.smtps = smtps        # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def port_free_on(hosts: list[str], port: int) -> bool:
    for h in hosts:
        s = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET)
        try:
            s.bind((h, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port_on(hosts: list[str], tries: int = 200) -> int:
    """A TCP port free on every one of the loopback addresses."""
    for _ in range(tries):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port_free_on(hosts, port):
            return port
    raise RuntimeError("no free port")
