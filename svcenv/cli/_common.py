"""What every command shares: exit codes, errors, messages on stderr, signals, backends made lazily."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..config import ProjectConfig, load_config

if TYPE_CHECKING:
    from ..backends import Backend

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Terminated(BaseException):
    """SIGTERM arrived: leave like Ctrl-C, tearing everything down (not an Exception: nothing may swallow it)."""


class UsageError(Exception):
    """Bad usage: exit 2."""


class Failed(Exception):
    """A failure already explained in its message: exit 1."""


def say(message: str) -> None:
    print(f"svcenv: {message}", file=sys.stderr, flush=True)


def project_config(args: argparse.Namespace) -> ProjectConfig:
    """The project: the compose file of ``-f``, else the configuration file (looked up); its notices said once."""
    if args.file is not None:
        from ..config import compose_config

        config = compose_config(args.file, args.profile)
    else:
        if args.profile:
            raise UsageError("--profile needs -f COMPOSE_FILE")
        config = load_config(args.config)
    for notice in config.notices:
        say(notice)
    return config


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def install_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # A shell starts background jobs with SIGINT ignored; `up` promises to stop on it.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def print_dotenv(variables: Mapping[str, str]) -> None:
    for key, value in variables.items():
        print(f"{key}={value}")
    sys.stdout.flush()


class LazyBackends:
    """Backend objects made on first use (commands that find no docker service need no engine).

    ``backends("docker")`` is the docker backend; :meth:`close` closes every one made.
    """

    def __init__(self) -> None:
        self._made: dict[str, Backend] = {}

    def __call__(self, name: str = "docker") -> Backend:
        if name not in self._made:
            from ..backends import get_backend

            self._made[name] = get_backend(name)
        return self._made[name]

    def close(self) -> None:
        made, self._made = self._made, {}
        for backend in made.values():
            backend.close()


def is_docker(entry: Mapping[str, Any]) -> bool:
    return bool(entry["snapshot"].get("backend") == "docker")
