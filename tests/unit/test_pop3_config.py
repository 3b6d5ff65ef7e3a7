"""pop3d settings: Courier's keys, the pop3d / pop3d-ssl chain, file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from courier_pop3d.config import load_config
from courier_pop3d.main import maildir_of, main

from libcourier.config import ConfigError


def etc_with(tmp_path: Path, pop3d: str, ssl: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text("authdaemonvar=../var/run/authdaemon\n")
    (etc / "pop3d").write_text(pop3d)
    if ssl:
        (etc / "pop3d-ssl").write_text(ssl)
    return etc


def test_defaults(tmp_path: Path) -> None:
    cfg, warnings = load_config(etc_with(tmp_path, "POP3DSTART=YES\n"), "pop3d")
    assert cfg.addresses == (("", 110),)
    assert cfg.maxdaemons == 40 and cfg.maxperip == 4 and cfg.start
    assert cfg.stls is False          # no certificate, no STLS
    assert cfg.maildirpath == "Maildir" and warnings == []


def test_ssl_chain_and_stls(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, "PORT=1110\nTLS_CERTFILE=pop3d.pem\nFOO=1\n",
                   "SSLPORT=1995\nSSLADDRESS=127.0.0.1\nPOP3DSSLSTART=YES\n")
    cfg, warnings = load_config(etc, "pop3d")
    assert cfg.stls and cfg.tls_certfile == etc / "pop3d.pem"
    assert cfg.addresses[0][1] == 1110
    assert any("FOO" in w and ":3:" in w for w in warnings)
    ssl, _ = load_config(etc, "pop3d-ssl")
    assert ssl.tls_on_connect and not ssl.stls and ssl.start
    assert ssl.addresses == (("127.0.0.1", 1995),)


def test_starttls_off(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, "TLS_CERTFILE=pop3d.pem\nPOP3DSTARTTLS=NO\n")
    assert load_config(etc, "pop3d")[0].stls is False


def test_bad_value_has_file_and_line(tmp_path: Path, capsys) -> None:
    etc = etc_with(tmp_path, "PORT=110\nMAXDAEMONS=zero\n")
    with pytest.raises(ConfigError) as e:
        load_config(etc, "pop3d")
    assert f"{etc / 'pop3d'}:2" in str(e.value)
    assert main(["-C", str(etc), "--service", "pop3d"]) == 1
    assert f"{etc / 'pop3d'}:2:" in capsys.readouterr().err


def test_ssl_needs_a_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS_CERTFILE"):
        load_config(etc_with(tmp_path, "PORT=110\n"), "pop3d-ssl")


def test_maildir_of() -> None:
    assert maildir_of("/home/a", None, "Maildir") == Path("/home/a/Maildir")
    assert maildir_of("/home/a", "./Mail", "Maildir") == Path("/home/a/Mail")
    assert maildir_of("/home/a", "/var/mail/a", "Maildir") == Path("/var/mail/a")


def test_bad_input_limits(tmp_path: Path) -> None:
    cfg, _ = load_config(etc_with(tmp_path, "POP3_MAX_BAD_COMMANDS=4\n"
                                            "POP3_MAX_FAILED_LOGINS=1\n"), "pop3d")
    assert (cfg.max_bad_commands, cfg.max_failed_logins) == (4, 1)
    (tmp_path / "d").mkdir()
    default, _ = load_config(etc_with(tmp_path / "d", "POP3DSTART=YES\n"), "pop3d")
    assert (default.max_bad_commands, default.max_failed_logins) == (10, 3)
    with pytest.raises(ConfigError, match="POP3_MAX_BAD_COMMANDS"):
        (tmp_path / "bad").mkdir()
        load_config(etc_with(tmp_path / "bad", "POP3_MAX_BAD_COMMANDS=0\n"), "pop3d")
