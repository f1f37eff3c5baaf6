"""The interface every backend implements: where a service runs."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..descriptors import Resolved, Service

LABEL_ENVIRONMENT = "svcenv.environment"
LABEL_OWNER_PID = "svcenv.owner-pid"
LABEL_OWNER_HOST = "svcenv.owner-host"
"""``<boot id>/<pid namespace inode>`` of the owner: where its pid means something (see ``owner_identity``)."""
LABEL_OWNER_START = "svcenv.owner-start"
"""The owner's start time (kernel ticks): a later process with the same pid is not the owner."""
LABEL_VERSION = "svcenv.version"
LABEL_SERVICE = "svcenv.service"
LABEL_KEEP = "svcenv.keep"
"""``true``: the service outlives its environment (kept, detached or reused); reapers and sweeps spare it."""
LABEL_REUSE_HASH = "svcenv.reuse-hash"
LABEL_STATE_DIR = "svcenv.state-dir"
LABEL_PROJECT = "svcenv.project"


FOLLOW_POLL = 0.2
"""Seconds between reads of a log that is followed by polling."""


class Instance(ABC):
    """One service as a backend runs it. Created by :meth:`Backend.create`."""

    backend: str
    id: str
    host: str
    ports: Mapping[int, int]
    """Container (or service) port -> port to connect to on :attr:`host`."""
    credentials: Mapping[str, str] = {}
    """Connection settings the backend knows better than the descriptor (an external URL's user, password, ...)."""
    direct_host: str | None = None
    """An address where each container port is reachable as itself, bypassing the engine's port proxy,
    when this host routes there straight (a local Linux engine's bridge); else None. Only svcenv's own
    clients (``connect()``, ``client()``) use it: URLs and variables keep :attr:`host` and :attr:`ports`."""
    direct_via: str | None = None
    """The interface this host reaches :attr:`direct_host` over (checked again by whoever attaches)."""

    def direct_address(self, port: int) -> str | None:
        """:attr:`direct_host` if something answers a TCP connect to ``port`` there now, else None.

        A removed container's address answers nothing: a connect there would hang until ARP gives
        up (seconds), while the published port refuses at once, so a client's error comes at once.
        """
        if self.direct_host is None:
            return None
        from ._route import answers

        return self.direct_host if answers(self.direct_host, port, timeout=0.1) else None

    @property
    def internal_host(self) -> str:
        """The address other services of the environment reach it at (Docker: its service name on the
        environment's network; elsewhere :attr:`host`)."""
        return self.host

    @property
    def internal_ports(self) -> Mapping[int, int]:
        """Container (or service) port -> port on :attr:`internal_host` (elsewhere than Docker: :attr:`ports`)."""
        return self.ports

    @abstractmethod
    def start(self) -> None:
        """Start the created service; fills :attr:`ports`."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and remove the service and everything it owns; safe to call twice."""

    @abstractmethod
    def exit_status(self) -> int | None:
        """``None`` while it runs, else its exit status."""

    @abstractmethod
    def logs(self, tail: int | None = None) -> str:
        """Its output, or the last ``tail`` lines."""

    def log_since(self, cursor: object | None) -> tuple[str, object]:
        """What the log gained since ``cursor`` (None: from the start), and the cursor for the next call.

        Backends that can read a log from a point override this; here it is read whole.
        """
        text = self.logs()
        start = cursor if isinstance(cursor, int) and 0 <= cursor <= len(text) else 0
        return text[start:], len(text)

    def follow(self, tail: int | None = None, stop: threading.Event | None = None) -> Iterator[str]:
        """Its log, line by line as it is written (the last ``tail`` lines first; None: all of it),
        until it exits or ``stop`` is set. Backends that can stream override this; here the log is
        read again every :data:`FOLLOW_POLL` seconds."""
        stop = stop or threading.Event()
        seen = 0
        pending = ""
        first = True
        while True:
            done = self.exit_status() is not None  # read before the log: its last lines are in it
            text = self.logs()
            new, seen = text[seen:] if len(text) >= seen else text, len(text)
            if first and tail is not None:
                new = "".join(new.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
            first = False
            *lines, pending = (pending + new).split("\n")
            yield from lines
            if done or stop.is_set():
                if pending:
                    yield pending
                return
            stop.wait(FOLLOW_POLL)

    def exec(self, argv: list[str]) -> tuple[int, str]:
        """Run a command inside the service (not every backend can)."""
        raise NotImplementedError(f"the {self.backend} backend cannot run commands inside a service")

    def remove(self) -> None:
        """Remove the service for good: what ``stop()`` does, and also for an attached instance."""
        self.stop()

    def health(self) -> tuple[str, str] | None:
        """``(status, output of the last check)`` of the service's own health check (Docker's
        ``HEALTHCHECK``: ``starting``, ``healthy``, ``unhealthy``); None when it has none."""
        return None

    def state(self) -> tuple[str, dict[str, str]]:
        """``(status, labels)`` now: status ``running`` while it runs, else e.g. ``exited`` or ``missing``."""
        return ("running" if self.exit_status() is None else "exited"), {}


class AttachedInstance(Instance):
    """A service another process owns, known from an environment snapshot. Never stopped from here."""

    def __init__(
        self,
        backend: str,
        id: str,  # noqa: A002
        host: str,
        ports: Mapping[int, int],
        credentials: Mapping[str, str] | None = None,
        internal_host: str | None = None,
        internal_ports: Mapping[int, int] | None = None,
    ) -> None:
        self.backend = backend
        self.id = id
        self.host = host
        self.ports = dict(ports)
        self.credentials = dict(credentials or {})
        self._internal = (internal_host or host, dict(self.ports if internal_ports is None else internal_ports))
        self.log_path: str | None = None
        """Where a local server writes its log (from the snapshot), for :meth:`logs`."""

    @property
    def internal_host(self) -> str:
        return self._internal[0]

    @property
    def internal_ports(self) -> Mapping[int, int]:
        return self._internal[1]

    def start(self) -> None:
        """Nothing to start: the owner started it."""

    def stop(self) -> None:
        """Nothing to stop: the owner removes it."""

    def remove(self) -> None:
        """Nothing to remove: the owner does."""

    def exit_status(self) -> int | None:
        return None

    def logs(self, tail: int | None = None) -> str:
        """Asked from its backend now (Docker: the container's log; local: the server's log file)."""
        from . import get_backend

        unknown = f"(the log of {self.backend} service {self.id} is kept by the process that owns it)"
        try:
            backend = get_backend(self.backend)
        except Exception:
            return unknown
        try:
            where = {"backend": self.backend, "id": self.id, "host": self.host, "log_path": self.log_path}
            return backend.attach({**where, "ports": dict(self.ports)}).logs(tail)
        except Exception:
            return unknown
        finally:
            backend.close()

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> AttachedInstance:
        """From one service entry of an environment snapshot."""
        ports = {int(k): int(v) for k, v in (snapshot.get("ports") or {}).items()}
        internal = snapshot.get("internal_ports")
        instance = cls(
            str(snapshot["backend"]),
            str(snapshot["id"]),
            str(snapshot["host"]),
            ports,
            snapshot.get("credentials"),
            snapshot.get("internal_host"),
            None if internal is None else {int(k): int(v) for k, v in internal.items()},
        )
        instance.log_path = snapshot.get("log_path")
        direct, via = snapshot.get("direct_host"), snapshot.get("direct_via")
        if direct and via:
            from ._route import direct_wanted, routes_directly

            # The attaching process may be elsewhere (another host or network namespace): asked again here.
            if direct_wanted() and routes_directly(str(direct), str(via)):
                instance.direct_host, instance.direct_via = str(direct), str(via)
        return instance


class Backend(ABC):
    """Runs services. One backend object serves one environment."""

    name: str
    outlives_owner: ClassVar[bool] = False
    """Whether its services can outlive the process that started them (keep, detach, reuse)."""
    reusable: ClassVar[bool] = False
    """Whether a later run may attach to its services by configuration (``Environment(reuse=...)``)."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~svcenv.errors.BackendUnavailable` if this backend cannot run here."""

    def supports(self, service: Service) -> str | None:
        """``None`` if this backend can run ``service`` here, else the reason it cannot."""
        from ..errors import BackendUnavailable

        try:
            self.check()
        except BackendUnavailable as exc:
            return str(exc)
        return None

    @abstractmethod
    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> Instance:
        """Create (not start) the service; the instance is removable from here on."""

    @abstractmethod
    def cleanup(self, labels: Mapping[str, str]) -> int:
        """Remove anything this backend made that carries ``labels``; return how many."""

    def attach(self, snapshot: Mapping[str, Any]) -> Instance:
        """An instance for a service another process started, from one service entry of a snapshot.

        ``snapshot`` is ``Environment.snapshot()["services"][name]`` (backend, id,
        host, ports, secrets, credentials). Its ``stop()`` leaves the service
        running; ``remove()`` removes it. ``exit_status()`` and ``logs()`` ask
        the engine (or the process) now.
        """
        raise NotImplementedError(f"the {self.name} backend cannot attach to services another process started")

    def prepare(self, service: Service, labels: Mapping[str, str]) -> None:
        """Do what ``service``'s start needs and does not depend on other services (Docker: build its
        image), while the services it waits for start. Errors surface again in :meth:`create`."""

    def describe(self) -> list[str]:
        """Lines that say what this backend runs on (for ``doctor``): the engine, its version, ..."""
        return []

    def capabilities(self) -> dict[str, str]:
        """Kind -> what would run it here, or why not (for ``doctor``); empty if the backend does not say."""
        return {}

    def image_problem(self, service: Service) -> str | None:
        """What stands between ``service``'s image and a start here (missing, not pullable), or None."""
        return None

    def remove_labelled(self, labels: Mapping[str, str]) -> int:
        """Remove every service (of any owner) that carries ``labels``; return how many."""
        return 0

    def prune(self, *, only: Mapping[str, str], keep_alive: Callable[[Mapping[str, str]], bool]) -> int:
        """Remove svcenv's services that carry ``only`` unless ``keep_alive(labels)``; return how many."""
        return 0

    def join(self, instance: Instance, name: str, labels: Mapping[str, str]) -> Callable[[], None] | None:
        """Make an attached ``instance`` (a reused service another environment started) reachable by
        ``name`` from the environment ``labels`` name, as its own services are; return what undoes
        that (None: nothing to do on this backend, whose services reach each other anyway)."""
        return None

    def disown(self) -> None:
        """Let the services outlive this process (disarm crash cleanup); ``stop()`` still removes them."""

    def close(self) -> None:
        """Release the backend's own resources (clients, sockets)."""
