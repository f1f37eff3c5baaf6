"""A generic service's command as a supervised local process: the application beside its databases."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..._util import NotYet
from .accounts import Account
from .process import LocalInstance
from .servers import _await

if TYPE_CHECKING:
    from ...descriptors import Resolved, Service

__all__ = ["LocalCommand", "command_problem"]


def command_problem(service: Service) -> str | None:
    """Why ``service`` (a generic one) cannot run as a local command, or None if it can."""
    if service.image:
        return (
            f"local: cannot run service {service.name!r}: it names an image ({service.image}), and the local "
            "backend runs local installations and commands, not images (Service(..., command=[...]) without image)"
        )
    if not service.command:
        return f"local: cannot run service {service.name!r}: it has no command to run (and no image)"
    if _program(service.command[0]) is None:
        return f"local: cannot run service {service.name!r}: {service.command[0]!r} is not found on PATH"
    return None


def _program(name: str) -> str | None:
    # Absolute, symlinks kept: a venv's python is a symlink that finds its venv by its own path.
    found = shutil.which(name)
    return os.path.abspath(found) if found else None


class LocalCommand(LocalInstance):
    """``Service(name, command=[...])`` without an image, run on this machine under a watchdog.

    It runs as the calling user, in the directory the owner runs in, with the owner's
    environment, the descriptor's ``env`` (references filled in: other services' addresses are
    their loopback ones) and ``PORT`` (a free 127.0.0.1 port, published as the service's first
    port) and ``HOST=127.0.0.1``. Its readiness probe decides when it is ready, as in a
    container; it never outlives its owner, like the local servers.
    """

    kind = "service"

    def __init__(self, resolved: Resolved, labels: Mapping[str, str], workdir: Path, account: Account | None) -> None:
        super().__init__(resolved, labels, workdir, account)
        command = resolved.command or ()
        program = _program(command[0]) if command else None
        if program is None:
            raise FileNotFoundError(command_problem(resolved.service) or "no command")
        self._argv = [program, *command[1:]]
        self._cwd = Path.cwd()

    @property
    def cwd(self) -> Path:
        return self._cwd

    def argv(self, port: int) -> list[str]:
        return list(self._argv)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.resolved.env}

    def port_env(self, port: int) -> dict[str, str]:
        return {"PORT": str(port), "HOST": "127.0.0.1"}

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        """Return once it listens on ``PORT`` (if it publishes a port): a port another process took
        meanwhile ("Address already in use") is then retried on a new one, as for the servers."""
        if self.resolved.service.one_shot and self.exit_status() == 0:
            return  # a job that is done already
        if not self.resolved.ports:
            self._check_running(log_offset)
            return

        def listening() -> None:
            self._check_running(log_offset)  # _PortTaken if it could not bind
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                raise NotYet(f"did not listen on PORT={port} in time") from None

        _await(listening, deadline, first=0.01)
