"""The Docker backend's side for containers another process started: attaching, removing, pruning.

Kept apart from :mod:`svcenv.backends.docker` (which creates and runs
containers): everything here works from what a record or a label says, through
the backend's one client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .base import LABEL_ENVIRONMENT, Instance
from .docker_container import follow_container

if TYPE_CHECKING:
    from docker import DockerClient


MISSING = "missing"
"""The status of a container the engine does not know (any more)."""


class AttachedContainer(Instance):
    """A container another process started, known by its id. ``stop()`` leaves it; ``remove()`` removes it."""

    backend = "docker"

    def __init__(self, client: Callable[[], DockerClient], snapshot: Mapping[str, Any]) -> None:
        self._client = client
        self.id = str(snapshot["id"])
        self.host = str(snapshot.get("host") or "127.0.0.1")
        self.ports = {int(k): int(v) for k, v in (snapshot.get("ports") or {}).items()}
        self.credentials = dict(snapshot.get("credentials") or {})
        self.joined_as: str | None = None
        """The name the attaching environment's containers reach it by (see ``DockerBackend.join``)."""

    def networks(self) -> list[str]:
        """The svcenv networks the container is on (where its service name resolves)."""
        container = self._get()
        if container is None:
            return []
        names = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        return sorted(name for name in names if name.startswith("svcenv-"))

    @property
    def internal_host(self) -> str:
        return self.joined_as or self.host

    @property
    def internal_ports(self) -> Mapping[int, int]:
        return {port: port for port in self.ports} if self.joined_as else self.ports

    def _get(self) -> Any:
        """The container, or None if the engine does not know it."""
        import docker.errors

        try:
            return self._client().containers.get(self.id)
        except docker.errors.NotFound:
            return None

    def start(self) -> None:
        """Nothing to start: its owner started it."""

    def stop(self) -> None:
        """Nothing to stop: an attached container stays (see :meth:`remove`)."""

    def remove(self) -> None:
        """Remove the container with its anonymous volumes (gone already is fine)."""
        import docker.errors

        container = self._get()
        if container is None:
            return
        envs = environments_of(container)
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another path is removing it already
                raise
        from .docker_network import remove_unused

        for env_id in sorted(envs):
            remove_unused(self._client(), {LABEL_ENVIRONMENT: env_id})  # unless other containers use them

    def state(self) -> tuple[str, dict[str, str]]:
        """(status, labels) as the engine says now; status ``missing`` if there is no such container."""
        container = self._get()
        if container is None:
            return MISSING, {}
        return str(container.status), dict(container.labels or {})

    def exit_status(self) -> int | None:
        container = self._get()
        if container is None:
            return -1
        state = container.attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", -1))
        return None

    def follow(self, tail: int | None = None, stop: threading.Event | None = None) -> Iterator[str]:
        """The container's log as the engine streams it (``docker logs --follow``)."""
        container = self._get()
        if container is None:
            yield f"(container {self.id[:12]} is gone: no log)"
            return
        yield from follow_container(container, tail, stop)

    def logs(self, tail: int | None = None) -> str:
        import docker.errors

        container = self._get()
        if container is None:
            return f"(container {self.id[:12]} is gone: no log)"
        try:
            raw = container.logs(tail=tail if tail is not None else "all")
        except docker.errors.APIError as exc:
            return f"(log unavailable: {exc})"
        return bytes(raw).decode("utf-8", errors="replace")


def environments_of(container: Any) -> set[str]:
    """The environments whose networks ``container`` is on: its own (its label), and those of the reused
    services it was connected to (``DockerBackend.join``); their networks may go once it is gone."""
    own = (container.labels or {}).get(LABEL_ENVIRONMENT)
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    joined = {name.removeprefix("svcenv-") for name in networks if name.startswith("svcenv-")}
    return ({own} if own else set()) | joined


def remove_labelled(client: DockerClient, labels: Mapping[str, str]) -> int:
    """Remove the containers carrying every one of ``labels`` with their volumes, then the networks
    and named volumes of their environments that nothing uses any more; return how many containers."""
    from ._docker_reaper import remove_labelled as remove
    from .docker_network import remove_unused

    filters: dict[str, str | list[str] | bool] = {"label": [f"{k}={v}" for k, v in labels.items()]}
    envs = set()
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        envs |= environments_of(container)
    removed = remove(client, labels)
    for env_id in {*envs, labels.get(LABEL_ENVIRONMENT)} - {None}:
        remove_unused(client, {LABEL_ENVIRONMENT: str(env_id)})
    return removed


class PruneIncomplete(Exception):
    """Some containers :func:`prune` meant to remove are still there: how many went, and why the others did not."""

    def __init__(self, removed: int, failures: list[str]) -> None:
        self.removed = removed
        self.failures = failures
        super().__init__(f"could not remove {len(failures)} container(s): {'; '.join(failures)}")


def prune(client: DockerClient, only: Mapping[str, str], keep_alive: Callable[[Mapping[str, str]], bool]) -> int:
    """Remove svcenv's containers that carry ``only`` and that ``keep_alive(labels)`` does not keep; return how many.

    Raises :class:`PruneIncomplete` (after trying every one) if the engine refused to remove some.
    """
    import docker.errors

    removed = 0
    failures: list[str] = []
    filters: dict[str, str | list[str] | bool] = {"label": [LABEL_ENVIRONMENT, *(f"{k}={v}" for k, v in only.items())]}
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        if keep_alive(dict(container.labels or {})):
            continue
        try:
            container.remove(force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # gone already
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another path is removing it already
                failures.append(f"{str(container.id)[:12]} ({' '.join(str(exc.explanation or exc).split())})")
        except Exception as exc:
            failures.append(f"{str(container.id)[:12]} ({type(exc).__name__}: {' '.join(str(exc).split())})")
    from .docker_network import remove_unused

    # Networks and named volumes of environments whose containers are gone (the engine keeps used ones).
    remove_unused(client, only, keep_alive)
    if failures:
        raise PruneIncomplete(removed, failures)
    return removed
