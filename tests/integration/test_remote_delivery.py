"""Remote delivery end to end: a real courierd (started by `courier start`)
looks domains up in a dnsmasq on loopback and delivers to a second courier-py
instance and to small SMTP servers on other loopback addresses: MX preference
with a dead primary, 4xx then 2xx, 5xx (the bounce DSN parsed and checked),
garbage, null MX, esmtproutes /SECURITY=, the implicit MX, MAXHOST.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import importlib.util
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from courier_authd.passwords import hash_password
from dnsserver import dnsmasq, needs_dnsmasq
from smtp_sink import Sink, free_port_on, port_free_on
from waiting import wait_for

from libcourier.spool import Envelope, Recipient, SpoolWriter, list_queue, notify
from libcourier.userdb import compile_userdb, parse_userdb, set_user

pytestmark = needs_dnsmasq

WAIT = 40.0
wait_until = partial(wait_for, timeout=WAIT)
SINK_HOSTS = [f"127.0.0.{n}" for n in range(2, 10)]

# The test zone: name -> (MX records, A records). Addresses are loopback.
ZONE_ARGS = [
    # example.com: the primary is dead (nothing listens on .2), the backup is the receiver.
    "--mx-host=example.com,mx1.example.com,10", "--host-record=mx1.example.com,127.0.0.2",
    "--mx-host=example.com,mx2.example.com,20", "--host-record=mx2.example.com,127.0.0.1",
    "--mx-host=tempfail.test,mx.tempfail.test,10", "--host-record=mx.tempfail.test,127.0.0.3",
    "--mx-host=reject.test,mx.reject.test,10", "--host-record=mx.reject.test,127.0.0.4",
    "--mx-host=garbage.test,mx1.garbage.test,10", "--host-record=mx1.garbage.test,127.0.0.5",
    "--mx-host=garbage.test,mx2.garbage.test,20", "--host-record=mx2.garbage.test,127.0.0.6",
    "--dns-rr=nullmx.test,15,000000",                        # RFC 7505: "0 ."
    "--host-record=plain.test,127.0.0.7",                    # no MX: the implicit MX
    "--mx-host=many.test,mx.many.test,10", "--host-record=mx.many.test,127.0.0.8",
    "--mx-host=notls.test,mx.notls.test,10", "--host-record=mx.notls.test,127.0.0.9",
    "--mx-host=v6.test,mx.v6.test,10", "--host-record=mx.v6.test,::1",   # AAAA only
    "--host-record=rx.test,127.0.0.1",              # the receiver's certificate name
    "--mx-host=loop.test,mx.test,10", "--mx-host=loop.test,mx9.loop.test,20",  # we are best
    "--host-record=mx.test,127.0.0.1", "--host-record=mx9.loop.test,127.0.0.9",
]


def _load_root_conftest():
    # tests/conftest.py holds Instance and the helpers; as a module named
    # "conftest" it is shadowed by tests/integration/conftest.py, so load it by path.
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("courier_tests_root_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ROOT = _load_root_conftest()


@pytest.fixture(scope="module")
def dns_port():
    with dnsmasq(ZONE_ARGS, ["test", "example.com"], "mx1.example.com") as port:
        yield port


@contextlib.contextmanager
def _receiver(cram: bool = False):
    """A second courier-py instance receiving for example.com on 127.0.0.1
    (cram: alice also has Courier's hmac-md5pw, and the submission port
    offers CRAM-MD5 under TLS)."""
    root = ROOT._instance_root()
    inst = ROOT.Instance(root / "inst", ROOT.free_port_base())
    ROOT.courier("init", str(inst.root), "--port-base", str(inst.port_base),
                 "--hostname", "rx.test")
    try:
        inst.adduser("alice@example.com", "alice-secret")
        if cram:
            src = inst.etc / "userdb"
            entry = next(e for e in parse_userdb(src) if e.name == "alice@example.com")
            fields = dict(entry.fields, **{"hmac-md5pw": hash_password("alice-secret",
                                                                       "hmac-md5")})
            set_user(entry.path, entry.name, fields)
            compile_userdb(src, inst.etc / "userdb.dat", inst.etc / "userdbshadow.dat")
            with open(inst.etc / "esmtpd-msa", "a") as f:
                f.write('ESMTPAUTH_TLS="PLAIN LOGIN CRAM-MD5"\n')
        inst.start("authdaemond", "courierd", "esmtpd", "esmtpd-msa", "esmtpd-ssl")
        yield inst
    finally:
        inst.record_pids()
        try:
            inst.courier("stop", check=False)
            inst.assert_no_process_left()
        finally:
            for p in inst.leftovers():
                try:
                    p.kill()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def receiver():
    with _receiver() as inst:
        yield inst


@pytest.fixture
def cram_receiver():
    with _receiver(cram=True) as inst:
        yield inst


def start_sender(inst, dns_port: int, smtp_port: int, extra: str = "") -> None:
    with open(inst.etc / "courierd", "a") as fh:
        fh.write(f"RETRYFIRST=1\nRETRYMAX=2\nESMTP_RESOLVER=127.0.0.1:{dns_port}\n"
                 f"ESMTPPORT={smtp_port}\n{extra}")
    inst.adduser("carol@sender.test", "carol-secret")
    inst.start("authdaemond", "courierd")


BODY = (b"Received: from client\nFrom: carol@sender.test\nTo: someone\n"
        b"Subject: remote test\nMessage-ID: <t1@sender.test>\n\nline one\n.dot line\n")


def spool(inst, *rcpts: Recipient | str, sender: str = "carol@sender.test", body: bytes = BODY,
          body_type: str = "7BIT", **env) -> str:
    lay = inst.layout
    w = SpoolWriter(lay.spooldir, 1 << 24)
    w.write(body)
    rs = tuple(r if isinstance(r, Recipient) else Recipient(r) for r in rcpts)
    qid = w.commit(Envelope(sender, rs, time.time(), body=body_type, **env))
    notify(lay.queue_socket, qid)
    return qid


def maildir_new(inst, address: str) -> list[Path]:
    d = inst.maildir(address) / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def log(inst) -> str:
    p = inst.root / "var" / "log" / "courierd.log"
    return p.read_text(errors="replace") if p.exists() else ""


def queue_empty(inst) -> bool:
    return not list_queue(inst.layout.spooldir)


def test_dead_primary_mx_then_backup_courier_receiver(new_instance, receiver, dns_port):
    port = receiver.port("smtp")
    assert port_free_on(["127.0.0.2"], port)       # the primary MX is dead
    start_sender(new_instance, dns_port, port)
    spool(new_instance, "alice@example.com")
    assert wait_until(lambda: maildir_new(receiver, "alice@example.com")), \
        log(new_instance) + receiver.logs()
    assert wait_until(lambda: queue_empty(new_instance)), log(new_instance)
    [f] = maildir_new(receiver, "alice@example.com")
    data = f.read_bytes()
    assert b"Subject: remote test" in data and b"\n.dot line\n" in data
    assert b"Return-Path: <carol@sender.test>" in data
    text = log(new_instance)
    assert "host=mx1.example.com[127.0.0.2]" in text and "cannot connect" in text
    assert "host=mx2.example.com[127.0.0.1]" in text


def test_route_security_starttls_to_a_self_signed_receiver(new_instance, receiver, dns_port):
    # Courier's semantics (libesmtp.c): /SECURITY=STARTTLS is the flag a message's
    # SECURITY=STARTTLS sets, not "STARTTLS or wait": the receiver's certificate
    # must verify against TLS_TRUSTSECURITYCERTS by the exchanger's name, and a
    # server without STARTTLS (and XSECURITY) makes the message bounce at once.
    port = receiver.port("smtp")
    (new_instance.etc / "esmtproutes").write_text(
        f"example.com: rx.test,{port} /SECURITY=STARTTLS\n"
        f"notls.test: mx.notls.test,{port} /SECURITY=STARTTLS\n")
    with Sink("127.0.0.9", port) as sink:
        start_sender(new_instance, dns_port, port,
                     f"TLS_TRUSTSECURITYCERTS={receiver.etc / 'esmtpd.pem'}\n")
        spool(new_instance, "alice@example.com")
        notls = spool(new_instance, "x@notls.test")
        assert wait_until(lambda: maildir_new(receiver, "alice@example.com")), \
            log(new_instance) + receiver.logs()
        data = maildir_new(receiver, "alice@example.com")[0].read_bytes()
        assert b"with ESMTPS" in data            # the receiver saw a TLS session
        assert wait_until(lambda: notls not in list_queue(new_instance.layout.spooldir)), \
            log(new_instance)
    assert "Unable to set minimum security level: STARTTLS is not available" in \
        log(new_instance)
    assert not sink.state.messages
    assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")), \
        log(new_instance)                        # the bounce


def test_4xx_then_2xx_and_dsn_parameters_passed_on(new_instance, dns_port):
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.3", port, "tempfail-first") as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, Recipient("r@tempfail.test", "rfc822;orig@tempfail.test",
                                      "FAILURE,DELAY"),
              body=BODY + "caf\u00e9\n".encode(), body_type="8BITMIME", envid="id 42",
              ret="HDRS")
        assert wait_until(lambda: sink.state.messages and queue_empty(new_instance)), \
            log(new_instance)
    assert sink.state.sessions == 2                 # refused once (451), then accepted
    [txn] = sink.state.messages
    assert txn.mail.startswith("MAIL FROM:<carol@sender.test>")
    for param in ("BODY=8BITMIME", "RET=HDRS", "ENVID=id+2042", "SIZE="):
        assert param in txn.mail, txn.mail
    assert txn.rcpts == ["RCPT TO:<r@tempfail.test> NOTIFY=FAILURE,DELAY "
                         "ORCPT=rfc822;orig@tempfail.test"]
    assert txn.data.endswith("caf\u00e9\r\n".encode())
    assert b"\r\n.dot line\r\n" in txn.data       # dot-stuffed on the wire, unstuffed here
    assert "451 4.3.0" in log(new_instance)


def test_8bit_to_a_server_without_8bitmime_goes_quoted_printable(new_instance, dns_port):
    # RFC 6152 §3 as Courier does it: converted, not sent 8-bit, not bounced;
    # a message that needs SMTPUTF8 there bounces with 5.6.7 (RFC 6531 §3.2).
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.7", port, "7bit") as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "p@plain.test", body=BODY + "caf\u00e9\n".encode(),
              body_type="8BITMIME")
        spool(new_instance, "q@plain.test", body=b"Subject: caf\xc3\xa9\n\nx\n",
              body_type="8BITMIME", smtputf8=True)
        assert wait_until(lambda: sink.state.messages and queue_empty(new_instance)
                          and maildir_new(new_instance, "carol@sender.test")), log(new_instance)
    [txn] = sink.state.messages
    assert "BODY=8BITMIME" not in txn.mail and "SMTPUTF8" not in txn.mail
    assert txn.data.isascii()
    msg = email.message_from_bytes(txn.data, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n").endswith(".dot line\ncaf\u00e9\n")
    [f] = maildir_new(new_instance, "carol@sender.test")
    dsn = f.read_bytes()            # message/global-delivery-status (RFC 6533): by hand
    assert b"\nFinal-Recipient: utf-8; q@plain.test\nAction: failed\nStatus: 5.6.7\n" in dsn


def test_esmtphelo_star_is_the_reverse_dns_of_the_local_address(new_instance, dns_port):
    import dns.resolver
    import dns.reversename

    (new_instance.etc / "esmtphelo").write_text("*\n")
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.7", port) as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "p@plain.test")
        assert wait_until(lambda: sink.state.messages and queue_empty(new_instance)), \
            log(new_instance)
    [ehlo] = [line for line in sink.state.lines if line.upper().startswith("EHLO ")]
    local = sink.state.peers[0]
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = dns_port
    try:
        names = {rr.target.to_text(omit_final_dot=True)
                 for rr in res.resolve(dns.reversename.from_address(local), "PTR")}
    except dns.resolver.NXDOMAIN:
        names = set()
    assert ehlo[5:] in (names or {f"[{local}]"}), (ehlo, names)


def test_backuprelay_takes_remote_mail_older_than_warntime(new_instance, dns_port):
    # Courier's backuprelay: after warntime every remote recipient goes to the
    # relay (found by MX, then A), whatever its domain; younger mail does not.
    (new_instance.etc / "backuprelay").write_text("plain.test\n")
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.7", port) as sink:
        start_sender(new_instance, dns_port, port)
        w = SpoolWriter(new_instance.layout.spooldir, 1 << 20)
        w.write(BODY)
        old = w.commit(Envelope("carol@sender.test", (Recipient("r@nullmx.test"),),
                                time.time() - 5 * 3600))
        notify(new_instance.layout.queue_socket, old)
        spool(new_instance, "s@nullmx.test")       # young: null MX, bounced at once
        assert wait_until(lambda: sink.state.messages and queue_empty(new_instance)
                          and maildir_new(new_instance, "carol@sender.test")), \
            log(new_instance)
    [txn] = sink.state.messages
    assert txn.rcpts == ["RCPT TO:<r@nullmx.test>"]
    assert "rerouted to the backup relay plain.test" in log(new_instance)
    [bounce] = maildir_new(new_instance, "carol@sender.test")
    assert b"s@nullmx.test" in bounce.read_bytes()


def test_5xx_bounces_with_an_rfc3464_dsn(new_instance, dns_port):
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.4", port, "reject"):
        start_sender(new_instance, dns_port, port)
        spool(new_instance, Recipient("nobody@reject.test", "rfc822;list@reject.test", None),
              envid="env-77", ret="HDRS")
        assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")), \
            log(new_instance)
    assert wait_until(lambda: queue_empty(new_instance)), log(new_instance)
    [f] = maildir_new(new_instance, "carol@sender.test")
    msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    assert msg["Return-Path"] == "<>"               # from the null sender
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, original = msg.get_payload()
    assert "no such user here" in text.get_content()
    per_msg, per_rcpt = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; mx.test"
    assert per_msg["Original-Envelope-Id"] == "env-77"
    assert per_rcpt["Final-Recipient"] == "rfc822; nobody@reject.test"
    assert per_rcpt["Original-Recipient"] == "rfc822;list@reject.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.reject.test"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    assert original.get_content_type() == "text/rfc822-headers"   # RET=HDRS
    assert "Subject: remote test" in original.get_content()
    assert "line one" not in original.get_content()


@pytest.mark.parametrize("mode,said", [("garbage", "malformed reply"),
                                       ("refuse", "the host refused the session"),
                                       ("silent", "timeout talking to mx1.garbage.test")])
def test_bad_primary_is_temporary_and_the_backup_takes_it(new_instance, dns_port, mode, said):
    port = free_port_on(SINK_HOSTS)
    (new_instance.etc / "esmtptimeouthelo").write_text("2\n")   # for the silent one
    with Sink("127.0.0.5", port, mode) as bad, Sink("127.0.0.6", port) as good:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "g@garbage.test")
        assert wait_until(lambda: good.state.messages and queue_empty(new_instance)), \
            log(new_instance)
    assert bad.state.sessions >= 1
    assert said in log(new_instance)
    assert not maildir_new(new_instance, "carol@sender.test")      # no bounce


def test_null_mx_and_missing_domain_bounce(new_instance, dns_port):
    start_sender(new_instance, dns_port, 25)
    spool(new_instance, "a@nullmx.test", "b@nowhere.test", "c@loop.test")
    assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")), log(new_instance)
    [f] = maildir_new(new_instance, "carol@sender.test")
    msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    blocks = {b["Final-Recipient"]: b for b in msg.get_payload()[1].get_payload()[1:]}
    assert blocks["rfc822; a@nullmx.test"]["Status"] == "5.1.10"
    assert blocks["rfc822; b@nowhere.test"]["Status"] == "5.1.2"
    # We (mx.test) are loop.test's best MX: RFC 5321 §5.1, nothing better to try.
    assert blocks["rfc822; c@loop.test"]["Status"] == "5.4.6"
    # RET absent and the message small: returned whole.
    assert msg.get_payload()[2].get_content_type() == "message/rfc822"


def test_implicit_mx_and_maxhost(new_instance, dns_port):
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.7", port) as plain, Sink("127.0.0.8", port) as many:
        start_sender(new_instance, dns_port, port, "MAXHOST=2\nMAXDELS=8\n")
        spool(new_instance, "p@plain.test")
        for i in range(12):
            spool(new_instance, f"m{i}@many.test")
        assert wait_until(lambda: len(many.state.messages) == 12 and plain.state.messages
                          and queue_empty(new_instance)), log(new_instance)
    assert many.state.max_active <= 2
    assert many.state.sessions < 12               # connections were reused
    assert "(reused)" in log(new_instance)


def through_authenticated_smarthost(sender, receiver, dns_port) -> bytes:
    """One message from sender to alice@example.com through receiver's submission port
    as the smarthost (AUTH_REQUIRED=1: no AUTH, no mail), logging in as alice: the
    message as it arrived."""
    msa = receiver.port("submission")
    (sender.etc / "esmtproutes").write_text(f": 127.0.0.1,{msa}\n")
    (sender.etc / "esmtpauthclient").write_text(
        f"127.0.0.1,{msa} alice@example.com alice-secret\n")
    os.chmod(sender.etc / "esmtpauthclient", 0o600)
    start_sender(sender, dns_port, 25)
    spool(sender, "alice@example.com")
    assert wait_until(lambda: maildir_new(receiver, "alice@example.com")), \
        log(sender) + receiver.logs()
    return maildir_new(receiver, "alice@example.com")[0].read_bytes()


def test_smarthost_with_auth_over_starttls(new_instance, receiver, dns_port):
    data = through_authenticated_smarthost(new_instance, receiver, dns_port)
    assert b"with ESMTPSA" in data               # TLS, then authenticated
    assert "alice-secret" not in log(new_instance)


def test_smarthost_auth_prefers_cram_md5(new_instance, cram_receiver, dns_port):
    # Courier's authsaslclient: a challenge-response mechanism before PLAIN.
    data = through_authenticated_smarthost(new_instance, cram_receiver, dns_port)
    assert b"(AUTH: CRAM-MD5 alice@example.com)" in data and b"with ESMTPSA" in data


def test_ipv6_only_exchanger(new_instance, dns_port):
    port = free_port_on(SINK_HOSTS)
    if not port_free_on(["::1"], port):
        pytest.skip("port taken on ::1")
    with Sink("::1", port) as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "six@v6.test")
        assert wait_until(lambda: sink.state.messages and queue_empty(new_instance)), \
            log(new_instance)
    assert "host=mx.v6.test[::1]" in log(new_instance)


def test_local_permanent_failure_bounces(new_instance, dns_port):
    start_sender(new_instance, dns_port, 25)
    spool(new_instance, "ghost@sender.test")            # no such account
    assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")), log(new_instance)
    assert wait_until(lambda: queue_empty(new_instance)), log(new_instance)
    msg = email.message_from_bytes(maildir_new(new_instance, "carol@sender.test")[0]
                                   .read_bytes(), policy=email.policy.default)
    block = msg.get_payload()[1].get_payload()[1]
    assert block["Final-Recipient"] == "rfc822; ghost@sender.test"
    assert block["Action"] == "failed" and block["Status"].startswith("5.")
    assert block["Diagnostic-Code"].startswith("x-local; ")


def test_idle_connection_closed_by_the_server_is_replaced(new_instance, dns_port):
    port = free_port_on(SINK_HOSTS)
    with Sink("127.0.0.8", port, "one-per-session") as sink:
        start_sender(new_instance, dns_port, port)
        spool(new_instance, "one@many.test")
        assert wait_until(lambda: len(sink.state.messages) == 1 and queue_empty(new_instance)), \
            log(new_instance)
        # Whether courierd already saw the hang-up (EOF while idle) or finds out
        # when it talks (no answer), the message goes over a new connection.
        spool(new_instance, "two@many.test")
        assert wait_until(lambda: len(sink.state.messages) == 2 and queue_empty(new_instance)), \
            log(new_instance)
    assert sink.state.sessions == 2
    assert "deferred" not in log(new_instance)


def test_security_required_verifies_the_certificate(new_instance, receiver, dns_port):
    port = receiver.port("smtp")
    # The receiver's self-signed certificate (CN/SAN rx.test) is our trust anchor:
    # by the name in it, delivery goes; by another name of the same host, the
    # handshake fails (temporary), the server goes on Courier's broken-STARTTLS
    # list, and the retry fails for good as TLS is then "not available".
    # As in Courier, /SECURITY=REQUIRED verifies only with ESMTP_TLS_VERIFY_DOMAIN=1
    # (courier(8) tells to set it); without it, see test_esmtproutes_courier.
    (new_instance.etc / "esmtproutes").write_text(
        f"example.com: rx.test,{port} /SECURITY=REQUIRED\n"
        f"example.net: mx2.example.com,{port} /SECURITY=REQUIRED\n")
    start_sender(new_instance, dns_port, port,
                 f"ESMTP_TLS_VERIFY_DOMAIN=1\nTLS_TRUSTCERTS={receiver.etc / 'esmtpd.pem'}\n")
    spool(new_instance, "alice@example.com")
    wrong = spool(new_instance, "bob@example.net")
    assert wait_until(lambda: maildir_new(receiver, "alice@example.com")), \
        log(new_instance) + receiver.logs()
    assert b"with ESMTPS" in maildir_new(receiver, "alice@example.com")[0].read_bytes()
    assert wait_until(lambda: maildir_new(new_instance, "carol@sender.test")
                      and wrong not in list_queue(new_instance.layout.spooldir)), \
        log(new_instance)
    text = log(new_instance)
    assert "TLS handshake failed" in text
    assert "/SECURITY=REQUIRED set, but TLS is not available" in text


def test_smtps_route(new_instance, receiver, dns_port):
    smtps = receiver.port("smtps")                  # TLS from the first byte
    (new_instance.etc / "esmtproutes").write_text(f"example.com: rx.test,{smtps} /SECURITY=SMTPS\n")
    start_sender(new_instance, dns_port, 25)
    spool(new_instance, "alice@example.com")
    assert wait_until(lambda: maildir_new(receiver, "alice@example.com")), \
        log(new_instance) + receiver.logs()
    assert b"with ESMTPS" in maildir_new(receiver, "alice@example.com")[0].read_bytes()
