"""authdaemonrc, typed (courier-authlib's authdaemonrc keys; FORMATS.md §4.12).

Courier's file also carries LDAP_*/ldap and other module keys; unknown keys are
warnings, not errors, so a copied Courier file loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libcourier.config import ConfigError, Setting, load_settings, read_rc_files
from libcourier.config.schema import to_str, to_words

# Modules we implement. Courier's others (authpam, authldap, authmysql, ...) are
# refused by name in authmodulelist rather than silently skipped: an admin who
# lists authldap expects LDAP users to log in.
KNOWN_MODULES = ("authuserdb", "authpgsql", "authmysql", "authldap",
                 "authpwd", "authshadow", "authpipe", "authpam")
MAX_DAEMONS = 128


def _daemons(v: str) -> int:
    try:
        n = int(v.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {v!r}") from None
    if not 1 <= n <= MAX_DAEMONS:
        raise ValueError(f"must be between 1 and {MAX_DAEMONS}, got {n}")
    return n


def _debug_login(v: str) -> int:
    v = v.strip() or "0"
    if v not in ("0", "1", "2"):
        raise ValueError(f"must be 0, 1 or 2, got {v!r}")
    return int(v)


def _seconds(v: str) -> float:
    try:
        n = float(v.strip() or "0")
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {v!r}") from None
    if not 0 <= n <= 86400:
        raise ValueError(f"must be between 0 and 86400 seconds, got {v!r}")
    return n


def _failures(v: str) -> int:
    try:
        n = int(v.strip() or "0")
    except ValueError:
        raise ValueError(f"expected a whole number, got {v!r}") from None
    if not 0 <= n <= 1000:
        raise ValueError(f"must be between 0 and 1000, got {n}")
    return n


def _modules(v: str) -> tuple[str, ...]:
    words = to_words(v)
    if not words:
        raise ValueError("no authentication module listed")
    for w in words:
        if w not in KNOWN_MODULES:
            raise ValueError(f"unknown or unsupported module {w!r} (supported: "
                             f"{', '.join(KNOWN_MODULES)})")
    return words


SETTINGS = (
    Setting("authmodulelist", "modules", _modules, "authuserdb",
            "modules tried in order for each request"),
    Setting("authmodulelistorig", "modules_orig", to_words, "authuserdb",
            "the modules compiled in (informational, as in Courier)"),
    Setting("daemons", "daemons", _daemons, "5", "worker processes"),
    Setting("authdaemonvar", "authdaemonvar", to_str, "/run/courier/authdaemon",
            "directory of the socket (relative paths: to the config dir)"),
    Setting("DEBUG_LOGIN", "debug_login", _debug_login, "0",
            "1: log each request's steps; 2: the same (Courier adds passwords at 2; "
            "we never log them)"),
    Setting("DEFAULTOPTIONS", "default_options", to_str, "",
            "account options every account gets unless it sets them itself"),
    Setting("LOGGEROPTS", "logger_opts", to_str, "", "courierlogger options (accepted, unused)"),
    Setting("PIPE_PROGRAM", "pipe_program", to_str, "/usr/lib/courier/authProg",
            "authpipe's program (Courier compiles this path in; Debian's is this one)"),
    # Ours (Courier has neither): failed-login throttling and a result cache.
    Setting("AUTH_THROTTLE_FAILURES", "throttle_failures", _failures, "5",
            "failures of one login or one address before further tries are refused "
            "for a while; 0 turns throttling off"),
    Setting("AUTH_THROTTLE_DELAY", "throttle_delay", _seconds, "2",
            "the first refusal window (seconds); it doubles with each further failure"),
    Setting("AUTH_THROTTLE_MAXDELAY", "throttle_maxdelay", _seconds, "300",
            "the longest refusal window (seconds)"),
    Setting("AUTH_CACHE_TTL", "cache_ttl", _seconds, "0",
            "seconds a successful login's answer is reused by a worker; 0 (default) is off"),
)


@dataclass(frozen=True, slots=True)
class AuthdConfig:
    etc: Path
    modules: tuple[str, ...]
    modules_orig: tuple[str, ...]
    daemons: int
    authdaemonvar: str
    debug_login: int
    default_options: str
    logger_opts: str
    throttle_failures: int = 5
    throttle_delay: float = 2.0
    throttle_maxdelay: float = 300.0
    cache_ttl: float = 0.0
    pipe_program: str = "/usr/lib/courier/authProg"
    warnings: tuple[str, ...] = ()

    @property
    def userdb_dat(self) -> Path:
        return self.etc / "userdb.dat"

    @property
    def userdb_shadow(self) -> Path:
        return self.etc / "userdbshadow.dat"


def load_config(etc: Path) -> AuthdConfig:
    """Read ETC/authdaemonrc; ConfigError (file:line) for a bad value. A missing file
    gives the defaults, as a fresh install's daemon should still start."""
    etc = Path(etc)
    path = etc / "authdaemonrc"
    scope = read_rc_files([path], missing_ok=True)
    values, warnings = load_settings(SETTINGS, scope, str(path))
    if not values["authdaemonvar"]:
        rc = scope.get("authdaemonvar")
        raise ConfigError("authdaemonvar: must not be empty", rc.path if rc else str(path),
                          rc.line if rc else None)
    return AuthdConfig(etc=etc, warnings=tuple(warnings), **values)
