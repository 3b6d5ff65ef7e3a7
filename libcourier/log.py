"""Logging as Courier does it: syslog facility mail with the daemon's ident, stderr in the foreground.

Every daemon calls `setup("imapd")` once; modules log through children of the
"courier" logger (`logging.getLogger("courier.imapd")`) with %-style lazy
arguments. Syslog lines read `imapd[1234]: LOGIN, user=..., ip=[...]`, the
shape fail2ban's courier filters expect. A missing /dev/log (containers,
tests) is not an error: we log to stderr only.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

ROOT_LOGGER = "courier"
DEV_LOG = "/dev/log"


def setup(ident: str, *, foreground: bool = True, debug: bool = False) -> logging.Logger:
    logger = logging.getLogger(ROOT_LOGGER)
    # Idempotent: a second setup (tests, a reload) replaces the handlers, never doubles them.
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    # No format here names the caller, the thread or the multiprocessing
    # process: skip what LogRecord would otherwise compute for every line
    # (the logging HOWTO's "Optimization" switches; the caller lookup walks the
    # stack, and esmtpd and courierd log for every message).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False

    if os.path.exists(DEV_LOG):
        try:
            syslog = logging.handlers.SysLogHandler(
                address=DEV_LOG, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        except OSError:
            syslog = None
        if syslog is not None:
            # %(process)d, not a fixed pid: forked children log with their own pid.
            syslog.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(message)s"))
            logger.addHandler(syslog)

    if foreground or not logger.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(
            f"%(asctime)s {ident}[%(process)d]: %(levelname)s %(message)s"))
        logger.addHandler(stderr)
    return logger


def flush() -> None:
    """Flush every handler; a forked child calls this before os._exit()."""
    for name in (ROOT_LOGGER, None):
        for handler in logging.getLogger(name).handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - never let logging stop an exit
                pass
