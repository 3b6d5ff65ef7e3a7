"""Where an installation keeps its spool, sockets and pid files.

Courier fixes these at build time (/var/lib/courier, /run/courier); we read
them from the `courierd` file (our keys SPOOLDIR, RUNDIR, LOGDIR, MAILUSER,
MAILGROUP) and the authd socket from `authdaemonrc` (Courier's authdaemonvar),
so that a self-contained instance made by `courier init` and a packaged
/etc/courier install are the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.config.rcfile import read_rc_files
from libcourier.config.schema import Setting, load_settings, to_str

COURIERD_SETTINGS = (
    Setting("SPOOLDIR", "spooldir", to_str, "/var/spool/courier", "the mail queue"),
    Setting("RUNDIR", "rundir", to_str, "/run/courier", "pid files and Unix sockets"),
    Setting("LOGDIR", "logdir", to_str, "", "where `courier start` sends daemons' stderr; "
            "empty: syslog only"),
    Setting("MAILUSER", "mailuser", to_str, "courier", "the daemon account"),
    Setting("MAILGROUP", "mailgroup", to_str, "courier", "the daemon group"),
)


@dataclass(frozen=True, slots=True)
class Layout:
    etc: Path
    spooldir: Path
    rundir: Path
    logdir: Path | None
    mailuser: str
    mailgroup: str
    authsocket: Path

    def config_file(self, name: str) -> Path:
        return self.etc / name

    def pidfile(self, service: str) -> Path:
        return self.rundir / f"{service}.pid"

    @property
    def queue_socket(self) -> Path:
        """courierd's socket: submitters say `NEW <id>` here."""
        return self.rundir / "courierd.sock"

    @property
    def local_socket(self) -> Path:
        """The root local-delivery helper's socket (courierlocal)."""
        return self.rundir / "courierlocal.sock"


def _resolve(etc: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (etc / p).resolve()


def load_layout(etc: Path) -> Layout:
    etc = Path(etc)
    scope = read_rc_files([etc / "courierd"], missing_ok=True)
    values, _ = load_settings(COURIERD_SETTINGS, scope, str(etc / "courierd"))
    auth = read_rc_files([etc / "authdaemonrc"], missing_ok=True)
    authvar = auth["authdaemonvar"].value if "authdaemonvar" in auth else "/run/courier/authdaemon"
    return Layout(
        etc=etc,
        spooldir=_resolve(etc, values["spooldir"]),
        rundir=_resolve(etc, values["rundir"]),
        logdir=_resolve(etc, values["logdir"]) if values["logdir"] else None,
        mailuser=values["mailuser"],
        mailgroup=values["mailgroup"],
        authsocket=_resolve(etc, authvar) / "socket",
    )
