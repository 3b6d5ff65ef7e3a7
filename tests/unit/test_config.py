"""libcourier.config: Courier's shell-style rc files, control files and typed schemas."""

from __future__ import annotations

import pytest

from libcourier.config import ConfigError, Setting, load_settings, parse_rc, read_rc_files
from libcourier.config.control import read_control_file, read_control_lines, read_control_value
from libcourier.config.schema import to_address, to_bool, to_int, to_port_list

# An excerpt in the form Courier's shipped imapd file uses (sysconftool markers,
# quoted values that refer to earlier keys).
COURIER_IMAPD = """\
##VERSION: $Id:$
#
# imapd created from imapd.dist by sysconftool

##NAME: ADDRESS:0
#
# Address to listen on, can be set to a single IP address.
#
# ADDRESS=127.0.0.1

ADDRESS=0

##NAME: PORT:1
PORT=143

##NAME: MAXDAEMONS:0
MAXDAEMONS=40

##NAME: IMAP_CAPABILITY:1
IMAP_CAPABILITY="IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"

##NAME: IMAP_CAPABILITY_TLS:0
IMAP_CAPABILITY_TLS="$IMAP_CAPABILITY AUTH=PLAIN"
IMAPDSTART=YES
"""


def values(scope):
    return {k: v.value for k, v in scope.items()}


def test_courier_shipped_form():
    scope = parse_rc(COURIER_IMAPD, "imapd")
    v = values(scope)
    assert v["ADDRESS"] == "0"
    assert v["PORT"] == "143"
    assert v["IMAP_CAPABILITY_TLS"].endswith("QUOTA IDLE AUTH=PLAIN")
    assert v["IMAP_CAPABILITY_TLS"].startswith("IMAP4rev1 UIDPLUS")
    assert scope["PORT"].line == 14 and scope["PORT"].path == "imapd"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("A=plain", "plain"),
        ("A='single $X'", "single $X"),
        ('A="double $X"', "double x"),
        ('A="braced ${X}y"', "braced xy"),
        ('A="esc \\" \\$X \\\\"', 'esc " $X \\'),
        ("A=glued'a b'\"$X\"", "glueda bx"),
        ("A=", ""),
        ("A=value # trailing comment", "value"),
        ("export A=exported", "exported"),
        ("  A=indented", "indented"),
        ("A=$UNSET_VARIABLE_FOR_TEST", ""),
        ("A=cost$", "cost$"),
    ],
)
def test_value_forms(line, expected):
    scope = parse_rc(f"X=x\n{line}\n", "f", env={})
    assert scope["A"].value == expected


def test_environment_fallback():
    assert parse_rc("A=$HOME_X\n", env={"HOME_X": "/h"})["A"].value == "/h"


@pytest.mark.parametrize(
    "bad",
    [
        "not an assignment",
        'A="unterminated',
        "A='unterminated",
        "A=two words",
        "A=`date`",
        'A="$(date)"x;',
        "A=x; rm -rf /",
        "A=${unterminated",
    ],
)
def test_bad_lines_report_file_and_line(bad):
    with pytest.raises(ConfigError) as ei:
        parse_rc(f"# comment\nOK=1\n{bad}\n", "/etc/courier/imapd")
    assert str(ei.value).startswith("/etc/courier/imapd:3: ")


def test_later_file_overrides_and_sees_earlier(tmp_path):
    (tmp_path / "imapd").write_text("PORT=143\nSSLPORT=993\nCAP=IMAP4rev1\n")
    (tmp_path / "imapd-ssl").write_text('SSLPORT=1993\nCAP_TLS="$CAP AUTH=PLAIN"\n')
    scope = read_rc_files([tmp_path / "imapd", tmp_path / "imapd-ssl"])
    assert values(scope)["SSLPORT"] == "1993"
    assert values(scope)["CAP_TLS"] == "IMAP4rev1 AUTH=PLAIN"
    assert scope["SSLPORT"].path.endswith("imapd-ssl")


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        read_rc_files([tmp_path / "nope"])
    assert read_rc_files([tmp_path / "nope"], missing_ok=True) == {}
    (tmp_path / "bad").write_bytes(b"A=1\nB=\xff\n")
    with pytest.raises(ConfigError, match=r"bad:2: not valid UTF-8"):
        read_rc_files([tmp_path / "bad"])


SCHEMA = (
    Setting("PORT", "port", to_port_list, "143"),
    Setting("MAXDAEMONS", "maxdaemons", to_int, "40"),
    Setting("IMAPDSTART", "start", to_bool, "NO"),
    Setting("ADDRESS", "address", to_address, "0"),
)


def test_schema_types_defaults_and_unknown_keys():
    scope = parse_rc("MAXDAEMONS=12\nIMAPDSTART=YES\nFROB=1\n", "imapd")
    vals, warnings = load_settings(SCHEMA, scope, "imapd")
    assert vals == {"port": (143,), "maxdaemons": 12, "start": True, "address": ""}
    assert warnings == ["imapd:3: unknown key FROB (ignored)"]


def test_schema_bad_value_names_file_line_and_key():
    scope = parse_rc("\n\nMAXDAEMONS=abc\n", "/etc/courier/imapd")
    with pytest.raises(ConfigError) as ei:
        load_settings(SCHEMA, scope)
    assert str(ei.value).startswith("/etc/courier/imapd:3: MAXDAEMONS: ")


@pytest.mark.parametrize("raw, ports", [("smtp", (25,)), ("25,587", (25, 587)), ("143", (143,))])
def test_port_list(raw, ports):
    assert to_port_list(raw) == ports


@pytest.mark.parametrize("raw", ["0", "70000", "nosuchservice", ""])
def test_bad_ports(raw):
    with pytest.raises(ValueError):
        to_port_list(raw)


def test_address():
    assert to_address("0") == ""
    assert to_address("::1") == "::1"
    with pytest.raises(ValueError):
        to_address("localhost")


def test_control_file_with_dir(tmp_path):
    (tmp_path / "locals").write_text("# local domains\nexample.com\n\n  localhost  \n")
    d = tmp_path / "locals.dir"
    d.mkdir()
    (d / "b").write_text("b.example\n")
    (d / "a").write_text("a.example\n")
    (d / "a~").write_text("backup.example\n")
    (d / ".hidden").write_text("hidden.example\n")
    assert read_control_file(tmp_path / "locals") == [
        "example.com", "localhost", "a.example", "b.example"]
    lines = read_control_lines(tmp_path / "locals")
    assert (lines[1].path, lines[1].line) == (str(tmp_path / "locals"), 4)
    assert read_control_file(tmp_path / "missing") == []
    (tmp_path / "me").write_text("mail.example.com\n")
    assert read_control_value(tmp_path / "me") == "mail.example.com"
    assert read_control_value(tmp_path / "none", "dflt") == "dflt"
