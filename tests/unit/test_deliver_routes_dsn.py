"""esmtproutes parsing and lookup; RFC 3464 DSNs parsed back with the email package;
process_message's DSN decisions (failure, success, delay once, null sender,
double bounce) with a stand-in courierlocal and remote side."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import time

import pytest
from courier_deliver import dsn
from courier_deliver.config import load_config
from courier_deliver.localproto import Reply, Status
from courier_deliver.queue import Outcome, process_message
from courier_deliver.remote import RemoteResult
from courier_deliver.routes import Option, Route, Routes, load_routes, parse_route
from hypothesis import example, given, settings
from hypothesis import strategies as st

from libcourier.config import ConfigError
from libcourier.smtp.reply import Reply as SmtpReply
from libcourier.spool import (
    Envelope,
    Recipient,
    SpoolWriter,
    data_span,
    ensure_spool,
    list_queue,
    open_data,
    read_envelope,
)

STARTTLS, REQUIRED, SMTPS = (Option.SECURITY_STARTTLS, Option.SECURITY_REQUIRED,
                             Option.SECURITY_SMTPS)


@pytest.mark.parametrize("line,expect", [
    ("example.com: relay.example.net", ("example.com", Route("relay.example.net"))),
    ("example.com: relay.example.net,2525", ("example.com", Route("relay.example.net", 2525))),
    (".Example.com: [192.0.2.1],587 /SECURITY=REQUIRED",
     (".example.com", Route("192.0.2.1", 587, frozenset({REQUIRED})))),
    (": smart.example,465/SECURITY=SMTPS", ("", Route("smart.example", 465, frozenset({SMTPS})))),
    ("local.example:", ("local.example", Route(None))),
    ("v6.example: [2001:db8::1],25", ("v6.example", Route("2001:db8::1", 25))),
    # Courier's flags combine: after the slash, separated by commas or blanks
    # (smtproutes.c strtok), or by more slashes (the manual page's syntax).
    ("a.example: r.example /security=starttls,IPv4Only",
     ("a.example", Route("r.example", None, frozenset({STARTTLS, Option.IPV4ONLY})))),
    ("a.example: r.example /SECURITY=STARTTLS SECURITY=REQUIRED",
     ("a.example", Route("r.example", None, frozenset({STARTTLS, REQUIRED})))),
    ("a.example: r.example,26/SECURITY=SMTPS/IPV6ONLY",
     ("a.example", Route("r.example", 26, frozenset({SMTPS, Option.IPV6ONLY})))),
    # An empty relay keeps DNS and still takes the flags (`example.com: /IPV4ONLY`).
    ("a.example: /SECURITY=REQUIRED", ("a.example", Route(None, None, frozenset({REQUIRED})))),
    ("a.example: /IPV4ONLY", ("a.example", Route(None, None, frozenset({Option.IPV4ONLY})))),
    # Courier's webadmin writes /SECURITY=NONE; Courier's parser sets no flag for it.
    ("a.example: r.example /SECURITY=NONE", ("a.example", Route("r.example"))),
])
def test_parse_route(line, expect):
    assert parse_route(line) == expect


@pytest.mark.parametrize("bad", ["no colon here", "a.example: relay,0", "a.example: relay,x",
                                 "a.example: relay /SECURITY=MAYBE", "a.example: re lay",
                                 "a.example: r /FOO=1", "a.example: r /SECURITY=STARTLS",
                                 "a.example: r /IPV4ONLY,SECURITY=STARTTLSX"])
def test_bad_route_lines(bad):
    # Courier would ignore an unknown word; a mistyped security option must
    # not quietly send mail in clear, so here it is an error.
    with pytest.raises(ValueError, match="bad|unknown|expected"):
        parse_route(bad)


def test_utf8_domains_match_their_a_labels():
    # courier(8): international domain names are listed in UTF-8; Courier
    # compares them with the recipient's domain whatever its form.
    routes = Routes((parse_route(".bücher.example: relais.bücher.example,26"),
                     parse_route("пример.испытание: [192.0.2.9]")))
    want = Route("relais.xn--bcher-kva.example", 26)
    assert routes.lookup("shop.bücher.example") == want
    assert routes.lookup("shop.xn--bcher-kva.example") == want
    assert routes.lookup("ПРИМЕР.испытание") == Route("192.0.2.9")
    assert routes.lookup("xn--e1afmkfd.xn--80akhbyknj4f") == Route("192.0.2.9")
    assert routes.lookup("bücher.example") == Route(None)      # subdomains only
    assert routes.entries[1][0] == "xn--e1afmkfd.xn--80akhbyknj4f"


def test_route_address_families():
    both = Route(None)
    v4 = Route(None, None, frozenset({Option.IPV4ONLY}))
    v6 = Route(None, None, frozenset({Option.IPV6ONLY}))
    none = Route(None, None, frozenset({Option.IPV4ONLY, Option.IPV6ONLY}))
    for addr, want in (("192.0.2.1", (True, True, False, False)),
                       ("2001:db8::1", (True, False, True, False)),
                       ("::ffff:192.0.2.1", (True, True, False, False))):   # v4-mapped
        assert tuple(r.family_allowed(addr) for r in (both, v4, v6, none)) == want


def test_routes_first_match_and_file_line(tmp_path):
    p = tmp_path / "esmtproutes"
    p.write_text("# comment\nexact.example:\n.sub.example: r1\n: smart,2525\n")
    routes = load_routes(p)
    assert routes.lookup("exact.example") == Route(None)          # DNS despite the smarthost
    assert routes.lookup("a.sub.example") == Route("r1")
    assert routes.lookup("sub.example") == Route("smart", 2525)   # ".sub" is subdomains only
    assert routes.lookup("other.example") == Route("smart", 2525)
    assert Routes().lookup("x.example") == Route(None)
    p.write_text("ok.example:\nbad.example: relay,99999\n")
    with pytest.raises(ConfigError) as ei:
        load_routes(p)
    assert "esmtproutes:2:" in str(ei.value)


ORIGINAL = b"Received: from x\nFrom: s@example.org\nSubject: hello\n\nbody line\n"


def _parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def _env(**kw) -> Envelope:
    base = dict(sender="s@example.org", recipients=(Recipient("r@far.example"),),
                received=1_700_000_000.0)
    base.update(kw)
    return Envelope(**base)


def test_failure_dsn_is_rfc3464():
    rc = Recipient("r@far.example", "rfc822;orig@far.example", None)
    env = _env(recipients=(rc,), envid="ENV 1", ret="FULL")
    data = dsn.build_dsn(me="mx.test", dsnfrom="MAILER-DAEMON <MAILER-DAEMON@mx.test>", env=env,
                         reports=[dsn.Report(rc, dsn.FAILED, "5.1.1",
                                             "smtp; 550 5.1.1 no such user", "mx1.far.example")],
                         kind=dsn.FAILED, original=ORIGINAL, original_size=len(ORIGINAL),
                         dsnlimit=1000, now=1_700_000_100.0, message_id="<m1@mx.test>")
    msg = _parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "s@example.org" and msg["Auto-Submitted"] == "auto-replied"
    text, status, orig = msg.get_payload()
    assert text.get_content_type() == "text/plain" and "no such user" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; mx.test"
    assert per_msg["Original-Envelope-Id"] == "ENV+201"        # xtext, as in ENVID=
    assert per_rcpt["Final-Recipient"] == "rfc822; r@far.example"
    assert per_rcpt["Original-Recipient"] == "rfc822;orig@far.example"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx1.far.example"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert orig.get_content_type() == "message/rfc822"
    assert orig.get_payload()[0]["Subject"] == "hello"


def test_ret_hdrs_and_dsnlimit_return_headers_only():
    rc = Recipient("r@far.example")
    rep = [dsn.Report(rc, dsn.FAILED, "5.0.0", "smtp; 554 no")]
    for env, limit in ((_env(ret="HDRS"), 10_000), (_env(), 10)):
        data = dsn.build_dsn(me="mx.test", dsnfrom="x <@>", env=env, reports=rep,
                             kind=dsn.FAILED, original=ORIGINAL, original_size=len(ORIGINAL),
                             dsnlimit=limit, now=0.0, message_id="<m@x>")
        third = _parse(data).get_payload()[2]
        assert third.get_content_type() == "text/rfc822-headers"
        assert b"body line" not in data and b"Subject: hello" in data


def test_notify_words():
    assert dsn.notify_wants(None, "FAILURE") and dsn.notify_wants(None, "DELAY")
    assert not dsn.notify_wants(None, "SUCCESS")
    assert dsn.notify_wants("SUCCESS,FAILURE", "SUCCESS")
    assert not dsn.notify_wants("NEVER", "FAILURE")
    assert not dsn.notify_wants("SUCCESS", "DELAY")


def test_reply_text_cannot_inject_fields():
    rc = Recipient("r@far.example")
    data = dsn.build_dsn(me="mx.test", dsnfrom="x <@>", env=_env(), kind=dsn.FAILED,
                         reports=[dsn.Report(rc, dsn.FAILED, "5.0.0",
                                             "smtp; 550 bad\nX-Evil: 1")],
                         original=ORIGINAL, original_size=len(ORIGINAL), dsnlimit=10_000,
                         now=0.0, message_id="<m@x>")
    assert b"\nX-Evil" not in data


# --- process_message's decisions -------------------------------------------------------

def _etc(tmp_path, extra=""):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "courierd").write_text(f"SPOOLDIR=../spool\nRUNDIR=../run\nRETRYFIRST=1\n{extra}")
    (etc / "me").write_text("mx.test\n")
    (tmp_path / "run").mkdir()
    return etc


@pytest.fixture
def cfg(tmp_path):
    c = load_config(_etc(tmp_path))
    ensure_spool(c.layout.spooldir)
    return c


class Local:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, sock, fd, sender, rcpt, user):
        import os
        offset, length = data_span(fd)         # the message alone, as courierlocal reads it
        self.calls.append((sender, rcpt, os.pread(fd, length, offset)))
        status = self.answers.get(rcpt, Status.OK)
        return Reply(status, {Status.OK: "ok", Status.TEMP: "4.2.2 over quota",
                              Status.PERM: "5.1.1 no such user"}[status])


class Remote:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, qid, env, rcpts, message):
        self.calls.append([r.address for r in rcpts])
        return {r.address: self.answers[r.address] for r in rcpts}


def _spool(cfg, *rcpts, sender="s@example.org", received=None, client="", notify=None):
    w = SpoolWriter(cfg.layout.spooldir, 0)
    w.write(ORIGINAL)
    return w.commit(Envelope(sender, tuple(Recipient(r, None, notify) for r in rcpts),
                             time.time() if received is None else received, client=client))


def _queued(cfg):
    out = {}
    for q in list_queue(cfg.layout.spooldir):
        with open_data(cfg.layout.spooldir, q) as fh:
            out[q] = (read_envelope(cfg.layout.spooldir, q), fh.read())
    return out


def test_local_perm_and_remote_5xx_bounce_in_one_dsn(cfg):
    qid = _spool(cfg, "gone@mx.test", "ok@mx.test", "bad@far.example", "slow@far.example")
    local = Local({"gone@mx.test": Status.PERM})
    remote = Remote({"bad@far.example": RemoteResult(SmtpReply.make(550, "5.1.1", "unknown"),
                                                     "mx.far.example"),
                     "slow@far.example": RemoteResult(SmtpReply.make(451, "4.3.0", "later"),
                                                      "mx.far.example")})
    r = process_message(cfg, qid, local, remote)
    assert r.outcome is Outcome.DEFERRED and len(r.injected) == 1
    q = _queued(cfg)
    assert [x.address for x in q[qid][0].recipients] == ["slow@far.example"]
    env, data = q[r.injected[0]]
    assert env.sender == "" and [x.address for x in env.recipients] == ["s@example.org"]
    assert env.client == dsn.ORIGIN_DSN
    blocks = _parse(data).get_payload()[1].get_payload()[1:]
    assert {(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks} == {
        ("rfc822; gone@mx.test", "failed", "5.1.1"),
        ("rfc822; bad@far.example", "failed", "5.1.1")}


def test_success_notice_only_when_asked_and_relayed_to_a_non_dsn_server(cfg):
    qid = _spool(cfg, "a@mx.test", "b@far.example", "c@far.example", notify="SUCCESS")
    ok = SmtpReply.make(250, "2.0.0", "queued")
    remote = Remote({"b@far.example": RemoteResult(ok, "mx.far", dsn_relayed=True),
                     "c@far.example": RemoteResult(ok, "mx.far", dsn_relayed=False)})
    r = process_message(cfg, qid, Local({}), remote)
    assert r.outcome is Outcome.DONE and len(r.injected) == 1
    env, data = _queued(cfg)[r.injected[0]]
    blocks = _parse(data).get_payload()[1].get_payload()[1:]
    assert sorted((b["Final-Recipient"], b["Action"]) for b in blocks) == [
        ("rfc822; a@mx.test", "delivered"), ("rfc822; b@far.example", "delivered"),
        ("rfc822; c@far.example", "relayed")]
    assert _parse(data).get_payload()[2].get_content_type() == "text/rfc822-headers"
    # Without NOTIFY=SUCCESS: no notice at all.
    qid = _spool(cfg, "a@mx.test")
    assert process_message(cfg, qid, Local({}), None).injected == ()


def test_delay_warning_once_then_bounce_at_queuetime(tmp_path):
    cfg = load_config(_etc(tmp_path, "WARNTIME=1h\nQUEUETIME=1d\n"))
    ensure_spool(cfg.layout.spooldir)
    qid = _spool(cfg, "full@mx.test", received=time.time() - 2 * 3600)
    local = Local({"full@mx.test": Status.TEMP})
    r1 = process_message(cfg, qid, local)
    assert r1.outcome is Outcome.DEFERRED and len(r1.injected) == 1
    assert read_envelope(cfg.layout.spooldir, qid).warned
    block = _parse(_queued(cfg)[r1.injected[0]][1]).get_payload()[1].get_payload()[1]
    assert block["Action"] == "delayed" and block["Status"] == "4.2.2"
    assert "Will-Retry-Until" in block
    assert process_message(cfg, qid, local).injected == ()      # warned once only
    # A day later: given up, bounced, removed.
    r3 = process_message(cfg, qid, local, clock=lambda: time.time() + 86400)
    assert r3.outcome is Outcome.DONE and len(r3.injected) == 1
    env, data = _queued(cfg)[r3.injected[0]]
    assert _parse(data).get_payload()[1].get_payload()[1]["Action"] == "failed"
    assert qid not in _queued(cfg)


def test_null_sender_gets_no_bounce_and_our_failed_dsn_goes_to_postmaster(cfg):
    local = Local({"x@mx.test": Status.PERM, "postmaster": Status.PERM})
    qid = _spool(cfg, "x@mx.test", sender="")
    r = process_message(cfg, qid, local)
    assert r.outcome is Outcome.DONE and r.injected == ()
    qid = _spool(cfg, "x@mx.test", sender="", client=dsn.ORIGIN_DSN)
    r = process_message(cfg, qid, local)
    assert len(r.injected) == 1
    env, data = _queued(cfg)[r.injected[0]]
    assert env.recipients == (Recipient("postmaster"),) and env.client == dsn.ORIGIN_DOUBLE
    # The double bounce fails too: dropped, nothing more queued.
    r = process_message(cfg, r.injected[0], local)
    assert r.outcome is Outcome.DONE and r.injected == () and _queued(cfg) == {}


def test_never_means_never(cfg):
    qid = _spool(cfg, "x@mx.test", notify="NEVER")
    r = process_message(cfg, qid, Local({"x@mx.test": Status.PERM}))
    assert r.outcome is Outcome.DONE and r.injected == ()


def test_envelope_warned_flag_round_trips_and_old_files_read():
    from libcourier.spool.envelope import format_envelope, parse_envelope
    env = _env()
    assert b"warned" not in format_envelope(env)
    assert parse_envelope(format_envelope(dataclasses.replace(env, warned=True))).warned
    assert not parse_envelope(format_envelope(env)).warned


def test_esmtpauthclient(tmp_path):
    from courier_deliver.routes import load_authclient
    p = tmp_path / "esmtpauthclient"
    p.write_text("smart.example,587 user1 pw1\nother.example user2 pw2\n")
    auth = load_authclient(p)
    assert auth.lookup("SMART.example", 587) == ("user1", "pw1")
    assert auth.lookup("smart.example", 25) is None
    assert auth.lookup("other.example", 2525) == ("user2", "pw2")
    assert "pw1" not in repr(auth)
    p.write_text("smart.example,587 onlyuser\n")
    with pytest.raises(ConfigError) as ei:
        load_authclient(p)
    assert "esmtpauthclient:1:" in str(ei.value)


def test_smtputf8_message_gets_rfc6533_types():
    rc = Recipient("j\u00fcrgen@b\u00fccher.example")
    original = "From: j\u00fcrgen@b\u00fccher.example\nSubject: gr\u00fc\u00df\n\nx\n".encode()
    env = _env(recipients=(rc,), smtputf8=True, sender="s\u00f8@example.org")
    data = dsn.build_dsn(me="mx.test", dsnfrom="x <@>", env=env, kind=dsn.FAILED,
                         reports=[dsn.Report(rc, dsn.FAILED, "5.1.1", "smtp; 550 no")],
                         original=original, original_size=len(original), dsnlimit=10_000,
                         now=0.0, message_id="<m@x>")
    _text, status, orig = _parse(data).get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert orig.get_content_type() == "message/global"
    assert "Final-Recipient: utf-8; j\u00fcrgen@b\u00fccher.example".encode() in data
    queued = dsn.dsn_envelope(env, data, 0.0, to=env.sender, origin=dsn.ORIGIN_DSN)
    assert queued.smtputf8 and queued.body == "8BITMIME" and queued.sender == ""


def test_courierd_check(tmp_path, capsys):
    from courier_deliver.main import main
    etc = _etc(tmp_path)
    assert main(["-C", str(etc), "--check"]) == 0
    (etc / "esmtproutes").write_text("example.com: relay,notaport\n")
    assert main(["-C", str(etc), "--check"]) == 1
    assert "esmtproutes:1: bad port" in capsys.readouterr().err


def test_esmtp_timeouts_from_control_files(tmp_path):
    from courier_deliver.config import EsmtpTimeouts
    etc = _etc(tmp_path)
    assert load_config(etc).esmtp.timeouts == EsmtpTimeouts()
    (etc / "esmtptimeoutconnect").write_text("5\n")
    (etc / "esmtptimeoutdata").write_text("20m\n")
    t = load_config(etc).esmtp.timeouts
    assert (t.connect, t.data, t.helo) == (5, 1200, 300)
    (etc / "esmtptimeoutquit").write_text("0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(etc)
    assert "esmtptimeoutquit:1:" in str(ei.value)


def test_remote_delivery_reloads_changed_routes_and_authclient(tmp_path, caplog):
    # Courier reads esmtproutes/esmtpauthclient anew for each connection; courierd
    # reloads them when they change, and a broken edit keeps the old contents.
    import dns.asyncresolver
    from courier_deliver.config import EsmtpConfig
    from courier_deliver.remote import RemoteDelivery
    from courier_deliver.routes import control_signature, load_authclient

    routes, auth = tmp_path / "esmtproutes", tmp_path / "esmtpauthclient"
    routes.write_text("a.example: r1\n")
    rd = RemoteDelivery(EsmtpConfig(helo="me.test", routes=load_routes(routes),
                                    auth=load_authclient(auth)),
                        resolver=dns.asyncresolver.Resolver(configure=False))

    def check() -> None:
        rd._files_checked = float("-inf")     # past the once-a-second limit
        rd._refresh_files()

    check()                                   # unchanged: the same objects
    assert rd.config.routes.lookup("a.example") == Route("r1")
    routes.write_text("a.example: r2,26 /IPV4ONLY\n")
    auth.write_text("r2,26 user secret\n")
    check()
    assert rd.config.routes.lookup("a.example") == Route("r2", 26, frozenset({Option.IPV4ONLY}))
    assert rd.config.auth.lookup("r2", 26) == ("user", "secret")
    routes.write_text("a.example: r3,notaport\n")
    with caplog.at_level("ERROR", logger="courier.courieresmtp"):
        check()
        check()                               # the same bad version: logged once
    assert rd.config.routes.lookup("a.example") == Route("r2", 26, frozenset({Option.IPV4ONLY}))
    assert sum("esmtproutes:1: bad port" in r.getMessage() for r in caplog.records) == 1
    (tmp_path / "esmtproutes.dir").mkdir()    # a NAME.dir file counts too
    (tmp_path / "esmtproutes.dir" / "more").write_text("b.example: r4\n")
    routes.unlink()
    sig = control_signature(routes)
    check()
    assert rd.config.routes.lookup("b.example") == Route("r4")
    assert rd.config.routes.lookup("a.example") == Route(None)
    assert rd.config.routes.signature == sig


# Lines built from what esmtproutes lines are made of (and some trouble:
# non-ASCII digits and letters, brackets, empty labels).
_ROUTE_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="ab.-:[],/ =0123456789\u00b2\u0663\u00e9\u0431SECURITYSTARTLSNOPV46",
            max_size=80))


@given(_ROUTE_TEXT)
@example("a.example: r,\u00b2")                  # str.isdigit() but not a port
@example("\u0431.example: r.\u00e9,25 /IPV4ONLY,,SECURITY=NONE")
@settings(max_examples=1500, deadline=None)
def test_any_esmtproutes_line_parses_or_is_a_value_error(line):
    # Bad input is a clear error (a ConfigError with file:line from load_routes),
    # never a crash of another kind.
    try:
        domain, route = parse_route(line)
    except ValueError as e:
        assert str(e) and "invalid literal" not in str(e)    # ours, not int()'s
        return
    assert domain == domain.lower() and domain.isascii()
    assert route.relay is None or route.relay.isascii()
    assert route.port is None or 0 < route.port < 65536


@pytest.mark.parametrize("options,verify,starttls,security,want", [
    ((), False, True, None, ("opportunistic", "client")),
    ((), True, True, None, ("opportunistic", "verified")),      # ESMTP_TLS_VERIFY_DOMAIN=1
    ((), False, False, None, ("none", "client")),                # ESMTP_USE_STARTTLS=0
    ((REQUIRED,), False, True, None, ("required", "client")),    # TLS, unverified: Courier
    ((REQUIRED,), True, True, None, ("required", "verified")),
    ((SMTPS, REQUIRED), False, True, None, ("smtps", "client")),   # SMTPS drops REQUIRED
    ((STARTTLS,), True, True, "STARTTLS", ("opportunistic", "security")),
    ((SMTPS,), False, True, "STARTTLS", ("smtps", "security")),
])
def test_tls_policy_and_trust_per_route(options, verify, starttls, security, want):
    import ssl

    import dns.asyncresolver
    from courier_deliver.config import EsmtpConfig
    from courier_deliver.remote import RemoteDelivery

    ctxs = {name: ssl.create_default_context() for name in ("client", "verified", "security")}
    rd = RemoteDelivery(EsmtpConfig(helo="me.test", verify=verify, starttls=starttls,
                                    tls_client=ctxs["client"], tls_verified=ctxs["verified"],
                                    tls_security=ctxs["security"]),
                        resolver=dns.asyncresolver.Resolver(configure=False))
    policy, ctx = rd._tls(Route("r.example", None, frozenset(options)), security)
    assert (policy.value, next(n for n, c in ctxs.items() if c is ctx)) == want
