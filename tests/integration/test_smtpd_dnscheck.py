"""BOFHCHECKDNS, bofh `badmx` and BOFHCHECKHELO on a running esmtpd, against a
real DNS server (dnsmasq on loopback, named in courierd's ESMTP_RESOLVER): a
sender domain that does not exist, has neither MX nor address, or has a null MX
is refused, and so is one whose exchanger is in badmx (both only with
BOFHCHECKDNS, as Courier); a HELO name that does not lead back to the client is
refused (1) or deferred (2); DNS trouble is 451; smtpaccess overrides per client."""

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
    "--host-record=client.test,127.0.0.1",                  # a HELO name that matches
    "--mx-host=viamx.test,mx.viamx.test,10", "--host-record=mx.viamx.test,127.0.0.1",
]


@pytest.fixture(scope="module")
def dns_port():
    with dnsmasq(ZONE, ["test"], "mx.good.test") as port:
        yield port


def _instance(new_instance, dns_port: int | None, check: bool, access: str = "",
              helo: int = 0):
    inst = new_instance
    inst.adduser("alice@example.com", "alice-secret")
    with open(inst.etc / "courierd", "a") as f:
        # A dead resolver port when dns_port is None: every lookup times out.
        f.write(f"ESMTP_RESOLVER=127.0.0.1:{dns_port or 9}\n")
    with open(inst.etc / "esmtpd", "a") as f:
        f.write(f"BOFHCHECKDNS={int(check)}\nBOFHCHECKHELO={helo}\n")
        if access:
            (inst.etc / "smtpaccess").write_text(access)
            f.write(f"ACCESSFILE={inst.etc / 'smtpaccess'}\n")
    (inst.etc / "bofh").write_text("badmx 192.0.2.66\n")
    inst.start("authdaemond", "esmtpd")
    return inst


def _mail(inst, sender: str, helo: str = "client.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", inst.port("smtp"), timeout=30) as s:
        s.ehlo(helo)
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


def test_without_checkdns_nothing_is_looked_up(new_instance, dns_port):
    inst = _instance(new_instance, dns_port, check=False)
    assert _mail(inst, "a@nosuch.test")[0] == 250
    assert _mail(inst, "a@blocked.test")[0] == 250         # badmx too needs BOFHCHECKDNS


@pytest.mark.parametrize("level, code", [(1, 550), (2, 450)])
def test_checkhelo(new_instance, dns_port, level, code):
    inst = _instance(new_instance, dns_port, check=False, helo=level)
    assert _mail(inst, "a@x.test", helo="client.test")[0] == 250     # A record matches
    assert _mail(inst, "a@x.test", helo="viamx.test")[0] == 250      # via its MX
    assert _mail(inst, "a@x.test", helo="[127.0.0.1]")[0] == 250     # the address itself
    got, text = _mail(inst, "a@x.test", helo="good.test")
    assert got == code and b"does not match 127.0.0.1" in text, text
    got, text = _mail(inst, "a@x.test", helo="nosuch.test")
    assert got == code and b"does not exist" in text, text


def test_smtpaccess_turns_the_checks_off(new_instance, dns_port):
    inst = _instance(new_instance, dns_port, check=True, helo=1,
                     access="127.0.0.1\tallow,BOFHCHECKDNS=0,BOFHCHECKHELO=0\n")
    assert _mail(inst, "a@nosuch.test", helo="nosuch.test")[0] == 250


def test_dns_down_is_temporary(new_instance):
    inst = _instance(new_instance, None, check=True)
    code, text = _mail(inst, "a@good.test")
    assert (code, text[:5]) == (451, b"4.4.3"), text
