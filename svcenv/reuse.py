"""Services that outlive a run: reuse across runs, and attaching to recorded services.

With reuse, each service is found by a *configuration hash* (:func:`config_hash`:
its image, env, command, ports and settings, the svcenv version and the
project; never a generated password). Under an ``fcntl`` lock per hash,
:meth:`Reuser.acquire` attaches to the running container recorded for that
hash (checked: still running, same hash label, answers its probe) or starts a
fresh one and records it, secrets included, in a 0600 state file. So two
concurrent runs never both start one, and never attach to a half-started one. A
changed configuration has another hash, hence a fresh service.

Reused containers carry ``svcenv.keep=true`` (the crash reaper and ``prune``
spare them), ``svcenv.reuse-hash=<hash>`` and ``svcenv.state-dir=<dir>`` (where
their record lives). They run on Docker only: local servers end with their
owner. Services of the external backend are not reused (they already run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._util import FALSY, TRUTHY, in_ci
from ._version import __version__
from .backends import Backend, get_backend, requested_backend
from .backends.base import LABEL_ENVIRONMENT, LABEL_OWNER_PID, LABEL_VERSION
from .config import build_service, spec_of
from .descriptors import Postgres, Service
from .environment import Environment
from .errors import BackendUnavailable, ConfigurationError, ProbeFailed, ServiceStartError
from .handles import ServiceHandle
from .probes import TCP, AllOf, Command, LogLine, Probe, wait_until_ready
from .state import Record, StateDir, project_key

__all__ = [
    "LABEL_KEEP",
    "LABEL_PROJECT",
    "LABEL_REUSE_HASH",
    "LABEL_STATE_DIR",
    "Acquired",
    "Reuser",
    "attach_entries",
    "config_hash",
    "entries_from",
    "health",
    "prewarm",
    "reuse_wanted",
]

LABEL_KEEP = "svcenv.keep"
LABEL_REUSE_HASH = "svcenv.reuse-hash"
LABEL_STATE_DIR = "svcenv.state-dir"
LABEL_PROJECT = "svcenv.project"
ATTACH_PROBE_TIMEOUT = 5.0
"""Seconds a recorded service gets to answer its probe before it counts as broken."""

StateCallback = Callable[[str, str, str], None]
"""``(service, state, detail)``: ``waiting``, ``starting``, ``attached``, ``ready``, ``failed``."""


def reuse_wanted(
    *,
    asked: bool = False,
    refused: bool = False,
    forced: bool = False,
    configured: bool = False,
    notice: Callable[[str], None] = lambda message: None,
) -> bool:
    """Whether to reuse services: the one rule for the CLI and the pytest plugin.

    ``asked``/``refused``/``forced``: the runner's options (``--reuse``,
    ``--no-reuse``, ``--force-reuse``); ``configured``: ``reuse = true`` in the
    project's configuration. ``SVCENV_REUSE`` (``1``/``0``/``force``) wins over
    the configuration. Under ``CI=true`` reuse is refused (``notice`` says so)
    unless forced: CI runs must start from nothing.
    """
    setting = os.environ.get("SVCENV_REUSE", "").strip().lower()
    forced = forced or setting == "force"
    if refused:
        return False
    wanted = asked or forced or setting in TRUTHY or (configured and setting not in FALSY)
    if wanted and not forced and in_ci():
        notice("CI=true: starting fresh services, not reusing (--force-reuse or SVCENV_REUSE=force reuses)")
        return False
    return wanted


def config_hash(service: Service, project_dir: Path) -> str:
    """What identifies a reusable server: everything that shapes it, not how long one waits for it."""
    spec = spec_of(service)
    for key in ("timeout", "depends_on", "backend", "probe"):
        spec.pop(key, None)
    material = {"spec": spec, "svcenv": __version__, "project": project_key(project_dir), "backend": "docker"}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


# -- entries: what a record keeps of one running service -----------------------------------------


def _log_path(handle: ServiceHandle) -> str | None:
    path = getattr(handle._instance, "log_path", None)  # the local backend's server log
    return str(path) if path is not None else None


def entries_from(env: Environment, reuse_hash: str | None = None) -> dict[str, Record]:
    """Entries for every running service of ``env`` (an environment this process started)."""
    snapshot = env.snapshot()["services"]
    return {
        handle.name: {
            "name": handle.name,
            "spec": spec_of(handle.descriptor),
            "snapshot": snapshot[handle.name],
            "env_id": env.id,
            "reuse_hash": reuse_hash,
            "log_path": _log_path(handle),
        }
        for handle in env
    }


def attach_entries(entries: Mapping[str, Record], services: Sequence[Service] = ()) -> Environment:
    """An attached environment for recorded services (``services``: descriptors to use instead of specs)."""
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


def prewarm(services: Sequence[Service], backend: str | None) -> None:
    """Build a missing pre-initialised Postgres image now, from a seed carrying only svcenv's basic labels.

    Docker commit keeps the seed's labels in the image, and every later container
    inherits them: the seed must not carry ``svcenv.keep`` or a state dir.
    """
    wanted = [s for s in services if isinstance(s, Postgres) and requested_backend(s, backend) in ("auto", "docker")]
    if not wanted:
        return
    from .backends.external import configured_url

    docker_backend = get_backend("docker")
    try:
        if docker_backend.supports(wanted[0]) is not None:
            return  # auto will not pick docker
        labels = {
            LABEL_ENVIRONMENT: secrets.token_hex(6),
            LABEL_OWNER_PID: str(os.getpid()),
            LABEL_VERSION: __version__,
        }
        for service in wanted:
            if requested_backend(service, backend) == "auto" and configured_url(service.name):
                continue
            docker_backend.prewarm(service.resolve(), labels)
    finally:
        docker_backend.close()


# -- acquiring services, reused where possible --------------------------------------------------


class _Cancelled(Exception):
    pass


@dataclass
class Acquired:
    """What :meth:`Reuser.acquire` got: an attached environment over all services, and how each came."""

    env: Environment
    entries: dict[str, Record]
    outcomes: dict[str, str]
    """Per service: ``attached``, ``started`` (fresh, now recorded for reuse) or ``external`` (not reused)."""
    seconds: dict[str, float]
    owned: list[Environment] = field(default_factory=list)
    """Environments of services that are not reused (external ones): stop them at the end."""

    def stop(self) -> None:
        """Stop what is not reused; reused services stay up."""
        for env in self.owned:
            env.stop()
        self.env.stop()


class Reuser:
    """Attaches to reused services of a project, or starts and records them."""

    def __init__(
        self,
        store: StateDir,
        project_dir: Path,
        *,
        backend: str | None = None,
        timeout: float | None = None,
        labels: Mapping[str, str] | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self.store = store
        self.project_dir = project_dir
        self.backend = backend
        self.timeout = timeout
        self.labels = dict(labels or {})
        self.on_state = on_state or (lambda name, state, detail: None)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._inflight: list[Environment] = []
        self._owned: list[Environment] = []
        self._docker_backend: Backend | None = None

    def _docker(self) -> Backend:
        with self._lock:
            if self._docker_backend is None:
                self._docker_backend = get_backend("docker")
            return self._docker_backend

    def acquire(self, services: Sequence[Service]) -> Acquired:
        """Every service, running: attached if recorded and healthy, else started and recorded.

        On failure or interruption, what this call started and did not record is
        removed; services already recorded stay (they are reused services).
        """
        t0 = time.monotonic()
        ready = {s.name: threading.Event() for s in services}
        failed: set[str] = set()
        results: dict[str, tuple[str, dict[str, Record]]] = {}
        seconds: dict[str, float] = {}

        def one(service: Service) -> None:
            try:
                for dep in service.depends_on:
                    if dep in ready:
                        self.on_state(service.name, "waiting", f"for {dep}")
                        while not ready[dep].wait(0.05):
                            if self._cancel.is_set() or dep in failed:
                                raise _Cancelled
                results[service.name] = self._one(service)
                seconds[service.name] = time.monotonic() - t0
                ready[service.name].set()
            except BaseException:
                failed.add(service.name)
                raise

        executor = ThreadPoolExecutor(max_workers=max(1, len(services)), thread_name_prefix="svcenv-reuse")
        futures: list[Future[None]] = [executor.submit(one, s) for s in services]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    break
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            real = [e for e in errors if not isinstance(e, _Cancelled)]
            if real:
                starts = [e for e in real if isinstance(e, ServiceStartError)]
                if starts and len(starts) == len(real):
                    raise ServiceStartError([f for e in starts for f in e.failures])
                raise real[0]  # type: ignore[misc]
        except BaseException:
            self._abort(futures)
            raise
        finally:
            executor.shutdown(wait=False)
        entries: dict[str, Record] = {}
        outcomes: dict[str, str] = {}
        for service in services:
            outcomes[service.name], got = results[service.name]
            entries.update(got)
        env = attach_entries(entries, services)
        return Acquired(env, entries, outcomes, seconds, list(self._owned))

    def _abort(self, futures: Sequence[Future[None]]) -> None:
        """Cancel: stop what is starting, wait for the workers, stop what is not reused."""
        self._cancel.set()
        for _ in range(2):  # a second Ctrl-C must not leave containers behind
            try:
                with self._lock:
                    inflight = list(self._inflight)
                for env in inflight:
                    with contextlib.suppress(Exception):
                        env.stop()
                wait(futures, timeout=60)
                for env in self._owned:
                    with contextlib.suppress(Exception):
                        env.stop()
                return
            except KeyboardInterrupt:
                continue

    def _start(self, service: Service, backend: str, labels: Mapping[str, str]) -> Environment:
        """Start one service in its own environment, cancellable from :meth:`_abort`."""
        env = Environment(replace(service, depends_on=()), backend=backend, timeout=self.timeout, labels=labels)
        with self._lock:
            if self._cancel.is_set():
                raise _Cancelled
            self._inflight.append(env)
        try:
            env.start()
        except RuntimeError:
            if self._cancel.is_set():
                raise _Cancelled from None
            raise
        finally:
            with self._lock:
                self._inflight.remove(env)
        if self._cancel.is_set():
            env.stop()
            raise _Cancelled
        return env

    def _one(self, service: Service) -> tuple[str, dict[str, Record]]:
        from .backends.external import configured_url

        name = service.name
        requested = requested_backend(service, self.backend)
        if requested == "external" or (requested == "auto" and configured_url(name)):
            self.on_state(name, "starting", "external")
            env = self._start(service, "external", self.labels)
            self._owned.append(env)
            self.on_state(name, "ready", "external")
            return "external", entries_from(env)
        if requested == "local":
            raise ConfigurationError(
                f"service {name!r}: reuse needs the docker backend; servers of the local backend end with "
                "their owner. Run without reuse, or with --backend docker."
            )
        digest = config_hash(service, self.project_dir)
        self.on_state(name, "checking", "")
        try:
            with self.store.lock(f"reuse-{digest}", self._cancel):
                return self._locked_one(service, requested, digest)
        except InterruptedError:
            raise _Cancelled from None

    def _locked_one(self, service: Service, requested: str, digest: str) -> tuple[str, dict[str, Record]]:
        name = service.name
        record = self.store.read(self.store.reuse_file(digest))
        if record is not None:
            attached = self._attach(record, service, digest)
            if attached is not None:
                self.on_state(name, "attached", "")
                return "attached", attached
            self._discard(record)
        self.on_state(name, "starting", "")
        if requested == "auto":
            probe_backend = get_backend("docker")
            try:
                reason = probe_backend.supports(service)
            finally:
                probe_backend.close()
            if reason is not None:
                raise BackendUnavailable(f"service {name!r}: reuse needs the docker backend: {reason}")
        prewarm([service], "docker")
        labels = {
            **self.labels,
            LABEL_KEEP: "true",
            LABEL_REUSE_HASH: digest,
            LABEL_STATE_DIR: str(self.store.root),
            LABEL_PROJECT: project_key(self.project_dir),
        }
        env = self._start(service, "docker", labels)
        env.disown()  # the crash reaper must not remove it; svcenv.keep=true says the same
        entries = entries_from(env, digest)
        self.store.write(
            self.store.reuse_file(digest),
            {
                "hash": digest,
                "project": project_key(self.project_dir),
                "project_dir": str(self.project_dir),
                "created": time.time(),
                "pid": os.getpid(),
                "service": entries[name],
            },
        )
        self.on_state(name, "ready", "")
        return "started", entries

    def _attach(self, record: Record, service: Service, digest: str) -> dict[str, Record] | None:
        """The recorded service's entry if it still runs this configuration and answers; else None."""
        entry = record.get("service") or {}
        try:
            status, labels = container_state(self._docker(), str(entry["snapshot"]["id"]))
        except Exception:
            return None
        if status != "running" or labels.get(LABEL_REUSE_HASH) != digest:
            return None
        try:
            env = attach_entries({service.name: entry}, [service])
            probe = attached_probe(service)
            if probe is not None:
                wait_until_ready(env[service.name], probe, ATTACH_PROBE_TIMEOUT, self._cancel)
        except Exception:
            return None
        return {service.name: dict(entry)}

    def _discard(self, record: Record) -> None:
        """Remove a recorded service that is gone or broken, and its record."""
        entry = record.get("service") or {}
        with contextlib.suppress(Exception):
            remove_entry(self._docker(), entry)
        self.store.delete(self.store.reuse_file(str(record.get("hash"))))

    def close(self) -> None:
        """Release the docker backend (and its client)."""
        if self._docker_backend is not None:
            with contextlib.suppress(Exception):
                self._docker_backend.close()
            self._docker_backend = None
