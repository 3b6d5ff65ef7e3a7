"""Courier access files: parsing, netblock forms, most-specific match, errors with file:line."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libcourier.config.errors import ConfigError
from libcourier.tcpd.access import load_access, parse_access, parse_netblock

SAMPLE = """\
# smtpaccess/default, as makesmtpaccess reads it
*\tallow
127.0.0.1\tallow,RELAYCLIENT
192.168\tallow,RELAYCLIENT,BLOCK="550 go away, now"
192.168.5\tdeny
192.168.5.7 allow,RELAYCLIENT=,FOO=bar
10.0.0.0/8   deny
:2001:0db8\tdeny
:2001:0db8:0000:0001 allow,RELAYCLIENT
2001:db8:0:1::99 deny
"""


@pytest.fixture
def rules():
    return parse_access(SAMPLE, "smtpaccess")


@pytest.mark.parametrize("ip, allow, env", [
    ("127.0.0.1", True, {"RELAYCLIENT": ""}),
    ("127.0.0.2", True, {}),                                  # only "*" covers it
    ("192.168.1.1", True, {"RELAYCLIENT": "", "BLOCK": "550 go away, now"}),
    ("192.168.5.1", False, {}),                              # /24 beats /16
    ("192.168.5.7", True, {"RELAYCLIENT": "", "FOO": "bar"}),  # /32 beats /24
    ("10.200.1.1", False, {}),                               # CIDR
    ("::ffff:10.1.2.3", False, {}),                          # IPv4-mapped = IPv4
    ("::ffff:127.0.0.1", True, {"RELAYCLIENT": ""}),
    ("2001:db8::1", False, {}),                              # Courier ":hhhh" prefix
    ("2001:db8:0:1::5", True, {"RELAYCLIENT": ""}),          # longer Courier prefix wins
    ("2001:db8:0:1::99", False, {}),                         # plain literal = /128
    ("2001:db9::1", True, {}),
    ("fe80::1%eth0", True, {}),                              # scope id ignored
])
def test_most_specific_match_wins(rules, ip, allow, env):
    decision = rules.check(ip)
    assert decision.allow is allow
    assert dict(decision.env) == env


def test_no_rule_and_no_default_allows():
    rules = parse_access("10 deny\n")
    assert rules.check("11.0.0.1").allow
    assert not rules.check("10.9.9.9").allow


def test_later_line_for_same_netblock_replaces():
    rules = parse_access("1.2.3.4 deny\n1.2.3.4 allow,X=1\n")
    assert rules.check("1.2.3.4").env == {"X": "1"}


def test_default_deny():
    rules = parse_access("* deny\n127.0.0.1 allow\n")
    assert not rules.check("8.8.8.8").allow
    assert rules.check("127.0.0.1").allow
    assert not rules.check("not an ip").allow


@pytest.mark.parametrize("text, net", [
    ("192.168", "192.168.0.0/16"),
    ("192.168.", "192.168.0.0/16"),
    ("10", "10.0.0.0/8"),
    ("1.2.3.4", "1.2.3.4/32"),
    (":2001:0db8", "2001:db8::/32"),
    (":0000:0000:0000:0000:0000:0000:0000:0001", "::1/128"),
    ("::1", "::1/128"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("10.1.2.3/8", "10.0.0.0/8"),
])
def test_netblock_forms(text, net):
    assert parse_netblock(text) == ipaddress.ip_network(net)


@pytest.mark.parametrize("line, problem", [
    ("1.2.3.256 deny", "bad IPv4"),
    ("1.2.3.4.5 deny", "bad IPv4"),
    (":12345 deny", "bad IPv6"),
    ("1.2.3.4 maybe", "allow or deny"),
    ("1.2.3.4", "expected"),
    ("1.2.3.4 deny,FOO", "deny takes no variables"),
    ("1.2.3.4 allow,9X=1", "bad variable name"),
    ('1.2.3.4 allow,X="unterminated', "unterminated"),
    ("300.0.0.0/8 deny", "does not appear"),
])
def test_bad_lines_give_file_and_line(line, problem):
    with pytest.raises(ConfigError) as err:
        parse_access(f"# ok\n* allow\n{line}\n", "/etc/courier/smtpaccess/default")
    assert str(err.value).startswith("/etc/courier/smtpaccess/default:3: ")
    assert problem in str(err.value)


def test_long_line_refused():
    with pytest.raises(ConfigError, match=":1: line longer"):
        parse_access("1.2.3.4 allow,X=" + "a" * 5000)


def test_load_access_file(tmp_path):
    path = tmp_path / "imapaccess"
    path.write_text(SAMPLE)
    assert not load_access(path).check("192.168.5.200").allow
    with pytest.raises(ConfigError, match="cannot read access file"):
        load_access(tmp_path / "missing")
    path.write_bytes(b"1.2.3.4 allow,X=\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_access(path)


# Invariant: the answer equals a brute-force longest-prefix match over the rules.
_v4_rule = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(_v4_rule, max_size=12), st.integers(0, 2**32 - 1))
def test_matches_brute_force_longest_prefix(raw_rules, ip_int):
    lines, nets = [], []
    for i, (value, plen, allow) in enumerate(raw_rules):
        net = ipaddress.IPv4Network((value, plen), strict=False)
        lines.append(f"{net} {'allow,N=' + str(i) if allow else 'deny'}")
        nets.append((net, allow, i))
    rules = parse_access("\n".join(lines))
    ip = ipaddress.IPv4Address(ip_int)
    expected = None
    for net, allow, i in nets:  # later lines replace earlier ones for the same netblock
        if ip in net and (expected is None or net.prefixlen >= expected[0].prefixlen):
            expected = (net, allow, i)
    got = rules.check(str(ip))
    if expected is None:
        assert got.allow and not got.env
    else:
        assert got.allow is expected[1]
        if expected[1]:
            assert got.env == {"N": str(expected[2])}
