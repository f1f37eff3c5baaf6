"""``Resolved``: a descriptor made concrete for one environment (what backends read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .descriptors import Service

__all__ = ["Resolved"]


@dataclass(frozen=True)
class Resolved:
    """A descriptor made concrete for one environment: image, env, command, secrets.

    Backends read this; the ``secrets`` never appear in its ``repr``.
    """

    service: Service
    image: str
    ports: tuple[int, ...]
    env: Mapping[str, str] = field(repr=False)
    command: tuple[str, ...] | None
    secrets: Mapping[str, str] = field(repr=False, default_factory=dict)
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    """Replaces the image's entrypoint (None: keep it)."""
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict, repr=False)
    """Files the backend puts into the container before it starts: container path -> (content, mode).

    Secrets go here, not into ``command`` or ``env`` (argv shows in ``ps``, both in ``docker inspect``).
    """
    volumes: Mapping[str, str] = field(default_factory=dict)
    """Named volumes of the environment to mount: volume name -> container path."""
    options: Mapping[str, object] = field(default_factory=dict)
    """Checked container options (see :data:`svcenv.container.OPTIONS`), for the Docker backend."""

    @property
    def name(self) -> str:
        return self.service.name
