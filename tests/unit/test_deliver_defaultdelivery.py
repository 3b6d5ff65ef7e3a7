"""DEFAULTDELIVERY's parse (.courier lines) and the rc-file quoting it needs."""

from __future__ import annotations

import pytest
from courier_deliver import dotcourier
from courier_deliver.dotcourier import Forward, Mailbox, Program

from libcourier.config.errors import ConfigError
from libcourier.config.rcfile import parse_rc


def test_quoted_value_over_lines_as_sh_reads_it():
    scope = parse_rc('A="|| dotforward\n./Maildir"\nB=x\n', env={})
    assert scope["A"].value == "|| dotforward\n./Maildir" and scope["A"].line == 1
    assert scope["B"].value == "x" and scope["B"].line == 3
    assert parse_rc("A='one\ntwo'\n", env={})["A"].value == "one\ntwo"
    with pytest.raises(ConfigError) as e:
        parse_rc('A="never closed\nB=x\n', "courierd", env={})
    assert str(e.value) == "courierd:1: unterminated double quote"


def test_default_instructions():
    assert dotcourier.default_instructions("./Maildir") == (Mailbox("./Maildir", True),)
    assert dotcourier.is_plain_maildir(dotcourier.default_instructions("./Maildir/"))
    ins = dotcourier.default_instructions("|| dotforward\n./mbox\nbob@example.org")
    assert ins == (Program("dotforward", True), Mailbox("./mbox", False),
                   Forward(("bob@example.org",)))
    assert not dotcourier.is_plain_maildir(ins)
    with pytest.raises(dotcourier.DotCourierError):
        dotcourier.default_instructions("|")
