"""Services recorded in state files: the entry of one service, attaching to it, and asking how it is.

An *entry* (see :mod:`svcenv.state`) is what a record keeps of one running
service: its spec, its snapshot, the environment id it was started in, its reuse
hash and, for the local backend, its log path. :meth:`Environment.records`
makes them; the CLI and the pytest plugin read them back with
:func:`attach_entries`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .backends.base import LABEL_ENVIRONMENT, LABEL_REUSE_HASH, Backend
from .errors import ProbeFailed
from .probes import TCP, AllOf, Command, LogLine, Probe
from .records import build_service, spec_of
from .state import Record

if TYPE_CHECKING:
    from .descriptors import Service
    from .environment import Environment
    from .handles import ServiceHandle

__all__ = ["attach_entries", "attached_probe", "container_state", "entry_of", "health", "remove_entry", "snapshot_of"]


def snapshot_of(handle: ServiceHandle) -> dict[str, Any]:
    """One service's part of :meth:`Environment.snapshot` (secrets included)."""
    return {
        "backend": handle.backend,
        "id": handle.id,
        "host": handle.host,
        "image": handle.image,
        "ports": {str(k): v for k, v in handle.ports.items()},
        "internal_host": handle.internal_host,
        "internal_ports": {str(k): v for k, v in handle._instance.internal_ports.items()},
        "secrets": dict(handle._resolved.secrets),
        "credentials": dict(handle._instance.credentials),
        "log_path": _log_path(handle),
        "direct_host": handle._instance.direct_host,
        "direct_via": handle._instance.direct_via,
    }


def _log_path(handle: ServiceHandle) -> str | None:
    path = getattr(handle._instance, "log_path", None)  # the local backend's server log
    return str(path) if path is not None else None


def entry_of(handle: ServiceHandle, snapshot: Mapping[str, Any], env_id: str, reuse_hash: str | None) -> Record:
    """The entry of one running service (``snapshot``: its part of :meth:`Environment.snapshot`)."""
    return {
        "name": handle.name,
        "spec": spec_of(handle.descriptor),
        "snapshot": dict(snapshot),
        "env_id": env_id,
        "reuse_hash": reuse_hash,
        "log_path": _log_path(handle),
    }


def attach_entries(entries: Mapping[str, Record], services: Sequence[Service] = ()) -> Environment:
    """An attached environment for recorded services (``services``: descriptors to use instead of specs)."""
    from .environment import Environment

    given = {s.name: s for s in services}
    descriptors = [replace(given.get(name) or build_service(e["spec"]), depends_on=()) for name, e in entries.items()]
    snapshot = {"id": secrets.token_hex(6), "services": {name: e["snapshot"] for name, e in entries.items()}}
    return Environment.attach(snapshot, *descriptors)


def attached_probe(service: Service) -> Probe | None:
    """The readiness probe without parts that need the owner's instance (log lines, exec)."""
    probe = service.readiness_probe
    every = probe.probes if isinstance(probe, AllOf) else (probe,)
    parts = [p for p in every if not isinstance(p, (LogLine, Command))]
    if not parts:
        return TCP() if service.ports else None
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def container_state(backend: Backend, container_id: str) -> tuple[str, dict[str, str]]:
    """(status, labels) of a container, asked through the docker ``backend``; status ``missing`` if there is none."""
    return backend.attach({"backend": "docker", "id": container_id}).state()


def health(handle: ServiceHandle, backend: Backend | None) -> str:
    """``healthy``, ``unhealthy: why`` or ``gone: why``, checked now (one probe attempt).

    ``backend``: the backend object for ``handle.backend`` (``None``: do not ask it whether the service runs).
    """
    if backend is not None and handle.backend in ("docker", "local"):
        snapshot = {"backend": handle.backend, "id": handle.id, "host": handle.host, "ports": dict(handle.ports)}
        instance = backend.attach(snapshot)
        if handle.backend == "docker":
            status, _ = instance.state()
            if status != "running":
                return f"gone: container {handle.id[:12]} is {status}"
        elif instance.exit_status() is not None:
            return f"gone: process {handle.id} is not running"
    probe = attached_probe(handle.descriptor)
    if probe is None:
        return "healthy"
    try:
        probe.check(handle)
    except ProbeFailed as exc:
        return f"unhealthy: {exc}"
    except Exception as exc:
        return f"unhealthy: {' '.join(str(exc).split()) or type(exc).__name__}"
    return "healthy"


def remove_entry(backend: Backend, entry: Mapping[str, Any]) -> int:
    """Remove a recorded docker service's container(s) with their volumes, through the docker ``backend``."""
    if entry["snapshot"].get("backend") != "docker":
        return 0
    labels = {LABEL_ENVIRONMENT: str(entry["env_id"])}
    if entry.get("reuse_hash"):
        labels[LABEL_REUSE_HASH] = str(entry["reuse_hash"])
    return backend.remove_labelled(labels)
