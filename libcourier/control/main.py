"""`courier`: the admin command (DESIGN.md §6).

    courier init DIR [--port-base N] [--hostname H]
    courier adduser [-C ETC] ADDRESS PASSWORD
    courier start [-C ETC] [--foreground] [SERVICE...]
    courier stop|status|reload [-C ETC] [SERVICE...]
    courier flush [-C ETC]
    courier check [-C ETC]

The config directory is -C, else $COURIER_CONFIG_DIR, else /etc/courier.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from libcourier.config.configdir import config_dir
from libcourier.config.errors import ConfigError
from libcourier.control import services
from libcourier.control.adduser import AddUserError, adduser
from libcourier.control.init import InitError, init
from libcourier.layout import load_layout

CHECK_TIMEOUT = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="courier", description="Run and administer courier-py.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-C", "--config", metavar="ETC",
                        help="config directory (default $COURIER_CONFIG_DIR or /etc/courier)")
        return sp

    sp = sub.add_parser("init", help="make a self-contained instance in DIR")
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("--port-base", type=int, metavar="N",
                    help="listen on 127.0.0.1, ports N+25, N+587, N+465, N+143, N+993, "
                         "N+110, N+995")
    sp.add_argument("--hostname", metavar="H", help="the mail host name (default: FQDN)")

    sp = with_config(sub.add_parser("adduser", help="add or update a virtual user"))
    sp.add_argument("address", metavar="ADDRESS")
    sp.add_argument("password", metavar="PASSWORD")

    sp = with_config(sub.add_parser("start", help="start the enabled (or named) services"))
    sp.add_argument("--foreground", action="store_true",
                    help="stay attached; Ctrl-C stops everything")
    sp.add_argument("services", nargs="*", metavar="SERVICE")
    for name, text in (("stop", "stop services (SIGTERM)"),
                       ("status", "say which services run"),
                       ("reload", "make services re-read their config (SIGHUP)")):
        sp = with_config(sub.add_parser(name, help=text))
        sp.add_argument("services", nargs="*", metavar="SERVICE")
    with_config(sub.add_parser("flush", help="ask courierd to try every queued message now"))
    with_config(sub.add_parser("check", help="validate the configuration without starting"))
    return p


def flush(etc: Path) -> int:
    """Send courierd `NEW <qid>` for every committed message (spool.list_queue)."""
    from libcourier.spool import list_queue, notify

    layout = load_layout(etc)
    qids = list_queue(layout.spooldir)
    for qid in qids:
        notify(layout.queue_socket, qid)
    print(f"courier flush: {len(qids)} queued message(s) handed to courierd")
    return 0


def check(etc: Path) -> int:
    """Parse every file, then let each enabled daemon validate its own settings
    with `--check` (libcourier cannot import the daemons' schemas)."""
    layout = load_layout(etc)
    problems = 0
    for svc in services.SERVICES:
        try:
            enabled = services.is_enabled(etc, svc)
        except (ConfigError, services.ControlError) as e:
            print(f"{svc.name}: {e}")
            problems += 1
            continue
        if not enabled:
            print(f"{svc.name}: disabled")
            continue
        cmd = svc.command(layout.etc) + ["--check"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            print(f"{svc.name}: --check did not finish in {CHECK_TIMEOUT:.0f} s")
            problems += 1
            continue
        text = (r.stderr or r.stdout).strip()
        if r.returncode == 2 and "--check" in text and "unrecognized" in text:
            print(f"{svc.name}: syntax OK ({svc.module} has no --check)")
        elif r.returncode == 0:
            print(f"{svc.name}: OK" + (f"\n{text}" if text else ""))
        else:
            print(f"{svc.name}: FAILED\n{text}")
            problems += 1
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return init(Path(args.dir), port_base=args.port_base, hostname=args.hostname)
        etc = config_dir(args.config)
        if not etc.is_dir():
            print(f"courier: {etc}: no such config directory", file=sys.stderr)
            return 1
        match args.command:
            case "adduser":
                return adduser(etc, args.address, args.password)
            case "start":
                if args.foreground:
                    return services.foreground(etc, args.services)
                return services.start(etc, args.services)[0]
            case "stop":
                return services.stop(etc, args.services)
            case "status":
                return services.status(etc, args.services)
            case "reload":
                return services.reload(etc, args.services)
            case "flush":
                return flush(etc)
            case "check":
                return check(etc)
            case _:
                raise AssertionError(args.command)
    except (InitError, AddUserError, services.ControlError) as e:
        print(f"courier {args.command}: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"courier {args.command}: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        # Another part of the suite is missing from this installation.
        print(f"courier {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"courier {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
