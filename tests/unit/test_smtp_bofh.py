"""Courier's `bofh` file (courier/courier/bofh.c semantics) and the header pass
of courier-smtpd (Received loop count, header limits, added Message-ID/Date)."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_smtpd.bofh import Bofh, load_bofh, parse_bofh, relay_in_domains
from courier_smtpd.core import SessionInfo, VerdictKind
from courier_smtpd.headers import HeaderFilter, HeaderRules
from courier_smtpd.policy import Domains, LocalPolicy

BOFH = """\
# comment line
badfrom spammer@example.org
badfrom @bad.example        # whole domain
badfrom @.sub.example       # sub-domains only
badfrom joe@.corp.example   # joe at any sub-domain
spamtrap trap@example.com
freemail freemail.example fm-relay.example
badmx 192.0.2.7
maxrcpts 3 hard
opt BOFHHEADERLIMIT=2000
opt BOFHHEADERLIMIT=9999
bogus directive
"""


def test_parse_and_match_like_courier() -> None:
    b = parse_bofh(BOFH)
    assert b.is_badfrom("Spammer@Example.ORG")
    assert not b.is_badfrom("other@example.org")
    assert b.is_badfrom("anyone@BAD.example")
    assert not b.is_badfrom("anyone@x.bad.example")            # @domain is that domain only
    assert b.is_badfrom("a@x.sub.example")
    assert not b.is_badfrom("a@sub.example")                   # @.domain: sub-domains only
    assert b.is_badfrom("joe@a.corp.example")
    assert not b.is_badfrom("joe@corp.example")
    assert not b.is_badfrom("ann@a.corp.example")
    assert b.is_spamtrap("TRAP@example.com")
    assert b.freemail_domains("u@FreeMail.example") == ("freemail.example", "fm-relay.example")
    assert b.freemail_domains("u@other.example") is None
    assert "192.0.2.7" in b.badmx
    assert (b.maxrcpts, b.maxrcpts_hard) == (3, True)
    assert b.opts["BOFHHEADERLIMIT"] == "2000"                  # first one wins, as putenv once


def test_maxrcpts_junk_keeps_default_and_missing_file(tmp_path: Path) -> None:
    assert parse_bofh("maxrcpts zero\n").maxrcpts == 100
    assert parse_bofh("maxrcpts 7\n").maxrcpts_hard is False
    assert load_bofh(tmp_path) == Bofh()


def test_relay_in_domains() -> None:
    assert relay_in_domains("mx1.freemail.example.", ("freemail.example",))
    assert relay_in_domains("freemail.example", ("freemail.example",))
    assert not relay_in_domains("evilfreemail.example", ("freemail.example",))
    assert not relay_in_domains(None, ("freemail.example",))


def _policy(bofh: Bofh, host: str | None = None, **kw) -> LocalPolicy:
    domains = Domains("mx.example.com", ("example.com",), {"example.net": "example.net"})
    return LocalPolicy(domains, Path("/nonexistent"), bofh=bofh, remote_host=lambda: host,
                       lookup=lambda *a: None, **kw)


def test_sender_policy_badfrom_and_freemail() -> None:
    b = parse_bofh(BOFH)
    s = SessionInfo("mx.example.com")
    v = _policy(b).check_sender("spammer@example.org", s)
    assert (v.kind, v.code, v.enhanced) == (VerdictKind.REJECT, 550, "5.7.1")
    assert _policy(b).check_sender("", s).kind is VerdictKind.ACCEPT     # <> is never badfrom
    assert _policy(b, "relay.elsewhere").check_sender("u@freemail.example", s).kind \
        is VerdictKind.REJECT
    assert _policy(b, None).check_sender("u@freemail.example", s).kind is VerdictKind.REJECT
    assert _policy(b, "out.fm-relay.example").check_sender("u@freemail.example", s).kind \
        is VerdictKind.ACCEPT
    # A relay client or a logged-in user is not held to the freemail rule (Courier: RELAYCLIENT).
    assert _policy(b, None, relayclient=True).check_sender("u@freemail.example", s).kind \
        is VerdictKind.ACCEPT
    s.authenticated = "alice@example.net"
    assert _policy(b, None).check_sender("u@freemail.example", s).kind is VerdictKind.ACCEPT


def test_sender_bound_to_login() -> None:
    p = _policy(Bofh(), auth_sender_check=True)
    s = SessionInfo("mx.example.com", authenticated="alice@example.net")
    for ok in ("alice@example.net", "ALICE@Example.NET", "alice-lists@example.net", ""):
        assert p.check_sender(ok, s).kind is VerdictKind.ACCEPT, ok
    for bad in ("bob@example.net", "alice@example.com", "aliceX@example.net"):
        v = p.check_sender(bad, s)
        assert (v.code, v.enhanced) == (553, "5.7.1"), bad
    # A system-style login owns its local part at `me` and the `locals` domains.
    s.authenticated = "carol"
    assert p.check_sender("carol@example.com", s).kind is VerdictKind.ACCEPT
    assert p.check_sender("carol@mx.example.com", s).kind is VerdictKind.ACCEPT
    assert p.check_sender("carol@example.net", s).kind is VerdictKind.REJECT
    # Off (the default): anything goes for a logged-in client.
    assert _policy(Bofh()).check_sender("bob@example.net", s).kind is VerdictKind.ACCEPT
    # Not logged in: the check does not apply (relay rules decide).
    s.authenticated = ""
    assert p.check_sender("bob@example.net", s).kind is VerdictKind.ACCEPT


def _run(f: HeaderFilter, msg: bytes, step: int) -> bytes:
    out = b""
    lines = msg.splitlines(keepends=True)
    for i in range(0, len(lines), step):
        out += f.feed(b"".join(lines[i:i + step]))
    return out + f.finish()


@pytest.mark.parametrize("step", [1, 2, 100])
def test_header_filter_adds_missing_fields_at_end_of_header(step: int) -> None:
    rules = HeaderRules(add_message_id="<id@x>", add_date="Fri, 27 Nov 2026 04:00:00 +0000")
    msg = b"From: a@b\nSubject: hi\n  folded\n\nbody\nDate: not a header\n"
    out = _run(HeaderFilter(rules), msg, step)
    assert out == (b"From: a@b\nSubject: hi\n  folded\nMessage-ID: <id@x>\n"
                   b"Date: Fri, 27 Nov 2026 04:00:00 +0000\n\nbody\nDate: not a header\n")
    # Present ones (any case) are left alone; nothing is added when not asked.
    msg2 = b"message-id: <a@b>\nDATE: Thu, 1 Jan 2026 00:00:00 +0000\n\nx\n"
    assert _run(HeaderFilter(rules), msg2, step) == msg2
    assert _run(HeaderFilter(HeaderRules()), msg, step) == msg


def test_header_filter_message_that_is_all_header() -> None:
    out = _run(HeaderFilter(HeaderRules(add_date="D")), b"Subject: x\n", 1)
    assert out == b"Subject: x\nDate: D\n"


def test_header_filter_routing_loop_and_size_limits() -> None:
    loop = b"Received: x\n" * 101 + b"\nbody\n"
    f = HeaderFilter(HeaderRules())
    assert _run(f, loop, 7) == b""
    assert f.refusal is not None and (f.refusal.code, f.refusal.enhanced) == (554, "5.4.6")
    ok = b"Received: x\n" * 100 + b"\nbody\n"
    f = HeaderFilter(HeaderRules())
    assert _run(f, ok, 7) == ok and f.refusal is None
    big = b"X-Long: " + b"a" * 900 + b"\n"
    f = HeaderFilter(HeaderRules(max_octets=1000))
    assert _run(f, big * 2 + b"\nbody\n", 1) == b""
    assert f.refusal is not None and (f.refusal.code, f.refusal.enhanced) == (552, "5.3.4")
    f = HeaderFilter(HeaderRules(max_fields=3))
    _run(f, b"A: 1\nB: 2\nC: 3\nD: 4\n\n", 1)
    assert f.refusal is not None


def test_esmtpgreeting_control_file(tmp_path: Path) -> None:
    from courier_smtpd.config import load_config
    from courier_smtpd.core import AcceptAll, SmtpServer
    (tmp_path / "me").write_text("mx.example.com\n")
    (tmp_path / "esmtpd").write_text("PORT=2525\nADDRESS=127.0.0.1\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    assert SmtpServer(SessionInfo(cfg.hostname, greeting=cfg.greeting), AcceptAll()).greeting() \
        == b"220 mx.example.com ESMTP\r\n"
    (tmp_path / "esmtpgreeting").write_text("mx.example.com ESMTP ready\nno spam\x07 please\n")
    cfg, _ = load_config(tmp_path, "esmtpd")
    assert SmtpServer(SessionInfo(cfg.hostname, greeting=cfg.greeting), AcceptAll()).greeting() \
        == b"220-mx.example.com ESMTP ready\r\n220 no spam please\r\n"
