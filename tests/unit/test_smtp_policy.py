"""courier_smtpd.policy and config: local domains, authd lookups, relaying; esmtpd files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from courier_smtpd.config import load_config
from courier_smtpd.core import SessionInfo, VerdictKind
from courier_smtpd.policy import LocalPolicy, load_domains
from courier_smtpd.session import received_header

from libcourier.authclient import AuthInfo, AuthTempFail
from libcourier.config import ConfigError

INFO = AuthInfo("u", 1000, 1000, "/home/u", "u", None, None, None, {})


@pytest.fixture
def etc(tmp_path):
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "locals").write_text("localhost\n.lan.example\n!printer.lan.example\n")
    (tmp_path / "hosteddomains").write_text("example.com\nalias.example\texample.com\n")
    (tmp_path / "esmtpd").write_text("PORT=2525\nADDRESS=127.0.0.1\nTLS_CERTFILE=esmtpd.pem\n")
    (tmp_path / "esmtpd-msa").write_text("PORT=587\nAUTH_REQUIRED=1\n")
    (tmp_path / "esmtpd-ssl").write_text("SSLPORT=4465\nSSLADDRESS=127.0.0.1\n")
    return tmp_path


def policy(etc, users, relay=False, temp=False):
    asked = []

    def lookup(sock, service, user):
        asked.append((service, user))
        if temp:
            raise AuthTempFail("down")
        return INFO if user in users else None
    return LocalPolicy(load_domains(etc, "fallback"), etc / "sock", relayclient=relay,
                       lookup=lookup), asked


S = SessionInfo("mx.example.com")


def kind(p, addr):
    v = p.check_recipient(addr, S)
    return v.kind, v.code, v.enhanced


def test_local_lookups(etc):
    p, asked = policy(etc, {"alice@example.com", "root", "bob"})
    assert kind(p, "Alice@EXAMPLE.com")[0] is VerdictKind.REJECT   # lookup keeps the local case
    assert kind(p, "alice@example.com")[0] is VerdictKind.ACCEPT
    assert kind(p, "alice@alias.example")[0] is VerdictKind.ACCEPT  # alias -> hosted domain
    assert kind(p, "root@mx.example.com")[0] is VerdictKind.ACCEPT  # me: by local part
    assert kind(p, "bob@host.lan.example")[0] is VerdictKind.ACCEPT  # .domain wildcard
    assert kind(p, "nobody@example.com") == (VerdictKind.REJECT, 550, "5.1.1")
    assert ("esmtp", "alice@example.com") in asked and ("esmtp", "root") in asked
    asked.clear()
    assert kind(p, "postmaster@example.com")[0] is VerdictKind.ACCEPT
    assert kind(p, "PostMaster@localhost")[0] is VerdictKind.ACCEPT
    assert kind(p, "postmaster")[0] is VerdictKind.ACCEPT
    assert asked == []


def test_relaying(etc):
    p, _ = policy(etc, set())
    assert kind(p, "x@elsewhere.example") == (VerdictKind.REJECT, 550, "5.7.1")
    assert kind(p, "bob@printer.lan.example") == (VerdictKind.REJECT, 550, "5.7.1")  # excluded
    p, _ = policy(etc, set(), relay=True)
    assert kind(p, "x@elsewhere.example")[0] is VerdictKind.ACCEPT


def test_esmtpacceptmailfor_is_a_backup_mx_list(etc):
    # Courier's esmtpacceptmailfor.dir: accepted from anyone and passed on by MX,
    # files in the directory read in order; nothing else opens relaying.
    (etc / "esmtpacceptmailfor.dir").mkdir()
    (etc / "esmtpacceptmailfor.dir" / "a").write_text("backup.example\n")
    (etc / "esmtpacceptmailfor.dir" / "b").write_text(".subs.example\n")
    p, _ = policy(etc, set())
    assert kind(p, "x@backup.example")[0] is VerdictKind.ACCEPT
    assert kind(p, "x@BACKUP.example")[0] is VerdictKind.ACCEPT
    assert kind(p, "x@a.subs.example")[0] is VerdictKind.ACCEPT
    assert kind(p, "x@subs.example") == (VerdictKind.REJECT, 550, "5.7.1")
    assert kind(p, "x@elsewhere.example") == (VerdictKind.REJECT, 550, "5.7.1")


def test_authd_down_is_tempfail(etc):
    p, _ = policy(etc, set(), temp=True)
    assert kind(p, "alice@example.com") == (VerdictKind.TEMPFAIL, 451, "4.4.3")


def test_config_chains(etc):
    cfg, warnings = load_config(etc, "esmtpd")
    assert cfg.addresses == (("127.0.0.1", 2525),) and not cfg.tls_on_connect
    assert cfg.hostname == "mx.example.com" and cfg.sizelimit == 10485760
    assert cfg.tls_certfile == etc / "esmtpd.pem"
    msa, _ = load_config(etc, "esmtpd-msa")
    assert msa.addresses == (("127.0.0.1", 587),)
    ssl, _ = load_config(etc, "esmtpd-ssl")
    assert ssl.addresses == (("127.0.0.1", 4465),) and ssl.tls_on_connect
    (etc / "sizelimit").write_text("5000\n")
    assert load_config(etc, "esmtpd")[0].sizelimit == 5000
    with open(etc / "esmtpd", "a") as fh:
        fh.write("SIZELIMIT=0\nFROBNICATE=1\n")
    cfg, warnings = load_config(etc, "esmtpd")
    assert cfg.sizelimit == 0 and any("FROBNICATE" in w for w in warnings)


def test_config_errors(etc):
    (etc / "esmtpd").write_text("PORT=2525\nMAXDAEMONS=many\n")
    with pytest.raises(ConfigError) as e:
        load_config(etc, "esmtpd")
    assert str(e.value).startswith(f"{etc / 'esmtpd'}:2: MAXDAEMONS")
    (etc / "esmtpd").write_text("PORT=2525\n")
    with pytest.raises(ConfigError):
        load_config(etc, "esmtpd-ssl")       # no TLS_CERTFILE


def test_received_header():
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    h = received_header(helo="client(x)\r\nBcc: y", rdns=None, ip="192.0.2.1", me="mx.example.com",
                        esmtp=True, tls=True, auth=False, smtputf8=False, when=when)
    assert h == (b"Received: from client?x???Bcc:?y ([192.0.2.1] [192.0.2.1])\n"
                 b"  by mx.example.com with ESMTPS; Tue, 02 Jan 2024 03:04:05 +0100\n")
    h = received_header(helo="h", rdns="host.example", ip="::1", me="mx", esmtp=False, tls=False,
                        auth=False, smtputf8=False, when=when)
    assert h.startswith(b"Received: from h (host.example [::1])\n  by mx with SMTP; ")


def test_known_recipient_asks_authd_once_for_a_while(etc):
    # Many messages to one mailbox: authd is asked at the first RCPT, and again only
    # once KNOWN_RECIPIENT_SECONDS have passed; unknown users every time. The answers
    # are shared by the sessions given the same KnownRecipients (one child's).
    from courier_smtpd import policy as mod
    now = [1000.0]
    users = {"alice@example.com", "bob"}
    asked = []

    def lookup(sock, service, user):
        asked.append(user)
        return INFO if user in users else None
    known = mod.KnownRecipients(clock=lambda: now[0])
    p = LocalPolicy(load_domains(etc, "fallback"), etc / "sock", lookup=lookup, known=known)
    for _ in range(3):
        assert kind(p, "alice@example.com")[0] is VerdictKind.ACCEPT
        assert kind(p, "bob-list@localhost")[0] is VerdictKind.ACCEPT   # via user-ext
        assert kind(p, "nobody@example.com") == (VerdictKind.REJECT, 550, "5.1.1")
    assert asked == ["alice@example.com", "bob-list", "bob", "nobody@example.com",
                     "nobody@example.com", "nobody@example.com"]
    # Another case of the local part is another question (authd decides about case).
    assert kind(p, "Alice@example.com")[0] is VerdictKind.REJECT
    asked.clear()
    users.discard("alice@example.com")
    now[0] += mod.KNOWN_RECIPIENT_SECONDS - 1
    # The next session of the same child: still on authd's word ...
    p = LocalPolicy(load_domains(etc, "fallback"), etc / "sock", lookup=lookup, known=known)
    assert kind(p, "alice@example.com")[0] is VerdictKind.ACCEPT
    now[0] += 1
    assert kind(p, "alice@example.com") == (VerdictKind.REJECT, 550, "5.1.1")   # ... until then
    assert asked == ["alice@example.com"]
    # A policy without a shared one keeps its own.
    p = LocalPolicy(load_domains(etc, "fallback"), etc / "sock", lookup=lookup)
    asked.clear()
    assert kind(p, "bob@localhost")[0] is VerdictKind.ACCEPT
    assert kind(p, "bob@localhost")[0] is VerdictKind.ACCEPT
    assert asked == ["bob"]
    # A temporary failure is never remembered: the next RCPT asks again.
    down = [True]

    def flaky(sock, service, user):
        asked.append(user)
        if down[0]:
            raise AuthTempFail("down")
        return INFO
    p = LocalPolicy(load_domains(etc, "fallback"), etc / "sock", lookup=flaky)
    asked.clear()
    assert kind(p, "carol@example.com") == (VerdictKind.TEMPFAIL, 451, "4.4.3")
    down[0] = False
    assert kind(p, "carol@example.com")[0] is VerdictKind.ACCEPT
    assert kind(p, "carol@example.com")[0] is VerdictKind.ACCEPT
    assert asked == ["carol@example.com", "carol@example.com"]


def test_known_recipients_are_bounded(etc):
    from courier_smtpd import policy as mod
    asked = []

    def lookup(sock, service, user):
        asked.append(user)
        return INFO
    p = LocalPolicy(load_domains(etc, "fallback"), etc / "sock", lookup=lookup)
    for i in range(mod.KNOWN_RECIPIENTS_MAX + 1):
        assert kind(p, f"u{i}@example.com")[0] is VerdictKind.ACCEPT
    assert len(p.known) == mod.KNOWN_RECIPIENTS_MAX
    asked.clear()
    assert kind(p, f"u{mod.KNOWN_RECIPIENTS_MAX}@example.com")[0] is VerdictKind.ACCEPT
    assert kind(p, "u0@example.com")[0] is VerdictKind.ACCEPT        # the oldest was dropped
    assert asked == ["u0@example.com"]
