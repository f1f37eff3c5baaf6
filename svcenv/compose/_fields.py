"""Compose keys that svcenv maps only where the descriptor can take them: one table, checked at run time.

Each key names the descriptor fields (or container options, ``options[...]``) that can
carry it, in order of preference; the first one the descriptor has gets the value.
Where none exists yet, :class:`ComposeError` says svcenv cannot set the key yet.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..descriptors import Service
from ._model import COMPLETED, ComposeService, ComposeVolume
from ._values import Ctx

__all__ = ["MAPPED", "Job", "passed_fields"]

MAPPED = ("image", "command", "environment", "env_file", "ports", "expose", "healthcheck", "depends_on", "tmpfs")
"""Compose keys svcenv always maps (besides profiles and x-svcenv; restart is ignored)."""


@dataclass(frozen=True)
class Job:
    """What mapping one file needs besides the service: the file, the one-shot services, the notices."""

    ctx: Ctx
    completes: dict[str, str]
    """Services others wait for with service_completed_successfully -> the key that says so."""
    notices: list[str]


@dataclass(frozen=True)
class _Target:
    field: str
    option: str | None = None
    """Set ``options[option]`` (a container option svcenv checks) instead of the field itself."""
    convert: Callable[[Any, ComposeService, Job], object] = lambda value, service, job: value

    def available(self, names: Collection[str]) -> bool:
        if self.field not in names:
            return False
        return self.option is None or self.option in _container_options()

    def __str__(self) -> str:
        return f"{self.field}[{self.option!r}]" if self.option else self.field


@dataclass(frozen=True)
class _Key:
    key: str
    value: Callable[[ComposeService, Job], object]
    """The normalised value (None: the file does not use the key)."""
    targets: tuple[_Target, ...]
    where: Callable[[ComposeService, Job], str] | None = None
    """The key path for the error (default ``services.<name>.<key>``)."""


def _container_options() -> Collection[str]:
    try:
        module = importlib.import_module("svcenv.container")
    except ImportError:
        return ()
    return tuple(getattr(module, "OPTIONS", ()))


def _build(value: Any, service: ComposeService, job: Job) -> object:
    if "://" in value.context or value.context.startswith("git@"):
        raise job.ctx.error(f"services.{service.name}.build.context", "svcenv cannot build from a URL yet")
    return {"context": Path(value.context), "dockerfile": value.dockerfile, "args": value.args, "target": value.target}


def _named(volumes: tuple[ComposeVolume, ...], service: ComposeService, job: Job) -> object:
    named: dict[str, str] = {}
    for volume in volumes:
        where = f"services.{service.name}.volumes"
        if volume.options:
            raise job.ctx.error(where, f"svcenv cannot set volume options yet ({', '.join(volume.options)})")
        # An anonymous volume is one of its own: named after the service and where it is mounted.
        name = volume.source or re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"{service.name}{volume.target}").rstrip("-")
        if name in named:
            raise job.ctx.error(where, f"svcenv cannot mount the volume {name!r} twice in one service yet")
        named[name] = volume.target + (":ro" if volume.read_only else "")
    return named


def _copied(binds: tuple[ComposeVolume, ...], service: ComposeService, job: Job) -> object:
    files: dict[str, Path] = {}
    for bind in binds:
        source = Path(bind.source or "")
        if source.is_file():
            files[bind.target] = source
        elif source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                files[f"{bind.target.rstrip('/')}/{path.relative_to(source).as_posix()}"] = path
        else:
            raise job.ctx.error(f"services.{service.name}.volumes", f"the bind mount's source {source} does not exist")
        if not bind.read_only:
            job.notices.append(
                f"services.{service.name}.volumes: {source} is copied to {bind.target} before the start, "
                "not mounted: what the service writes there stays in the container"
            )
    return files


_KEYS = (
    _Key("build", lambda s, job: s.build, (_Target("build", convert=_build),)),
    _Key("entrypoint", lambda s, job: s.entrypoint, (_Target("entrypoint"),)),
    _Key(
        "volumes (named volumes)",
        lambda s, job: tuple(v for v in s.volumes if v.type == "volume") or None,
        (_Target("volumes", convert=_named),),
    ),
    _Key(
        "volumes (bind mounts)",
        lambda s, job: tuple(v for v in s.volumes if v.type == "bind") or None,
        (_Target("files", convert=_copied),),
    ),
    _Key("shm_size", lambda s, job: s.shm_size, (_Target("shm_size"), _Target("options", "shm_size"))),
    _Key("mem_limit", lambda s, job: s.mem_limit, (_Target("mem_limit"), _Target("options", "mem_limit"))),
    _Key("labels", lambda s, job: s.labels or None, (_Target("labels"),)),
    _Key(
        f"depends_on condition {COMPLETED} (a one-shot service)",
        lambda s, job: True if s.name in job.completes else None,
        (_Target("one_shot"),),
        lambda s, job: job.completes[s.name],
    ),
)
"""Compose key -> where svcenv can put it, best first."""


def passed_fields(kind: type[Service], service: ComposeService, job: Job) -> dict[str, Any]:
    """The descriptor keywords for the keys of :data:`_KEYS` that ``service`` uses (``options`` merged)."""
    names = {f.name for f in fields(kind)}
    supported = [*MAPPED, *(k.key for k in _KEYS if any(t.available(names) for t in k.targets)), "profiles"]
    kwargs: dict[str, Any] = {}
    for key in _KEYS:
        value = key.value(service, job)
        if value is None:
            continue
        target = next((t for t in key.targets if t.available(names)), None)
        if target is None:
            where = key.where(service, job) if key.where else f"services.{service.name}.{key.key.split()[0]}"
            raise job.ctx.error(where, f"svcenv cannot set {key.key} yet (supported: {', '.join(supported)})")
        converted = target.convert(value, service, job)
        if target.option is not None:
            kwargs.setdefault(target.field, {})[target.option] = converted
        else:
            kwargs[target.field] = converted
    return kwargs
