"""Relay policy as a matrix (issue 7): {outside client, RELAYCLIENT via smtpaccess,
AUTH} x {local user, unknown user, hosted-domain alias, alias, `me` postmaster,
esmtpacceptmailfor domain, remote domain} x {port 25, port 587}, against real
esmtpd/esmtpd-msa processes, with the expected reply for every cell.

Loopback is split into three clients by source address (the listener is on
127.0.0.1; any 127/8 source reaches it): 127.0.0.2 has no access-file rule (the
"outside" client: no open relay from there), 127.0.0.3 is `allow,RELAYCLIENT`.
The AUTH client comes from 127.0.0.2 and logs in (PLAIN after STARTTLS).
"""

from __future__ import annotations

import smtplib
import subprocess
import sys

import pytest

from libcourier.spool import list_queue, read_envelope

OUTSIDE, RELAY_IP = "127.0.0.2", "127.0.0.3"
ALICE, BOB = "alice@example.com", "bob@example.net"

# Recipient kinds -> address.
RCPTS = {
    "local user": ALICE,
    "unknown user": "nobody@example.com",
    "hosted alias domain": "alice@example.org",     # hosteddomains: example.org -> example.com
    "alias": "team@example.com",                    # aliases (makealiases)
    "me postmaster": "postmaster@mx.test",
    "acceptmailfor": "someone@backup.example",      # esmtpacceptmailfor: backup MX
    "remote": "someone@elsewhere.example",
}
LOCAL_ONLY = {"local user": "250 2.1.5", "unknown user": "550 5.1.1",
              "hosted alias domain": "250 2.1.5", "alias": "250 2.1.5",
              "me postmaster": "250 2.1.5", "acceptmailfor": "250 2.1.5"}
# (client, port) -> kind -> "code enhanced" expected at RCPT; a str instead of a
# dict is the reply expected to MAIL FROM (the transaction never starts).
EXPECTED: dict[tuple[str, str], dict[str, str] | str] = {
    ("outside", "smtp"): {**LOCAL_ONLY, "remote": "550 5.7.1"},
    ("relayclient", "smtp"): {**LOCAL_ONLY, "remote": "250 2.1.5"},
    ("auth", "smtp"): {**LOCAL_ONLY, "remote": "250 2.1.5"},
    # Submission: AUTH_REQUIRED=1 wants a login before MAIL, RELAYCLIENT or not.
    ("outside", "submission"): "530 5.7.0",
    ("relayclient", "submission"): "530 5.7.0",
    ("auth", "submission"): {**LOCAL_ONLY, "remote": "250 2.1.5"},
}


@pytest.fixture
def relay_instance(new_instance):
    inst = new_instance
    inst.adduser(ALICE, "alice-secret")
    inst.adduser(BOB, "bob-secret")
    etc = inst.etc
    (etc / "smtpaccess.txt").write_text(f"# relay matrix\n{RELAY_IP}\tallow,RELAYCLIENT\n")
    with open(etc / "esmtpd", "a") as f:      # esmtpd-msa reads esmtpd first
        f.write(f"ACCESSFILE={etc / 'smtpaccess.txt'}\n")
    with open(etc / "hosteddomains", "a") as f:
        f.write("example.org\texample.com\n")
    (etc / "esmtpacceptmailfor").write_text("backup.example\n")
    (etc / "aliases").write_text(f"team@example.com: {ALICE}, {BOB}\n")
    r = subprocess.run([sys.executable, "-m", "courier_deliver.makealiases", "-C", str(etc)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # No courierd: whatever is accepted stays in the spool to be looked at.
    inst.start("authdaemond", "esmtpd", "esmtpd-msa")
    return inst


def session(inst, client: str, port: str) -> smtplib.SMTP:
    source = RELAY_IP if client == "relayclient" else OUTSIDE
    s = smtplib.SMTP("127.0.0.1", inst.port(port), timeout=30, source_address=(source, 0))
    s.ehlo("client.test")
    if client == "auth":
        s.starttls()
        s.ehlo("client.test")
        s.login(BOB, "bob-secret")
    return s


def reply(code: int, text: bytes) -> str:
    return f"{code} {text.decode()[:5]}"


def observe(inst, client: str, port: str) -> dict[str, str] | str:
    with session(inst, client, port) as s:
        code, text = s.mail("sender@outside.example")
        if code != 250:
            return reply(code, text)
        seen = {kind: reply(*s.rcpt(addr)) for kind, addr in RCPTS.items()}
        s.rset()
        return seen


@pytest.mark.parametrize("port", ["smtp", "submission"])
def test_relay_matrix(relay_instance, port):
    got = {(client, port): observe(relay_instance, client, port)
           for client in ("outside", "relayclient", "auth")}
    want = {k: v for k, v in EXPECTED.items() if k[1] == port}
    assert got == want
    assert list_queue(relay_instance.layout.spooldir) == []     # every transaction was RSET


# Ways an outside client might try to make us relay: none is accepted for a remote
# domain. Each is (address, acceptable replies).
RELAY_TRICKS = [
    "someone@elsewhere.example",
    "SOMEONE@ELSEWHERE.EXAMPLE",
    "someone@elsewhere.example.",                    # trailing dot
    "<@mx.test:someone@elsewhere.example>",          # source route (RFC 5321 §C): ignored
    "someone%elsewhere.example@example.com",         # percent hack: a local part here
    '"someone@elsewhere.example"@example.com',       # quoted @ in the local part
    "someone!elsewhere.example@example.com",         # bang path
    "someone@[192.0.2.1]",                           # address literal
    "someone@example.com.elsewhere.example",         # our domain as a prefix
    "someone@mx.test@elsewhere.example",
]


def test_no_open_relay_from_outside(relay_instance):
    """Unauthenticated, from an address without RELAYCLIENT: nothing for a remote
    domain is taken on either port, and a full transaction leaves no spool file."""
    inst = relay_instance
    refused = {}
    with session(inst, "outside", "smtp") as s:
        assert s.mail("sender@outside.example")[0] == 250
        for addr in RELAY_TRICKS:
            arg = addr if addr.startswith("<") else f"<{addr}>"
            s.putcmd("rcpt", f"TO:{arg}")
            refused[addr] = s.getreply()[0]
        assert s.rset()[0] == 250
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("sender@outside.example", ["someone@elsewhere.example"],
                       b"Subject: relay?\r\n\r\nrelay attempt\r\n")
    assert all(500 <= code < 600 for code in refused.values()), refused
    with session(inst, "outside", "submission") as s:
        code, _ = s.mail("sender@outside.example")
        assert code == 530
        code, _ = s.rcpt("someone@elsewhere.example")
        assert code >= 500
    assert list_queue(inst.layout.spooldir) == []


def test_accepted_relay_keeps_the_envelope(relay_instance):
    """The cells that accept do queue: RELAYCLIENT and AUTH relay to a remote domain,
    the backup-MX domain is taken from anyone, with the envelope as sent."""
    inst = relay_instance
    spooldir = inst.layout.spooldir
    for client, rcpt in (("relayclient", "someone@elsewhere.example"),
                         ("auth", "other@elsewhere.example"),
                         ("outside", "someone@backup.example")):
        with session(inst, client, "smtp") as s:
            assert s.sendmail(f"{client}@outside.example", [rcpt],
                              f"Subject: {client}\r\n\r\nx\r\n".encode()) == {}
    envs = sorted((read_envelope(spooldir, q) for q in list_queue(spooldir)),
                  key=lambda e: e.sender)
    assert [(e.sender, [r.address for r in e.recipients]) for e in envs] == [
        ("auth@outside.example", ["other@elsewhere.example"]),
        ("outside@outside.example", ["someone@backup.example"]),
        ("relayclient@outside.example", ["someone@elsewhere.example"]),
    ]
    assert all(e.client.startswith(f"[{ip}]") for e, ip in zip(envs, (OUTSIDE, OUTSIDE,
                                                                        RELAY_IP), strict=True))
