"""Where services run. ``get_backend(name)`` makes a fresh backend for one environment."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import Backend, Instance

__all__ = ["BACKENDS", "Backend", "Instance", "get_backend"]

BACKENDS = ("docker", "external")


def get_backend(name: str) -> Backend:
    """A new backend object by name (one of :data:`BACKENDS`)."""
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend()
    if name == "external":
        from .external import ExternalBackend

        return ExternalBackend()
    raise ConfigurationError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
