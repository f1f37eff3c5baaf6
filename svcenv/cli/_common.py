"""What every command shares: exit codes, errors, messages on stderr, signals, a lazy Docker client."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any

from ..config import ProjectConfig, load_config

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
    return load_config(args.config)


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


class LazyDocker:
    """A Docker client made on first use (commands that find no docker service need no engine)."""

    def __init__(self) -> None:
        self._client: Any = None

    def __call__(self) -> Any:
        if self._client is None:
            from ..reuse import docker_client

            self._client = docker_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def is_docker(entry: Mapping[str, Any]) -> bool:
    return bool(entry["snapshot"].get("backend") == "docker")
