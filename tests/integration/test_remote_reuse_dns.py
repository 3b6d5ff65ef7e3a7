"""courierd sends the next messages for a domain over its idle session to the
domain's exchanger without looking the domain up again (issue 8): a real
courierd, dnsmasq on loopback logging every query it gets (TTL 0, so no answer
is cached), and an SMTP sink as the exchanger."""

from __future__ import annotations

import re

from dnsserver import dnsmasq, needs_dnsmasq
from smtp_sink import Sink, free_port_on
from test_remote_delivery import (
    SINK_HOSTS,
    log,
    queue_empty,
    spool,
    start_sender,
    wait_until,
)

pytestmark = needs_dnsmasq

N = 30
ZONE = ["--mx-host=reuse.test,mx.reuse.test,10", "--host-record=mx.reuse.test,127.0.0.2",
        "--local-ttl=0"]


def queries(path, name: str, rdtype: str) -> int:
    text = path.read_text(errors="replace") if path.exists() else ""
    return len(re.findall(rf"query\[{rdtype}\] {re.escape(name)} from", text))


def test_n_messages_to_one_domain_cost_one_lookup(new_instance, tmp_path):
    qlog = tmp_path / "dns.log"
    port = free_port_on(SINK_HOSTS)
    with dnsmasq(ZONE, ["test"], "mx.reuse.test", query_log=qlog) as dns_port, Sink("127.0.0.2", port) as sink:
        start_sender(new_instance, dns_port, port)
        assert queries(qlog, "mx.reuse.test", "A") >= 1      # the probe: the log works
        spool(new_instance, "first@reuse.test")
        assert wait_until(lambda: len(sink.state.messages) == 1
                          and queue_empty(new_instance)), log(new_instance)
        assert queries(qlog, "reuse.test", "MX") == 1
        # One after another, each arriving before the next is queued.
        for i in range(N - 1):
            spool(new_instance, f"m{i}@reuse.test")
            assert wait_until(lambda i=i: len(sink.state.messages) == i + 2), log(new_instance)
        assert wait_until(lambda: queue_empty(new_instance)), log(new_instance)
    got = sorted(r for t in sink.state.messages for r in t.rcpts)
    assert len(got) == N and all("reuse.test" in r for r in got)
    assert queries(qlog, "reuse.test", "MX") == 1, qlog.read_text()
    assert sink.state.sessions == 1
    assert log(new_instance).count("(reused)") >= N - 1


def test_messages_at_once_wait_for_the_busy_exchanger_instead_of_looking_up(new_instance,
                                                                             tmp_path):
    qlog = tmp_path / "dns.log"
    port = free_port_on(SINK_HOSTS)
    with dnsmasq(ZONE, ["test"], "mx.reuse.test", query_log=qlog) as dns_port, Sink("127.0.0.2", port) as sink:
        # MAXHOST=1: while the one session is busy, a lookup would only lead
        # to waiting for it; the messages wait for it straight away.
        start_sender(new_instance, dns_port, port, "MAXHOST=1\n")
        spool(new_instance, "first@reuse.test")
        assert wait_until(lambda: len(sink.state.messages) == 1
                          and queue_empty(new_instance)), log(new_instance)
        for i in range(N - 1):
            spool(new_instance, f"m{i}@reuse.test")
        assert wait_until(lambda: len(sink.state.messages) == N
                          and queue_empty(new_instance)), log(new_instance)
    assert queries(qlog, "reuse.test", "MX") == 1, qlog.read_text()
    assert sink.state.sessions == 1
