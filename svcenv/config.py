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
    image = "nginx:1.27"   # or build = "./web" (or { context = "./web", dockerfile = "...", args = {...} })
    ports = [80]
    probe = { http = "/" }  # or { tcp = true }, { log = "ready" }, { command = ["pg_isready"] }
    depends_on = ["postgres"]
    files = { "/etc/nginx/conf.d/app.conf" = "deploy/app.conf" }   # project paths, copied in
    volumes = { cache = "/var/cache/nginx" }                         # owned by the environment
    options = { shm_size = "64m" }                                   # svcenv.container.OPTIONS

``compose = "compose.yaml"`` (and ``compose_profiles = [...]``) adds a compose
file's services (see :mod:`svcenv.compose`).

In ``svcenv.toml`` the same keys sit at the top level (``reuse = …``,
``[services.postgres]``). Every value is checked: an error names the file, the
key and what is allowed, as a :class:`~svcenv.ConfigurationError`.

A *spec* is one service's configuration as a JSON-able dict (``name``, ``kind``
and the keys above); :func:`build_service` makes a descriptor of it and
:func:`spec_of` describes a descriptor as one (for state files and reuse hashes).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from .descriptors import KINDS, Service
from .errors import ConfigurationError
from .records import Spec, build_service, spec_of

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

_COMMON = (
    "kind",
    "image",
    "version",
    "env",
    "command",
    "probe",
    "depends_on",
    "timeout",
    "backend",
    "files",
    "volumes",
    "options",
)
_GENERIC = ("ports", "tmpfs", "scheme", "build")
"""Keys only a generic service takes: a kind knows its own ports and scheme, and runs its own image."""


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
    from ._config_check import Checker

    return Checker(path, prefix).project(table)
