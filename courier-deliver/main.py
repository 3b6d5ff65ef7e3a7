"""courierd: `python -m courier_deliver -C ETC`.

Start-up, in the order the privilege boundary needs:

1. read the config (a bad value: `file:line: problem` on stderr, exit 1);
2. as root: create the spool owned by the daemon account; bind both sockets
   (courierlocal.sock 0660 root:MAILGROUP, courierd.sock);
3. fork courierlocal, which stays root;
4. write the pid file (both sockets listen now), drop to MAILUSER/MAILGROUP
   for good, and only then start the asyncio loop and its threads.

SIGTERM: stop taking work, let in-flight deliveries finish (bounded), stop
courierlocal (which removes the sockets and the pid file: courierd no longer
may), exit 0. SIGHUP: reload courierd and the domain lists.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import concurrent.futures.thread  # noqa: F401 - lazily imported by asyncio; import before the drop
import dataclasses
import gc
import logging
import os
import signal
import sys
import time

from courier_deliver.config import QueueConfig, load_config
from courier_deliver.local import ForwardSpool, bind_local_socket, run_helper
from courier_deliver.pickup import run_pickup
from courier_deliver.queue import QueueManager, bind_queue_socket, serve

from libcourier import log as courier_log
from libcourier import privsep
from libcourier.config import ConfigError, config_dir
from libcourier.pidfile import pid_alive, read_pidfile, remove_pidfile, write_pidfile
from libcourier.proctitle import set_title
from libcourier.spool import ensure_spool, purge_tmp

logger = logging.getLogger("courier.courierd")

HELPER_STOP_WAIT = 8.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="courierd", description="courier-py queue manager")
    p.add_argument("-C", "--config", help="configuration directory")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="validate courierd, esmtproutes, esmtpauthclient and the retry "
                        "control files, then exit (used by `courier check`)")
    return p.parse_args(argv)


def _stop_helper(pid: int, lifeline: int) -> None:
    """Close our end of the lifeline: courierlocal (root, which we may no longer
    signal) sees EOF, finishes its deliveries and exits."""
    os.close(lifeline)
    deadline = time.monotonic() + HELPER_STOP_WAIT
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    logger.warning("courierlocal (pid %d) did not stop in time", pid)


def _helper_alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    etc = config_dir(args.config)
    courier_log.setup("courierd", foreground=True, debug=args.debug)
    try:
        config = load_config(etc)
    except ConfigError as e:
        print(f"courierd: {e}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    layout = config.layout
    pidfile = layout.pidfile("courierd")
    old = read_pidfile(pidfile)
    if old is not None and old != os.getpid() and pid_alive(old):
        print(f"courierd: already running (pid {old})", file=sys.stderr)
        return 1

    root = os.geteuid() == 0
    try:
        if root:
            uid, gid = privsep.lookup_account(layout.mailuser, layout.mailgroup)
            allowed = {0, uid}
        else:
            uid, gid = os.getuid(), os.getgid()
            allowed = {uid}
        layout.rundir.mkdir(parents=True, exist_ok=True)
        ensure_spool(layout.spooldir, uid if root else None, gid if root else None)
        if root:
            # setgid directories: a message spooled by a root submitter gets
            # MAILGROUP, so its 0640 files stay readable after our drop.
            for d in (layout.spooldir, layout.spooldir / "tmp", layout.spooldir / "msgs"):
                os.chmod(d, 0o2750)
        purge_tmp(layout.spooldir)
        local_sock = bind_local_socket(layout.local_socket, gid if root else None)
        queue_sock = bind_queue_socket(layout.queue_socket, (uid, gid) if root else None)
    except (OSError, privsep.PrivsepError) as e:
        print(f"courierd: cannot start: {e}", file=sys.stderr)
        return 1

    # Fork courierlocal before any thread or event loop exists.
    parent = os.getpid()
    gc.freeze()
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    helper = os.fork()
    if helper == 0:
        code = 1
        try:
            os.close(life_w)
            queue_sock.close()
            code = run_helper(local_sock, layout.authsocket, allowed, parent,
                              cleanup=(layout.local_socket, layout.queue_socket),
                              parent_pidfile=pidfile, lifeline=life_r,
                              default_maildir=config.defaultdelivery,
                              etc=etc,
                              forward=ForwardSpool(layout.spooldir, layout.queue_socket,
                                                   uid, gid))
        finally:
            courier_log.flush()
            os._exit(code)
    local_sock.close()
    os.close(life_r)
    manager: QueueManager | None = None
    try:
        write_pidfile(pidfile)
        privsep.drop_to_daemon(layout.mailuser, layout.mailgroup)
        set_title("courierd")
        logger.info("courierd started (courierlocal pid %d), spool %s", helper,
                    layout.spooldir)
        manager = QueueManager(config, helper_alive=lambda: _helper_alive(helper))
        asyncio.run(_run(manager, queue_sock, etc))
    except (OSError, privsep.PrivsepError) as e:
        logger.error("courierd: %s", e)
        return 1
    finally:
        queue_sock.close()
        _stop_helper(helper, life_w)
        remove_pidfile(pidfile)  # not root: ours to remove; root: courierlocal did
        logger.info("courierd stopped")
        courier_log.flush()
    return 1 if manager is None or manager.failed else 0


async def _run(manager: QueueManager, queue_sock, etc) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
        max_workers=manager.config.maxdels + (manager.config.esmtp.maxdels
                                              if manager.config.esmtp else 0) + 1,
        thread_name_prefix="delivery"))
    loop.add_signal_handler(signal.SIGTERM, manager.stop)
    loop.add_signal_handler(signal.SIGINT, manager.stop)

    def reload() -> None:
        try:
            new: QueueConfig = load_config(etc)
        except ConfigError as e:
            logger.error("reload failed, keeping the old settings: %s", e)
            return
        if new.layout != manager.config.layout:
            logger.warning("SPOOLDIR/RUNDIR/MAILUSER changes need a restart")
            new = dataclasses.replace(new, layout=manager.config.layout)
        manager.reload(new)
        logger.info("configuration reloaded")

    loop.add_signal_handler(signal.SIGHUP, reload)
    # Messages users left in SPOOLDIR/maildrop (sendmail without spool rights).
    picker = asyncio.create_task(run_pickup(manager.config.layout.spooldir, etc,
                                            manager.announce, lambda: manager.config.rescan))
    try:
        await serve(manager, queue_sock)
    finally:
        picker.cancel()
