"""Compose keys that become a descriptor's container fields: build, entrypoint, volumes, sizes, labels, jobs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._model import ComposeService, ComposeVolume
from ._values import Ctx

__all__ = ["Job", "passed_fields"]


@dataclass(frozen=True)
class Job:
    """What mapping one file needs besides the service: the file, the one-shot services, the notices."""

    ctx: Ctx
    completes: dict[str, str]
    """Services others wait for with service_completed_successfully -> the key that says so."""
    notices: list[str]


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


def passed_fields(service: ComposeService, job: Job) -> dict[str, Any]:
    """The descriptor keywords for the container keys ``service`` uses (only those it uses)."""
    kwargs: dict[str, Any] = {}
    if service.build is not None:
        kwargs["build"] = _build(service.build, service, job)
    if service.entrypoint is not None:
        kwargs["entrypoint"] = service.entrypoint
    named = tuple(v for v in service.volumes if v.type == "volume")
    if named:
        kwargs["volumes"] = _named(named, service, job)
    binds = tuple(v for v in service.volumes if v.type == "bind")
    if binds:
        kwargs["files"] = _copied(binds, service, job)
    options = {k: getattr(service, k) for k in ("shm_size", "mem_limit") if getattr(service, k) is not None}
    if options:
        kwargs["options"] = options
    if service.labels:
        kwargs["labels"] = service.labels
    if service.name in job.completes:
        kwargs["one_shot"] = True
    return kwargs
