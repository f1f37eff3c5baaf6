"""What a Compose file says, normalised: frozen, hashable dataclasses (the stable part of :mod:`svcenv.compose`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import FrozenMap

__all__ = [
    "ComposeBuild",
    "ComposeDependency",
    "ComposeFile",
    "ComposeHealthcheck",
    "ComposePort",
    "ComposeService",
    "ComposeVolume",
    "SvcenvExtension",
]

STARTED = "service_started"
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
CONDITIONS = (STARTED, HEALTHY, COMPLETED)
"""The ``depends_on`` conditions Compose knows."""


@dataclass(frozen=True)
class ComposeBuild:
    """``build``: the context (an absolute path or a URL), Dockerfile, build args and target stage."""

    context: str
    dockerfile: str | None = None
    args: Mapping[str, str] = field(default_factory=FrozenMap)
    target: str | None = None


@dataclass(frozen=True)
class ComposePort:
    """One container port of ``ports`` (or ``expose``: never published): ``published`` as written (None: any)."""

    target: int
    published: str | None = None
    host_ip: str | None = None
    protocol: str = "tcp"


@dataclass(frozen=True)
class ComposeVolume:
    """One entry of ``volumes``: ``type`` is ``bind``, ``volume`` or ``tmpfs``.

    ``source`` is an absolute host path (bind), a declared volume's name (volume; None for
    an anonymous one) or None (tmpfs). ``options`` keeps what else the entry says, as
    ``flag`` or ``key=value`` (``z``, ``nocopy``, ``propagation=rshared``, ``size=1048576``).
    """

    type: str
    target: str
    source: str | None = None
    read_only: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComposeHealthcheck:
    """``healthcheck``: ``test`` as Compose's list (``("CMD", ...)`` or ``("CMD-SHELL", "...")``), times in seconds.

    ``test`` is None when the file gives none (the image's own would apply). Unset
    times are None; Docker's defaults are 30s interval, 30s timeout, 3 retries.
    """

    test: tuple[str, ...] | None = None
    interval: float | None = None
    timeout: float | None = None
    retries: int | None = None
    start_period: float | None = None
    start_interval: float | None = None
    disable: bool = False

    @property
    def argv(self) -> tuple[str, ...] | None:
        """The command Docker would exec: ``CMD`` arguments, or ``/bin/sh -c`` for ``CMD-SHELL`` (None: no test)."""
        if self.disable or not self.test:
            return None
        if self.test[0] == "CMD-SHELL":
            return ("/bin/sh", "-c", self.test[1])
        return self.test[1:]


@dataclass(frozen=True)
class ComposeDependency:
    """One entry of ``depends_on``: the service, the condition to wait for, and whether it must exist."""

    service: str
    condition: str = STARTED
    required: bool = True


@dataclass(frozen=True)
class SvcenvExtension:
    """``x-svcenv``: the svcenv kind (``postgres``, ``redis``, ...), a deadline in seconds, a backend."""

    kind: str | None = None
    timeout: float | None = None
    backend: str | None = None


@dataclass(frozen=True)
class ComposeService:
    """One service of a Compose file, every supported key normalised.

    ``environment`` is the final environment: ``env_file`` files in order, then
    ``environment`` over them; keys given without a value took it from the
    variables (left out when unset). ``command``/``entrypoint`` are argvs (a string
    was split like a shell splits words). Sizes are bytes; times are seconds.
    """

    name: str
    image: str | None = None
    build: ComposeBuild | None = None
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=FrozenMap)
    env_file: tuple[str, ...] = ()
    ports: tuple[ComposePort, ...] = ()
    expose: tuple[ComposePort, ...] = ()
    healthcheck: ComposeHealthcheck | None = None
    depends_on: tuple[ComposeDependency, ...] = ()
    volumes: tuple[ComposeVolume, ...] = ()
    tmpfs: tuple[str, ...] = ()
    shm_size: int | None = None
    mem_limit: int | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenMap)
    profiles: tuple[str, ...] = ()
    restart: str | None = None
    x_svcenv: SvcenvExtension = field(default_factory=SvcenvExtension)


@dataclass(frozen=True)
class ComposeFile:
    """A whole Compose file: its services in file order, declared volumes and the notices reading it gave."""

    path: Path
    services: tuple[ComposeService, ...]
    name: str | None = None
    volumes: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> ComposeService:
        """The service called ``name`` (KeyError if there is none)."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """The services' names, in file order."""
        return tuple(s.name for s in self.services)
