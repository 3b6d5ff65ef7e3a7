"""The ESMTP driver: one forked child, one connection (runs as the daemon account).

It owns what the core must not touch: the socket, the clock, the spool, the
log, the TLS handshake and reverse DNS. It feeds received bytes to the core and
carries out its events; replies are sent once a batch of input is processed
(RFC 2920 §3.1: the server may hold replies until its input is drained), and
never a 250 for a message before SpoolWriter.commit() returned.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from courier_smtpd.config import SmtpdConfig
from courier_smtpd.core import (
    AuthScramKeys,
    AuthScramProof,
    AuthVerify,
    Close,
    DataChunk,
    DataStart,
    Event,
    Limits,
    MessageAborted,
    MessageReady,
    Policy,
    Send,
    SessionInfo,
    SmtpServer,
    StartTLS,
    State,
    Transaction,
    Verdict,
    VerdictKind,
)
from courier_smtpd.headers import HeaderFilter, HeaderRules

from libcourier import proctitle, spool
from libcourier.authclient import AuthTempFail
from libcourier.sasl import (
    CramCredentials,
    ExternalCredentials,
    LoginCredentials,
    ScramBackend,
    ScramUnavailable,
    VerifiedCredentials,
    cram_nonce,
)
from libcourier.smtp.reply import Reply
from libcourier.tcpd import Connection
from libcourier.tcpd.connection import LINGER_LIMIT as LINGER_OCTETS
from libcourier.tcpd.connection import LINGER_SECONDS

log = logging.getLogger("courier.esmtpd")

RECV_SIZE = 65536
FAILED_AUTH_DELAY = 2.0     # seconds before answering a refused AUTH: slows guessing
TARPIT_FIRST, TARPIT_MAX = 8.0, 128.0   # Courier's INIT_TEERGRUBE / MAX_TEERGRUBE
IN_MESSAGE = frozenset({State.DATA, State.BDAT, State.CHUNKING})   # ESMTPD_DATA_TIMEOUT runs

Credentials = LoginCredentials | CramCredentials | ExternalCredentials | VerifiedCredentials
# (credentials, client ip) -> the authenticated user name, or None when refused;
# raises libcourier.authclient.AuthTempFail when authd cannot answer.
Authenticate = Callable[[Credentials, str], str | None]


_NOT_HEADER_SAFE = re.compile(r"[^\x21-\x7e]|[()\\]")


def _printable(text: str, limit: int = 255) -> str:
    """Header-safe: printable ASCII only, no parentheses that would end the comment."""
    return _NOT_HEADER_SAFE.sub("?", text)[:limit] or "unknown"


def received_header(*, helo: str, rdns: str | None, ip: str, me: str, esmtp: bool,
                    tls: bool, auth: bool, smtputf8: bool, when: datetime,
                    auth_user: str = "", auth_mechanism: str = "") -> bytes:
    """Received: (RFC 5321 §4.4) with the RFC 3848 / RFC 6531 §3.7.3 protocol token.

    An authenticated submitter is noted as Courier does, in a comment line
    "(AUTH: <mechanism> <user>)" between the from and by clauses.
    """
    proto = ("UTF8SMTP" if smtputf8 else "ESMTP" if esmtp or tls or auth else "SMTP")
    if tls:
        proto += "S"
    if auth:
        proto += "A"
    host = _printable(rdns) if rdns else f"[{ip}]"
    note = f"  (AUTH: {_printable(auth_mechanism)} {_printable(auth_user)})\n" \
        if auth and auth_user else ""
    return (f"Received: from {_printable(helo)} ({host} [{ip}])\n{note}"
            f"  by {_printable(me)} with {proto}; {format_datetime(when)}\n").encode("ascii")


def reverse_dns(ip: str) -> str | None:
    try:
        return socket.gethostbyaddr(ip)[0]
    except (OSError, UnicodeError):
        return None


def forward_confirmed(name: str | None, ip: str) -> bool:
    """The PTR name resolves back to the client's address (FCrDNS): a name a
    client could not simply claim by owning its reverse zone."""
    if not name:
        return False
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return any(info[4][0] == ip for info in infos)


def message_id(hostname: str, now: float) -> str:
    """Courier's style: unique by time, pid and randomness, at our name (RFC 5322 §3.6.4)."""
    return f"<courier.{int(now):08X}.{os.getpid():08X}.{os.urandom(4).hex().upper()}@{hostname}>"


class LoggingPolicy:
    """Wraps the real policy to log refusals the way Courier does."""

    def __init__(self, inner: Policy, ip: str):
        self.inner = inner
        self.ip = ip
        self.sender = ""

    def check_sender(self, sender: str, session: SessionInfo) -> Verdict:
        self.sender = sender
        verdict = self.inner.check_sender(sender, session)
        if verdict.kind is not VerdictKind.ACCEPT:
            log.info("error,relay=[%s],from=<%s>: %d %s", self.ip, sender, verdict.code, verdict.text)
        return verdict

    def check_recipient(self, address: str, session: SessionInfo) -> Verdict:
        verdict = self.inner.check_recipient(address, session)
        if verdict.kind is not VerdictKind.ACCEPT:
            log.info("error,relay=[%s],from=<%s>,to=<%s>: %d %s", self.ip, self.sender, address,
                     verdict.code, verdict.text)
        return verdict


class Session:
    def __init__(self, conn: Connection, cfg: SmtpdConfig, spooldir: Path, queue_socket: Path,
                 policy: Policy, starttls_ctx: ssl.SSLContext | None,
                 clock: Callable[[], float] = time.time,
                 authenticate: Authenticate | None = None,
                 sleep: Callable[[float], None] = time.sleep, relayclient: bool = False,
                 scram: ScramBackend | None = None, verifiable: frozenset[str] | None = None):
        self.conn = conn
        self.cfg = cfg
        self.spooldir = spooldir
        self.queue_socket = queue_socket
        self.starttls_ctx = starttls_ctx
        self.clock = clock
        self.authenticate = authenticate
        self.scram = scram          # authd's two SCRAM requests (AUTH SCRAM-*)
        self.sleep = sleep
        # No verifier, no AUTH: offering what nobody can check would only refuse; and
        # of the configured mechanisms only those authd can verify now (`verifiable`).
        def offer(mechs: tuple[str, ...]) -> tuple[str, ...]:
            if authenticate is None:
                return ()
            return mechs if verifiable is None else tuple(m for m in mechs if m in verifiable)
        info = SessionInfo(cfg.hostname, tls_available=starttls_ctx is not None and not conn.tls,
                           tls_active=conn.tls,
                           auth_plain=offer(cfg.auth_plain), auth_tls=offer(cfg.auth_tls),
                           auth_required=cfg.auth_required, greeting=cfg.greeting,
                           nonce=lambda: cram_nonce(int(clock())),
                           scram=scram is not None and authenticate is not None,
                           external_identity=self._cert_login())
        self.policy = LoggingPolicy(policy, conn.peer_ip)
        self.core = SmtpServer(info, self.policy, Limits(
            max_size=cfg.sizelimit, max_recipients=cfg.bofh.maxrcpts,
            recipients_hard=cfg.bofh.maxrcpts_hard))
        self.writer: spool.SpoolWriter | None = None
        self.headers: HeaderFilter | None = None
        self.relayclient = relayclient
        self._rejections_seen = 0
        self._teergrube = TARPIT_FIRST
        self.write_error: str | None = None
        self.out = bytearray()
        self.closed = False
        self._linger = True     # False once the client is gone or the socket unusable
        self._rdns: str | None | bool = False     # False: not looked up yet
        self._data_deadline: float | None = None  # monotonic end of ESMTPD_DATA_TIMEOUT
        self._received_key: tuple[object, ...] = ()  # what self._received was made for
        self._titled: State | None = None        # the state the process title shows
        self._received = b""

    def title(self) -> None:
        state = self.core.state
        if state is not self._titled:       # called after every read, often unchanged
            self._titled = state
            proctitle.set_title(f"courieresmtpd: [{self.conn.peer_ip}] {state.value}")

    def run(self) -> None:
        self.title()
        try:
            self.conn.sock.settimeout(self.cfg.timeout)
            self.conn.sendall(self.core.greeting())
            while not self.closed:
                wait = self._recv_timeout()
                if wait <= 0:
                    self.handle(self.core.timeout())
                    break
                if self.conn.sock.gettimeout() != wait:    # a syscall: only on change
                    self.conn.sock.settimeout(wait)
                try:
                    data = self.conn.recv(RECV_SIZE)
                except TimeoutError:
                    self.handle(self.core.timeout())
                    break
                except (OSError, ssl.SSLError) as e:
                    log.info("connection error, ip=[%s]: %s", self.conn.peer_ip, e)
                    self._linger = False
                    self.handle(self.core.feed(b""))
                    break
                if not data:
                    self._linger = False        # the client closed: nothing to drain
                self.handle(self.core.feed(data))
                self._tarpit()
                self.title()
            self._abort()
            if self._linger:
                # We end the session (421, 221) and the client may still be sending
                # (pipelining, or not listening): see Connection.linger. The limits
                # are named here too so that tests can shorten them.
                self.conn.linger(LINGER_SECONDS, LINGER_OCTETS)
        except (OSError, ssl.SSLError) as e:
            log.info("connection lost, ip=[%s]: %s", self.conn.peer_ip, e)
        finally:
            self._abort()

    def _recv_timeout(self) -> float:
        """How long the next recv may wait: ESMTPD_TIMEOUT (a command, or the next
        bytes of a message), and inside a message (DATA, or BDAT chunks) no longer
        than what is left of ESMTPD_DATA_TIMEOUT, so a client trickling a byte a
        minute is cut off too."""
        if self.core.state not in IN_MESSAGE or not self.cfg.data_timeout:
            self._data_deadline = None
            return self.cfg.timeout
        now = time.monotonic()
        if self._data_deadline is None:
            self._data_deadline = now + self.cfg.data_timeout
        return min(self.cfg.timeout, self._data_deadline - now)

    def _tarpit(self) -> None:
        """TARPIT=1: after a 5xx, answer and then stall before reading more, doubling
        each time; a delivered message starts over. Relay clients and logged-in users
        are never slowed (Courier: RELAYCLIENT)."""
        if self.core.rejections == self._rejections_seen:
            return
        self._rejections_seen = self.core.rejections
        if not self.cfg.tarpit or self.closed or self.relayclient or self.core.session.authenticated:
            return
        self.flush()
        self.sleep(self._teergrube)
        self._teergrube = min(self._teergrube * 2, TARPIT_MAX)

    def flush(self) -> None:
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            self.conn.sendall(data)

    def handle(self, events: list[Event]) -> None:
        queue: deque[Event] = deque(events)
        while queue:
            ev = queue.popleft()
            match ev:
                case Send(data):
                    self.out += data
                case DataStart(txn):
                    self._open(txn)
                case DataChunk(data):
                    self._write(data)
                case MessageReady(txn):
                    queue.extend(self._commit(txn))
                case MessageAborted(reason):
                    log.info("message refused, ip=[%s], from=<%s>: %s", self.conn.peer_ip,
                             self.policy.sender, reason)
                    self._abort()
                case StartTLS():
                    self.flush()
                    assert self.starttls_ctx is not None
                    try:
                        self.conn.starttls(self.starttls_ctx)
                    except (OSError, ssl.SSLError) as e:
                        log.info("STARTTLS failed, ip=[%s]: %s", self.conn.peer_ip, e)
                        self.closed = True
                        self._linger = False
                        return
                    self.core.session.external_identity = self._cert_login()
                    queue.extend(self.core.tls_started())
                case AuthVerify(credentials=creds, mechanism=mech):
                    queue.extend(self._verify(creds, mech))
                case AuthScramKeys(mechanism=mech, user=user):
                    assert self.scram is not None    # SCRAM is only offered with a backend
                    try:
                        queue.extend(self.core.scram_keys(self.scram.salt(mech, user)))
                    except ScramUnavailable as e:
                        queue.extend(self.core.scram_keys(None, str(e) or "authd unavailable"))
                case AuthScramProof(proof=proof):
                    assert self.scram is not None
                    try:
                        queue.extend(self.core.scram_verdict(self.scram.verify(proof)))
                    except ScramUnavailable as e:
                        queue.extend(self.core.scram_verdict(None, str(e) or "authd unavailable"))
                case Close():
                    self.flush()
                    self.closed = True
                    return
        self.flush()

    def _cert_login(self) -> str | None:
        """TLS_EXTERNAL's login from the client's verified certificate (tcpd's
        Connection.peer_identity); None without a verifier, TLS_EXTERNAL or certificate."""
        identity = getattr(self.conn, "peer_identity", None)
        if identity is None or self.authenticate is None or not self.cfg.tls_external:
            return None
        return identity(self.cfg.tls_external)

    def _verify(self, creds: Credentials, mech: str) -> list[Event]:
        ip = self.conn.peer_ip
        if isinstance(creds, LoginCredentials):
            who = creds.user
        elif isinstance(creds, CramCredentials):
            who = creds.response.rpartition(b" ")[0].decode("utf-8", "replace")
        elif isinstance(creds, VerifiedCredentials):
            who = creds.user
        else:
            who = creds.identity
        assert self.authenticate is not None    # AUTH is only offered with a verifier
        try:
            user = self.authenticate(creds, ip)
        except AuthTempFail as e:
            log.warning("authdaemon unavailable, user=%s, ip=[%s]: %s", who, ip, e)
            return self.core.auth_result(None, temporary=True)
        if user is None:
            # Courier's log line; never the password.
            log.info("AUTH FAILED, method=%s, user=%s, ip=[%s]", mech, who, ip)
            self.flush()
            self.sleep(FAILED_AUTH_DELAY)
            return self.core.auth_result(None)
        log.info("AUTH, method=%s, user=%s, ip=[%s]", mech, user, ip)
        return self.core.auth_result(user)

    def _open(self, txn: Transaction) -> None:
        self.write_error = None
        try:
            limit = self.cfg.sizelimit + 8192 if self.cfg.sizelimit else 0
            self.writer = spool.SpoolWriter(self.spooldir, limit)
            now = self.clock()
            self.headers = HeaderFilter(self._header_rules(now))
            s = self.core.session
            # The same line for every message of one second in one session state: made
            # once (the date's local-time conversion and the sanitising are the cost).
            key = (int(now), s.helo, s.esmtp, s.tls_active, s.authenticated,
                   s.auth_mechanism, txn.smtputf8)
            if key != self._received_key:
                self._received_key = key
                self._received = received_header(
                    helo=s.helo, rdns=self.rdns(), ip=self.conn.peer_ip, me=self.cfg.hostname,
                    esmtp=s.esmtp, tls=s.tls_active, auth=bool(s.authenticated),
                    auth_user=s.authenticated, auth_mechanism=s.auth_mechanism,
                    smtputf8=txn.smtputf8, when=datetime.fromtimestamp(int(now), UTC)
                    .astimezone())
            self.writer.write(self._received)
        except (OSError, spool.SpoolError) as e:
            log.error("cannot create a spool file in %s: %s", self.spooldir, e)
            self.write_error = str(e)
            self._abort()

    def rdns(self) -> str | None:
        if self._rdns is False:
            self._rdns = reverse_dns(self.conn.peer_ip)
        return self._rdns or None

    def verified_rdns(self) -> str | None:
        """The client's host name when forward-confirmed (bofh freemail), else None."""
        name = self.rdns()
        return name if forward_confirmed(name, self.conn.peer_ip) else None

    def _header_rules(self, now: float) -> HeaderRules:
        return HeaderRules(
            add_message_id=message_id(self.cfg.hostname, now) if self.cfg.add_message_id else None,
            add_date=format_datetime(datetime.fromtimestamp(int(now), UTC).astimezone())
            if self.cfg.add_date else None,
            max_octets=self.cfg.header_limit)

    def _write(self, data: bytes) -> None:
        if self.writer is None:
            return
        try:
            # Lossless: the core refuses any message with a bare CR or LF, and
            # chunks (DATA and BDAT alike) hold whole lines, so CRLF never straddles two.
            data = data.replace(b"\r\n", b"\n")
            if self.headers is not None:
                data = self.headers.feed(data)
            self.writer.write(data)
        except spool.SpoolError as e:
            log.error("spool write failed: %s", e)
            self.write_error = str(e)
            self.writer = None

    def _commit(self, txn: Transaction) -> list[Event]:
        writer, self.writer = self.writer, None
        if writer is None:
            return self.core.message_failed()
        headers, self.headers = self.headers, None
        refusal = None
        if headers is not None:
            try:
                writer.write(headers.finish())
            except spool.SpoolError as e:
                writer.abort()
                log.error("spool write failed: %s", e)
                return self.core.message_failed()
            refusal = headers.refusal
        if refusal is None and any(self.cfg.bofh.is_spamtrap(r.address) for r in txn.recipients):
            refusal = Reply.make(550, "5.7.1", "Spam refused.")    # Courier's spamtrap answer
        if refusal is not None:
            writer.abort()
            log.info("error,relay=[%s],from=<%s>: %d %s", self.conn.peer_ip, txn.sender,
                     refusal.code, refusal.text)
            return self.core.message_failed(refusal)
        s = self.core.session
        env = spool.Envelope(
            sender=txn.sender,
            recipients=txn.recipients,
            received=self.clock(), body=txn.body, smtputf8=txn.smtputf8,
            envid=txn.envid, ret=txn.ret, verp=txn.verp, security=txn.security,
            client=f"[{self.conn.peer_ip}] helo={_printable(s.helo)}")
        try:
            qid = writer.commit(env)
        except spool.SpoolError as e:
            log.error("cannot queue a message from [%s]: %s", self.conn.peer_ip, e)
            return self.core.message_failed()
        log.info("newmsg,id=%s,from=<%s>,rcpts=%d,size=%d,relay=[%s],helo=%s", qid, txn.sender,
                 len(txn.recipients), writer.size, self.conn.peer_ip, _printable(s.helo))
        spool.notify(self.queue_socket, qid)
        self._teergrube = TARPIT_FIRST
        return self.core.message_accepted(qid)

    def _abort(self) -> None:
        self.headers = None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
