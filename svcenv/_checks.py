"""Type checks of descriptor fields, the hashable mapping descriptors hold, and database URL parts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import unquote

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .descriptors import Service

__all__ = ["Frozen", "FrozenMap", "check_types", "database_credentials"]


_V_co = TypeVar("_V_co", covariant=True)


class Frozen(Mapping[str, _V_co], Generic[_V_co]):
    """An immutable, hashable mapping of names to hashable values (descriptors must hash)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, _V_co] | Sequence[tuple[str, _V_co]] | None = None) -> None:
        self._data = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: str) -> _V_co:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: {v!r}' for k, v in self._data.items())}}}"


class FrozenMap(Frozen[str]):
    """An immutable, hashable ``str -> str`` mapping."""

    __slots__ = ()


_SCALARS: dict[str, tuple[tuple[type, ...], str]] = {
    "image": ((str,), "an image name such as 'postgres:16'"),
    "scheme": ((str,), "a URL scheme such as 'http'"),
    "backend": ((str,), "'auto', 'docker', 'local' or 'external'"),
    "user": ((str,), "a string"),
    "dbname": ((str,), "a string"),
    "password": ((str,), "a string"),
    "heap": ((str,), "a JVM size such as '512m'"),
    "tuned": ((bool,), "True or False"),
    "cache": ((bool,), "True or False"),
    "one_shot": ((bool,), "True or False"),
    "timeout": ((int, float), "a number of seconds"),
}
_MAP_VALUES = (str, int, float, bool)


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not a number here (``True`` is no port and no timeout)."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _is_argv(value: object) -> bool:
    return isinstance(value, Sequence) and all(isinstance(item, str) for item in value)


def check_types(service: Service) -> None:
    """Reject values of the wrong type now, with the field's name, instead of failing later in a backend."""
    from .descriptors import Service

    if not isinstance(service.name, str):
        raise ConfigurationError(
            f"a service name must be a string, got {service.name!r} ({type(service.name).__name__})"
        )
    for f in fields(service):
        value = getattr(service, f.name)
        if f.name in _SCALARS and not (value is None and f.default is None):
            types, expected = _SCALARS[f.name]
            if not _is(value, types):
                raise service._wrong(f.name, expected, value)
    if isinstance(service.ports, (str, bytes)) or not isinstance(service.ports, Sequence):
        raise service._wrong("ports", "a sequence of port numbers, e.g. (5432,)", service.ports)
    for port in service.ports:
        if not _is(port, (int,)):
            raise service._wrong("ports", "a sequence of port numbers (int, 1..65535)", port)
    for name in ("env", "settings", "labels"):
        mapping = getattr(service, name, {})
        if not isinstance(mapping, Mapping):
            raise service._wrong(name, "a mapping of str to str", mapping)
        for key, item in mapping.items():
            if not isinstance(key, str) or not isinstance(item, _MAP_VALUES):
                raise service._wrong(f"{name}[{key!r}]", "a string (or a number or bool, given as text)", item)
    command = service.command
    if command is not None and not isinstance(command, str) and not _is_argv(command):
        raise service._wrong("command", "a sequence of strings (an argv)", command)
    entrypoint = service.entrypoint
    if entrypoint is not None and not isinstance(entrypoint, str) and not _is_argv(entrypoint):
        raise service._wrong("entrypoint", "a sequence of strings (an argv)", entrypoint)
    deps = (service.depends_on,) if isinstance(service.depends_on, (str, Service)) else service.depends_on
    if not isinstance(deps, Sequence) or not all(isinstance(d, (str, Service)) for d in deps):
        raise service._wrong("depends_on", "service names or descriptors", service.depends_on)
    if isinstance(service.tmpfs, str) or not all(isinstance(path, str) for path in service.tmpfs):
        raise service._wrong("tmpfs", "a sequence of paths", service.tmpfs)


def database_credentials(
    user: str | None, password: str | None, path: str, default_user: str, default_password: str, default_dbname: str
) -> dict[str, str]:
    """``user``/``password``/``dbname`` from a database server's URL (Postgres, MySQL).

    See :meth:`Service.url_credentials`.
    """
    if "/" in path:
        raise ValueError("has a path with more than a database name")
    dbname = unquote(path)
    if "/" in dbname:
        # A percent-encoded slash is part of the name; svcenv writes the name into URLs unencoded.
        raise ValueError(f"names the database {dbname!r}: a database name cannot contain '/' (written %2F)")
    return {
        "user": user or default_user,
        # Not the generated password: it means nothing to a server svcenv did not set up.
        "password": password if password is not None else default_password,
        "dbname": dbname or default_dbname,
    }
