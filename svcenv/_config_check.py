"""Checking one configuration file's table: every error names the file, the dotted key and what is allowed."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    _PROBE_OPTIONS,
    _PROBES,
    _TOP,
    BACKENDS,
    ProjectConfig,
    _kind_specs,
    _own_fields,
    allowed_keys,
    compose_specs,
)
from .descriptors import KINDS
from .errors import ConfigurationError
from .records import Spec, build_service

__all__ = ["Checker"]


class Checker:
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
            elif key == "build":  # a path, or a table as compose's; paths are the file's directory's
                table = (
                    {"context": item} if isinstance(item, str) else self.typed(item, dict, dotted, "a path or table")
                )
                self.only(table, ("context", "dockerfile", "args", "target"), *where, key)
                spec[key] = {
                    **table,
                    "context": str(self.path.parent / self.typed(table.get("context", "."), str, dotted, "a path")),
                }
            elif key == "files":  # container path -> a file of the project
                given = self.string_map(item, dotted)
                spec[key] = {target: {"path": str(self.path.parent / source)} for target, source in given.items()}
            elif key == "volumes":
                spec[key] = self.string_map(item, dotted)
            elif key == "options":
                spec[key] = dict(self.typed(item, dict, dotted, "a table of container options"))
        if "image" in spec and "version" in spec:
            raise self.fail(self.key(*where, "version"), "give image or version, not both")
        if kind == "service" and "image" not in spec and "build" not in spec:
            raise self.fail(self.key(*where, "image"), "a generic service needs an image (or build)")
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
