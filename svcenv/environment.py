"""``Environment``: start services in parallel, wait until ready, always tear down."""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from ._follow import LogFollower, LogSink
from ._scheduler import (
    _Cancelled,
    _check_dependencies,
    _check_prefixes,
    _Failure,
    _labels_from_env,
    _Scheduler,
)
from ._timing import ServiceTiming
from ._util import owner_identity, process_start
from ._version import __version__
from .backends.base import (
    LABEL_ENVIRONMENT,
    LABEL_KEEP,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_VERSION,
    Backend,
    Instance,
)
from .descriptors import Elasticsearch, Postgres, Redis, Service
from .errors import ConfigurationError, ServiceFailure, ServiceNotFound, ServiceStartError
from .handles import ElasticsearchHandle, PostgresHandle, RedisHandle, ServiceHandle, attached_handle

if TYPE_CHECKING:
    from typing import Self

    from .reuse import Reuse
    from .state import Record

__all__ = ["Environment", "ServiceTiming", "TeardownWarning"]


class TeardownWarning(UserWarning):
    """Something could not be removed within the teardown bound (it names what, and how to remove it).

    A ``UserWarning``, shown by default: what is left may still run.
    """


class Environment(_Scheduler):
    """A set of services that start together and are torn down together.

    ::

        with Environment(Postgres(), Redis()) as env:
            env[postgres].connect()

    Services start in parallel; one with ``depends_on`` starts when its
    dependencies are ready. If any service fails, everything is removed and one
    :class:`~svcenv.ServiceStartError` reports every failure. Teardown runs in
    parallel, is bounded by ``teardown_timeout``, is idempotent, and runs on every
    exit path, including an exception in the body and Ctrl-C during start.

    ``backend`` chooses where services run: ``"auto"`` (the default, also via
    ``SVCENV_BACKEND``: external if ``SVCENV_<NAME>_URL`` is set, else docker if an
    engine answers, else local binaries), ``"docker"``, ``"local"``, ``"external"``
    or a :class:`~svcenv.backends.Backend`; a descriptor's own ``backend`` wins. ``timeout`` replaces
    the per-kind default readiness deadline of services that set none.
    ``labels`` go on every container (and local server record), after those in
    ``SVCENV_LABELS`` (``key=value,key=value``, e.g. a CI job id).
    """

    def __init__(
        self,
        *services: Service,
        backend: str | Backend | None = None,
        timeout: float | None = None,
        teardown_timeout: float = 30.0,
        labels: Mapping[str, str] | None = None,
        reuse: Reuse | bool = False,
        keep: bool = False,
    ) -> None:
        if timeout is not None and not 0 < timeout < math.inf:
            raise ConfigurationError(f"Environment timeout must be a finite number of seconds > 0, got {timeout!r}")
        self.id = secrets.token_hex(6)
        self._services: dict[str, Service] = {}
        for service in services:
            if not isinstance(service, Service):
                raise ConfigurationError(f"Environment takes service descriptors, got {service!r}")
            if service.name in self._services:
                raise ConfigurationError(
                    f"two services are named {service.name!r}: give one another name, e.g. "
                    f"{type(service).__name__}(name='{service.name}-2')"
                )
            self._services[service.name] = service
        _check_dependencies(self._services)
        _check_prefixes(self._services)
        self._backend_choice = backend
        self._timeout = timeout
        self.teardown_timeout = teardown_timeout
        self.labels = {
            **_labels_from_env(),
            **(labels or {}),
            LABEL_ENVIRONMENT: self.id,
            LABEL_OWNER_PID: str(os.getpid()),
            LABEL_OWNER_HOST: owner_identity(),
            LABEL_OWNER_START: process_start(os.getpid()) or "",
            LABEL_VERSION: __version__,
        }
        if reuse is True:
            from .reuse import Reuse

            reuse = Reuse()
        self._reuse = reuse or None
        self._keep = keep
        if keep:
            self.labels[LABEL_KEEP] = "true"
        self._kept: set[str] = set()
        self._outcomes: dict[str, str] = {}
        self._followers: list[LogFollower] = []
        self._joined: dict[str, Callable[[], None]] = {}
        self._secrets: set[str] = set()
        self._entries: dict[str, Record] = {}
        self._backends: dict[str, Backend] = {}
        self._instances: dict[str, Instance] = {}
        self._handles: dict[str, ServiceHandle] = {}
        self._timings: dict[str, ServiceTiming] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._stopped = threading.Event()
        self._ready = {name: threading.Event() for name in self._services}
        self._failed: set[str] = set()
        self._workers: list[Future[None]] = []
        self._state = "new"
        self._attached = False
        self.teardown_s: float | None = None
        """Seconds the teardown took (set when :meth:`stop` has run, also after a failed start)."""
        self.teardown_problems: tuple[str, ...] = ()
        """What the last :meth:`stop` could not remove (empty: everything it owned is gone)."""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every service and wait until each is ready. Returns the environment."""
        if self._state != "new":
            raise RuntimeError(f"environment {self.id} was already started (state: {self._state})")
        self._state = "starting"
        self._t0 = time.monotonic()
        try:
            self._backend_for_all()
            self._check_outlives()
            executor = ThreadPoolExecutor(max_workers=max(1, len(self._services)), thread_name_prefix="svcenv")
            try:
                self._workers = [executor.submit(self._start_one, s) for s in self._services.values()]
                _done, pending = wait(self._workers, return_when=FIRST_EXCEPTION)
                if pending:
                    self._cancel.set()
                    wait(pending)
            finally:
                executor.shutdown(wait=False)
            failures = [f.exception() for f in self._workers]
            reported = [e.args[0] for e in failures if isinstance(e, _Failure)]
            unexpected = [e for e in failures if e is not None and not isinstance(e, (_Failure, _Cancelled))]
            if unexpected:
                raise unexpected[0]
            if reported:
                raise ServiceStartError(reported)
            if self._cancel.is_set():  # stop() ran while this start was under way
                why = "start cancelled: stop() was called while starting"
                raise ServiceStartError([ServiceFailure(n, b.name, None, why) for n, b in self._backends.items()])
        except BaseException as exc:
            self._cancel.set()
            try:
                self.stop()
            finally:
                if isinstance(exc, ServiceStartError) and self.teardown_problems:
                    exc.teardown_incomplete(self.teardown_problems)
            raise
        if self._keep:
            self.keep()
        self._state = "running"
        return self

    def stop(self) -> None:
        """Remove every service, in parallel and bounded in time. Safe to call again.

        A call while another thread's ``stop()`` runs waits for that one to end.
        """
        with self._lock:
            if self._state in ("stopped", "stopping"):
                running = self._state == "stopping"
            else:
                running = None
                self._state = "stopping"
        if running is not None:
            if running:
                self._stopped.wait(self.teardown_timeout + 5)
            return
        if self._attached:
            self._handles.clear()
            self._state = "stopped"
            self._stopped.set()
            return
        self._cancel.set()
        began = time.monotonic()
        deadline = began + self.teardown_timeout
        for follower in self._followers:  # before the services go: what they said last is copied
            follower.stop(timeout=min(2.0, self.teardown_timeout / 4))
        problems: list[str] = []
        try:
            problems, interrupted = self._remove_all(deadline)
        finally:
            self._handles.clear()
            self.teardown_problems = tuple(problems)
            self.teardown_s = time.monotonic() - began
            self._state = "stopped"
            self._stopped.set()
        if problems:
            warnings.warn(
                f"svcenv environment {self.id}: teardown incomplete: " + "; ".join(problems) + ". What is left "
                f"carries the label svcenv.environment={self.id}; `python -m svcenv prune` removes it",
                TeardownWarning,
                stacklevel=2,
            )
        if interrupted is not None:
            raise interrupted

    def follow_logs(self, service: str | Service, into: LogSink, *, tail: int | None = 0) -> LogFollower:
        """Copy ``service``'s log into a file, a logger, a text stream or a function, line by line as it
        is written, until the environment stops (or :meth:`LogFollower.stop`).

        ``tail``: how much of what was written before to copy first (0: nothing, None: all of it).
        """
        follower = LogFollower(self[service], into, tail)
        with self._lock:
            self._followers.append(follower)
        return follower

    def plan(self) -> dict[str, tuple[str, bool]]:
        """Where each service would run, without starting anything: name -> (backend, outlives its owner).

        Raises :class:`~svcenv.BackendUnavailable` as :meth:`start` would.
        """
        if self._state != "new":
            return {n: (b.name, b.outlives_owner) for n, b in self._backends.items()}
        try:
            self._backend_for_all()
            return {n: (b.name, b.outlives_owner) for n, b in self._backends.items()}
        finally:
            for backend in set(self._backends.values()):
                backend.close()
            self._backends.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- access -----------------------------------------------------------------------------

    @overload
    def __getitem__(self, key: Postgres) -> PostgresHandle: ...
    @overload
    def __getitem__(self, key: Redis) -> RedisHandle: ...
    @overload
    def __getitem__(self, key: Elasticsearch) -> ElasticsearchHandle: ...
    @overload
    def __getitem__(self, key: Service | str) -> ServiceHandle: ...

    def __getitem__(self, key: Service | str) -> ServiceHandle:
        """The running service, looked up by descriptor or by name."""
        name = key.name if isinstance(key, Service) else key
        if self._state != "running":
            raise ServiceNotFound(f"environment {self.id} is not running (state: {self._state})")
        try:
            return self._handles[name]
        except KeyError:
            raise ServiceNotFound(
                f"no service named {name!r} in this environment; it has {sorted(self._handles)}"
            ) from None

    def __contains__(self, key: object) -> bool:
        name = key.name if isinstance(key, Service) else key
        return name in self._handles

    def __iter__(self) -> Iterator[ServiceHandle]:
        """The running services, in declaration order."""
        return iter([self._handles[n] for n in self._services if n in self._handles])

    @property
    def services(self) -> Mapping[str, Service]:
        """The descriptors, by name, in declaration order."""
        return dict(self._services)

    @property
    def timings(self) -> Mapping[str, ServiceTiming]:
        """Per-service start timings of the last ``start()``, in declaration order."""
        return {n: self._timings[n] for n in self._services if n in self._timings}

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    def env_vars(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """Variables that reach every service.

        ``<NAME>_HOST``/``_PORT``/``_URL`` per service, plus the kinds'
        conventional variables (``DATABASE_URL`` and ``PG*``, ``REDIS_URL``,
        ``ELASTICSEARCH_URL``) from the service of each kind that keeps the
        kind's default name, else the first of that kind. ``only`` limits them to
        the services of those names.
        """
        variables: dict[str, str] = {}
        primary: dict[type[Service], ServiceHandle] = {}
        names = None if only is None else set(only)
        for handle in self:
            if names is not None and handle.name not in names:
                continue
            variables.update(handle.env_vars())
            kind = type(handle.descriptor)
            default_name = getattr(kind, "__dataclass_fields__", {}).get("name")
            is_default = default_name is not None and default_name.default == handle.name
            if kind not in primary or is_default:
                primary[kind] = handle
        for handle in primary.values():
            variables.update(handle.conventional_env_vars())
        return variables

    def scrub(self, text: str) -> str:
        """``text`` with every secret this environment knows as ``***`` (also URL-quoted or escaped forms).

        For what svcenv does not print itself but a user may: a service's log, an exception, a
        report. Secrets are the passwords svcenv generated or was given, and the values of
        secret-named variables (``*PASSWORD*``, ``*TOKEN*``, ``*SECRET*``, ``*API_KEY*``, ...).
        """
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:  # an attached environment learns them here
            self._learn(handle._resolved)
        return self._scrub(text)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able description of the running services, secrets included, for :meth:`attach`.

        Whoever stores it must protect it as a secret (svcenv writes such files with mode 0600).
        """
        from .recorded import snapshot_of

        services = {handle.name: snapshot_of(handle) for handle in self}
        return {"id": self.id, "owner_pid": os.getpid(), "version": __version__, "services": services}

    @classmethod
    def from_compose(
        cls,
        path: str | os.PathLike[str],
        services: Iterable[str] | None = None,
        profiles: Iterable[str] = (),
        **options: Any,
    ) -> Environment:
        """An environment of a compose file's services (``services``: these and their dependencies).

        ``options`` are :class:`Environment`'s (``backend``, ``timeout``, ``labels``, ...). What
        the file says that svcenv ignores or changes is logged as a warning (see
        :func:`svcenv.compose.load_compose`).
        """
        from .compose import compose_services

        return cls(*compose_services(path, services, profiles), **options)

    @classmethod
    def attach(cls, snapshot: Mapping[str, Any], *services: Service) -> Environment:
        """An environment for services another process runs (described by its ``snapshot()``).

        ``services`` are the same descriptors the owner used; ``stop()`` on the
        attached environment leaves the services running.
        """
        env = cls(*services)
        env.id = str(snapshot["id"])
        env.labels[LABEL_ENVIRONMENT] = env.id
        for service in services:
            entry = snapshot["services"].get(service.name)
            if entry is None:
                raise ServiceNotFound(f"environment {env.id} runs {sorted(snapshot['services'])}, not {service.name!r}")
            env._handles[service.name] = attached_handle(service, entry)
        env._state = "running"
        env._attached = True
        return env

    @property
    def outcomes(self) -> Mapping[str, str]:
        """How each service came, after ``start()``: ``started`` (removed at stop), ``kept`` (started and
        left running: ``keep`` or recorded for reuse), ``attached`` (a reused service that already ran) or
        ``completed`` (a one-shot job that exited with status 0; removed at stop)."""
        return {n: self._outcomes[n] for n in self._services if n in self._outcomes}

    def records(self) -> dict[str, Record]:
        """What a state file keeps of each running service (an *entry*; see :mod:`svcenv.state`), secrets included."""
        return {handle.name: self._entries.get(handle.name) or self._entry(handle.name) for handle in self}

    def _entry(self, name: str, reuse_hash: str | None = None) -> Record:
        from .recorded import entry_of, snapshot_of

        handle = self._handles[name]
        return entry_of(handle, snapshot_of(handle), self.id, reuse_hash)

    @property
    def attached(self) -> bool:
        """True if another process owns these services (see :meth:`attach`)."""
        return self._attached

    def __repr__(self) -> str:
        return f"<Environment {self.id} {self._state} services={list(self._services)}>"
