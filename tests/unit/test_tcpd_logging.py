"""libcourier.log (Courier's syslog idents, stderr in the foreground) and process titles."""

from __future__ import annotations

import logging
import logging.handlers

import pytest
import setproctitle

from libcourier import log as courier_log
from libcourier.proctitle import MAX_TITLE, clean_title, set_title


def _handlers():
    return logging.getLogger("courier").handlers


@pytest.fixture(autouse=True)
def restore_courier_logger():
    """Leave the "courier" logger as we found it: other tests rely on caplog seeing it."""
    logger = logging.getLogger("courier")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in list(logger.handlers):
        logger.removeHandler(h)
        if h not in saved[0]:
            h.close()
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_setup_without_dev_log_logs_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(courier_log, "DEV_LOG", "/nonexistent/dev/log")
    logger = courier_log.setup("imapd", foreground=False)
    # Background and no syslog: stderr anyway, never silence.
    assert [type(h) for h in _handlers()] == [logging.StreamHandler]
    logging.getLogger("courier.imapd").info("LOGIN, user=%s, ip=[%s]", "alice", "192.0.2.7")
    logging.getLogger("courier.imapd").debug("not shown")
    err = capsys.readouterr().err
    assert "imapd[" in err and "]: INFO LOGIN, user=alice, ip=[192.0.2.7]" in err
    assert "not shown" not in err
    assert logger.name == "courier"


def test_setup_is_idempotent_and_debug(monkeypatch, capsys):
    monkeypatch.setattr(courier_log, "DEV_LOG", "/nonexistent/dev/log")
    courier_log.setup("pop3d", debug=True)
    courier_log.setup("pop3d", debug=True)
    assert len(_handlers()) == 1
    logging.getLogger("courier.pop3d").debug("detail %d", 42)
    assert capsys.readouterr().err.count("DEBUG detail 42") == 1


def test_syslog_when_dev_log_exists(monkeypatch, tmp_path):
    import socket
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.settimeout(5)
        monkeypatch.setattr(courier_log, "DEV_LOG", str(path))
        courier_log.setup("courieresmtpd", foreground=False)
        try:
            logging.getLogger("courier.smtpd").warning("error,relay=%s", "::ffff:1.2.3.4")
            msg = sink.recv(4096)
        finally:
            courier_log.setup("test", foreground=True)   # close the syslog handler
    # <PRI> = facility mail (2) * 8 + warning (4) = 20; then Courier's ident.
    assert msg.startswith(b"<20>courieresmtpd[")
    assert msg.rstrip(b"\x00").endswith(b"]: error,relay=::ffff:1.2.3.4")


def test_titles_are_cleaned_and_capped():
    assert clean_title("imapd: a\r\nb\x00c [1.2.3.4] IDLE") == "imapd: a??b?c [1.2.3.4] IDLE"
    assert len(clean_title("x" * 1000)) == MAX_TITLE
    old = setproctitle.getproctitle()
    try:
        set_title("imapd: alice@example.com [192.0.2.7] IDLE")
        assert setproctitle.getproctitle() == "imapd: alice@example.com [192.0.2.7] IDLE"
    finally:
        setproctitle.setproctitle(old)
