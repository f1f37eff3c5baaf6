"""The argument parser: one sub-parser per command, shared option groups."""

from __future__ import annotations

import argparse
from pathlib import Path

# -- the parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="the configuration file (default: looked up from cwd)"
    )
    common.add_argument(
        "-f",
        "--file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="COMPOSE_FILE",
        help="take the services from this compose file instead of the configuration",
    )
    common.add_argument(
        "--profile",
        action="append",
        default=argparse.SUPPRESS,
        help="with -f: a compose profile to enable (repeatable; '*' enables all)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m svcenv",
        description="Real Postgres, Redis and Elasticsearch (and any image) for shells, programs and CI.",
        epilog="Exit codes: 0 ok, 1 service/backend failure, 2 usage/config error; run: CMD's status.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--config", type=Path, default=None, help="the configuration file (default: looked up)")
    parser.add_argument("-f", "--file", type=Path, default=None, metavar="COMPOSE_FILE", help="a compose file")
    parser.add_argument("--profile", action="append", default=[], help="with -f: a compose profile to enable")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    starting = argparse.ArgumentParser(add_help=False)
    starting.add_argument("services", nargs="*", metavar="SERVICE", help="services to start (default: all)")
    starting.add_argument("--backend", default=None, help="auto (default, or $SVCENV_BACKEND), docker, local, external")
    starting.add_argument("--timeout", type=float, default=None, help="seconds each service gets to become ready")
    starting.add_argument("--reuse", action="store_true", help="attach to running services of the same configuration")
    starting.add_argument("--no-reuse", action="store_true", help="start fresh even if the configuration says reuse")
    starting.add_argument("--force-reuse", action="store_true", help="reuse even under CI=true")

    up = commands.add_parser(
        "up",
        parents=[common, starting],
        help="start services, print how to reach them, stay up until Ctrl-C",
        description="Start services in parallel, print their variables as dotenv lines on stdout "
        "(progress goes to stderr), and keep them up until Ctrl-C or SIGTERM, then remove them. "
        "With --detach, leave them running (recorded in the state dir) and exit; `down` removes them.",
    )
    up.add_argument("--detach", "-d", action="store_true", help="leave them running and exit (docker/external only)")
    down = commands.add_parser(
        "down",
        parents=[common],
        help="stop this project's detached and reused services",
        description="Remove the detached environment and the reused services of this project "
        "(the directory holding the configuration, else the cwd), or with --all every one recorded.",
    )
    down.add_argument("--all", action="store_true", help="every recorded environment and reused service")
    commands.add_parser(
        "status",
        parents=[common],
        help="show running environments and the health of their services",
        description="List recorded environments and reused services: service, backend, address and health "
        "(each probed now). Exits 1 if any service is unhealthy or gone.",
    )
    env = commands.add_parser(
        "env",
        parents=[common],
        help="print the variables of this project's running environment",
        description="Print the variables (secrets included) of this project's running environment, "
        'e.g. eval "$(python -m svcenv env --format shell)".',
    )
    env.add_argument("--format", choices=("dotenv", "json", "shell"), default="dotenv")
    commands.add_parser(
        "run",
        parents=[common, starting],
        usage="python -m svcenv run [options] [SERVICE ...] -- CMD [ARG ...]",
        help="start services, run CMD with their variables, tear down",
        description="Start services, run CMD (an argv list, no shell) with their variables in its environment, "
        "tear down, and exit with CMD's status. SIGINT/SIGTERM are forwarded to CMD.",
    )
    logs = commands.add_parser(
        "logs",
        parents=[common],
        help="print the log of a running service",
        description="Print the log of a service of this project's running environment "
        "(docker: the container's log; local: the server's log file).",
    )
    logs.add_argument("service", metavar="SERVICE")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    logs.add_argument(
        "--follow", action="store_true", help="keep printing new lines until the service exits (or Ctrl-C)"
    )
    prune = commands.add_parser(
        "prune",
        parents=[common],
        help="remove what svcenv left behind by owners that are gone",
        description="Remove every svcenv container whose owner process is gone, unless it is a detached or "
        "reused one still recorded; records whose services are gone; stale local server directories.",
    )
    prune.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only containers that carry this label (repeatable)",
    )
    prune.add_argument(
        "--force",
        action="store_true",
        help="also remove kept services and those of owners svcenv cannot judge from here "
        "(another machine, pid or mount namespace)",
    )
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="show which backends can run each service here",
        description="For each service, say which backends can run it on this machine and which one "
        "`auto` would pick. Exits 1 if a requested service has no backend.",
    )
    doctor.add_argument("services", nargs="*", metavar="SERVICE", help="services to check (default: all)")
    cache = commands.add_parser(
        "cache",
        parents=[common],
        help="list or clear the pre-initialised Postgres images",
        description="svcenv keeps one pre-initialised Postgres image per configuration on the Docker engine "
        "(svcenv-cache/postgres:<key>); fresh instances start from it. `list` shows them, `clear` removes them.",
    )
    cache.add_argument("action", choices=("list", "clear"))
    return parser
