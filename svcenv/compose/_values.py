"""Small value readers shared by the Compose parser: errors with a key path, strings, argvs, durations, sizes."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._checks import FrozenMap
from ..errors import ComposeError

__all__ = ["Ctx", "Scope", "parse_bytes", "parse_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTES = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_BYTE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


@dataclass(frozen=True)
class Ctx:
    """The file being read: every error names it and the key path (``services.api.ports[0]``)."""

    file: Path

    @property
    def directory(self) -> Path:
        """The file's directory: relative paths in the file start here."""
        return self.file.parent

    def error(self, key: str, message: str) -> ComposeError:
        """A :class:`ComposeError` for ``key`` of this file."""
        return ComposeError(f"{self.file}: {key}: {message}")

    def wrong(self, key: str, expected: str, value: object) -> ComposeError:
        """The error for a value of the wrong type or form."""
        return self.error(key, f"expected {expected}, got {value!r}")

    # -- readers -------------------------------------------------------------------------------

    def mapping(self, key: str, value: object, *, allow_none: bool = True) -> Mapping[str, object]:
        """``value`` as a mapping with string keys (None: empty)."""
        if value is None and allow_none:
            return {}
        if not isinstance(value, Mapping):
            raise self.wrong(key, "a mapping", value)
        for k in value:
            if not isinstance(k, str):
                raise self.error(f"{key}.{k}", f"keys must be strings, got {k!r}")
        return value

    def keys(self, key: str, value: Mapping[str, object], supported: Sequence[str]) -> None:
        """Raise for the first key of ``value`` that is not ``supported`` (``x-*`` extensions are ignored)."""
        for k in value:
            if k not in supported and not k.startswith("x-"):
                raise self.error(
                    f"{key}.{k}" if key else k, f"not supported by svcenv (supported: {', '.join(supported)})"
                )

    def string(self, key: str, value: object) -> str:
        """A scalar as text (numbers are written as text; bools and None are refused)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.wrong(key, "a string", value)
        return str(value)

    def integer(self, key: str, value: object, *, minimum: int = 0) -> int:
        """An integer (or a string of digits, as interpolation leaves them) of at least ``minimum``."""
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.wrong(key, f"an integer >= {minimum}", value)
        return value

    def boolean(self, key: str, value: object) -> bool:
        """true/false (also the strings "true"/"false", as interpolation leaves them)."""
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.wrong(key, "true or false", value)
        return value

    def strings(self, key: str, value: object) -> tuple[str, ...]:
        """A string or a list of strings, as a tuple."""
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            raise self.wrong(key, "a string or a list of strings", value)
        return tuple(self.string(f"{key}[{i}]", item) for i, item in enumerate(value))

    def argv(self, key: str, value: object) -> tuple[str, ...] | None:
        """A command: a string (split like a shell splits words, never run through one) or a list."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                raise self.error(key, f"cannot split {value!r} into words: {exc}") from None
        if not isinstance(value, list):
            raise self.wrong(key, "a string or a list of strings", value)
        return tuple(self.string(f"{key}[{i}]", item) for i, item in enumerate(value))

    def string_map(self, key: str, value: object, lookup: Mapping[str, str] | None = None) -> FrozenMap:
        """``KEY=VALUE`` items or a mapping (environment, labels, build args).

        A key without a value takes it from ``lookup`` (left out when ``lookup`` lacks it);
        without ``lookup`` it means an empty string.
        """
        pairs: dict[str, str] = {}
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.string(f"{key}[{i}]", item)
                name, eq, given = text.partition("=")
                if not name:
                    raise self.wrong(f"{key}[{i}]", "KEY=VALUE or KEY", item)
                self._put(pairs, name, given if eq else None, lookup)
            return FrozenMap(pairs)
        for name, item in self.mapping(key, value).items():
            if item is None:
                self._put(pairs, name, None, lookup)
            elif isinstance(item, bool):
                pairs[name] = "true" if item else "false"
            else:
                pairs[name] = self.string(f"{key}.{name}", item)
        return FrozenMap(pairs)

    @staticmethod
    def _put(pairs: dict[str, str], name: str, value: str | None, lookup: Mapping[str, str] | None) -> None:
        if value is not None:
            pairs[name] = value
        elif lookup is None:
            pairs[name] = ""
        elif name in lookup:
            pairs[name] = lookup[name]

    def duration(self, key: str, value: object) -> float:
        """A Compose duration (``"1m30s"``, ``"500ms"``, ``"2h"``) in seconds."""
        if not isinstance(value, str):
            raise self.wrong(key, 'a duration such as "30s", "1m30s" or "500ms"', value)
        seconds = parse_duration(value)
        if seconds is None:
            raise self.error(
                key, f'{value!r} is not a duration (write e.g. "30s", "1m30s", "500ms"; units h m s ms us)'
            )
        return seconds

    def size(self, key: str, value: object) -> int:
        """A byte size (``1g``, ``512m``, ``64MB`` or a number of bytes) in bytes."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        size = parse_bytes(value) if isinstance(value, str) else None
        if size is None:
            raise self.error(key, f"{value!r} is not a size (write e.g. 1g, 512m, 64k or a number of bytes)")
        return size

    def path(self, text: str) -> str:
        """A host path from the file: ``~`` expanded, relative to the file's directory, absolute."""
        return str((self.directory / Path(text).expanduser()).resolve())


@dataclass(frozen=True)
class Scope:
    """What a service's values may refer to: the variables and the declared volumes."""

    ctx: Ctx
    lookup: Mapping[str, str]
    volumes: tuple[str, ...]


def parse_duration(text: str) -> float | None:
    """Seconds in a Go/Compose duration (``"1m30s"``, ``"1.5h"``, ``"0"``); None if it is not one."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if text else None


def parse_bytes(text: str) -> int | None:
    """Bytes in a Docker size (``"1g"``, ``"512m"``, ``"1.5GB"``, ``"100"``: 1024-based); None if it is not one."""
    match = _BYTES.match(text.strip())
    if not match:
        return None
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _BYTE_UNITS[unit])
