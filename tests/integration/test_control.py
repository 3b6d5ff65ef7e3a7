"""The `courier` admin command against real daemons: init, adduser, start,
status, stop, reload, and a bad config value reported as file:line."""

from __future__ import annotations

import os
import re
import signal
import time

from libcourier.pidfile import pid_alive


def _line_of(path, key: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(f"{key}="):
            return n
    raise AssertionError(f"{key} not in {path}")


def test_init_refuses_existing_instance(new_instance):
    r = new_instance.run("init", str(new_instance.root), check=False)
    assert r.returncode == 1
    assert "refusing to overwrite" in r.stderr


def test_init_layout_and_ports(new_instance):
    etc = new_instance.etc
    for name in ("courierd", "authdaemonrc", "esmtpd", "esmtpd-msa", "esmtpd-ssl", "imapd",
                 "imapd-ssl", "pop3d", "pop3d-ssl", "me", "defaultdomain", "locals",
                 "hosteddomains", "userdb", "userdb.dat", "userdbshadow.dat", "esmtpd.pem",
                 "bofh", "trustedusers", "authpgsqlrc", "authmysqlrc", "authldaprc"):
        assert (etc / name).is_file(), name
    for name in ("authpgsqlrc", "authmysqlrc", "authldaprc"):
        assert (etc / name).stat().st_mode & 0o777 == 0o640, name
    assert (etc / "userdb").stat().st_mode & 0o777 == 0o600
    assert (etc / "esmtpd.pem").stat().st_mode & 0o777 == 0o600
    assert (etc / "me").read_text() == "mx.test\n"
    assert f"PORT={new_instance.port('imap')}\n" in (etc / "imapd").read_text()
    assert f"SSLPORT={new_instance.port('pop3s')}\n" in (etc / "pop3d-ssl").read_text()
    assert "ADDRESS=127.0.0.1\n" in (etc / "esmtpd").read_text()
    layout = new_instance.layout
    assert layout.spooldir == new_instance.root / "var" / "spool"
    assert layout.authsocket == new_instance.root / "var" / "run" / "authdaemon" / "socket"
    st = layout.spooldir.stat()
    assert st.st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        assert st.st_uid != 0  # the daemon account owns the queue


def test_adduser_makes_maildir_and_hosted_domain(new_instance):
    new_instance.adduser("Carol@Example.ORG", "pw1")
    md = new_instance.maildir("carol@example.org")
    for sub in ("tmp", "new", "cur"):
        assert (md / sub).is_dir()
    assert md.stat().st_mode & 0o777 == 0o700
    assert md.stat().st_uid == (new_instance.root / "mail").stat().st_uid
    hosted = (new_instance.etc / "hosteddomains").read_text().split()
    assert hosted.count("example.org") == 1
    new_instance.adduser("dave@example.org", "pw2")  # the domain is not added twice
    assert (new_instance.etc / "hosteddomains").read_text().split().count("example.org") == 1
    src = (new_instance.etc / "userdb").read_text()
    assert re.search(r"^carol@example\.org\t.*systempw=\$6\$", src, re.M)
    assert "pw1" not in src
    # A local domain is not a hosted domain.
    new_instance.adduser("erin@localhost", "pw3")
    assert "localhost" not in (new_instance.etc / "hosteddomains").read_text().split()


def test_adduser_rejects_bad_addresses(new_instance):
    for bad in ("noat", "../x@example.com", "a@b@c", "x@-bad-.com", ".x@example.com"):
        r = new_instance.courier("adduser", bad, "pw", check=False)
        assert r.returncode == 1, bad
        assert r.stderr.startswith("courier adduser: "), r.stderr
    assert not list((new_instance.root / "mail").iterdir())


def test_bad_config_value_names_file_and_line(new_instance):
    imapd = new_instance.etc / "imapd"
    imapd.write_text(imapd.read_text().replace("MAXDAEMONS=40", "MAXDAEMONS=abc"))
    line = _line_of(imapd, "MAXDAEMONS")
    r = new_instance.courier("start", "imapd", check=False)
    new_instance.record_pids()
    assert r.returncode == 1
    assert f"imapd:{line}:" in r.stderr, r.stderr
    # Nothing it started is left running.
    status = new_instance.courier("status", check=False)
    assert "running" not in status.stdout, status.stdout


def test_start_status_stop_one_service(new_instance):
    new_instance.start("imapd")
    pid = new_instance.pid("imapd")
    assert pid is not None and pid_alive(pid)
    r = new_instance.courier("status", check=False)
    assert r.returncode == 3  # others enabled but stopped
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert lines["imapd"] == f"running (pid {pid})"
    assert lines["pop3d"] == "stopped"
    assert new_instance.courier("status", "imapd").returncode == 0
    # Starting it again does not start a second one.
    again = new_instance.courier("start", "imapd")
    assert "already running" in again.stdout
    assert new_instance.pid("imapd") == pid
    stopped = new_instance.courier("stop", "imapd")
    assert f"imapd: stopped (pid {pid})" in stopped.stdout
    assert not pid_alive(pid)
    assert not new_instance.layout.pidfile("imapd").exists()
    assert new_instance.courier("status", "imapd", check=False).returncode == 3
    new_instance.assert_no_process_left()


def test_reload_keeps_the_daemon(new_instance):
    new_instance.start("imapd")
    pid = new_instance.pid("imapd")
    r = new_instance.courier("reload", "imapd")
    assert f"imapd: reloaded (pid {pid})" in r.stdout
    time.sleep(0.5)
    assert pid_alive(pid), new_instance.logs()
    assert new_instance.pid("imapd") == pid


def test_unknown_service(new_instance):
    r = new_instance.courier("start", "nosuchd", check=False)
    assert r.returncode == 1
    assert "unknown service nosuchd" in r.stderr


def test_stop_kills_a_daemon_that_ignores_sigterm(new_instance):
    """`stop` is bounded: SIGKILL after the grace period, pid file cleaned up."""
    new_instance.start("imapd")
    pid = new_instance.pid("imapd")
    # Stop it (SIGSTOP) so it cannot act on SIGTERM.
    os.kill(pid, signal.SIGSTOP)
    try:
        from libcourier.control import services
        killed = services.terminate([pid], new_instance.layout, [services.BY_NAME["imapd"]],
                                    timeout=0.5)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert killed == ["imapd"]
    assert not new_instance.layout.pidfile("imapd").exists()


def test_adduser_then_imap_login_through_authd(new_instance):
    """adduser's userdb entry and Maildir are what authd and imapd expect;
    a user added while authd runs is seen after adduser's SIGHUP."""
    import imaplib
    new_instance.start("authdaemond", "imapd")
    new_instance.adduser("frank@example.org", "frank-pw")
    imap = imaplib.IMAP4("127.0.0.1", new_instance.port("imap"), timeout=10)
    try:
        assert imap.login("frank@example.org", "frank-pw")[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"0"])
    finally:
        imap.logout()
