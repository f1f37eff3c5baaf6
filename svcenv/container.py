"""What a descriptor may say about its container: an image to build, files, named volumes, options.

These are values, checked when the descriptor is made (a wrong one is a
:class:`~svcenv.ConfigurationError` naming the service), and hashable like the
rest of the descriptor. The Docker backend acts on them (:mod:`svcenv.backends.docker`);
the local backend refuses a service that sets them; the external backend, which
starts nothing, ignores them.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ._checks import Frozen, FrozenMap
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .descriptors import Service

__all__ = ["OPTIONS", "BuildSpec", "Frozen", "build_repository", "check_container", "read_files"]


@dataclass(frozen=True)
class BuildSpec:
    """How to build a service's image: a ``docker build`` of ``context``.

    ``dockerfile`` is relative to the context (default ``Dockerfile``) or absolute;
    ``args`` are build arguments (``--build-arg``); ``target`` is the stage to build.
    The image is tagged ``svcenv-build/<service>:<hash>``, the hash covering the
    context's files (those ``.dockerignore`` leaves), the Dockerfile, ``args`` and
    ``target``: an unchanged context is not built again.
    """

    context: Path
    dockerfile: str | None = None
    args: Mapping[str, str] = field(default_factory=FrozenMap)
    target: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, (str, Path)):
            raise ConfigurationError(f"BuildSpec: context must be a path, got {self.context!r}")
        for name in ("dockerfile", "target"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (str, Path)) and str(value)):
                raise ConfigurationError(f"BuildSpec: {name} must be a non-empty string, got {value!r}")
        if not isinstance(self.args, Mapping) or not all(isinstance(k, str) for k in self.args):
            raise ConfigurationError(f"BuildSpec: args must be a mapping of str to str, got {self.args!r}")
        object.__setattr__(self, "context", Path(self.context))
        if self.dockerfile is not None:
            object.__setattr__(self, "dockerfile", str(self.dockerfile))
        object.__setattr__(self, "args", FrozenMap({k: str(v) for k, v in self.args.items()}))


def build_repository(service_name: str) -> str:
    """The repository a service's built image is tagged in: ``svcenv-build/<name>`` (a valid reference)."""
    return "svcenv-build/" + (re.sub(r"[^a-z0-9]+", "-", service_name).strip("-") or "service")


def check_container(service: Service) -> None:
    """Check and freeze the descriptor's ``build``, ``files``, ``volumes`` and ``options`` (in place)."""
    set_ = object.__setattr__
    set_(service, "build", check_build(service, service.build))
    if service.build is not None and service.image:
        raise ConfigurationError(f"service {service.name!r}: give image or build, not both")
    set_(service, "files", check_files(service, service.files))
    set_(service, "volumes", check_volumes(service, service.volumes))
    set_(service, "options", check_options(service, service.options))


def check_build(service: Service, value: object) -> BuildSpec | None:
    """``build=`` as a :class:`BuildSpec`: a path, a BuildSpec or its fields as a mapping."""
    if value is None or isinstance(value, BuildSpec):
        return value
    if isinstance(value, (str, Path)):
        return BuildSpec(Path(value))
    if isinstance(value, Mapping):
        try:
            return BuildSpec(**{k: v for k, v in value.items() if k != "digest"})
        except TypeError as exc:
            raise service._wrong("build", "a path or BuildSpec(context, dockerfile, args, target)", value) from exc
    raise service._wrong("build", "a path or a svcenv.BuildSpec", value)


def _absolute(service: Service, what: str, path: object) -> str:
    if not isinstance(path, str) or not PurePosixPath(path).is_absolute():
        raise service._wrong(what, "an absolute container path", path)
    return path


def check_files(service: Service, value: object) -> Frozen[Path | bytes | str]:
    """``files=``: container path -> a local Path, bytes or text."""
    if not isinstance(value, Mapping):
        raise service._wrong("files", "a mapping of container path to Path, bytes or str", value)
    files: dict[str, Path | bytes | str] = {}
    for path, source in value.items():
        if not isinstance(source, (Path, bytes, str)):
            raise service._wrong(f"files[{path!r}]", "a Path, bytes or str", source)
        files[_absolute(service, "files", path)] = source
    return Frozen(files)


def read_files(service: Service) -> dict[str, tuple[bytes, int]]:
    """The descriptor's ``files`` as container path -> (content, mode); a local Path is read now."""
    out: dict[str, tuple[bytes, int]] = {}
    for path, source in service.files.items():
        if isinstance(source, Path):
            try:
                executable = source.stat().st_mode & stat.S_IXUSR
                out[path] = (source.read_bytes(), 0o755 if executable else 0o644)
            except OSError as exc:
                raise ConfigurationError(
                    f"service {service.name!r}: files[{path!r}]: cannot read {source}: {exc}"
                ) from None
        else:
            out[path] = (source.encode() if isinstance(source, str) else source, 0o644)
    return out


_VOLUME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def check_volumes(service: Service, value: object) -> FrozenMap:
    """``volumes=``: volume name -> container path (``:ro`` at the end mounts it read-only)."""
    if not isinstance(value, Mapping):
        raise service._wrong("volumes", "a mapping of volume name to container path", value)
    for name, path in value.items():
        if not isinstance(name, str) or not _VOLUME.match(name):
            raise service._wrong("volumes", "volume names of letters, digits, '_', '.', '-'", name)
        _absolute(service, f"volumes[{name!r}]", path.removesuffix(":ro") if isinstance(path, str) else path)
    return FrozenMap(dict(value))


# -- container options -----------------------------------------------------------------------


def _text(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise TypeError("a non-empty string")
    return value


_SIZE = re.compile(r"[0-9]+[bkmgBKMG]?")


def _size(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not _SIZE.fullmatch(str(value)):
        raise TypeError("a size: bytes (int) or a string such as '512m' or '1g'")
    return value


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise TypeError("True or False")
    return value


def _count(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _cpus(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise TypeError("a number of CPUs > 0, such as 1.5")
    return value


def _strings(value: object) -> object:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return tuple(value)


def _user(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise TypeError("a user name, uid or 'uid:gid'")
    return value


def _text_map(value: object) -> object:
    if not isinstance(value, Mapping) or not all(isinstance(v, (str, int)) for v in value.values()):
        raise TypeError("a mapping of names to strings")
    return FrozenMap({str(k): str(v) for k, v in value.items()})


def _ulimits(value: object) -> object:
    if not isinstance(value, Mapping):
        raise TypeError("a mapping of limit name to a number or (soft, hard), e.g. {'nofile': 65536}")
    limits: dict[str, Any] = {}
    for name, limit in value.items():
        pair = (limit, limit) if isinstance(limit, int) else tuple(limit) if isinstance(limit, Sequence) else ()
        if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair):
            raise TypeError("a mapping of limit name to a number or (soft, hard), e.g. {'nofile': 65536}")
        limits[str(name)] = pair
    return Frozen(limits)


_HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period")


def _healthcheck(value: object) -> object:
    expected = "a mapping with test (a shell command, or ['CMD', ...]) and interval/timeout/start_period (s), retries"
    if not isinstance(value, Mapping) or "test" not in value or set(value) - set(_HEALTHCHECK_KEYS):
        raise TypeError(expected)
    test = value["test"] if isinstance(value["test"], str) else _strings(value["test"])
    check: dict[str, Any] = {"test": test}
    for key in ("interval", "timeout", "start_period"):
        if key in value:
            check[key] = _cpus(value[key])
    if "retries" in value:
        check["retries"] = _count(value["retries"])
    return Frozen(check)


OPTIONS: Mapping[str, Callable[[object], object]] = {
    "cap_add": _strings,
    "cap_drop": _strings,
    "cpus": _cpus,
    "extra_hosts": _text_map,
    "healthcheck": _healthcheck,
    "hostname": _text,
    "init": _flag,
    "mem_limit": _size,
    "memswap_limit": _size,
    "pids_limit": _count,
    "platform": _text,
    "privileged": _flag,
    "read_only": _flag,
    "security_opt": _strings,
    "shm_size": _size,
    "stop_signal": _text,
    "sysctls": _text_map,
    "ulimits": _ulimits,
    "user": _user,
    "working_dir": _text,
}
"""The container options a descriptor may set (``options={"shm_size": "1g"}``), each with its check.

They mean what the same arguments of docker-py's ``containers.create`` mean, except
``cpus`` (a number of CPUs), ``ulimits`` (``{"nofile": 65536}`` or ``{"nofile": (soft, hard)}``)
and ``healthcheck`` (``{"test": "pg_isready", "interval": 0.5}``, times in seconds).
"""


def check_options(service: Service, value: object) -> Frozen[object]:
    """``options=``, checked against :data:`OPTIONS` (an unknown name is a ConfigurationError listing them)."""
    if not isinstance(value, Mapping):
        raise service._wrong("options", "a mapping of container option to value", value)
    checked: dict[str, object] = {}
    for name, item in value.items():
        check = OPTIONS.get(name)
        if check is None:
            raise ConfigurationError(
                f"service {service.name!r}: unknown container option {name!r}; known options: {', '.join(OPTIONS)}"
            )
        try:
            checked[name] = check(item)
        except TypeError as exc:
            raise service._wrong(f"options[{name!r}]", str(exc), item) from None
    return Frozen(checked)


# -- in specs (state files, reuse hashes): JSON-able, and back -------------------------------

CONTAINER_FIELDS = ("build", "files", "volumes", "options")
"""The descriptor fields this module checks."""


def _plain(value: object) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def spec_value(service: Service, name: str) -> Any:
    """Field ``name`` of :data:`CONTAINER_FIELDS` as JSON-able data (None when unset or empty).

    What a service is built from or given is hashed in (a context's digest, a file's
    sha256), so a changed context or file makes another spec.
    """
    import base64
    import hashlib

    value = getattr(service, name)
    if not value:
        return None
    if isinstance(value, BuildSpec):
        spec = {"context": str(value.context), "dockerfile": value.dockerfile, "args": dict(value.args)}
        try:
            from .backends.docker_build import context_digest

            return {**spec, "target": value.target, "digest": context_digest(service.name, value)}
        except (ConfigurationError, ImportError, OSError):
            return {**spec, "target": value.target}
    if name == "files":
        files: dict[str, dict[str, str]] = {}
        for path, source in value.items():
            if isinstance(source, Path):
                content = source.read_bytes() if source.is_file() else b""
                files[path] = {"path": str(source), "sha256": hashlib.sha256(content).hexdigest()}
            else:
                raw = source.encode() if isinstance(source, str) else source
                files[path] = {"base64": base64.b64encode(raw).decode()}
        return files
    return _plain(value)


def from_spec_value(name: str, value: Any) -> Any:
    """The field value :func:`spec_value` described (the descriptor checks it again)."""
    import base64

    if name == "files" and isinstance(value, Mapping):
        return {
            path: Path(item["path"]) if "path" in item else base64.b64decode(item["base64"])
            for path, item in value.items()
        }
    return value
