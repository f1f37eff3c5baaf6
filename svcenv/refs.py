"""References from one service to another's address, filled in when that one is ready.

::

    postgres, redis = Postgres(), Redis()
    api = Service(
        "api",
        build="./app",
        ports=(8000,),
        env={"DATABASE_URL": postgres.internal_url, "REDIS_URL": redis.internal_url},
    )
    Environment(postgres, redis, api)

``postgres.internal_url`` is a :class:`Ref`: a ``str`` (so it type-checks wherever
``env`` and ``command`` take strings, and composes: ``f"{redis.internal_url}/2"``)
holding the placeholder ``${svcenv:postgres:internal_url}``. A service that refers to
another depends on it: it starts once that one is ready, and the placeholder is
replaced by the ready handle's value (generated passwords included). On Docker the
``internal_*`` addresses are the service name and container port on the
environment's network; elsewhere they are the host address, so one descriptor
works on every backend. An unknown service or attribute is a
:class:`~svcenv.ConfigurationError` when the environment is made.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .descriptors import Service
    from .handles import ServiceHandle

__all__ = ["ATTRIBUTES", "Ref", "referenced", "resolve_refs"]

ATTRIBUTES = ("internal_url", "internal_host", "internal_port", "url", "host", "port", "user", "password", "dbname")
"""What a reference may name: a handle attribute of the referred-to service (``user``, ``password`` and
``dbname``: of a database kind; ``password`` also of Redis)."""
_PLACEHOLDER = re.compile(r"\$\{svcenv:([^:}]+):([^}]*)\}")


class Ref(str):
    """A placeholder for ``attribute`` of the service named ``service``; see the module docstring."""

    service: str
    attribute: str

    def __new__(cls, service: str, attribute: str) -> Ref:
        if attribute not in ATTRIBUTES:
            raise ConfigurationError(f"a reference to {service!r} names {attribute!r}; it may name {ATTRIBUTES}")
        ref = super().__new__(cls, f"${{svcenv:{service}:{attribute}}}")
        ref.service = service
        ref.attribute = attribute
        return ref


def _strings(service: Service) -> Iterator[str]:
    yield from service.env.values()
    yield from service.command or ()


def referenced(service: Service) -> set[str]:
    """The names of the services ``service`` refers to (in its ``env`` values and ``command``)."""
    names: set[str] = set()
    for text in _strings(service):
        for match in _PLACEHOLDER.finditer(text):
            name, attribute = match.groups()
            if attribute not in ATTRIBUTES:
                raise ConfigurationError(
                    f"service {service.name!r} refers to {attribute!r} of {name!r}; a reference may name {ATTRIBUTES}"
                )
            names.add(name)
    return names


def resolve_refs(service: Service, handles: Mapping[str, ServiceHandle], *, in_network: bool = True) -> Service:
    """``service`` with every reference replaced by the value of the ready handle it names.

    ``in_network=False`` (the service does not run on the environment's network, e.g. a local
    command): ``internal_*`` references get the host addresses, the ones it can reach.
    """
    if not referenced(service):
        return service

    def fill(text: str) -> str:
        def value(match: re.Match[str]) -> str:
            name, attribute = match.groups()
            if not in_network:
                attribute = attribute.removeprefix("internal_")
            found = getattr(handles[name], attribute, None)
            if found is None:
                raise ConfigurationError(
                    f"service {service.name!r} refers to {attribute!r} of {name!r}, which has none"
                )
            return str(found)

        return _PLACEHOLDER.sub(value, text)

    command = tuple(fill(arg) for arg in service.command) if service.command is not None else None
    return replace(service, env={key: fill(value) for key, value in service.env.items()}, command=command)
