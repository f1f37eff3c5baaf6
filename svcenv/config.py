"""Project configuration: ``[tool.svcenv]`` in ``pyproject.toml``, or a ``svcenv.toml``.

The CLI and the pytest plugin read the same file. It is looked up from the
current directory (pytest: its root dir) upwards: in each directory a
``svcenv.toml`` wins, then a ``pyproject.toml`` with a ``[tool.svcenv]`` table;
the search stops at the first ``pyproject.toml`` or ``.git``. ``SVCENV_CONFIG``
(or the CLI's ``--config``) names a file explicitly. The directory holding the
file is the *project*: detached environments and reused services are recorded
per project. ::

    [tool.svcenv]
    reuse = false          # keep services up between runs and attach to them (opt-in)
    backend = "auto"       # auto, docker, local or external
    timeout = 60           # seconds each service gets to become ready

    [tool.svcenv.services.postgres]
    kind = "postgres"      # postgres, redis, elasticsearch or service (default: the name if it is a kind)
    version = "16"         # image tag of the kind's default image; or image = "postgres:16-alpine"
    user = "app"
    dbname = "app"
    settings = { max_connections = "200" }

    [tool.svcenv.services.web]
    image = "nginx:1.27"
    ports = [80]
    probe = { http = "/" }  # or { tcp = true }, { log = "ready" }, { command = ["pg_isready"] }
    depends_on = ["postgres"]

In ``svcenv.toml`` the same keys sit at the top level (``reuse = …``,
``[services.postgres]``). Every value is checked: an error names the file, the
key and what is allowed, as a :class:`~svcenv.ConfigurationError`.

A *spec* is one service's configuration as a JSON-able dict (``name``, ``kind``
and the keys above); :func:`build_service` makes a descriptor of it and
:func:`spec_of` describes a descriptor as one (for state files and reuse hashes).
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .descriptors import KINDS, Service
from .errors import ConfigurationError
from .records import Spec, build_service, spec_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = [
    "KINDS",
    "ProjectConfig",
    "Spec",
    "build_service",
    "find_config",
    "load_config",
    "spec_of",
]


DEFAULT_SERVICES = ("postgres", "redis", "elasticsearch")
"""What runs when no configuration declares services and none is named (any kind may be named)."""


def _kind_specs() -> dict[str, Spec]:
    """Without declared services, every kind is a service of its own name (``up mysql`` works)."""
    names = [*DEFAULT_SERVICES, *(k for k in KINDS if k not in DEFAULT_SERVICES and k != "service")]
    return {n: {"name": n, "kind": n} for n in names}


BACKENDS = ("auto", "docker", "local", "external")

_COMMON = ("kind", "image", "version", "env", "command", "probe", "depends_on", "timeout", "backend")
_GENERIC = ("ports", "tmpfs", "scheme")
"""Keys only a generic service takes: a kind knows its own ports and scheme."""


def _own_fields(kind: type[Service]) -> dict[str, str]:
    """The keys a kind adds to the common ones (its dataclass fields beyond Service's), with their types."""
    if kind is Service:
        return dict.fromkeys(_GENERIC, "")
    base = {f.name for f in fields(Service)}
    return {f.name: str(f.type) for f in fields(kind) if f.name not in base}


def allowed_keys(kind: str) -> tuple[str, ...]:
    """The configuration keys of a kind: the common ones and the kind's own fields."""
    return (*_COMMON, *_own_fields(KINDS[kind]))


_TOP = ("reuse", "backend", "timeout", "services", "compose", "compose_profiles")
_PROBES = ("tcp", "http", "log", "command")
_PROBE_OPTIONS = {
    "tcp": ("tcp",),
    "http": ("http", "status", "port"),
    "log": ("log", "times"),
    "command": ("command", "exit_code"),
}


@dataclass(frozen=True)
class ProjectConfig:
    """What a project declares; :func:`load_config` reads it (defaults when there is no file)."""

    path: Path | None
    """The file read, or None."""
    project_dir: Path
    """The directory holding the file (else the start directory): the key of this project's state."""
    services: Mapping[str, Spec] = field(default_factory=dict)
    """Declared services by name (the default kinds when the file declares none)."""
    declared: bool = False
    """True if the file declares services (then they are the pytest session's universe)."""
    reuse: bool = False
    backend: str | None = None
    timeout: float | None = None
    notices: tuple[str, ...] = ()
    """What a compose file says that svcenv ignores or changes (one line each)."""

    @property
    def known(self) -> list[str]:
        """Names of the services one may ask for."""
        return list(self.services)

    def select(self, names: Sequence[str] = ()) -> list[Spec]:
        """Specs for ``names`` (when empty: the declared services, else the default kinds) and their dependencies.

        Raises :class:`ConfigurationError` listing the known names for an unknown one.
        """
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise ConfigurationError(
                f"unknown service {', '.join(map(repr, unknown))}; known services: {', '.join(self.known)}"
            )
        wanted = set(names or (self.services if self.declared else DEFAULT_SERVICES))
        pending = list(wanted)
        while pending:
            for dep in self.services[pending.pop()].get("depends_on", ()):
                if dep not in wanted:
                    wanted.add(dep)
                    pending.append(dep)
        return [dict(spec) for name, spec in self.services.items() if name in wanted]

    def descriptors(self, names: Sequence[str] = (), apply_defaults: bool = True) -> list[Service]:
        """Descriptors for :meth:`select`.

        With ``apply_defaults``, the file's ``backend``/``timeout`` are set on services that set none
        (the CLI passes them to the environment instead, so that its options can override them).
        """
        specs = self.select(names)
        return [build_service(self._with_defaults(spec) if apply_defaults else spec) for spec in specs]

    def _with_defaults(self, spec: Spec) -> Spec:
        spec = dict(spec)
        if self.backend and self.backend != "auto":
            spec.setdefault("backend", self.backend)
        if self.timeout is not None:
            spec.setdefault("timeout", self.timeout)
        return spec


def compose_specs(path: Path, profiles: Sequence[str] = (), notices: list[str] | None = None) -> dict[str, Spec]:
    """The services of a compose file as specs, by name (see :func:`svcenv.compose.load_compose`)."""
    from .compose import load_compose

    return {s.name: spec_of(s) for s in load_compose(path, profiles=profiles, notices=notices)}


def compose_config(path: Path, profiles: Sequence[str] = ()) -> ProjectConfig:
    """A project of a compose file's services (``up -f``, ``svcenv_compose``): its directory is the project."""
    path = path.resolve()
    notices: list[str] = []
    services = compose_specs(path, profiles, notices)
    return ProjectConfig(path, path.parent, services, declared=True, notices=tuple(notices))


def find_config(start: Path | None = None) -> Path | None:
    """The configuration file for ``start`` (default: the cwd), or None; see the module docstring."""
    explicit = os.environ.get("SVCENV_CONFIG")
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        own = directory / "svcenv.toml"
        if own.is_file():
            return own
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            return pyproject if _has_tool_table(pyproject) else None
        if (directory / ".git").exists():
            return None
    return None


def _has_tool_table(path: Path) -> bool:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True  # let load_config report the problem
    return isinstance(data.get("tool"), dict) and "svcenv" in data["tool"]


def load_config(path: Path | None = None, start: Path | None = None) -> ProjectConfig:
    """Read and check ``path`` (default: :func:`find_config` from ``start``); defaults if there is none."""
    path = path or find_config(start)
    if path is None:
        directory = (start or Path.cwd()).resolve()
        return ProjectConfig(None, directory, _kind_specs())
    path = path.resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 (byte {exc.start}: {exc.reason}); TOML files are UTF-8, re-save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("svcenv", {}) if isinstance(data.get("tool"), dict) else {}
        prefix = "tool.svcenv"
    else:
        table, prefix = data, ""
    return _Checker(path, prefix).project(table)


class _Checker:
    """Checks one file's table; errors name the file and the dotted key."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return ".".join(p for p in (self.prefix, *parts) if p)

    def fail(self, key: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"{self.path}: {key}: {problem}")

    def only(self, table: Mapping[str, Any], allowed: Sequence[str], *where: str) -> None:
        for name in table:
            if name not in allowed:
                raise self.fail(self.key(*where, name), f"unknown key; allowed here: {', '.join(allowed)}")

    def typed(self, value: Any, kind: type | tuple[type, ...], key: str, what: str) -> Any:
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"must be {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {what}, got {value!r}")
        return value

    def project(self, table: Mapping[str, Any]) -> ProjectConfig:
        self.typed(table, dict, self.prefix or "(top level)", "a table")
        self.only(table, _TOP)
        reuse = self.typed(table.get("reuse", False), bool, self.key("reuse"), "true or false")
        backend = table.get("backend")
        if backend is not None and backend not in BACKENDS:
            raise self.fail(self.key("backend"), f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
        timeout = self.positive(table.get("timeout"), self.key("timeout"))
        raw = self.typed(table.get("services", {}), dict, self.key("services"), "a table of services")
        services = {name: self.service(name, value) for name, value in raw.items()}
        notices: list[str] = []
        if "compose" in table:
            compose = self.typed(table["compose"], str, self.key("compose"), "the path of a compose file")
            profiles = self.strings(table.get("compose_profiles", []), self.key("compose_profiles"))
            for name, spec in compose_specs(self.path.parent / compose, profiles, notices).items():
                if name in services:
                    raise self.fail(self.key("services", name), f"also a service of the compose file {compose}")
                services[name] = spec
        config = ProjectConfig(
            self.path,
            self.path.parent,
            services or _kind_specs(),
            declared=bool(services),
            reuse=reuse,
            backend=backend,
            timeout=timeout,
            notices=tuple(notices),
        )
        for name, spec in services.items():
            for dep in spec.get("depends_on", ()):
                if dep not in services:
                    raise self.fail(
                        self.key("services", name, "depends_on"),
                        f"{dep!r} is not a declared service; declared: {', '.join(services)}",
                    )
            try:
                build_service(config._with_defaults(spec))
            except ConfigurationError as exc:
                raise self.fail(self.key("services", name), str(exc)) from None
        return config

    def positive(self, value: Any, key: str) -> float | None:
        if value is None:
            return None
        number = float(self.typed(value, (int, float), key, "a number of seconds"))
        if not 0 < number < math.inf:
            raise self.fail(key, f"must be a finite number of seconds > 0, got {value!r}")
        return number

    def strings(self, value: Any, key: str) -> list[str]:
        self.typed(value, list, key, "a list of strings")
        for item in value:
            self.typed(item, str, key, "a list of strings")
        return list(value)

    def string_map(self, value: Any, key: str) -> dict[str, str]:
        self.typed(value, dict, key, "a table of strings")
        out = {}
        for name, item in value.items():
            self.typed(item, (str, int, float, bool), f"{key}.{name}", "a string, number or boolean")
            out[str(name)] = ("true" if item else "false") if isinstance(item, bool) else str(item)
        return out

    def service(self, name: str, value: Any) -> Spec:
        where = ("services", name)
        self.typed(value, dict, self.key(*where), "a table")
        kind = value.get("kind", name if name in KINDS else "service")
        if kind not in KINDS:
            raise self.fail(self.key(*where, "kind"), f"must be one of {', '.join(KINDS)}, got {kind!r}")
        self.only(value, allowed_keys(kind), *where)
        own = _own_fields(KINDS[kind])
        spec: Spec = {"name": name, "kind": kind}
        for key, item in value.items():
            dotted = self.key(*where, key)
            if key in ("kind",):
                continue
            if key == "version":
                spec[key] = str(self.typed(item, (str, int, float), dotted, 'a string such as "16"'))
            elif key == "env" or "Mapping" in own.get(key, ""):
                spec[key] = self.string_map(item, dotted)
            elif "bool" in own.get(key, ""):
                spec[key] = self.typed(item, bool, dotted, "true or false")
            elif key in ("image", "scheme") or "str" in own.get(key, ""):
                spec[key] = self.typed(item, str, dotted, "a string")
            elif key == "command":
                spec[key] = shlex.split(item) if isinstance(item, str) else self.strings(item, dotted)
            elif key in ("depends_on", "tmpfs"):
                spec[key] = self.strings(item, dotted)
            elif key == "ports":
                self.typed(item, list, dotted, "a list of port numbers")
                spec[key] = [self.typed(p, int, dotted, "a list of port numbers (1..65535)") for p in item]
            elif key == "timeout":
                spec[key] = self.positive(item, dotted)
            elif key == "backend":
                if item not in BACKENDS:
                    raise self.fail(dotted, f"must be one of {', '.join(BACKENDS)}, got {item!r}")
                spec[key] = item
            elif key == "probe":
                spec[key] = self.probe(item, dotted)
        if "image" in spec and "version" in spec:
            raise self.fail(self.key(*where, "version"), "give image or version, not both")
        if kind == "service" and "image" not in spec:
            raise self.fail(self.key(*where, "image"), "a generic service needs an image")
        return spec

    def probe(self, value: Any, key: str) -> list[dict[str, Any]]:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            self.typed(item, dict, key, 'a table such as { tcp = true }, { http = "/health" } or { log = "ready" }')
            chosen = [k for k in _PROBES if k in item]
            if len(chosen) != 1:
                raise self.fail(key, f"name exactly one of {', '.join(_PROBES)} (a list of tables combines probes)")
            allowed = _PROBE_OPTIONS[chosen[0]]
            for option in item:
                if option not in allowed:
                    raise self.fail(f"{key}.{option}", f"unknown key; allowed with {chosen[0]}: {', '.join(allowed)}")
            kind = chosen[0]
            checked: dict[str, Any] = {}
            if kind == "tcp":
                port = item["tcp"]
                if not (port is True or (isinstance(port, int) and not isinstance(port, bool))):
                    raise self.fail(f"{key}.tcp", f"must be true or a container port, got {port!r}")
                checked["tcp"] = port
            elif kind == "http":
                checked["http"] = self.typed(item["http"], str, f"{key}.http", 'a path such as "/health"')
            elif kind == "log":
                checked["log"] = self.typed(item["log"], str, f"{key}.log", "a regular expression")
            else:
                cmd = item["command"]
                checked["command"] = shlex.split(cmd) if isinstance(cmd, str) else self.strings(cmd, f"{key}.command")
            for option in ("status", "port", "times", "exit_code"):
                if option in item:
                    checked[option] = self.typed(item[option], int, f"{key}.{option}", "an integer")
            out.append(checked)
        return out
