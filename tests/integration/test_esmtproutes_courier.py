"""esmtproutes options as Courier's esmtp module reads them (smtproutes.c,
libesmtp.c), end to end: a real courierd looks names up in a dnsmasq on
loopback and delivers to SMTP sinks on other loopback addresses, one of them
with STARTTLS under a certificate made here.

- /SECURITY=STARTTLS is the flag a message's SECURITY=STARTTLS sets: TLS
  verified against TLS_TRUSTSECURITYCERTS by the exchanger's name, a server
  offering XSECURITY=STARTTLS, the keyword passed on in MAIL; else a bounce.
- /SECURITY=REQUIRED: no STARTTLS offered is a bounce; the certificate is
  verified only with ESMTP_TLS_VERIFY_DOMAIN=1.
- /IPV4ONLY, /IPV6ONLY: the other family's addresses are never tried.
- A relay name is looked up by MX, then A/AAAA.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import test_remote_delivery as rd
from dnsserver import dnsmasq, needs_dnsmasq
from smtp_sink import Sink, free_port_on
from test_remote_delivery import log, maildir_new, queue_empty, spool, start_sender, wait_until

from libcourier.spool import list_queue

pytestmark = needs_dnsmasq
receiver = rd.receiver          # a second courier-py instance (fixture)

TLS_HOST = "127.0.0.11"        # the TLS sink: tls.route.test (its certificate's name)
PLAIN_HOST = "127.0.0.12"      # a sink without STARTTLS
DEAD_V4 = "127.0.0.13"         # nothing listens here
ZONE = [
    f"--host-record=tls.route.test,{TLS_HOST}",
    f"--host-record=alias.route.test,{TLS_HOST}",        # same host, not the cert's name
    f"--host-record=plain.route.test,{PLAIN_HOST}",
    "--mx-host=mxrelay.route.test,tls.route.test,10",    # a relay name with an MX record
    f"--host-record=dual.route.test,{DEAD_V4},::1",       # dead over IPv4, a sink on ::1
    "--host-record=v6only.route.test,::1",
    # The receiving courier-py instance (rd.receiver) on 127.0.0.1, by MX.
    "--host-record=mx.authmx.route.test,127.0.0.1",
    "--mx-host=example.com,mx.authmx.route.test,10",
    "--mx-host=mxrelay2.route.test,mx.authmx.route.test,10",
]


@pytest.fixture(scope="module")
def dns_port():
    with dnsmasq(ZONE, ["route.test", "example.com"], "tls.route.test") as port:
        yield port


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Path:
    """A self-signed certificate (and key, one PEM file) for tls.route.test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (Debian package openssl)")
    d = tmp_path_factory.mktemp("cert")
    pem = d / "tls.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=tls.route.test",
                    "-addext", "subjectAltName=DNS:tls.route.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    pem.write_bytes((d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes())
    return pem


def server_tls(pem: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


def bounces(inst) -> dict[str, email.message.Message]:
    """Every delivery-status block of the DSNs in carol's Maildir, by recipient."""
    out = {}
    for f in maildir_new(inst, "carol@sender.test"):
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        for b in msg.get_payload()[1].get_payload()[1:]:
            out[b["Final-Recipient"].split(";")[1].strip()] = b
    return out


def test_route_security_starttls_is_the_message_flag(new_instance, dns_port, cert):
    port = free_port_on([TLS_HOST, PLAIN_HOST])
    (new_instance.etc / "esmtproutes").write_text(
        f"secure.test: tls.route.test,{port} /SECURITY=STARTTLS\n"
        f"mxrelay.test: mxrelay.route.test,{port} /security=starttls\n"   # relay by MX
        f"wrongname.test: alias.route.test,{port} /SECURITY=STARTTLS\n"
        f"noxsec.test: plain.route.test,{port} /SECURITY=STARTTLS\n"
        f"opportunistic.test: tls.route.test,{port}\n")
    xsec = ("XSECURITY=NONE,STARTTLS",)
    with Sink(TLS_HOST, port, tls=server_tls(cert), extensions=xsec) as sink, \
            Sink(PLAIN_HOST, port, tls=server_tls(cert)) as plain:
        start_sender(new_instance, dns_port, port, f"TLS_TRUSTSECURITYCERTS={cert}\n")
        for rcpt in ("a@secure.test", "b@mxrelay.test", "c@wrongname.test",
                     "d@noxsec.test", "e@opportunistic.test"):
            spool(new_instance, rcpt)
        assert wait_until(lambda: len(sink.state.messages) == 3
                          and len(bounces(new_instance)) == 2
                          and queue_empty(new_instance)), log(new_instance)
    got = {t.rcpts[0]: t for t in sink.state.messages}
    assert set(got) == {"RCPT TO:<a@secure.test>", "RCPT TO:<b@mxrelay.test>",
                        "RCPT TO:<e@opportunistic.test>"}
    assert all(t.tls for t in got.values())
    # The route's flag goes on in MAIL FROM, as the message's own would.
    assert got["RCPT TO:<a@secure.test>"].mail.endswith(" SECURITY=STARTTLS")
    assert got["RCPT TO:<b@mxrelay.test>"].mail.endswith(" SECURITY=STARTTLS")
    assert "SECURITY" not in got["RCPT TO:<e@opportunistic.test>"].mail
    # A certificate not for the exchanger's name, a server without XSECURITY:
    # 5.7.10 bounces (the latter before any STARTTLS, as Courier's esmtp_helo).
    dsn = bounces(new_instance)
    assert set(dsn) == {"c@wrongname.test", "d@noxsec.test"}
    for b in dsn.values():
        assert b["Action"] == "failed" and b["Status"] == "5.7.10"
    assert "XSECURITY=STARTTLS is not available" in dsn["d@noxsec.test"]["Diagnostic-Code"]
    assert not any(line.upper().startswith(("STARTTLS", "MAIL")) for line in plain.state.lines)


def test_route_security_starttls_without_trustsecuritycerts_bounces(new_instance, dns_port,
                                                                     cert):
    port = free_port_on([TLS_HOST])
    (new_instance.etc / "esmtproutes").write_text(
        f"secure.test: tls.route.test,{port} /SECURITY=STARTTLS\n")
    with Sink(TLS_HOST, port, tls=server_tls(cert),
              extensions=("XSECURITY=NONE,STARTTLS",)) as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "a@secure.test")
        assert wait_until(lambda: bounces(new_instance) and queue_empty(new_instance)), \
            log(new_instance)
    assert sink.state.sessions == 0            # no connection at all, as Courier
    [b] = bounces(new_instance).values()
    assert b["Status"] == "5.7.10"
    assert "TLS_TRUSTSECURITYCERTS is not set" in b["Diagnostic-Code"]


def test_route_security_required(new_instance, dns_port, cert):
    port = free_port_on([TLS_HOST, PLAIN_HOST])
    (new_instance.etc / "esmtproutes").write_text(
        f"req.test: plain.route.test,{port} /SECURITY=REQUIRED\n"
        f"reqtls.test: alias.route.test,{port} /SECURITY=REQUIRED\n")
    with Sink(TLS_HOST, port, tls=server_tls(cert)) as sink, Sink(PLAIN_HOST, port) as plain:
        # ESMTP_TLS_VERIFY_DOMAIN=0 (the default): REQUIRED wants TLS, not a
        # verified certificate (courier(8): set ESMTP_TLS_VERIFY_DOMAIN=1 for that).
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "a@req.test")
        spool(new_instance, "b@reqtls.test")
        assert wait_until(lambda: len(sink.state.messages) == 1 and bounces(new_instance)
                          and queue_empty(new_instance)), log(new_instance)
    [t] = sink.state.messages
    assert t.tls and t.rcpts == ["RCPT TO:<b@reqtls.test>"] and "SECURITY" not in t.mail
    # No STARTTLS offered: Courier fails the message for good.
    [(rcpt, b)] = bounces(new_instance).items()
    assert rcpt == "a@req.test" and b["Action"] == "failed" and b["Status"] == "5.7.10"
    assert "/SECURITY=REQUIRED set, but TLS is not available" in b["Diagnostic-Code"]
    assert not plain.state.messages


def test_ipv4only_and_ipv6only(new_instance, dns_port):
    port = free_port_on(["127.0.0.1"])
    (new_instance.etc / "esmtproutes").write_text(
        f"six.test: dual.route.test,{port} /IPV6ONLY\n"
        "dual.route.test: /IPV6ONLY\n"
        f"four.test: v6only.route.test,{port} /IPV4ONLY\n"
        f"both.test: dual.route.test,{port}\n")
    with Sink("::1", port) as sink:
        start_sender(new_instance, dns_port, port)
        six = spool(new_instance, "a@six.test")
        dual = spool(new_instance, "b@dual.route.test")       # DNS as usual, with the flag
        four = spool(new_instance, "c@four.test")
        both = spool(new_instance, "d@both.test")
        assert wait_until(lambda: len(sink.state.messages) == 3), log(new_instance)
        assert wait_until(lambda: "no IPv4 address" in log(new_instance)), log(new_instance)
    assert sorted(t.rcpts[0] for t in sink.state.messages) == [
        "RCPT TO:<a@six.test>", "RCPT TO:<b@dual.route.test>", "RCPT TO:<d@both.test>"]
    lines = log(new_instance).splitlines()

    def tried_v4(qid: str) -> bool:
        return any(f"id={qid}," in line and f"[{DEAD_V4}]" in line for line in lines)

    # Only the route without a flag tried the dead IPv4 address (first: IPv4
    # is preferred); /IPV6ONLY went straight to ::1.
    assert tried_v4(both) and not tried_v4(six) and not tried_v4(dual)
    # IPv4 only to a host with no IPv4 address: nothing tried, the message waits.
    assert four in list_queue(new_instance.layout.spooldir)
    assert not bounces(new_instance)


def test_an_edited_esmtproutes_takes_effect_without_a_restart(new_instance, dns_port):
    # courier(8): "Changes to esmtproutes take effect immediately, more or less."
    port = free_port_on([TLS_HOST, PLAIN_HOST])
    routes = new_instance.etc / "esmtproutes"
    routes.write_text(f"moved.test: plain.route.test,{port}\n")
    with Sink(PLAIN_HOST, port) as first, Sink(TLS_HOST, port) as second:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "a@moved.test")
        assert wait_until(lambda: len(first.state.messages) == 1), log(new_instance)
        routes.write_text(f"moved.test: tls.route.test,{port}\n")
        # courierd looks at the file at most once a second (remote.FILE_CHECK_INTERVAL):
        # a message spooled after that follows the new line.
        time.sleep(1.5)
        spool(new_instance, "b@moved.test")
        assert wait_until(lambda: len(second.state.messages) == 1
                          and queue_empty(new_instance)), log(new_instance)
    assert [t.rcpts for t in first.state.messages] == [["RCPT TO:<a@moved.test>"]]
    assert [t.rcpts for t in second.state.messages] == [["RCPT TO:<b@moved.test>"]]
    assert "esmtproutes changed: reloaded" in log(new_instance)


def test_route_smtps_with_and_without_the_security_flag(new_instance, dns_port, cert):
    port = free_port_on([TLS_HOST])
    (new_instance.etc / "esmtproutes").write_text(
        # SMTPS alone: TLS, the certificate unchecked (ESMTP_TLS_VERIFY_DOMAIN=0).
        f"smtps.test: alias.route.test,{port} /SECURITY=SMTPS\n"
        # With Courier's SECURITY flag: verified by name against TLS_TRUSTSECURITYCERTS.
        f"secsmtps.test: tls.route.test,{port} /SECURITY=SMTPS,SECURITY=STARTTLS\n"
        f"badsmtps.test: alias.route.test,{port} /SECURITY=SMTPS SECURITY=STARTTLS\n")
    with Sink(TLS_HOST, port, tls=server_tls(cert), smtps=True,
              extensions=("XSECURITY=NONE,STARTTLS",)) as sink:
        start_sender(new_instance, dns_port, port, f"TLS_TRUSTSECURITYCERTS={cert}\n")
        for rcpt in ("a@smtps.test", "b@secsmtps.test", "c@badsmtps.test"):
            spool(new_instance, rcpt)
        assert wait_until(lambda: len(sink.state.messages) == 2 and bounces(new_instance)
                          and queue_empty(new_instance)), log(new_instance)
    got = {t.rcpts[0]: t.mail for t in sink.state.messages}
    assert "SECURITY" not in got["RCPT TO:<a@smtps.test>"]
    assert got["RCPT TO:<b@secsmtps.test>"].endswith(" SECURITY=STARTTLS")
    # A certificate that does not verify, for a SECURITY message: a bounce, not
    # a later try (Courier's esmtp_enable_tls answers 500 then).
    [(rcpt, b)] = bounces(new_instance).items()
    assert rcpt == "c@badsmtps.test" and b["Status"] == "5.7.10"


def test_esmtpauthclient_is_keyed_by_the_route_not_the_mx(new_instance, receiver, dns_port):
    # Courier's esmtp_auth looks the credentials up by what it connects to: the
    # esmtproutes relay, else the recipient's domain; never the MX's own name.
    msa = receiver.port("submission")           # AUTH_REQUIRED=1: no AUTH, no mail
    auth = new_instance.etc / "esmtpauthclient"

    def credentials(name: str) -> None:
        auth.write_text(f"{name},{msa} alice@example.com alice-secret\n")
        os.chmod(auth, 0o600)
        # courierd re-reads it after dropping to MAILUSER, who owns the spool.
        owner = os.stat(new_instance.layout.spooldir)
        os.chown(auth, owner.st_uid, owner.st_gid)

    def delivered() -> int:
        return len(maildir_new(receiver, "alice@example.com"))

    credentials("mx.authmx.route.test")         # the MX's name: not a key
    start_sender(new_instance, dns_port, msa)
    spool(new_instance, "alice@example.com")
    assert wait_until(lambda: bounces(new_instance) and queue_empty(new_instance)), \
        log(new_instance)
    assert delivered() == 0
    credentials("example.com")                  # the domain, found by MX
    time.sleep(1.5)                             # courierd looks at the file once a second
    spool(new_instance, "alice@example.com")
    assert wait_until(lambda: delivered() == 1), log(new_instance) + receiver.logs()
    (new_instance.etc / "esmtproutes").write_text(f"example.com: mxrelay2.route.test,{msa}\n")
    credentials("mxrelay2.route.test")          # a relay (itself found by MX): its name
    time.sleep(1.5)
    spool(new_instance, "alice@example.com")
    assert wait_until(lambda: delivered() == 2), log(new_instance) + receiver.logs()
    for f in maildir_new(receiver, "alice@example.com"):
        assert b"with ESMTPSA" in f.read_bytes()


def test_broken_starttls_is_remembered(new_instance, dns_port):
    # courier(8): a server that offers STARTTLS and then fails it is sent mail
    # without TLS for the next hours; what needs TLS (/SECURITY=REQUIRED) then
    # fails for good (libesmtp.c: hello3 forgets the server's STARTTLS).
    port = free_port_on([PLAIN_HOST])
    (new_instance.etc / "esmtproutes").write_text(
        f"open.test: plain.route.test,{port}\n"
        f"req.test: plain.route.test,{port} /SECURITY=REQUIRED\n")
    with Sink(PLAIN_HOST, port, mode="broken-starttls") as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "a@open.test")
        spool(new_instance, "b@req.test")
        assert wait_until(lambda: len(sink.state.messages) == 1 and bounces(new_instance)
                          and queue_empty(new_instance)), log(new_instance)
    [t] = sink.state.messages
    assert t.rcpts == ["RCPT TO:<a@open.test>"] and not t.tls
    # Tried once per message at most (both may be on their way at once), then
    # remembered: the retry goes in clear.
    assert 1 <= sink.state.lines.count("STARTTLS") <= 2
    [(rcpt, b)] = bounces(new_instance).items()
    assert rcpt == "b@req.test" and b["Status"] == "5.7.10"
    assert "/SECURITY=REQUIRED set, but TLS is not available" in b["Diagnostic-Code"]
    assert "STARTTLS failed: mail goes to it without TLS" in log(new_instance)
