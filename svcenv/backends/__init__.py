"""Where services run, and how ``auto`` chooses.

``get_backend(name)`` makes a fresh backend for one environment. With
``backend="auto"`` (the default) each service goes to the first backend that
can serve it: **external** if ``SVCENV_<NAME>_URL`` is set, else **docker** if
an engine answers, else **local** if the server's binaries are installed. If
none can, :class:`~svcenv.BackendUnavailable` lists what was tried, why each
failed, and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING

from .._util import env_prefix
from ..errors import BackendUnavailable, ConfigurationError
from .base import Backend, Instance

if TYPE_CHECKING:
    from ..descriptors import Service

__all__ = ["AUTO_ORDER", "BACKENDS", "Backend", "Instance", "choose", "get_backend", "requested_backend"]

BACKENDS = ("docker", "local", "external")
AUTO_ORDER = ("external", "docker", "local")

_FIXES = {
    "external": "set SVCENV_{var}_URL to a running server",
    "docker": "start a Docker engine (or point DOCKER_HOST at one)",
    "local": "install the server (e.g. apt-get install postgresql redis-server)",
}


def get_backend(name: str) -> Backend:
    """A new backend object by name (one of :data:`BACKENDS`)."""
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend()
    if name == "local":
        from .local import LocalBackend

        return LocalBackend()
    if name == "external":
        from .external import ExternalBackend

        return ExternalBackend()
    raise ConfigurationError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def requested_backend(service: Service, environment_choice: str | None) -> str:
    """The backend name asked for: the descriptor's, else the environment's, else ``SVCENV_BACKEND``, else auto."""
    return service.backend or environment_choice or os.environ.get("SVCENV_BACKEND") or "auto"


def choose(service: Service, requested: str, made: MutableMapping[str, Backend]) -> Backend:
    """The backend that runs ``service``; ``made`` caches backend objects by name for one environment."""

    def backend(name: str) -> Backend:
        if name not in made:
            made[name] = get_backend(name)
        return made[name]

    if requested != "auto":
        return backend(requested)
    reasons = diagnose(service, made)
    for name, reason in reasons.items():
        if reason is None:
            return backend(name)
    var = env_prefix(service.name)
    lines = [f"no backend can run service {service.name!r} (backend=auto tried {', '.join(AUTO_ORDER)}):"]
    lines += [f"  - {name}: {_strip(name, str(reason))}" for name, reason in reasons.items()]
    lines.append("Fix one of them: " + "; or ".join(_FIXES[name].format(var=var) for name in AUTO_ORDER) + ".")
    raise BackendUnavailable("\n".join(lines))


def diagnose(service: Service, made: MutableMapping[str, Backend] | None = None) -> Mapping[str, str | None]:
    """For each backend in ``auto`` order: ``None`` if it can run ``service``, else why not."""
    made = {} if made is None else made
    reasons: dict[str, str | None] = {}
    for name in AUTO_ORDER:
        if name not in made:
            made[name] = get_backend(name)
        reasons[name] = made[name].supports(service)
        if reasons[name] is None:
            break
    return reasons


def _strip(name: str, reason: str) -> str:
    return reason[len(name) + 2 :] if reason.startswith(f"{name}: ") else reason
