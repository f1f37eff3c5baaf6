"""How an :class:`~svcenv.Environment` starts, cancels and tears down its services.

Every service starts on a worker thread of its own once its dependencies are
ready; the first failure cancels the rest, and teardown removes whatever was
created, in parallel and bounded in time. :class:`Environment` mixes in
:class:`_Scheduler`, which works on the environment's own state.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, TypeVar

from ._timing import ServiceTiming
from ._util import DaemonJob, env_prefix, said, scrub, secret_name
from .backends import choose, requested_backend
from .backends.base import LABEL_ENVIRONMENT, LABEL_KEEP, LABEL_SERVICE, Backend, Instance
from .descriptors import Service
from .errors import (
    BackendUnavailable,
    BuildFailed,
    ConfigurationError,
    ProbeFailed,
    ServiceExited,
    ServiceFailure,
    SvcenvError,
)
from .handles import ServiceHandle
from .probes import wait_until_ready
from .refs import referenced, resolve_refs

if TYPE_CHECKING:
    from ._resolved import Resolved
    from .reuse import Reuse
    from .state import Record

log = logging.getLogger("svcenv")
LOG_TAIL_LINES = 25
_T = TypeVar("_T")


class _Cancelled(Exception):
    """A peer failed, or the owner interrupted the start: stop quietly."""


class _Failure(Exception):
    """Carries one ServiceFailure out of a start worker."""


class _Scheduler:
    """The start, cancel and teardown engine of :class:`~svcenv.Environment` (which sets this state)."""

    id: str
    labels: dict[str, str]
    teardown_timeout: float
    _services: dict[str, Service]
    _backend_choice: str | Backend | None
    _timeout: float | None
    _backends: dict[str, Backend]
    _instances: dict[str, Instance]
    _handles: dict[str, ServiceHandle]
    _timings: dict[str, ServiceTiming]
    _lock: threading.Lock
    _cancel: threading.Event
    _ready: dict[str, threading.Event]
    _failed: set[str]
    _workers: list[Future[None]]
    _t0: float
    _reuse: Reuse | None
    _keep: bool
    _kept: set[str]
    _outcomes: dict[str, str]
    _entries: dict[str, Record]
    _joined: dict[str, Callable[[], None]]
    """Reused services connected to this environment's network -> what disconnects them."""
    _secrets: set[str]
    """Every secret a service of this environment was given (scrubbed from errors and log tails)."""

    def _entry(self, name: str, reuse_hash: str | None = None) -> Record:
        raise NotImplementedError  # Environment's

    def _learn(self, resolved: Resolved) -> None:
        """Remember ``resolved``'s secrets: its own, and the values of its secret-named variables.

        A value that is also what the service shows openly (its name, user or database) is no
        secret: hiding every ``postgres`` of a log because the password is ``postgres`` would only
        make the log unreadable.
        """
        service = resolved.service
        public = {service.name, *(str(getattr(service, attr, "") or "") for attr in ("user", "dbname"))}
        found = {*resolved.secrets.values(), *(v for k, v in resolved.env.items() if secret_name(k))}
        with self._lock:
            self._secrets.update(value for value in found if value and value not in public)

    def _scrub(self, text: str) -> str:
        with self._lock:
            known = set(self._secrets)
        return scrub(text, known)

    def _start_one(self, service: Service) -> None:
        name = service.name
        try:
            if needs(service):  # what does not depend on them (its image build) runs while they start
                self._backends[name].prepare(service, self.labels)
            for dep in needs(service):
                while not self._ready[dep].wait(0.05):
                    if self._cancel.is_set() or dep in self._failed:
                        raise _Cancelled
            if self._cancel.is_set():
                raise _Cancelled
            with self._lock:
                service = resolve_refs(service, self._handles, in_network=self._backends[name].name == "docker")
            if self._reuse is not None and self._backends[name].reusable and not service.one_shot:
                self._reuse_or_start(service, self._reuse)
            elif service.one_shot:  # a job runs again each time and is removed at stop, kept or not
                self._start_new(service, {k: v for k, v in self.labels.items() if k != LABEL_KEEP})
            else:
                self._start_new(service, self.labels)
            self._ready[name].set()
        except BaseException:
            self._failed.add(name)
            raise

    def _reuse_or_start(self, service: Service, reuse: Reuse) -> None:
        """Attach to the recorded service of this configuration, or start one and record it."""
        name = service.name
        backend = self._backends[name]
        digest = reuse.digest(service)
        try:
            with reuse.lock(digest, self._cancel):
                begin = self._now()
                found = reuse.find(service, backend, digest, self._cancel)
                if found is not None:
                    handle, entry = found
                    self._learn(handle._resolved)
                    # On this environment's network too, by its name: the services started here reach it.
                    leave = backend.join(handle._instance, name, self.labels)
                    with self._lock:
                        if leave is not None:
                            self._joined[name] = leave
                        self._instances[name] = handle._instance  # stop() leaves an attached service
                        self._handles[name] = handle
                        self._entries[name] = entry
                        self._outcomes[name] = "attached"
                        self._kept.add(name)
                        now = self._now()
                        self._timings[name] = ServiceTiming(name, backend.name, begin, now, now, now, 1)
                    return
                self._start_new(service, {**self.labels, **reuse.labels(digest)})
                entry = self._entry(name, digest)
                reuse.record(entry, digest)
                with self._lock:
                    self._entries[name] = entry
                    self._outcomes[name] = "kept"
                    self._kept.add(name)
        except InterruptedError:
            raise _Cancelled from None

    def _start_new(self, service: Service, labels: Mapping[str, str]) -> None:
        """Create and start ``service`` with ``labels``, and wait until it is ready."""
        name = service.name
        instance: Instance | None = None
        resolved = None
        backend = self._backends[name]
        try:
            resolved = service.resolve()
            self._learn(resolved)
            begin = self._now()
            instance = backend.create(resolved, labels)
            with self._lock:
                self._instances[name] = instance
            created = self._now()
            if self._cancel.is_set():
                raise _Cancelled
            instance.start()
            started = self._now()
            handle = service.handle_class()(resolved, instance)
            timeout = service.timeout or self._timeout or service.effective_timeout
            try:
                attempts = wait_until_ready(handle, service.readiness_probe, timeout, self._cancel)
            except ProbeFailed as exc:
                if self._cancel.is_set():
                    raise _Cancelled from None
                why = (
                    f"did not complete within {timeout:g}s (a one-shot job must exit with status 0)"
                    if service.one_shot
                    else f"not ready within {timeout:g}s; last probe error: {exc}"
                )
                raise _Failure(self._failure(service, resolved.image, instance, why)) from exc
            if self._cancel.is_set():
                raise _Cancelled
            with self._lock:
                self._handles[name] = handle
                self._outcomes[name] = "completed" if service.one_shot else "started"
                self._timings[name] = ServiceTiming(name, backend.name, begin, created, started, self._now(), attempts)
        except (_Cancelled, _Failure):
            self._stop_if_cancelled(instance)
            raise
        except BuildFailed as exc:  # already one failure, with the build log's tail
            self._stop_if_cancelled(instance)
            built = exc.failures[0]
            built = dataclasses.replace(built, reason=self._scrub(built.reason), log_tail=self._scrub(built.log_tail))
            raise _Failure(built) from exc
        except ServiceExited as exc:
            self._stop_if_cancelled(instance)
            raise _Failure(self._failure(service, resolved.image if resolved else None, instance, str(exc))) from exc
        except Exception as exc:
            self._stop_if_cancelled(instance)
            image = resolved.image if resolved else None
            told = said(exc)
            reason = (
                told
                if isinstance(exc, SvcenvError)
                else (f"{'could not be created' if instance is None else 'could not be started'}: {told}")
            )
            raise _Failure(self._failure(service, image, instance, reason)) from exc

    def _stop_if_cancelled(self, instance: Instance | None) -> None:
        if instance is not None and self._cancel.is_set():
            # The teardown may already have passed this instance; removing twice is safe.
            _quietly(instance.stop)

    def _failure(self, service: Service, image: str | None, instance: Instance | None, reason: str) -> ServiceFailure:
        tail = ""
        if instance is not None:
            tail = _quietly(lambda: instance.logs(LOG_TAIL_LINES)) or ""
        backend = self._backends[service.name].name
        # Only containers run an image; naming one for a local or external service would mislead.
        image = image if backend == "docker" else None
        return ServiceFailure(service.name, backend, image, self._scrub(reason), self._scrub(tail))

    def keep(self) -> None:
        """Leave every service running when this environment stops, and when this process dies.

        For services a later run attaches to (``up --detach``, ``--svcenv-keep``).
        ``keep=True`` at construction does the same and also labels the containers
        ``svcenv.keep=true``, so ``prune`` spares them. Raises
        :class:`~svcenv.ConfigurationError` if a service's backend cannot let it
        outlive this process (the local backend's servers end with it).
        """
        for name, backend in self._backends.items():
            if not backend.outlives_owner:
                raise ConfigurationError(
                    f"service {name!r} runs on the {backend.name} backend, whose servers end with this process"
                )
        with self._lock:
            lasting = [name for name in self._handles if not self._services[name].one_shot]
            self._kept.update(lasting)
            for name in lasting:
                if name not in self._entries:  # reused ones say how they came
                    self._outcomes[name] = "kept"
        for backend in set(self._backends.values()):
            backend.disown()

    def _check_outlives(self) -> None:
        """``keep`` and ``reuse`` need services that outlive this process: say which cannot, before starting."""
        if not (self._keep or self._reuse):
            return
        for name, backend in self._backends.items():
            if backend.outlives_owner:
                continue
            why = "--detach/keep" if self._keep else "reuse"
            message = (
                f"service {name!r} would run on the {backend.name} backend, whose servers end with the process "
                f"that started them; {why} needs docker (or external)"
            )
            choice = self._backend_choice if not isinstance(self._backend_choice, Backend) else backend.name
            if requested_backend(self._services[name], choice) == backend.name:
                raise ConfigurationError(message + f". Run without {why}, or with backend docker.")
            raise BackendUnavailable(message + ", and no Docker engine answers here")

    def _backend_for_all(self) -> None:
        made: dict[str, Backend] = {}
        for name, service in self._services.items():
            if isinstance(self._backend_choice, Backend):
                self._backends[name] = self._backend_choice
            else:
                self._backends[name] = choose(service, requested_backend(service, self._backend_choice), made)
        for name, backend in self._backends.items():
            reason = backend.supports(self._services[name])
            if reason is not None:
                reason = reason.removeprefix(f"{backend.name}: ")
                raise BackendUnavailable(f"service {name!r} cannot run on the {backend.name} backend: {reason}")
        for backend in set(made.values()) - set(self._backends.values()):
            backend.close()  # tried by `auto` but not chosen

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _remove_all(self, deadline: float) -> tuple[list[str], BaseException | None]:
        """Remove every instance, then sweep by label, all by ``deadline``: what could not be removed, and a Ctrl-C.

        Each removal runs in a daemon thread, so an engine that does not answer holds
        neither the deadline nor the interpreter's exit. A backend whose part failed
        is not closed: its crash cleanup (the Docker reaper) stays armed and removes
        what is left when this process ends.
        """
        # Let start workers notice the cancel (they remove what they are creating).
        interrupted = _wait_shielded(lambda: wait(self._workers, timeout=_left(deadline)), None)
        with self._lock:
            instances = [(n, i) for n, i in self._instances.items() if n not in self._kept]
            joined, self._joined = self._joined, {}
        stops = {name: DaemonJob(instance.stop, f"svcenv-stop-{name}") for name, instance in instances}
        # Reused services stay, but leave this environment's network (else it could not go).
        for name, leave in joined.items():
            stops[f"{name} (leaving the network)"] = DaemonJob(leave, f"svcenv-leave-{name}")
        interrupted = _wait_shielded(lambda: [job.wait(deadline) for job in stops.values()], interrupted)
        unremoved: dict[Backend, list[str]] = {}
        for name, job in stops.items():
            if not job.done or job.error is not None:
                why = f"not removed within {self.teardown_timeout:g}s" if not job.done else said(job.error)
                unremoved.setdefault(self._backends[name.split(" ")[0]], []).append(f"{name}: {why}")
        # A sweep by label also catches what was created but never registered, or what stop() left.
        backends = set(self._backends.values())
        sweeps = {b: DaemonJob(functools.partial(self._sweep, b), f"svcenv-sweep-{b.name}") for b in backends}
        interrupted = _wait_shielded(lambda: [job.wait(deadline) for job in sweeps.values()], interrupted)
        problems: list[str] = []
        for backend, job in sweeps.items():
            if job.done and job.error is None:
                _quietly(backend.close)  # everything it ran is gone (or kept)
                continue
            why = f"not done within {self.teardown_timeout:g}s" if not job.done else said(job.error)
            problems += [*unremoved.get(backend, []), f"{backend.name} cleanup: {why}"]
        return problems, interrupted

    def _sweep(self, backend: Backend) -> None:
        names = [n for n, b in self._backends.items() if b is backend]
        kept = [n for n in names if n in self._kept]
        if not kept:
            backend.cleanup({LABEL_ENVIRONMENT: self.id})
        else:  # kept services outlive the environment: sweep the others one by one
            for name in set(names) - set(kept):
                backend.cleanup({LABEL_ENVIRONMENT: self.id, LABEL_SERVICE: name})


def needs(service: Service) -> tuple[str, ...]:
    """What ``service`` waits for: its ``depends_on`` and the services it refers to (see :mod:`svcenv.refs`)."""
    return (*service.depends_on, *sorted(referenced(service) - set(service.depends_on)))


def _check_dependencies(services: Mapping[str, Service]) -> None:
    for service in services.values():
        for dep in needs(service):
            if dep not in services:
                how = "depends on" if dep in service.depends_on else "refers to"
                raise ConfigurationError(
                    f"service {service.name!r} {how} {dep!r}, which is not in the environment "
                    f"(it has {sorted(services)})"
                )
    import graphlib

    try:
        graphlib.TopologicalSorter({name: needs(s) for name, s in services.items()}).prepare()
    except graphlib.CycleError as error:
        # graphlib walks from a dependency to its dependents; the message reads "a depends on b -> ...".
        cycle: list[str] = list(reversed(error.args[1]))
        raise ConfigurationError("dependency cycle: " + " -> ".join(cycle)) from None


def _check_prefixes(services: Mapping[str, Service]) -> None:
    """Two names that make the same variables (``cache-a``, ``cache_a``, ``cache.a``) would overwrite each other."""
    seen: dict[str, str] = {}
    for name in services:
        prefix = env_prefix(name)
        if prefix in seen:
            raise ConfigurationError(
                f"services {seen[prefix]!r} and {name!r} would both set {prefix}_HOST/_PORT/_URL; rename one"
            )
        seen[prefix] = name


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _wait_shielded(fn: Callable[[], object], interrupted: BaseException | None) -> BaseException | None:
    """Run a bounded wait; a Ctrl-C during it is remembered, and the wait resumes once."""
    for _ in range(2):
        try:
            fn()
            return interrupted
        except KeyboardInterrupt as exc:
            interrupted = interrupted or exc
    return interrupted


def _quietly(fn: Callable[[], _T]) -> _T | None:
    try:
        return fn()
    except Exception:
        log.debug("ignored error during cleanup", exc_info=True)
        return None


def _labels_from_env() -> dict[str, str]:
    """``SVCENV_LABELS=key=value,key=value`` as a dict; a malformed item is a ConfigurationError."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in os.environ.get("SVCENV_LABELS", "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"SVCENV_LABELS: {item!r} is not key=value (items are separated by commas)")
        labels[key.strip()] = value.strip()
    return labels
