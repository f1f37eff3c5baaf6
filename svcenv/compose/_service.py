"""One service's keys, read into a :class:`ComposeService`: one reader per key, in one table."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._checks import FrozenMap
from ._interpolate import read_env_file
from ._model import (
    CONDITIONS,
    ComposeBuild,
    ComposeDependency,
    ComposeHealthcheck,
    ComposeService,
    SvcenvExtension,
)
from ._ports import expose, ports
from ._values import Scope
from ._volumes import volumes

__all__ = ["SERVICE_KEYS", "parse_service"]


def _build(s: Scope, key: str, value: object) -> ComposeBuild:
    if isinstance(value, str):
        value = {"context": value}
    build = s.ctx.mapping(key, value, allow_none=False)
    s.ctx.keys(key, build, ("context", "dockerfile", "args", "target"))
    context = s.ctx.string(f"{key}.context", build.get("context", "."))
    remote = re.match(r"^(https?://|git@|github\.com/)", context)
    return ComposeBuild(
        context=context if remote else s.ctx.path(context),
        dockerfile=s.ctx.string(f"{key}.dockerfile", build["dockerfile"]) if "dockerfile" in build else None,
        args=s.ctx.string_map(f"{key}.args", build.get("args"), s.lookup),
        target=s.ctx.string(f"{key}.target", build["target"]) if "target" in build else None,
    )


def _healthcheck(s: Scope, key: str, value: object) -> ComposeHealthcheck:
    check = s.ctx.mapping(key, value)
    times = ("interval", "timeout", "start_period", "start_interval")
    s.ctx.keys(key, check, ("test", *times, "retries", "disable"))
    if "disable" in check and s.ctx.boolean(f"{key}.disable", check["disable"]):
        return ComposeHealthcheck(disable=True)
    test: tuple[str, ...] | None = None
    if isinstance(check.get("test"), str):
        test = ("CMD-SHELL", str(check["test"]))
    elif check.get("test") is not None:
        test = s.ctx.strings(f"{key}.test", check["test"])
        if test == ("NONE",):
            return ComposeHealthcheck(disable=True)
        if (
            not test
            or test[0] not in ("CMD", "CMD-SHELL")
            or len(test) < 2
            or (test[0] == "CMD-SHELL" and len(test) != 2)
        ):
            raise s.ctx.error(
                f"{key}.test",
                f'{list(test)!r} is not a test (forms: ["CMD", "prog", "arg"], ["CMD-SHELL", "command"], '
                '"command", ["NONE"])',
            )
    durations = {t: s.ctx.duration(f"{key}.{t}", check[t]) if check.get(t) is not None else None for t in times}
    retries = s.ctx.integer(f"{key}.retries", check["retries"], minimum=1) if "retries" in check else None
    return ComposeHealthcheck(
        test,
        interval=durations["interval"],
        timeout=durations["timeout"],
        retries=retries,
        start_period=durations["start_period"],
        start_interval=durations["start_interval"],
    )


def _depends_on(s: Scope, key: str, value: object) -> tuple[ComposeDependency, ...]:
    if isinstance(value, list):
        return tuple(ComposeDependency(s.ctx.string(f"{key}[{i}]", name)) for i, name in enumerate(value))
    dependencies = []
    for name, item in s.ctx.mapping(key, value).items():
        options = s.ctx.mapping(f"{key}.{name}", item)
        s.ctx.keys(f"{key}.{name}", options, ("condition", "required", "restart"))
        condition = s.ctx.string(f"{key}.{name}.condition", options.get("condition", CONDITIONS[0]))
        if condition not in CONDITIONS:
            raise s.ctx.error(f"{key}.{name}.condition", f"{condition!r} is not one of {', '.join(CONDITIONS)}")
        required = s.ctx.boolean(f"{key}.{name}.required", options.get("required", True))
        if "restart" in options:
            s.ctx.boolean(f"{key}.{name}.restart", options["restart"])
        dependencies.append(ComposeDependency(name, condition, required))
    return tuple(dependencies)


def _svcenv(s: Scope, key: str, value: object) -> SvcenvExtension:
    ext = s.ctx.mapping(key, value)
    s.ctx.keys(key, ext, ("kind", "timeout", "backend"))
    kind = s.ctx.string(f"{key}.kind", ext["kind"]) if ext.get("kind") is not None else None
    timeout = ext.get("timeout")
    if timeout is not None:
        timeout = s.ctx.duration(f"{key}.timeout", timeout) if isinstance(timeout, str) else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise s.ctx.wrong(f"{key}.timeout", 'seconds > 0 or a duration such as "90s"', ext["timeout"])
    backend = s.ctx.string(f"{key}.backend", ext["backend"]) if ext.get("backend") is not None else None
    return SvcenvExtension(kind, None if timeout is None else float(timeout), backend)


def _networks(s: Scope, key: str, value: object) -> None:
    names = list(value) if isinstance(value, (list, Mapping)) else None
    if names is None or any(n != "default" for n in names):
        raise s.ctx.error(key, f"svcenv supports only the default network, got {value!r}")
    if isinstance(value, Mapping) and value["default"]:
        raise s.ctx.error(f"{key}.default", "svcenv cannot set network options (aliases, ipv4_address, ...)")


def _env_file(s: Scope, key: str, value: object) -> tuple[tuple[str, bool], ...]:
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, list):
        raise s.ctx.wrong(key, "a path or a list of paths", value)
    files = []
    for i, item in enumerate(items):
        where = key if isinstance(value, (str, Mapping)) else f"{key}[{i}]"
        if isinstance(item, Mapping):
            s.ctx.keys(where, item, ("path", "required"))
            required = s.ctx.boolean(f"{where}.required", item.get("required", True))
            files.append((s.ctx.path(s.ctx.string(f"{where}.path", item.get("path"))), required))
        else:
            files.append((s.ctx.path(s.ctx.string(where, item)), True))
    return tuple(files)


_Reader = Callable[[Scope, str, Any], object]
SERVICE_KEYS: dict[str, _Reader] = {
    "image": lambda s, k, v: s.ctx.string(k, v),
    "build": _build,
    "command": lambda s, k, v: s.ctx.argv(k, v),
    "entrypoint": lambda s, k, v: s.ctx.argv(k, v),
    "environment": lambda s, k, v: s.ctx.string_map(k, v, s.lookup),
    "env_file": _env_file,
    "ports": ports,
    "expose": expose,
    "healthcheck": _healthcheck,
    "depends_on": _depends_on,
    "volumes": volumes,
    "tmpfs": lambda s, k, v: s.ctx.strings(k, v),
    "shm_size": lambda s, k, v: s.ctx.size(k, v),
    "mem_limit": lambda s, k, v: s.ctx.size(k, v),
    "labels": lambda s, k, v: s.ctx.string_map(k, v),
    "profiles": lambda s, k, v: s.ctx.strings(k, v),
    "restart": lambda s, k, v: s.ctx.string(k, v),
    "networks": _networks,
    "x-svcenv": _svcenv,
}
"""Every service key svcenv reads, and how: anything else is an error (``x-*`` extensions are ignored)."""


def parse_service(scope: Scope, name: str, value: object) -> ComposeService:
    """The service ``name`` of the file, every key read and checked."""
    key = f"services.{name}"
    raw = scope.ctx.mapping(key, value)
    scope.ctx.keys(key, raw, tuple(SERVICE_KEYS))
    read: dict[str, Any] = {
        k: SERVICE_KEYS[k](scope, f"{key}.{k}", v) for k, v in raw.items() if k in SERVICE_KEYS and v is not None
    }
    if "image" not in read and "build" not in read:
        raise scope.ctx.error(key, "a service needs an image or a build")
    files: tuple[tuple[str, bool], ...] = read.pop("env_file", ())
    environment: dict[str, str] = {}
    for path, required in files:
        if Path(path).is_file():
            environment.update(read_env_file(Path(path), scope.lookup))
        elif required:
            raise scope.ctx.error(f"{key}.env_file", f"{path} does not exist (or give required: false)")
    environment.update(read.pop("environment", {}))
    read.pop("networks", None)
    fields = {k.replace("-", "_"): v for k, v in read.items()}
    return ComposeService(name=name, environment=FrozenMap(environment), env_file=tuple(p for p, _ in files), **fields)
