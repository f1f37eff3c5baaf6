"""How readiness is judged: one small interface, many tiny probes that compose.

A probe makes one attempt and raises :class:`~svcenv.errors.ProbeFailed` if the
service is not ready yet; :func:`wait_until_ready` retries it with tenacity
until the service's deadline. Probes for Postgres, Redis and Elasticsearch speak
the real protocol (a query, ``PING``, the cluster health API), so "ready" means
a client can use the service, not merely that a port is open.

    Service("web", "nginx", ports=(80,), probe=HTTP("/healthz") & LogLine("ready"))
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._util import DaemonJob
from .errors import CredentialsRejected, ProbeFailed, ServiceExited, ServiceUnhealthy

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from .handles import ServiceHandle

__all__ = [
    "HTTP",
    "TCP",
    "AllOf",
    "Command",
    "Completed",
    "ElasticsearchHealth",
    "Healthy",
    "LogLine",
    "PostgresQuery",
    "Probe",
    "RedisPing",
    "from_record",
    "to_record",
    "wait_until_ready",
]

FIRST_POLL = 0.01
"""Seconds before the second attempt; later waits double up to :data:`MAX_POLL`."""
MAX_POLL = 0.25


RECORDABLE: dict[str, type[Probe]] = {}
"""The probes svcenv ships (every ``Probe`` subclass defined in the ``svcenv`` package), by class name."""


class Probe(ABC):
    """One readiness check. Subclasses make a single, short attempt."""

    @abstractmethod
    def check(self, service: ServiceHandle) -> None:
        """Return if ``service`` is ready; raise :class:`ProbeFailed` saying why not."""

    def __and__(self, other: Probe) -> AllOf:
        return AllOf((self, other))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.split(".")[0] == "svcenv":  # shipped with svcenv: it can be recorded
            RECORDABLE.setdefault(cls.__name__, cls)


@dataclass(frozen=True)
class AllOf(Probe):
    """Ready when every probe is ready, checked in order."""

    probes: tuple[Probe, ...]

    def __and__(self, other: Probe) -> AllOf:
        return AllOf((*self.probes, other))

    def check(self, service: ServiceHandle) -> None:
        for probe in self.probes:
            probe.check(service)


@dataclass(frozen=True)
class TCP(Probe):
    """Ready when a TCP connection to the published ``port`` (default: the first) opens and stays open.

    Docker's port proxy accepts connections on a published port even when
    nothing listens behind it, then closes them at once; so a connection that
    is closed or reset within ``settle`` seconds does not count as ready.
    """

    port: int | None = None
    timeout: float = 1.0
    settle: float = 0.05

    def check(self, service: ServiceHandle) -> None:
        port = service.port_for(self.port)
        try:
            with socket.create_connection((service.host, port), timeout=self.timeout) as sock:
                sock.settimeout(self.settle)
                try:
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    closed = False  # open and silent: the server waits for us to speak
        except OSError as exc:
            raise ProbeFailed(f"TCP connect to {service.host}:{port} failed: {exc}") from exc
        if closed:
            raise ProbeFailed(f"TCP {service.host}:{port} accepted and closed at once (nothing listens behind it)")


@dataclass(frozen=True)
class HTTP(Probe):
    """Ready when ``GET path`` answers with ``status``."""

    path: str = "/"
    status: int = 200
    port: int | None = None
    scheme: str = "http"
    timeout: float = 2.0

    def check(self, service: ServiceHandle) -> None:
        url = f"{self.scheme}://{service.host}:{service.port_for(self.port)}{self.path}"
        got = _http_status(url, self.timeout)
        if got != self.status:
            raise ProbeFailed(f"GET {url} answered {got}, expected {self.status}")


def _http_status(url: str, timeout: float) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError) as exc:
        raise ProbeFailed(f"GET {url} failed: {exc}") from exc


@dataclass(frozen=True)
class LogLine(Probe):
    """Ready when the service's log has matched ``pattern`` (a regex) ``times`` times."""

    pattern: str
    times: int = 1

    def check(self, service: ServiceHandle) -> None:
        found = service.log_matches(self.pattern)
        if found < self.times:
            raise ProbeFailed(f"log line /{self.pattern}/ seen {found} of {self.times} times")


@dataclass(frozen=True)
class Command(Probe):
    """Ready when ``argv`` run inside the service (``docker exec``) exits with ``exit_code``."""

    argv: tuple[str, ...]
    exit_code: int = 0

    def __init__(self, argv: Sequence[str], exit_code: int = 0) -> None:
        object.__setattr__(self, "argv", tuple(argv))
        object.__setattr__(self, "exit_code", exit_code)

    def check(self, service: ServiceHandle) -> None:
        code, output = service.exec(self.argv)
        if code != self.exit_code:
            raise ProbeFailed(f"{' '.join(self.argv)!r} exited {code}: {output.strip()[-300:]}")


@dataclass(frozen=True)
class PostgresQuery(Probe):
    """Ready when psycopg connects to the target database and ``SELECT 1`` answers."""

    timeout: int = 2

    def check(self, service: ServiceHandle) -> None:
        import psycopg

        try:
            with psycopg.connect(service.url, connect_timeout=self.timeout, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            said = _one_line(exc)
            refused = exc.sqlstate in ("28P01", "28000") or "password authentication failed" in said
            raise ProbeFailed(f"postgres: {said}", credentials=refused) from exc


@dataclass(frozen=True)
class RedisPing(Probe):
    """Ready when ``PING`` (after ``AUTH`` if there is a password) answers ``PONG``."""

    timeout: float = 1.0

    def check(self, service: ServiceHandle) -> None:
        import redis

        client = redis.Redis.from_url(service.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout)
        try:
            if not client.ping():
                raise ProbeFailed("redis: PING did not answer PONG")
        except redis.RedisError as exc:
            said = _one_line(exc)
            refused = isinstance(exc, redis.AuthenticationError) or said.startswith(("WRONGPASS", "NOAUTH"))
            raise ProbeFailed(f"redis: {said}", credentials=refused) from exc
        finally:
            client.close()


@dataclass(frozen=True)
class ElasticsearchHealth(Probe):
    """Ready when ``GET /_cluster/health?wait_for_status=<status>`` reports that status."""

    status: str = "yellow"
    timeout: float = 2.0

    def check(self, service: ServiceHandle) -> None:
        import json
        import urllib.error
        import urllib.request

        url = f"{service.url}/_cluster/health?wait_for_status={self.status}&timeout=1s"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ProbeFailed(f"elasticsearch: GET /_cluster/health answered {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise ProbeFailed(f"elasticsearch: GET /_cluster/health failed: {exc}") from exc
        if body.get("timed_out") or body.get("status") not in _AT_LEAST[self.status]:
            raise ProbeFailed(f"elasticsearch: cluster status {body.get('status')!r}, want {self.status!r}")


@dataclass(frozen=True)
class Healthy(Probe):
    """Ready when Docker reports the ``HEALTHCHECK`` (the image's, or ``options["healthcheck"]``) ``healthy``;
    ``unhealthy``, or no health check at all, fails the start at once (:class:`~svcenv.errors.ServiceUnhealthy`)."""

    def check(self, service: ServiceHandle) -> None:
        health = service.health()
        if health is None:
            hint = "give the image a HEALTHCHECK, or options={'healthcheck': ...}"
            raise ServiceUnhealthy(f"Healthy() needs a health check; this {service.backend} service has none: {hint}")
        status, output = health[0], health[1][-300:] or "(no output)"
        if status == "unhealthy":
            raise ServiceUnhealthy(f"HEALTHCHECK reports unhealthy (slow start? --start-period); last check: {output}")
        if status != "healthy":
            raise ProbeFailed(f"HEALTHCHECK status {status!r}; last check: {output}")


@dataclass(frozen=True)
class Completed(Probe):
    """Ready when the service has exited with status 0: a one-shot job (``Service(one_shot=True)``).

    Another status fails the start at once (:class:`~svcenv.errors.ServiceExited`, the
    job's log tail in the error); while it runs, the attempt fails and is retried.
    """

    def check(self, service: ServiceHandle) -> None:
        status = service.exit_status()
        if status is None:
            raise ProbeFailed("the one-shot job is still running")
        if status != 0:
            raise ServiceExited(f"the one-shot job exited with status {status}")


_AT_LEAST = {"green": ("green",), "yellow": ("green", "yellow"), "red": ("green", "yellow", "red")}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _sleep(cancel: threading.Event, seconds: float) -> None:
    cancel.wait(seconds)  # wakes at once when the start is cancelled


def bounded_check(
    probe: Probe,
    service: ServiceHandle,
    deadline: float,
    cancel: threading.Event,
    last: BaseException | None = None,
) -> None:
    """One attempt of ``probe``, given up when ``deadline`` passes or ``cancel`` is set.

    The attempt runs in a daemon thread: a probe that blocks (a ``Command`` that never
    exits, a custom probe that hangs) cannot hold the start past its deadline, nor a
    teardown or the interpreter's exit. An abandoned attempt ends with its service.
    When an attempt is cut short, the error of the one before it (``last``), if any,
    says more than the cut.
    """
    job = DaemonJob(lambda: probe.check(service), f"svcenv-probe-{service.name}")
    if not job.wait(deadline, cancel):
        if isinstance(last, ProbeFailed):
            raise last
        raise ProbeFailed(f"{type(probe).__name__} did not answer before the deadline (it blocks)")
    if job.error is not None:
        raise job.error


def wait_until_ready(
    service: ServiceHandle,
    probe: Probe,
    timeout: float,
    cancel: threading.Event | None = None,
) -> int:
    """Retry ``probe`` until it passes; return the number of attempts.

    Polls fast at first (:data:`FIRST_POLL`) and backs off to :data:`MAX_POLL`.
    Raises :class:`ServiceExited` as soon as the service is seen to have stopped,
    and the last :class:`ProbeFailed` when ``timeout`` runs out or ``cancel`` is set.
    """
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        stop_when_event_set,
        wait_exponential,
    )

    cancel = cancel or threading.Event()
    attempts = 0
    errors: list[BaseException | None] = [None]  # the last failed attempt's

    def _stopped(state: RetryCallState) -> None:
        # Checked only after a failed attempt: a running service costs no extra call.
        exc = state.outcome.exception() if state.outcome else None
        errors[:] = [exc]
        if isinstance(exc, ProbeFailed):
            if exc.credentials and service.backend == "external":
                # An owned server may refuse while its password is being set; a running one will not change its mind.
                from .backends.external import url_variable  # here: backends import this module

                raise CredentialsRejected(
                    f"the server refuses the credentials ({exc}); "
                    f"check the user and password in the URL (e.g. {url_variable(service.name)})"
                )
            status = service.exit_status()
            if status is not None and not isinstance(probe, Completed):  # a job's exit is its answer
                raise ServiceExited(f"exited with status {status} before it was ready; last probe error: {exc}")

    retrying = Retrying(
        stop=stop_after_delay(timeout) | stop_when_event_set(cancel),
        wait=wait_exponential(multiplier=FIRST_POLL, min=FIRST_POLL, max=MAX_POLL),
        retry=retry_if_exception_type(ProbeFailed),
        after=_stopped,
        sleep=lambda seconds: _sleep(cancel, seconds),
        reraise=True,
    )
    deadline = time.monotonic() + timeout
    for attempt in retrying:
        with attempt:
            attempts += 1
            bounded_check(probe, service, deadline, cancel, errors[0])
    return attempts


# -- records: a probe as JSON-able data, and back ----------------------------------------------

ProbeRecord = dict[str, Any]
"""``{"probe": "<class name>", <field>: <value>, ...}``; ``AllOf`` holds ``"probes": [records]``."""


def to_record(probe: Probe) -> ProbeRecord:
    """``probe`` as a record; a probe svcenv does not ship cannot be recorded (ConfigurationError says so)."""
    from .errors import ConfigurationError

    name = type(probe).__name__
    if RECORDABLE.get(name) is not type(probe):
        raise ConfigurationError(
            f"probe {probe!r} cannot be recorded: only the probes svcenv ships ({', '.join(sorted(RECORDABLE))}) "
            "can be written to a state file or a reuse record; pass the descriptor itself where you attach"
        )
    if isinstance(probe, AllOf):
        return {"probe": name, "probes": [to_record(part) for part in probe.probes]}
    record: ProbeRecord = {"probe": name}
    for f in dataclasses.fields(probe):  # type: ignore[arg-type]
        value = getattr(probe, f.name)
        record[f.name] = list(value) if isinstance(value, tuple) else value
    return record


def from_record(record: Mapping[str, Any]) -> Probe:
    """The probe a :func:`to_record` record describes (ConfigurationError for an unknown one)."""
    from .errors import ConfigurationError

    cls = RECORDABLE.get(str(record.get("probe")))
    if cls is None:
        raise ConfigurationError(f"unknown probe record {dict(record)!r}; known: {', '.join(sorted(RECORDABLE))}")
    if cls is AllOf:
        return AllOf(tuple(from_record(part) for part in record["probes"]))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k != "probe"}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"probe record {dict(record)!r} does not fit {cls.__name__}: {exc}") from None
