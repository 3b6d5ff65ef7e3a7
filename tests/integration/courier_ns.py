"""Run Debian's Courier binaries against a private copy of their compiled-in paths.

Courier's authlib has /run/courier/authdaemon/socket and /etc/courier compiled in.
To point Courier's clients (authtest, imaplogin) at our authd, or to run Courier's
own authdaemond on a userdb of ours, without touching the machine's real
/run/courier or /etc/courier (another engineer's anchors may be using them), the
program runs in a private mount namespace (unshare -m) where temp directories are
bind-mounted over those paths. Needs root and unshare(1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

AUTHDAEMON_DIR = Path("/run/courier/authdaemon")
ETC_COURIER = Path("/etc/courier")
AUTHDAEMOND = Path("/usr/lib/courier/courier-authlib/authdaemond")
ANCHORS = Path(os.environ.get("COURIER_ROOT", "/var/tmp/mail-anchors/courier"))
IMAPLOGIN = ANCHORS / "usr/lib/courier/courier/imaplogin"
COURIER_IMAPD = ANCHORS / "usr/bin/imapd"

_SCRIPT = 'while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'


def skip_reason(*binaries: Path | str) -> str | None:
    if os.geteuid() != 0:
        return "a private mount namespace needs root"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if not AUTHDAEMON_DIR.is_dir() or not ETC_COURIER.is_dir():
        return "Courier's /run/courier/authdaemon or /etc/courier is missing (courier-authlib)"
    for b in binaries:
        p = Path(b) if os.sep in str(b) else shutil.which(str(b))
        if p is None or not Path(p).exists():
            return f"{b} is not installed (Debian courier-authlib / courier-imap unpacked)"
    return None


def ns_argv(binds: dict[Path, Path], argv: list[str]) -> list[str]:
    """argv that runs `argv` with each src bind-mounted on dst, in a private namespace."""
    pairs: list[str] = []
    for src, dst in binds.items():
        pairs += [str(src), str(dst)]
    return ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", _SCRIPT, "sh",
            *pairs, "--", *argv]


def run_ns(binds: dict[Path, Path], argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ns_argv(binds, argv), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 60), **kw)


class CourierAuthdaemond:
    """Courier's own authdaemond (authuserdb) on `userdb_source`, compiled by Courier's
    makeuserdb, its socket at `<root>/run/socket`. Stopped by PID."""

    def __init__(self, root: Path, userdb_source: Path, daemons: int = 5) -> None:
        self.root = root
        etc, run = root / "etc", root / "run"
        etc.mkdir(parents=True)
        run.mkdir()
        shutil.copy(userdb_source, etc / "userdb")
        os.chmod(etc / "userdb", 0o600)
        (etc / "authdaemonrc").write_text(
            f'authmodulelist="authuserdb"\ndaemons={daemons}\n'
            'authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\nDEFAULTOPTIONS=""\n'
            'LOGGEROPTS=""\n')
        self.socket = run / "socket"
        script = root / "start.sh"
        script.write_text("set -e\n/usr/sbin/makeuserdb\nset -a\n. /etc/courier/authdaemonrc\n"
                          f"set +a\nexec {AUTHDAEMOND}\n")
        self.log = open(root / "authdaemond.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ns_argv({etc: ETC_COURIER, run: AUTHDAEMON_DIR}, ["sh", str(script)]),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Courier's authdaemond did not start: "
                                   + (root / "authdaemond.log").read_text(errors="replace"))
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Our own session: authdaemond and the workers it forked, nothing else.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
