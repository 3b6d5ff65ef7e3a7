"""Remote delivery takes an idle session for a domain before looking it up
(issue 8): RemoteDelivery in-process, a small authoritative DNS server on
127.0.0.1 (real UDP, answers built by dnspython) that counts the queries, and
the integration tests' SMTP sinks on other loopback addresses."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import socket
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from courier_deliver import remote
from courier_deliver.config import EsmtpConfig
from courier_deliver.remote import RemoteDelivery

from libcourier.spool import Envelope, Recipient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from smtp_sink import Sink, free_port_on  # noqa: E402

MESSAGE = b"From: carol@sender.test\r\nSubject: reuse\r\n\r\nbody\r\n"
# name -> {type: records}; a.test and b.test share the exchanger mx1.a.test.
ZONE = {
    "a.test": {"MX": ["10 mx1.a.test.", "20 mx2.a.test."]},
    "b.test": {"MX": ["10 mx1.a.test."]},
    "dead.test": {"MX": ["10 mx1.dead.test.", "20 mx2.a.test."]},
    "mx1.a.test": {"A": ["127.0.0.2"]},
    "mx2.a.test": {"A": ["127.0.0.3"]},
    "mx1.dead.test": {"A": ["127.0.0.4"]},      # nothing listens there
}


class CountingDns:
    """Answers ZONE with TTL 0 (nothing cached) and counts (name, type) asked."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            with self.lock:
                self.queries[name, rdtype] += 1
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if name not in ZONE:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif ZONE[name].get(rdtype):
                reply.answer.append(dns.rrset.from_text_list(
                    question.name, 0, dns.rdataclass.IN, question.rdtype, ZONE[name][rdtype]))
            self.sock.sendto(reply.to_wire(), peer)

    def count(self, name: str | None = None) -> int:
        with self.lock:
            return sum(n for (q, _), n in self.queries.items() if name in (None, q))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def dnsd():
    server = CountingDns()
    yield server
    server.close()


def free_port() -> int:
    return free_port_on(["127.0.0.2", "127.0.0.3", "127.0.0.4"])


def config(dnsd: CountingDns, port: int, **kw) -> EsmtpConfig:
    return EsmtpConfig(helo="sender.test", port=port, starttls=False,
                       resolver=(("127.0.0.1", dnsd.port),), **kw)


def send(rd: RemoteDelivery, *rcpts: str) -> Awaitable[dict[str, remote.RemoteResult]]:
    env = Envelope("carol@sender.test", tuple(Recipient(r) for r in rcpts), time.time())
    return rd.deliver(env, list(env.recipients), MESSAGE, qid="q")


def run(steps):
    """Run `steps(rd_factory)` in one event loop; idle sessions QUIT at the end."""
    async def main():
        made: list[RemoteDelivery] = []

        def factory(cfg: EsmtpConfig) -> RemoteDelivery:
            made.append(RemoteDelivery(cfg))
            return made[-1]
        try:
            return await steps(factory)
        finally:
            for rd in made:
                await rd.close_idle()
    return asyncio.run(main())


def codes(results: dict[str, remote.RemoteResult]) -> dict[str, int]:
    return {a: r.reply.code for a, r in results.items()}


def test_next_message_for_the_domain_takes_the_idle_session_without_a_lookup(dnsd):
    port = free_port()
    with Sink("127.0.0.2", port) as sink:
        async def steps(make):
            rd = make(config(dnsd, port))
            first = await send(rd, "one@a.test")
            after_first = dnsd.count()
            rest = [await send(rd, f"n{i}@a.test") for i in range(5)]
            return first, after_first, rest
        first, after_first, rest = run(steps)
    assert codes(first) == {"one@a.test": 250}
    assert all(codes(r) == {f"n{i}@a.test": 250} for i, r in enumerate(rest))
    assert dnsd.queries["a.test", "MX"] == 1 and after_first == dnsd.count()
    assert sink.state.sessions == 1 and len(sink.state.messages) == 6


def test_another_domain_on_the_same_exchanger_is_looked_up_once_then_shares_it(dnsd):
    port = free_port()
    with Sink("127.0.0.2", port) as sink:
        async def steps(make):
            rd = make(config(dnsd, port))
            return [await send(rd, r) for r in ("x@a.test", "y@b.test", "z@b.test",
                                                "w@a.test")]
        out = run(steps)
    assert [codes(r) for r in out] == [{"x@a.test": 250}, {"y@b.test": 250},
                                       {"z@b.test": 250}, {"w@a.test": 250}]
    assert dnsd.queries["a.test", "MX"] == 1 and dnsd.queries["b.test", "MX"] == 1
    assert sink.state.sessions == 1


def test_a_changed_port_or_route_is_not_served_by_the_old_session(dnsd):
    port, other = free_port(), free_port()
    with Sink("127.0.0.2", port) as sink, Sink("127.0.0.2", other) as sink2:
        async def steps(make):
            rd = make(config(dnsd, port))
            await send(rd, "x@a.test")
            rd.config = dataclasses.replace(rd.config, port=other)   # ESMTPPORT changed
            return await send(rd, "y@a.test")
        second = run(steps)
    assert codes(second) == {"y@a.test": 250}
    assert dnsd.queries["a.test", "MX"] == 2
    assert sink.state.sessions == 1 and sink2.state.sessions == 1


def test_a_session_that_died_while_idle_falls_back_to_the_lookup(dnsd):
    port = free_port()
    with Sink("127.0.0.2", port, "one-per-session") as sink:
        async def steps(make):
            rd = make(config(dnsd, port))
            first = await send(rd, "x@a.test")
            second = await send(rd, "y@a.test")
            return first, second
        first, second = run(steps)
    assert codes(first) == {"x@a.test": 250} and codes(second) == {"y@a.test": 250}
    assert sink.state.sessions == 2 and len(sink.state.messages) == 2
    assert dnsd.queries["a.test", "MX"] == 2


def test_mail_that_went_to_a_backup_exchanger_is_looked_up_again(dnsd):
    port = free_port()
    with Sink("127.0.0.3", port) as backup:
        async def steps(make):
            rd = make(config(dnsd, port))
            return [await send(rd, r) for r in ("x@dead.test", "y@dead.test")]
        out = run(steps)
    assert [codes(r) for r in out] == [{"x@dead.test": 250}, {"y@dead.test": 250}]
    # The backup's session is reused (it is idle, same key), but only after a
    # lookup: the primary may be back.
    assert dnsd.queries["dead.test", "MX"] == 2
    assert backup.state.sessions == 1


def test_the_lookup_is_repeated_after_the_reuse_window(dnsd, monkeypatch):
    monkeypatch.setattr(remote, "DOMAIN_REUSE_TIME", 0.0)
    port = free_port()
    with Sink("127.0.0.2", port) as sink:
        async def steps(make):
            rd = make(config(dnsd, port))
            return [await send(rd, f"n{i}@a.test") for i in range(3)]
        out = run(steps)
    assert all(codes(r) == {f"n{i}@a.test": 250} for i, r in enumerate(out))
    assert dnsd.queries["a.test", "MX"] == 3
    assert sink.state.sessions == 1          # the session itself is still reused



def test_messages_at_once_wait_for_the_busy_exchanger_instead_of_looking_up(dnsd):
    port = free_port()
    with Sink("127.0.0.2", port) as sink:
        async def steps(make):
            rd = make(config(dnsd, port, maxhost=1))
            await send(rd, "first@a.test")
            return await asyncio.gather(*(send(rd, f"n{i}@a.test") for i in range(8)))
        out = run(steps)
    assert all(codes(r) == {f"n{i}@a.test": 250} for i, r in enumerate(out))
    assert dnsd.queries["a.test", "MX"] == 1
    assert sink.state.sessions == 1 and len(sink.state.messages) == 9
