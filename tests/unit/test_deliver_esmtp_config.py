"""courierd's remote-delivery control files added for Courier parity:
esmtphelo (with "*" and IDN names) and backuprelay."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_deliver.config import load_config

from libcourier.config.errors import ConfigError


def etc_with(tmp_path: Path, **files: str) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("WARNTIME=2h\n")
    (etc / "me").write_text("mx.test\n")
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def test_defaults(tmp_path):
    esmtp = load_config(etc_with(tmp_path)).esmtp
    assert esmtp.helo == "mx.test" and esmtp.backuprelay is None


@pytest.mark.parametrize("text,want", [("*\n", "*"), ("out.example.org\n", "out.example.org"),
                                       ("b\u00fccher.example\n", "xn--bcher-kva.example"),
                                       ("[192.0.2.1]\n", "[192.0.2.1]")])
def test_esmtphelo(tmp_path, text, want):
    assert load_config(etc_with(tmp_path, esmtphelo=text)).esmtp.helo == want


def test_backuprelay_and_its_age(tmp_path):
    esmtp = load_config(etc_with(tmp_path, backuprelay="relay.example.net\n")).esmtp
    assert esmtp.backuprelay == "relay.example.net"
    assert esmtp.backuprelay_after == 2 * 3600          # warntime


@pytest.mark.parametrize("name,text", [("esmtphelo", "two words\n"),
                                       ("backuprelay", "a b\n")])
def test_bad_values_name_file_and_line(tmp_path, name, text):
    with pytest.raises(ConfigError) as e:
        load_config(etc_with(tmp_path, **{name: text}))
    assert str(e.value).startswith(f"{tmp_path / 'etc' / name}:1: ")
