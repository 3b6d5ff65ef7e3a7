""".courier parsing and rules (courier_deliver.dotcourier) and the delivery child's report."""

from __future__ import annotations

import pytest
from courier_deliver import dotcourier as dc
from courier_deliver.local import Outcome, format_report, parse_report
from courier_deliver.localproto import Reply, Status
from hypothesis import given
from hypothesis import strategies as st


def test_parse_every_line_kind():
    text = (b"# comment\n\n./Maildir/\n/var/mail/alice\n| prog --a \\\n  --b\n"
            b"&bob@example.com, carol\n!dave@x\n||  gen --x\n")
    assert dc.parse(text) == [
        dc.Mailbox("./Maildir/", True), dc.Mailbox("/var/mail/alice", False),
        dc.Program("prog --a \n  --b"), dc.Forward(("bob@example.com", "carol")),
        dc.Forward(("dave@x",)), dc.Program("gen --x", dynamic=True)]


@pytest.mark.parametrize("text", [b"||\n", b"|\n", b"\xff\n", b"a b\n", b",,\n",
                                  b"./x\x01/\n", b"x" * (dc.MAX_FILE_BYTES + 1),
                                  b"a@b\n" * (dc.MAX_FORWARDS + 1)])
def test_parse_errors(text):
    with pytest.raises(dc.DotCourierError):
        dc.parse(text)


def test_candidate_files_and_extensions():
    assert dc.candidate_files(None) == [(".courier", None)]
    assert dc.candidate_files("Lists-Py.Dev") == [
        (".courier-lists-py:dev", None), (".courier-lists-default", "py:dev"),
        (".courier-default", "lists-py:dev")]
    assert dc.split_extension("alice-lists-py") == [
        ("alice-lists-py", None), ("alice-lists", "py"), ("alice", "lists-py")]
    assert dc.split_extension("-x") == [("-x", None)]


@pytest.mark.parametrize("code,outcome", [
    (0, dc.ProgramOutcome.CONTINUE), (99, dc.ProgramOutcome.STOP),
    (67, dc.ProgramOutcome.PERMANENT), (70, dc.ProgramOutcome.PERMANENT),
    (100, dc.ProgramOutcome.PERMANENT), (75, dc.ProgramOutcome.TEMPORARY),
    (1, dc.ProgramOutcome.TEMPORARY), (111, dc.ProgramOutcome.TEMPORARY)])
def test_program_exit_codes(code, outcome):
    assert dc.program_outcome(code) is outcome


def test_program_environment():
    env = dc.program_environment(dc.Context("/h", "alice", "s@x", "alice-a-b-c@Ex.com",
                                            "a-b-c", "c"), "From s@x now\n")
    assert (env["HOST"], env["LOCAL"], env["EXT"], env["EXT2"], env["EXT3"], env["EXT4"],
            env["DEFAULT"]) == ("ex.com", "alice-a-b-c", "a-b-c", "b-c", "c", "", "c")
    # Courier sets whole header lines without the newline (deliver.c mkdelheaders).
    assert env["RPLINE"] == "Return-Path: <s@x>"
    assert env["DTLINE"] == "Delivered-To: alice-a-b-c@Ex.com"
    assert env["UFLINE"] == "From s@x now"
    assert env["MAILDIRQUOTA"] == ""
    bare = dc.program_environment(dc.Context("/h", "u", "", "postmaster", quota="10S"), "")
    assert (bare["HOST"], bare["LOCAL"], bare["MAILDIRQUOTA"]) == \
        ("localhost", "postmaster", "10S")
    assert dc.qualify_forward("bob", "alice@ex.com") == "bob@ex.com"


def test_report_round_trip_and_truncation():
    o = Outcome(Reply(Status.OK, "done"), ("bob@example.com", "ü ser@x"))
    data = format_report(o)
    assert parse_report(data) == o
    assert parse_report(data[:-1]) is None
    assert parse_report(b"OK x\n") == Outcome(Reply(Status.OK, "x"))


@given(st.binary(max_size=400))
def test_parse_any_bytes_gives_instructions_or_our_error(data):
    try:
        out = dc.parse(data)
    except dc.DotCourierError:
        return
    assert all(isinstance(i, (dc.Mailbox, dc.Program, dc.Forward)) for i in out)
