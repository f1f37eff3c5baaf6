"""The errors svcenv raises. Every one names the service and says what to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SvcenvError(Exception):
    """Base class of every error svcenv raises on purpose."""


class ConfigurationError(SvcenvError, ValueError):
    """A descriptor or an environment was given values that cannot work."""


class ComposeError(ConfigurationError):
    """A Compose file svcenv cannot read or run: the message names the file, the key path and what is supported."""


class ServiceNotFound(SvcenvError, KeyError):
    """A handle was looked up by a name or descriptor that is not in the environment."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "service not found"


class BackendUnavailable(SvcenvError):
    """No backend can run a service on this machine (e.g. no Docker engine answers)."""


class ImageUnavailable(SvcenvError):
    """The image is neither on the Docker engine nor pullable from a registry."""


class ProbeFailed(SvcenvError):
    """One readiness probe attempt failed; svcenv retries until the deadline.

    ``credentials`` is True when the server answered and refused the credentials.
    """

    def __init__(self, message: str, *, credentials: bool = False) -> None:
        super().__init__(message)
        self.credentials = credentials


class CredentialsRejected(SvcenvError):
    """A running service that svcenv does not own (external backend) refused the credentials it was given.

    Raised at the first refusal: unlike a server that is still starting, waiting cannot help.
    """


class ServiceExited(SvcenvError):
    """The service's process or container stopped while svcenv was waiting for it."""


class ServiceUnhealthy(SvcenvError):
    """The service's own health check (Docker's ``HEALTHCHECK``) reports it unhealthy, or it has none to ask.

    Raised by :class:`~svcenv.probes.Healthy` at once: waiting longer cannot help.
    """


@dataclass(frozen=True)
class ServiceFailure:
    """Why one service did not become ready."""

    service: str
    backend: str
    image: str | None
    reason: str
    log_tail: str = ""

    def describe(self) -> str:
        """One paragraph: the service, where it ran, the cause and its last log lines."""
        where = f"{self.backend} backend" + (f", image {self.image}" if self.image else "")
        text = f"service {self.service!r} ({where}): {self.reason}"
        if self.log_tail.strip():
            tail = "\n".join("    " + line for line in self.log_tail.rstrip().splitlines())
            text += f"\n  last lines of its log:\n{tail}"
        return text


class ServiceStartError(SvcenvError):
    """One or more services of an environment did not become ready.

    ``failures`` lists every service that failed, each with its backend, image,
    the last probe error and the tail of its log. By the time this is raised,
    everything the environment had started has been removed, unless
    :attr:`teardown_problems` (and the message) say what could not be.
    """

    def __init__(self, failures: Sequence[ServiceFailure]) -> None:
        self.failures: tuple[ServiceFailure, ...] = tuple(failures)
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.failures) == 1:
            return self.failures[0].describe()
        lines = [f"{len(self.failures)} services failed to start:"]
        lines += ["- " + f.describe() for f in self.failures]
        return "\n".join(lines)

    @property
    def services(self) -> tuple[str, ...]:
        """Names of the services that failed."""
        return tuple(f.service for f in self.failures)

    teardown_problems: tuple[str, ...] = ()
    """What the teardown after the failure could not remove (empty: nothing is left)."""

    def teardown_incomplete(self, problems: Sequence[str]) -> None:
        """Say in the message that the teardown after the failure left ``problems``."""
        self.teardown_problems = tuple(problems)
        self.args = (
            self._message()
            + "\nthe teardown after it was incomplete: "
            + "; ".join(problems)
            + "; `python -m svcenv prune` removes what is left",
        )

    def __reduce__(self) -> tuple[type[ServiceStartError], tuple[tuple[ServiceFailure, ...]]]:
        return (type(self), (self.failures,))


class BuildFailed(ServiceStartError):
    """The image of a service with ``build=`` could not be built.

    ``failures`` holds the one service, with the engine's error as its reason and
    the last lines of the build log as its ``log_tail``.
    """

    @property
    def service(self) -> str:
        """The service whose image did not build."""
        return self.failures[0].service
