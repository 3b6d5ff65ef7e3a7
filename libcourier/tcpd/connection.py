"""What a daemon declares (ListenerSpec) and what its handler gets (Connection)."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from libcourier.tcpd.tls import certificate_identity

# A lingering close (Connection.linger, and the listener's refusals): after our FIN,
# the client's input is read and dropped until its EOF, for at most this long and
# this many octets; then the socket is closed whatever is left.
LINGER_SECONDS = 2.0
LINGER_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str                                  # service name: process title, log ident
    addresses: tuple[tuple[str, int], ...]     # ("", 143) = all addresses; ("127.0.0.1", 143)
    maxdaemons: int = 40                       # Courier MAXDAEMONS: concurrent children
    maxperip: int = 4                          # Courier MAXPERIP: concurrent children per IP
    access_file: Path | None = None            # Courier access text file; None = allow all
    tls_context: ssl.SSLContext | None = None  # TLS on connect (imapd-ssl, pop3d-ssl, esmtpd-ssl)
    busy_reply: bytes = b""                    # sent before closing when over a limit
    deny_reply: bytes = b""                    # sent before closing when the access file denies
    pidfile: Path | None = None                # written once every address listens; removed at exit
    grace_seconds: float = 10.0                # on SIGTERM: children get this long, then SIGKILL
    child_user: tuple[str, str] | None = None  # (user, group) children drop to before the handler
    timeout: float = 300.0                     # socket timeout of the accepted socket
    # Connections one child serves before it exits (0: one, a fork per connection).
    # Only where every child runs as the same account (child_user): a child that
    # served one client is handed the next over a control socket (listener.py), so a
    # connection costs no fork, no copy-on-write faults and no exit (Postfix's max_use).
    reuse: int = 0
    # Hibernation (listener.py): a Unix datagram socket at this path takes a sleeping
    # session's connection (SCM_RIGHTS) and its state blob from a child, holds them
    # without reading either, and forks a child to resume when the client speaks.
    # None: off. The service's handler decides when a session sleeps.
    hibernate_socket: Path | None = None
    hibernate_linger: float = 0.0              # seconds a sleeping connection is kept
    hibernate_bye: bytes = b""                 # sent when that time is up, before closing
    # Warm workers (listener.py, over the hibernation socket): seconds a finished
    # session's process (already its user's) waits for that account's next login;
    # 0: off. At most warm_per_key idle per account and warm_max in all.
    warm_linger: float = 0.0
    warm_per_key: int = 2
    warm_max: int = 16


def plain_ip(ip: str) -> str:
    """An IPv4-mapped IPv6 address as plain IPv4 (what admins and access files use)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return ip


@dataclass(frozen=True, slots=True)
class Resumed:
    """A hibernated session handed back to a new child: the blob its previous child
    wrote (never read by the listener) and that child's uid (SCM_CREDENTIALS)."""
    blob: bytes
    uid: int


@dataclass(slots=True)
class Connection:
    sock: socket.socket   # blocking with spec.timeout; an ssl.SSLSocket on TLS ports
    peer_ip: str
    peer_port: int
    local_ip: str
    local_port: int
    tls: bool
    env: dict[str, str]   # TCPREMOTEIP, TCPREMOTEPORT, TCPLOCALIP, TCPLOCALPORT + access variables
    # Where this session may hibernate (a datagram socket connected to the listener
    # before any privilege drop), None when it may not; and what it resumes, if anything.
    hibernate: socket.socket | None = None
    resumed: Resumed | None = None

    def starttls(self, ctx: ssl.SSLContext) -> None:
        """Server side of STARTTLS/STLS: handshake now, within the socket's timeout.

        Raises ssl.SSLError or OSError; the connection is then unusable. The
        caller must have drained its receive buffer first (RFC 3207 §4.2, the
        STARTTLS injection problem): nothing read before the handshake counts.
        """
        if self.tls:
            raise ssl.SSLError("TLS is already active")
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.tls = True

    def peer_identity(self, field: str) -> str | None:
        """TLS_EXTERNAL's login from the client's verified certificate, or None.

        getpeercert() is empty unless the context asked for a certificate
        (TLS_VERIFYPEER) and its chain verified, so an unverified one gives nothing.
        """
        if not self.tls or not field or not isinstance(self.sock, ssl.SSLSocket):
            return None
        try:
            return certificate_identity(self.sock.getpeercert(), field)
        except (ValueError, OSError):
            return None

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        """Up to n bytes; b"" at EOF. A timeout raises TimeoutError (socket.timeout)."""
        try:
            return self.sock.recv(n)
        except ssl.SSLZeroReturnError:
            return b""

    def linger(self, seconds: float = LINGER_SECONDS, limit: int = LINGER_LIMIT) -> None:
        """Half-close after our last reply, then read and drop what the client still
        sends until its EOF, for at most `seconds` and `limit` octets.

        A server that closes with unread input makes the kernel answer RST, and a
        reset can drop our last reply (a 421) before the client read it: the client
        sees ECONNRESET instead. With the FIN sent first (shutdown), the client reads
        the reply and its EOF; the caller closes afterwards (Apache's lingering close).
        On a TLS socket this ends TLS without close_notify: nothing follows anyway.
        """
        deadline = time.monotonic() + seconds
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while limit > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return
                self.sock.settimeout(wait)
                data = self.sock.recv(min(limit, 65536))
                if not data:
                    return
                limit -= len(data)
        except (OSError, ValueError):
            return      # reset, timed out, already closed: nothing more to wait for

    def close(self) -> None:
        for s in (self.sock, self.hibernate):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass


def handed_on(sock: socket.socket, extra_env: dict[str, str] | None = None,
              hibernate: socket.socket | None = None,
              resumed: Resumed | None = None, peer: tuple | None = None) -> Connection:
    """The Connection of an accepted socket (the listener's new one, or a plain-TCP
    one passed on: a hibernated one woken, a login handed to a warm worker):
    addresses and the TCP* variables from the socket itself (the peer's from `peer`,
    accept's address, when given), then `extra_env`. OSError: the client left."""
    peer, local = peer or sock.getpeername(), sock.getsockname()
    ip, local_ip = plain_ip(peer[0]), plain_ip(local[0])
    env = {"TCPREMOTEIP": ip, "TCPREMOTEPORT": str(peer[1]),
           "TCPLOCALIP": local_ip, "TCPLOCALPORT": str(local[1])}
    env.update(extra_env or {})
    return Connection(sock, ip, peer[1], local_ip, local[1], False, env,
                      hibernate=hibernate, resumed=resumed)


Handler = Callable[[Connection], None]
