"""Compose files as svcenv services: the common subset of the Compose Specification.

    from svcenv import Environment
    from svcenv.compose import load_compose

    notices: list[str] = []
    with Environment(*load_compose("compose.yaml", ["api"], notices=notices)) as env:
        ...

:func:`parse_compose` reads the file into frozen :class:`ComposeService` values
(every supported key normalised: the stable part); :func:`load_compose` then picks
services as ``docker compose up`` would (profiles, dependencies) and maps them to
descriptors: ``Postgres``, ``Redis``, ``Elasticsearch`` and ``MySQL`` for their
official images (or ``x-svcenv: {kind: ...}``), else a generic ``Service``.

- Variables: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
  ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``, ``$$``; from
  ``environ`` (default ``os.environ``) over a ``.env`` file beside the Compose file.
- Host ports are not taken: svcenv publishes every container port (``ports`` and
  ``expose``) on a free 127.0.0.1 port. ``restart`` is ignored (a notice says so).
- A healthcheck's test becomes a :class:`~svcenv.probes.Command` probe, checked after
  the kind's own probe (``AllOf``); ``start_period + retries * (interval + timeout)``,
  how long Docker would wait before calling it unhealthy, extends the service's
  deadline (it never shortens svcenv's default).
- ``build``, ``entrypoint`` and ``labels`` become the descriptor fields of those names;
  named volumes become ``volumes``, bind mounts ``files`` (copied in before the start),
  ``shm_size`` and ``mem_limit`` container ``options``. A service that others wait for
  with ``service_completed_successfully`` becomes a one-shot job
  (``Service(one_shot=True)``): it must exit with status 0 before they start.

Every key svcenv does not read, and every bad value, raises :class:`ComposeError`
naming the file and the key path (``services.api.privileged``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from ..descriptors import Service
from ..errors import ComposeError
from ._map import image_kind, to_descriptors
from ._model import (
    ComposeBuild,
    ComposeDependency,
    ComposeFile,
    ComposeHealthcheck,
    ComposePort,
    ComposeService,
    ComposeVolume,
    SvcenvExtension,
)
from ._parse import parse_compose, select_services
from ._values import parse_bytes, parse_duration

__all__ = [
    "ComposeBuild",
    "ComposeDependency",
    "ComposeError",
    "ComposeFile",
    "ComposeHealthcheck",
    "ComposePort",
    "ComposeService",
    "ComposeVolume",
    "SvcenvExtension",
    "compose_services",
    "image_kind",
    "load_compose",
    "parse_bytes",
    "parse_compose",
    "parse_duration",
    "select_services",
    "to_descriptors",
]


def load_compose(
    path: str | os.PathLike[str],
    services: Sequence[str] | None = None,
    profiles: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    *,
    notices: list[str] | None = None,
) -> list[Service]:
    """The svcenv descriptors of a Compose file's services, in file order.

    ``services`` names the services to run (their dependencies are added; default:
    every service whose profiles allow it); ``profiles`` are the active profiles
    (``"*"``: all); ``environ`` holds the variables (default: ``os.environ``), over
    the ``.env`` file beside the Compose file. What svcenv ignores or changes
    (``restart``, host ports, unset variables) is appended to ``notices`` as one line
    each. Raises :class:`ComposeError` naming the file and the key path.
    """
    file = parse_compose(path, environ)
    chosen = select_services(file, services, profiles)
    found = list(file.notices)
    descriptors = to_descriptors(file, chosen, found)
    if notices is not None:
        notices.extend(found)
    return descriptors


def compose_services(
    path: str | os.PathLike[str], services: Iterable[str] | None = None, profiles: Iterable[str] = ()
) -> list[Service]:
    """:func:`load_compose`, its notices logged as warnings (for :meth:`Environment.from_compose`)."""
    notices: list[str] = []
    chosen = None if services is None else list(services)
    descriptors = load_compose(path, chosen, list(profiles), notices=notices)
    for notice in notices:
        logging.getLogger("svcenv").warning("%s: %s", os.fspath(path), notice)
    return descriptors
