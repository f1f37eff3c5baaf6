"""``python -m svcenv``: real services for shells, other programs and CI.

Commands (``python -m svcenv COMMAND --help`` for each)::

    up [SERVICE...] [--detach]     start, print dotenv lines; stay up until Ctrl-C/SIGTERM (or detach)
    down [--all]                   stop this project's detached and reused services (or all recorded ones)
    status                         recorded environments: services, backend, address, health (probed now)
    env [--format dotenv|json|shell]   the variables of this project's running environment
    run [SERVICE...] -- CMD...     start, run CMD with the variables, tear down, exit with CMD's status
    logs SERVICE [--tail N] [--follow]  the log of a running service
    prune                          remove containers, records and local dirs whose owner is gone
    doctor [SERVICE...]            which backends can run each service here
    cache list|clear               the pre-initialised Postgres images on the engine

Services come from the project configuration (``[tool.svcenv]`` in
``pyproject.toml`` or ``svcenv.toml``, see :mod:`svcenv.config`), else
postgres, redis and elasticsearch. Reuse across runs is opt-in: ``--reuse``,
``reuse = true`` in the configuration, or ``SVCENV_REUSE=1``; under ``CI=true``
it is refused (services start fresh, with a notice) unless ``--force-reuse`` or
``SVCENV_REUSE=force``.

Exit codes:

* 0: success (``up`` stopped by Ctrl-C/SIGTERM counts as success);
* 1: a service or backend failed (a start failure, no backend, no running
  environment, an unhealthy service in ``status``);
* 2: bad usage or configuration (an unknown service or option, a bad config key,
  ``--detach`` on the local backend);
* ``run``: CMD's exit status; 128+N if CMD died of signal N; 126/127 if CMD
  cannot be executed/found; 130/143 if SIGINT/SIGTERM came before CMD started.
  A SIGINT/SIGTERM after CMD ended (during the teardown) does not cut the
  teardown short nor change the exit status: it is still CMD's.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from ..errors import ConfigurationError, SvcenvError
from ._common import EXIT_FAILED, EXIT_USAGE, Failed, UsageError, say
from ._parser import build_parser
from ._records import cmd_down, cmd_env, cmd_logs, cmd_prune, cmd_status
from ._run import cmd_run
from ._start import cmd_up
from ._tools import cmd_cache, cmd_doctor

__all__ = ["main"]

# -- main ---------------------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "env": cmd_env,
    "logs": cmd_logs,
    "prune": cmd_prune,
    "doctor": cmd_doctor,
    "cache": cmd_cache,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if cmd and args.command != "run":
        parser.error(f"{args.command} takes no command after --")
    try:
        if args.command == "run":
            return cmd_run(args, cmd)
        return _COMMANDS[args.command](args)
    except (UsageError, ConfigurationError) as exc:
        if args.debug:
            raise
        parser.print_usage(sys.stderr)
        say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("interrupted")
        return 128 + signal.SIGINT
    except Exception as exc:
        if args.debug:
            raise
        said = str(exc) if isinstance(exc, (SvcenvError, Failed)) else f"{type(exc).__name__}: {exc}"
        say(f"error: {said}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
