"""Compose services mapped to svcenv descriptors: the kind, its credentials, ports, probe and the other fields."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

from .. import mysql as _mysql  # noqa: F401 (defines the mysql kind in KINDS)
from ..descriptors import KINDS, Service
from ..errors import ComposeError, ConfigurationError
from ..probes import Command, LogLine
from ._fields import Job, passed_fields
from ._model import COMPLETED, ComposeFile, ComposeService
from ._values import Ctx

__all__ = ["image_kind", "to_descriptors"]

_IMAGE_KINDS = {"postgres": "postgres", "redis": "redis", "elasticsearch": "elasticsearch", "mysql": "mysql"}
_IMAGE_KINDS["mariadb"] = "mysql"
DOCKER_HEALTHCHECK = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}
"""Docker's defaults for what a healthcheck leaves unset."""


def image_kind(image: str) -> str | None:
    """The svcenv kind of an official image (``postgres:16``, ``docker.io/library/redis``, ...); None: generic.

    The registry, tag and digest are stripped. Only official repositories count
    (no namespace, ``library/``, or ``docker.elastic.co/elasticsearch/elasticsearch``):
    ``bitnami/redis`` has another contract, so it is a generic service unless
    ``x-svcenv: {kind: redis}`` says otherwise.
    """
    parts = image.split("@", 1)[0].split("/")
    parts[-1] = parts[-1].split(":", 1)[0]
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    namespace, name = "/".join(parts[:-1]), parts[-1].lower()
    official = namespace in ("", "library") or namespace.endswith("/library") or namespace == name == "elasticsearch"
    return _IMAGE_KINDS.get(name) if official else None


# -- credentials and settings per kind: (environment, command) -> descriptor keywords -------------


def _postgres(env: dict[str, str], command: tuple[str, ...] | None) -> dict[str, Any]:
    user = env.pop("POSTGRES_USER", "") or "postgres"
    kwargs: dict[str, Any] = {"user": user, "dbname": env.pop("POSTGRES_DB", "") or user}  # the image's defaults
    if password := env.pop("POSTGRES_PASSWORD", ""):
        kwargs["password"] = password
    args = command[1:] if command and command[0] == "postgres" else None
    if (
        args is not None
        and len(args) % 2 == 0
        and all(f == "-c" and "=" in a for f, a in zip(args[::2], args[1::2], strict=True))
    ):
        # Only -c settings: svcenv passes them itself (and keeps its test tuning unless they override it).
        kwargs["settings"] = dict(arg.split("=", 1) for arg in args[1::2])
        kwargs["command"] = None
    return kwargs


def _redis(env: dict[str, str], command: tuple[str, ...] | None) -> dict[str, Any]:
    if not command or "--requirepass" not in command[:-1]:
        # The file's apps connect without AUTH, as to the image's default; svcenv publishes on 127.0.0.1 only.
        return {"password": ""}
    at = command.index("--requirepass")
    rest = command[:at] + command[at + 2 :]
    return {"password": command[at + 1], "command": rest if rest not in ((), ("redis-server",)) else None}


def _mysql_kind(env: dict[str, str], command: tuple[str, ...] | None) -> dict[str, Any]:
    def take(name: str) -> str | None:
        values = (env.pop(f"MYSQL_{name}", None), env.pop(f"MARIADB_{name}", None))
        return next((v for v in values if v), None)

    root, user, password, dbname = take("ROOT_PASSWORD"), take("USER"), take("PASSWORD"), take("DATABASE")
    kwargs: dict[str, Any] = {"root_password": root, "dbname": dbname or "test"}
    if user and user != "root":
        kwargs.update(user=user, password=password)
    else:
        kwargs["user"] = "root"  # the image creates no other user: the file's clients log in as root
    return kwargs


def _elasticsearch(env: dict[str, str], command: tuple[str, ...] | None) -> dict[str, Any]:
    options = env.get("ES_JAVA_OPTS", "")
    heap = re.search(r"-Xmx(\S+)", options)
    if not heap:
        return {}
    if not re.sub(r"-Xm[sx]\S+", "", options).strip():
        del env["ES_JAVA_OPTS"]  # only the heap: svcenv writes it
    return {"heap": heap.group(1)}


_KIND_SETTINGS: dict[str, Callable[[dict[str, str], tuple[str, ...] | None], dict[str, Any]]] = {
    "postgres": _postgres,
    "redis": _redis,
    "mysql": _mysql_kind,
    "elasticsearch": _elasticsearch,
}


# -- one service -----------------------------------------------------------------------------


def _kind(service: ComposeService, ctx: Ctx) -> type[Service]:
    kind = service.x_svcenv.kind
    if kind is not None and kind not in KINDS:
        raise ctx.error(f"services.{service.name}.x-svcenv.kind", f"{kind!r} is not a kind ({', '.join(KINDS)})")
    return KINDS[kind or (image_kind(service.image) if service.image else None) or "service"]


def _ports(kind: type[Service], service: ComposeService, ctx: Ctx) -> tuple[int, ...]:
    for port in (*service.ports, *service.expose):
        if port.protocol != "tcp":
            where = f"services.{service.name}.{'ports' if port in service.ports else 'expose'}"
            raise ctx.error(
                where, f"svcenv publishes TCP ports only; {port.target}/{port.protocol} cannot be published"
            )
    default = next(f.default for f in fields(kind) if f.name == "ports") if kind is not Service else ()
    ports = (*(default if isinstance(default, tuple) else ()), *(p.target for p in (*service.ports, *service.expose)))
    return tuple(dict.fromkeys(ports))


def _tmpfs(service: ComposeService, ctx: Ctx) -> tuple[str, ...]:
    for entry in service.tmpfs:
        if ":" in entry:
            raise ctx.error(f"services.{service.name}.tmpfs", f"svcenv cannot set tmpfs options yet ({entry!r})")
    mounts = [v for v in service.volumes if v.type == "tmpfs"]
    for mount in mounts:
        if mount.options or mount.read_only:
            raise ctx.error(f"services.{service.name}.volumes", f"svcenv cannot set tmpfs options yet ({mount.target})")
    return (*service.tmpfs, *(m.target for m in mounts))


def _health(service: ComposeService, notices: list[str]) -> tuple[Command | None, float | None]:
    """The healthcheck's test as a probe, and the deadline it asks for: start_period + retries * (interval + timeout).

    svcenv polls far more often than ``interval`` and cannot bound one ``docker exec``
    (an attempt that hangs is cut by the deadline), so ``retries``, ``interval`` and
    ``timeout`` are honoured through the deadline: as long as Docker would wait before
    calling the service unhealthy. A plain :class:`Command` is recordable everywhere.
    """
    check = service.healthcheck
    if check is None or check.disable:
        return None, None
    if check.argv is None:
        notices.append(f"services.{service.name}.healthcheck: no test; svcenv cannot run the image's own")
    given = {k: getattr(check, k) for k in DOCKER_HEALTHCHECK if getattr(check, k) is not None}
    times = {**DOCKER_HEALTHCHECK, **given}
    budget = times["start_period"] + times["retries"] * (times["interval"] + times["timeout"]) if given else None
    return (Command(check.argv) if check.argv else None), budget


def _descriptor(service: ComposeService, selected: set[str], job: Job) -> Service:
    kind = _kind(service, job.ctx)
    env = dict(service.environment)
    kwargs: dict[str, Any] = {
        "name": service.name,
        "image": service.image,
        "ports": _ports(kind, service, job.ctx),
        "command": service.command,
        "depends_on": tuple(d.service for d in service.depends_on if d.service in selected),
        "tmpfs": _tmpfs(service, job.ctx),
    }
    if kind.kind in _KIND_SETTINGS:
        kwargs.update(_KIND_SETTINGS[kind.kind](env, service.command))
    kwargs.update(passed_fields(service, job), env=env)
    if "build" in kwargs:
        kwargs["image"] = None  # svcenv tags what it builds itself
    probe, budget = _health(service, job.notices)
    if service.x_svcenv.timeout is not None:
        kwargs["timeout"] = service.x_svcenv.timeout
    elif budget is not None and budget > kind.default_timeout:
        kwargs["timeout"] = budget
    if service.x_svcenv.backend is not None:
        kwargs["backend"] = service.x_svcenv.backend
    if kwargs.get("one_shot"):
        probe = None  # a job is done when it exits with status 0, as service_completed_successfully means
        if kind is Service:
            kwargs["probe"] = None
    elif kind is Service:
        # The healthcheck alone decides (as service_healthy); with neither it nor a port: ready once started.
        kwargs["probe"] = probe or (None if kwargs["ports"] else LogLine("", times=0))
    try:
        descriptor = kind(**kwargs)
        if probe is not None and kind is not Service:
            descriptor = replace(descriptor, probe=descriptor.readiness_probe & probe)
    except ComposeError:
        raise
    except (ConfigurationError, TypeError) as exc:
        raise job.ctx.error(f"services.{service.name}", str(exc)) from None
    return descriptor


def to_descriptors(
    file: ComposeFile, services: Sequence[ComposeService], notices: list[str] | None = None
) -> list[Service]:
    """svcenv descriptors for ``services`` of ``file`` (from :func:`select_services`), in their order.

    Notices (host ports ignored, a healthcheck without test) are appended to ``notices``.
    """
    notices = [] if notices is None else notices
    ctx = Ctx(file.path)
    selected = {s.name for s in services}
    completes = {
        d.service: f"services.{s.name}.depends_on.{d.service}.condition"
        for s in services
        for d in s.depends_on
        if d.condition == COMPLETED and d.service in selected
    }
    if any(p.published for s in services for p in s.ports):
        notices.append("ports: host ports ignored (svcenv publishes every container port on a free 127.0.0.1 port)")
    job = Job(ctx, completes, notices)
    return [_descriptor(s, selected, job) for s in services]
