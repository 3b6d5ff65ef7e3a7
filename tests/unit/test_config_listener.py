"""The shared listener settings (libcourier.config.listener) and start-up (libcourier.tcpd.daemon)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from libcourier.config import ConfigError, Setting
from libcourier.config.listener import (
    ListenerConfig,
    config_files,
    listener_settings,
    load_listener,
    merge_settings,
    resolve_path,
)
from libcourier.config.schema import to_str
from libcourier.tcpd.daemon import ListenerDaemon, StartupError, make_loader, run_listener

SERVICES = ("xd", "xd-msa", "xd-ssl")
SCHEMA = merge_settings(
    listener_settings(proto="X", port="1100", sslport="1101", maxperip="7",
                      start_key="XDSTART", sslstart_key="XDSSLSTART"),
    (Setting("OWN", "own", to_str, "dflt"),),
)


def make_etc(tmp_path: Path, **files: str) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(parents=True)
    (etc / "courierd").write_text("RUNDIR=../var/run\nSPOOLDIR=../var/spool\n")
    (etc / "authdaemonrc").write_text("authdaemonvar=../var/run/authdaemon\n")
    for name, text in files.items():
        (etc / name.replace("_", "-")).write_text(text)
    return etc


def load(etc: Path, service: str, *, ssl_keys_for_plain: bool = True):
    return load_listener(etc, service, base="xd", services=SERVICES, schema=SCHEMA,
                         ssl_keys_for_plain=ssl_keys_for_plain)


def test_file_order(tmp_path: Path) -> None:
    etc = tmp_path
    assert config_files(etc, "imapd", "imapd", ssl_keys_for_plain=True) == \
        [etc / "imapd-ssl", etc / "imapd"]
    assert config_files(etc, "imapd-ssl", "imapd", ssl_keys_for_plain=True) == \
        [etc / "imapd", etc / "imapd-ssl"]
    assert config_files(etc, "esmtpd", "esmtpd", ssl_keys_for_plain=False) == [etc / "esmtpd"]
    assert config_files(etc, "esmtpd-msa", "esmtpd", ssl_keys_for_plain=False) == \
        [etc / "esmtpd", etc / "esmtpd-msa"]


def test_defaults_and_common_fields(tmp_path: Path) -> None:
    loaded = load(make_etc(tmp_path, xd="XDSTART=YES\n"), "xd")
    assert loaded.warnings == []
    c = loaded.common
    assert c["addresses"] == (("", 1100),) and c["start"] is True and c["maxperip"] == 7
    assert c["maxdaemons"] == 40 and c["tls_certfile"] is None and c["accessfile"] is None
    assert loaded.values["own"] == "dflt" and loaded.ssl is False
    # The keyword arguments fill exactly a ListenerConfig.
    assert ListenerConfig(**c).service == "xd"


def test_plain_service_reads_ssl_file_first(tmp_path: Path) -> None:
    etc = make_etc(tmp_path, xd="OWN=plain\n", xd_ssl="OWN=ssl\nTLS_CERTFILE=x.pem\n")
    plain = load(etc, "xd")
    assert plain.values["own"] == "plain"                       # xd read last: it wins
    assert plain.common["tls_certfile"] == etc / "x.pem"        # TLS keys from xd-ssl
    assert load(etc, "xd", ssl_keys_for_plain=False).common["tls_certfile"] is None
    assert load(etc, "xd-ssl").values["own"] == "ssl"           # xd-ssl read last


def test_ssl_service_uses_ssl_keys(tmp_path: Path) -> None:
    etc = make_etc(tmp_path, xd="SSLADDRESS=127.0.0.1\nSSLPORT=2001,2002\nXDSTART=YES\n",
                   xd_ssl="TLS_CERTFILE=/abs/c.pem\nXDSSLSTART=YES\n")
    loaded = load(etc, "xd-ssl")
    assert loaded.ssl
    assert loaded.common["addresses"] == (("127.0.0.1", 2001), ("127.0.0.1", 2002))
    assert loaded.common["start"] is True
    assert loaded.common["tls_certfile"] == Path("/abs/c.pem")


def test_errors(tmp_path: Path) -> None:
    etc = make_etc(tmp_path, xd="\nMAXDAEMONS=0\n")
    with pytest.raises(ConfigError) as e:
        load(etc, "xd")
    assert str(e.value) == f"{etc / 'xd'}:2: MAXDAEMONS: must be positive, got 0"
    with pytest.raises(ConfigError, match="unknown service"):
        load(etc, "yd")
    with pytest.raises(ConfigError, match="no such file"):
        load(make_etc(tmp_path / "empty"), "xd-msa")
    with pytest.raises(ConfigError, match="xd-ssl needs TLS_CERTFILE"):
        load(make_etc(tmp_path / "nocert", xd=""), "xd-ssl")


def test_unknown_key_warns(tmp_path: Path) -> None:
    etc = make_etc(tmp_path, xd="NOSUCHKEY=1\n")
    assert load(etc, "xd").warnings == [f"{etc / 'xd'}:1: unknown key NOSUCHKEY (ignored)"]


def test_merge_and_resolve(tmp_path: Path) -> None:
    a, b = Setting("K", "a", to_str, "1"), Setting("K", "b", to_str, "2")
    assert merge_settings((a,), (b,)) == (b,)
    assert resolve_path(tmp_path, "") is None
    assert resolve_path(tmp_path, "f") == tmp_path / "f"
    assert resolve_path(tmp_path, "/f") == Path("/f")


# --- start-up -------------------------------------------------------------

def _load_config(etc: Path, service: str):
    loaded = load(etc, service)
    return ListenerConfig(**loaded.common), loaded.warnings


def _handler(conn, *, cfg, ctx) -> None:
    conn.sendall(b"hello\r\n")


def _daemon(prepare=None) -> ListenerDaemon:
    return ListenerDaemon(
        prog="xd", description="test", services=SERVICES, load_config=_load_config,
        make_handler=lambda cfg, layout, ctx: partial(_handler, cfg=cfg, ctx=ctx),
        busy_reply=b"busy\r\n", deny_reply=b"deny\r\n", timeout=12.0, logger="courier.xd",
        children_drop_to_mailuser=True, prepare=prepare)


def test_loader_builds_the_spec(tmp_path: Path) -> None:
    from libcourier.layout import load_layout
    etc = make_etc(tmp_path, xd="PORT=1234\nMAXPERIP=3\n")
    layout = load_layout(etc)
    spec, handler = make_loader(_daemon(), etc, "xd", layout)()
    assert spec.name == "xd" and spec.addresses == (("", 1234),) and spec.maxperip == 3
    assert spec.busy_reply == b"busy\r\n" and spec.deny_reply == b"deny\r\n"
    assert spec.timeout == 12.0 and spec.tls_context is None
    assert spec.pidfile == layout.pidfile("xd")
    assert spec.child_user == (layout.mailuser, layout.mailgroup)
    assert callable(handler)


def test_check_validates_without_serving(tmp_path: Path, capsys) -> None:
    prepared = []
    etc = make_etc(tmp_path, xd="XDSTART=YES\n")
    assert run_listener(_daemon(prepared.append), ["-C", str(etc), "--check"]) == 0
    assert prepared == []      # --check neither prepares nor binds

    bad = make_etc(tmp_path / "bad", xd="PORT=nosuchservice\n")
    assert run_listener(_daemon(), ["-C", str(bad), "--check"]) == 1
    assert f"{bad / 'xd'}:1: PORT: unknown service name" in capsys.readouterr().err


def test_prepare_failure_stops_start(tmp_path: Path, capsys) -> None:
    def prepare(layout) -> None:
        raise StartupError("cannot prepare the spool")
    etc = make_etc(tmp_path, xd="")
    assert run_listener(_daemon(prepare), ["-C", str(etc), "--service", "xd-msa"]) == 1
    assert capsys.readouterr().err.strip() == "xd-msa: cannot prepare the spool"
