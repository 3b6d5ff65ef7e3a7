"""BOFHCHECKDNS and bofh `badmx` on a running esmtpd, against a real DNS server
(dnsmasq on loopback, named in courierd's ESMTP_RESOLVER): a sender domain
that does not exist, has neither MX nor address, or has a null MX is refused;
one whose exchanger is listed in badmx is refused even without BOFHCHECKDNS;
DNS trouble is 451; smtpaccess can turn the check off per client."""

from __future__ import annotations

import smtplib

import pytest
from dnsserver import dnsmasq, needs_dnsmasq

pytestmark = needs_dnsmasq

ZONE = [
    "--mx-host=good.test,mx.good.test,10", "--host-record=mx.good.test,127.0.0.20",
    "--host-record=plain.test,127.0.0.21",                  # no MX: the implicit MX
    "--dns-rr=nullmx.test,15,000000",                       # RFC 7505 "0 ."
    "--mx-host=blocked.test,mx.blocked.test,10", "--host-record=mx.blocked.test,192.0.2.66",
    "--txt-record=nomail.test,no mail here",                # exists, no MX, no address
]


@pytest.fixture(scope="module")
def dns_port():
    with dnsmasq(ZONE, ["test"], "mx.good.test") as port:
        yield port


def _instance(new_instance, dns_port: int | None, check: bool, access: str = ""):
    inst = new_instance
    inst.adduser("alice@example.com", "alice-secret")
    with open(inst.etc / "courierd", "a") as f:
        # A dead resolver port when dns_port is None: every lookup times out.
        f.write(f"ESMTP_RESOLVER=127.0.0.1:{dns_port or 9}\n")
    with open(inst.etc / "esmtpd", "a") as f:
        f.write(f"BOFHCHECKDNS={int(check)}\n")
        if access:
            (inst.etc / "smtpaccess").write_text(access)
            f.write(f"ACCESSFILE={inst.etc / 'smtpaccess'}\n")
    (inst.etc / "bofh").write_text("badmx 192.0.2.66\n")
    inst.start("authdaemond", "esmtpd")
    return inst


def _mail(inst, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=30) as s:
        s.ehlo("client.test")
        return s.mail(sender)


def test_checkdns_on(new_instance, dns_port):
    inst = _instance(new_instance, dns_port, check=True)
    assert _mail(inst, "a@good.test")[0] == 250
    assert _mail(inst, "a@plain.test")[0] == 250
    assert _mail(inst, "<>")[0] == 250
    code, text = _mail(inst, "a@nosuch.test")
    assert (code, text[:5]) == (550, b"5.1.8"), text
    code, text = _mail(inst, "a@nomail.test")
    assert (code, text[:5]) == (550, b"5.1.8"), text
    code, text = _mail(inst, "a@nullmx.test")
    assert (code, text[:6]) == (550, b"5.7.27"), text
    code, text = _mail(inst, "a@blocked.test")
    assert code == 550 and b"192.0.2.66 is blocked" in text


def test_badmx_without_checkdns_and_smtpaccess_override(new_instance, dns_port):
    inst = _instance(new_instance, dns_port, check=False)
    assert _mail(inst, "a@nosuch.test")[0] == 250          # no BOFHCHECKDNS: not checked
    code, text = _mail(inst, "a@blocked.test")
    assert code == 550 and b"is blocked" in text          # badmx is checked regardless


def test_smtpaccess_turns_the_check_off(new_instance, dns_port):
    inst = _instance(new_instance, dns_port, check=True,
                     access="127.0.0.1\tallow,BOFHCHECKDNS=0\n")
    assert _mail(inst, "a@nosuch.test")[0] == 250


def test_dns_down_is_temporary(new_instance):
    inst = _instance(new_instance, None, check=True)
    code, text = _mail(inst, "a@good.test")
    assert (code, text[:5]) == (451, b"4.4.3"), text
