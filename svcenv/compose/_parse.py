"""A Compose file read into a :class:`ComposeFile`: YAML, ``.env``, interpolation, top-level keys, selection."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from ..errors import ComposeError
from ._interpolate import Interpolator, read_env_file
from ._model import ComposeFile, ComposeService
from ._service import parse_service
from ._values import Ctx, Scope

__all__ = ["parse_compose", "select_services"]

TOP_LEVEL_KEYS = ("services", "volumes", "networks", "name", "version")
"""The top-level keys svcenv reads (``x-*`` extensions are ignored; anything else is an error)."""
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without YAML 1.1's base-60 numbers: ``- 22:22`` stays a string, as in Compose."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _load_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ComposeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader: plain data only)
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def parse_compose(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ComposeFile:
    """Read a Compose file: every service normalised and checked, variables substituted.

    Variables come from ``environ`` (default: ``os.environ``) over a ``.env`` file
    beside the Compose file. Raises :class:`~svcenv.errors.ComposeError` naming the
    file and the key path for anything svcenv does not read or cannot use.
    """
    file = Path(path).resolve()
    ctx = Ctx(file)
    dotenv = file.parent / ".env"
    given = dict(os.environ if environ is None else environ)
    lookup = {**(read_env_file(dotenv, given) if dotenv.is_file() else {}), **given}
    data = _load_yaml(file)
    if data is None:
        data = {}
    top = ctx.mapping("(top level)", data, allow_none=False)
    ctx.keys("", top, TOP_LEVEL_KEYS)
    raw = top.get("services")
    if isinstance(raw, dict):  # extensions are not read, so not interpolated either
        top = {**top, "services": {k: _without_extensions(v) for k, v in raw.items()}}
    interpolator = Interpolator(lookup)
    top = {k: interpolator.tree(v, k, ctx.error) for k, v in top.items() if not k.startswith("x-")}
    name = ctx.string("name", top["name"]) if top.get("name") is not None else None
    _networks(ctx, top.get("networks"))
    volumes = _volumes(ctx, top.get("volumes"))
    scope = Scope(ctx, lookup, volumes)
    raw_services = ctx.mapping("services", top.get("services"))
    if not raw_services:
        raise ctx.error("services", "the file defines no services")
    services = []
    for service_name, value in raw_services.items():
        if not _SERVICE_NAME.match(service_name):
            raise ctx.error(f"services.{service_name}", "a service name is letters, digits, '.', '_' and '-'")
        services.append(parse_service(scope, service_name, value))
    notices = [f"variable {v} is not set: it is an empty string" for v in interpolator.unset]
    restarted = [s.name for s in services if s.restart is not None]
    if restarted:
        notices.append(f"restart: ignored for {', '.join(restarted)} (svcenv starts a service once, never restarts it)")
    parsed = ComposeFile(file, tuple(services), name, volumes, ())
    notices += _check_dependencies(ctx, parsed)
    return ComposeFile(file, tuple(services), name, volumes, tuple(notices))


def _without_extensions(service: object) -> object:
    if not isinstance(service, dict):
        return service
    return {k: v for k, v in service.items() if not (str(k).startswith("x-") and k != "x-svcenv")}


def _networks(ctx: Ctx, value: object) -> None:
    for network, options in ctx.mapping("networks", value).items():
        if network != "default":
            raise ctx.error(f"networks.{network}", "svcenv supports only the default network")
        if options:
            raise ctx.error("networks.default", f"svcenv cannot set network options, got {options!r}")


def _volumes(ctx: Ctx, value: object) -> tuple[str, ...]:
    declared = ctx.mapping("volumes", value)
    for volume, options in declared.items():
        for option in ctx.mapping(f"volumes.{volume}", options):
            raise ctx.error(
                f"volumes.{volume}.{option}", "svcenv cannot set volume options (supported: a volume without options)"
            )
    return tuple(declared)


def _check_dependencies(ctx: Ctx, file: ComposeFile) -> list[str]:
    notices = []
    for service in file.services:
        for dep in service.depends_on:
            where = f"services.{service.name}.depends_on.{dep.service}"
            if dep.service == service.name:
                raise ctx.error(where, "a service cannot depend on itself")
            if dep.service not in file.names:
                if dep.required:
                    raise ctx.error(
                        where, f"no service {dep.service!r} in the file (services: {', '.join(file.names)})"
                    )
                notices.append(f"{where}: no such service; ignored (required: false)")
    return notices


def select_services(
    file: ComposeFile, services: Sequence[str] | None = None, profiles: Sequence[str] = ()
) -> list[ComposeService]:
    """The services to run, in file order, as ``docker compose up [services]`` would choose them.

    Without ``services``: every service without ``profiles`` and every one with an
    active profile (``"*"`` activates all). With ``services``: those, whatever their
    profiles. Either way the services they depend on are added (``required: false``
    dependencies only when chosen anyway).
    """
    if isinstance(services, str):
        services = (services,)
    if services is not None:
        unknown = [n for n in services if n not in file.names]
        if unknown:
            raise ComposeError(
                f"{file.path}: services={list(services)!r}: no service {unknown[0]!r} in the file "
                f"(services: {', '.join(file.names)})"
            )
        chosen = list(dict.fromkeys(services))
    else:
        active = set(profiles)
        chosen = [s.name for s in file.services if not s.profiles or "*" in active or active & set(s.profiles)]
    selected: set[str] = set()
    while chosen:
        name = chosen.pop()
        if name not in selected:
            selected.add(name)
            chosen += [d.service for d in file[name].depends_on if d.required]
    return [s for s in file.services if s.name in selected]
