"""What the containers of one environment share on an engine: a bridge network and named volumes.

Each environment gets one user-defined bridge network, ``svcenv-<env id>``,
made when its first container is created. Every container joins it (and no other
network) with its service name as alias, so services reach each other by name
(``postgres:5432``) and two environments never see each other's names. Named
volumes (``Service(volumes={"data": "/var/lib/data"})``) are ``svcenv-<env
id>-<name>``, shared by the services of the environment that name them.

Both carry the environment's labels (``svcenv.environment=<id>`` and the rest),
and go when the environment's last container goes: :class:`Shared` counts the
containers of each environment in this process, and :func:`remove_unused`
sweeps by label for every other path (the environment's cleanup, the crash
reaper, ``prune``). The engine refuses to remove a network or volume that a
container still uses, so a sweep never breaks a running (or kept) service.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .._util import said
from .base import LABEL_ENVIRONMENT, LABEL_KEEP, LABEL_REUSE_HASH, LABEL_SERVICE, LABEL_STATE_DIR

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = [
    "LABEL_VOLUME",
    "Owed",
    "Shared",
    "bridge_address",
    "network_name",
    "remove_unused",
    "shared_labels",
    "unproven",
    "volume_name",
]

LABEL_VOLUME = "svcenv.volume"
"""On a named volume: the name the descriptors give it."""


def network_name(env_id: str) -> str:
    """The name of an environment's network."""
    return f"svcenv-{env_id}"


def volume_name(env_id: str, name: str) -> str:
    """The engine's name of an environment's volume ``name``."""
    return f"svcenv-{env_id}-{name}"


def bridge_address(attrs: Mapping[str, Any], network: str, ports: Sequence[int]) -> tuple[str | None, str | None]:
    """The container's address on ``network`` and the bridge this host reaches it over, when the host
    routes there straight (see :mod:`svcenv.backends._route`) and it answers on its first port; else Nones.

    The engine names a bridge network's interface ``br-`` + the first 12 characters of its id.
    """
    from ._route import answers, routes_directly

    on = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}
    address, network_id = str(on.get("IPAddress") or ""), str(on.get("NetworkID") or "")
    bridge = f"br-{network_id[:12]}"
    if not address or not network_id or not routes_directly(address, bridge):
        return None, None
    if ports and not answers(address, ports[0]):
        return None, None
    return address, bridge


_PER_SERVICE = (LABEL_SERVICE, LABEL_KEEP, LABEL_REUSE_HASH, LABEL_STATE_DIR)
"""Labels of one container, not of its environment: a network or volume never carries them."""


def shared_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of what the containers of an environment share (its network and volumes)."""
    return {k: v for k, v in labels.items() if k not in _PER_SERVICE}


def _quiet_remove(remove: Callable[[], object]) -> bool:
    """Remove something; False if the engine says it is gone already or still in use."""
    import docker.errors

    try:
        remove()
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code in (403, 409):  # in use (active endpoints, a container mounts it), or being removed
            return False
        raise
    return True


@dataclass
class _Members:
    count: int = 0
    network: str | None = None
    volumes: set[str] = field(default_factory=set)


class Shared:
    """The network and volumes of each environment this backend serves, counted by containers.

    A network or volume whose removal failed is *owed*: :meth:`settle` tries it again by name at
    the environment's cleanup, and fails there if it cannot prove it gone (see :func:`unproven`).
    A label sweep alone is not proof: an engine that is shutting down answers lists without it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envs: dict[str, _Members] = {}
        self._owed: dict[str, list[Owed]] = {}

    def acquire(self, client: DockerClient, labels: Mapping[str, str], volumes: Iterable[str]) -> str:
        """Count one more container of the environment ``labels`` name; make its network and the
        ``volumes`` it lacks. Returns the network's name. Every acquire needs one :meth:`release`."""
        env_id = labels.get(LABEL_ENVIRONMENT, "x")
        with self._lock:
            members = self._envs.setdefault(env_id, _Members())
            try:
                if members.network is None:
                    members.network = _create_network(client, network_name(env_id), shared_labels(labels))
                for name in volumes:
                    real = volume_name(env_id, name)
                    if real not in members.volumes:
                        volume_labels = {**shared_labels(labels), LABEL_VOLUME: name}
                        client.volumes.create(name=real, driver="local", labels=volume_labels)
                        members.volumes.add(real)
            except BaseException:
                if members.count == 0:
                    self._remove(client, env_id, members)
                raise
            members.count += 1
            return members.network

    def release(self, client: DockerClient, env_id: str) -> None:
        """One container of the environment is gone; the last one takes the network and volumes along."""
        with self._lock:
            members = self._envs.get(env_id)
            if members is None:
                return
            members.count -= 1
            if members.count <= 0:
                self._remove(client, env_id, members)

    def _remove(self, client: DockerClient, env_id: str, members: _Members) -> None:
        del self._envs[env_id]
        parts = [("network", members.network)] if members.network is not None else []
        parts += [("volume", name) for name in sorted(members.volumes)]
        failed: BaseException | None = None
        for kind, name in parts:
            failure = None
            try:
                # False also when it was gone already: settle() asks which.
                gone = (
                    _remove_network(client, name)
                    if kind == "network"
                    else _quiet_remove(partial(client.api.remove_volume, name))
                )
            except Exception as exc:
                gone, failed, failure = False, failed or exc, said(exc)
            if not gone:
                self._owed.setdefault(env_id, []).append(Owed(kind, name, failure))
        if failed is not None:
            raise failed

    def settle(self, client: DockerClient, env_id: str) -> None:
        """Try again what the environment's removals left (see the class); raise if something may stay."""
        with self._lock:
            owed = self._owed.pop(env_id, [])
        left = [(item, why) for item in owed if (why := unproven(client, item, env_id)) is not None]
        if left:
            with self._lock:
                self._owed.setdefault(env_id, []).extend(item for item, _ in left)
            raise RuntimeError("could not remove " + "; ".join(f"{item.kind} {item.name}: {why}" for item, why in left))

    def owed(self, env_id: str) -> list[Owed]:
        """What environment ``env_id`` is owed."""
        with self._lock:
            return list(self._owed.get(env_id, ()))


@dataclass(frozen=True)
class Owed:
    """A network or volume whose removal has not been seen to succeed, and the error it failed with (if any)."""

    kind: str
    name: str
    failure: str | None = None


def unproven(client: DockerClient, item: Owed, env_id: str) -> str | None:
    """Remove ``item`` again by name; None once that is proven, else why it may still be there.

    The engine's word that it does not exist is proof only after a removal that did not fail,
    or from an engine that can record a change now. dockerd shutting down answers a removal with
    500 ("failed to update store"), then forgets the network in memory only: it says 404 for a
    network that is back once it restarts. So after a failure, a probe network is made and removed
    first (:func:`_engine_writes`).
    """
    remove = client.api.remove_network if item.kind == "network" else client.api.remove_volume
    try:
        if _quiet_remove(partial(remove, item.name)):
            return None
        if not _absent(client, item.kind, item.name):
            return "still there"
        if item.failure is None or _engine_writes(client, env_id):
            return None
        return (
            f"its removal failed ({item.failure}); the engine now says it is gone, but cannot record "
            "a change yet (shutting down?), so that is no proof"
        )
    except Exception as exc:
        return said(exc)


def _absent(client: DockerClient, kind: str, name: str) -> bool:
    """Whether the engine says network or volume ``name`` does not exist (asked by name, not listed)."""
    import docker.errors

    try:
        (client.api.inspect_network if kind == "network" else client.api.inspect_volume)(name)
    except docker.errors.NotFound:
        return True
    return False


def _engine_writes(client: DockerClient, env_id: str) -> bool:
    """Whether the engine records a change now: it makes and removes a probe network.

    A network, for volumes too: a volume made while dockerd shuts down is on disk after its
    restart (without labels); a network it could not record is not. The probe carries the
    environment's label, so a sweep finds it should its removal fail.
    """
    import secrets

    import docker.errors

    name = f"svcenv-{env_id}-probe-{secrets.token_hex(4)}"
    try:
        client.api.create_network(name, driver="bridge", labels={LABEL_ENVIRONMENT: env_id})
        client.api.remove_network(name)
    except docker.errors.APIError:
        return False
    return True


def _remove_network(client: DockerClient, name: str, settle: float = 3.0) -> bool:
    """Remove the network of an environment whose last container just went.

    The engine releases a removed container's endpoint a moment after the removal
    returns, and refuses the network ("active endpoints") until then: retry briefly.
    A network still in use after ``settle`` seconds is left to the label sweeps.
    """
    from .._util import NotYet, poll

    def removed() -> bool:
        import docker.errors

        try:
            client.api.remove_network(name)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 409):
                raise NotYet(str(exc)) from None
            raise
        return True

    try:
        return poll(removed, settle, first=0.05, cap=0.25)
    except NotYet:
        return False


def _create_network(client: DockerClient, name: str, labels: Mapping[str, str]) -> str:
    import docker.errors

    try:
        client.networks.create(name, driver="bridge", labels=dict(labels), check_duplicate=True)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: it exists (another backend object of this environment made it)
            raise
    return name


def remove_unused(
    client: DockerClient,
    labels: Mapping[str, str],
    keep_alive: Callable[[Mapping[str, str]], bool] | None = None,
) -> int:
    """Remove svcenv's networks and named volumes that carry ``labels`` and that no container uses
    (nor ``keep_alive(their labels)`` keeps); return how many went."""
    filters: dict[str, str | list[str] | bool] = {
        "label": [LABEL_ENVIRONMENT, *(f"{k}={v}" for k, v in labels.items())]
    }
    removed = 0
    for network in client.networks.list(filters=filters):
        if keep_alive is None or not keep_alive(dict(network.attrs.get("Labels") or {})):
            if client.containers.list(all=True, filters={"network": str(network.id)}):
                removed += _quiet_remove(partial(client.api.remove_network, str(network.id)))  # in use: stays
            else:  # no container left: an endpoint the engine has not released yet is worth a short wait
                removed += _remove_network(client, str(network.id))
    for volume in client.volumes.list(filters=filters):
        if keep_alive is None or not keep_alive(dict(volume.attrs.get("Labels") or {})):
            removed += _quiet_remove(partial(client.api.remove_volume, volume.name))
    return removed
