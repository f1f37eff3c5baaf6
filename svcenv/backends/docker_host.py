"""Where the engine is: the address to connect to for published ports; the image to use, and that it is there."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import BackendUnavailable, ConfigurationError, ImageUnavailable

if TYPE_CHECKING:
    from docker import DockerClient

    from .._resolved import Resolved

__all__ = [
    "bind_address",
    "engine_calls",
    "engine_host",
    "engine_name",
    "engine_url",
    "ensure_image",
    "has_credentials",
    "hub_image",
    "podman_socket",
    "refuse_unauthenticated",
    "remote_host",
    "vanished",
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOCAL_SOCKET = "unix:///var/run/docker.sock"
PODMAN_SOCKETS = ("/run/podman/podman.sock", "$XDG_RUNTIME_DIR/podman/podman.sock")
"""Where Podman's Docker-compatible API listens (``podman system service``, ``podman.socket``):
rootful, then the user's own (rootless)."""


def podman_socket() -> str | None:
    """With ``DOCKER_HOST`` unset and no /var/run/docker.sock: the first of :data:`PODMAN_SOCKETS`
    that is a socket, as a ``unix://`` URL; else None."""
    if os.environ.get("DOCKER_HOST") or os.path.exists(LOCAL_SOCKET.removeprefix("unix://")):
        return None
    for candidate in PODMAN_SOCKETS:
        path = os.path.expandvars(candidate)
        if "$" in path:  # XDG_RUNTIME_DIR unset
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return f"unix://{path}"
    return None


def engine_url() -> str | None:
    """The engine's URL: ``DOCKER_HOST``, else a Podman socket (see :func:`podman_socket`), else
    None (docker-py's default, the local socket)."""
    return os.environ.get("DOCKER_HOST") or podman_socket()


def engine_name() -> str:
    """The engine as messages name it: ``DOCKER_HOST``, a Podman socket found, or the local socket."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    podman = podman_socket()
    if podman:
        return f"{podman} (Podman's socket: DOCKER_HOST is unset and there is no {LOCAL_SOCKET})"
    return f"{LOCAL_SOCKET} (the local socket)"


def remote_host(base_url: str) -> str | None:
    """The engine's host if the engine is remote, else None; from the engine's URL alone.

    ``base_url`` is docker-py's (``http://HOST:PORT`` for ``DOCKER_HOST=tcp://HOST:PORT``,
    ``http+docker://…`` for a unix socket, a named pipe or ``ssh://``; the ssh host is read from
    ``DOCKER_HOST``). A unix socket, a named pipe and a TCP or ssh URL naming loopback are local.
    """
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith("ssh://"):
        host = urllib.parse.urlparse(docker_host).hostname
    else:
        url = urllib.parse.urlparse(base_url)
        host = url.hostname if url.scheme in ("http", "https", "tcp") else None
    return None if not host or _is_loopback(host) else host


def bind_address(remote: str | None) -> str:
    """Where the engine publishes ports: ``SVCENV_DOCKER_BIND`` if set (the explicit opt-in to anything
    wider), else 127.0.0.1 for a local engine, else the one address of the remote engine's host that
    svcenv connects to (``remote``, resolved here if it is a name), never every interface."""
    explicit = os.environ.get("SVCENV_DOCKER_BIND")
    if explicit:
        return explicit
    if remote is None:
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(remote, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise BackendUnavailable(
            f"docker: the engine at {engine_name()} is on host {remote!r}, which does not resolve here ({exc}); "
            "set SVCENV_DOCKER_BIND to the address of that host where its ports should be published"
        ) from exc


_warned: set[str] = set()
"""The connect-address warnings logged so far (each once per process)."""


def engine_host(client: DockerClient) -> str:
    """The address at which this process reaches ports the engine publishes (``client``: a docker-py client).

    ``SVCENV_DOCKER_HOST_IP`` if set; else for a remote engine ``TESTCONTAINERS_HOST_OVERRIDE`` (or
    testcontainers' ``TC_HOST``) if set, else the engine's host; for a local engine 127.0.0.1, where
    its ports are published. On a local engine the override is used only with ``SVCENV_DOCKER_BIND``
    (it does not widen where ports are published; see :func:`bind_address`), or when it is loopback.
    A connect address that cannot reach where the ports are published is logged (once).
    """
    from testcontainers.core.config import testcontainers_config

    remote = remote_host(client.api.base_url)
    widened = remote is not None or bool(os.environ.get("SVCENV_DOCKER_BIND"))
    explicit = os.environ.get("SVCENV_DOCKER_HOST_IP")
    if explicit:
        if not widened and not _is_loopback(explicit):
            _warn_once(
                f"svcenv: SVCENV_DOCKER_HOST_IP={explicit} is used, but the engine ({engine_name()}) is local, so "
                "its ports are published on 127.0.0.1 only. To publish them where svcenv connects, set "
                f"SVCENV_DOCKER_BIND (e.g. to {explicit}) as well."
            )
        return explicit
    override = testcontainers_config.tc_host_override
    if override:
        if widened or _is_loopback(override):
            return override
        _warn_once(
            f"svcenv: TESTCONTAINERS_HOST_OVERRIDE={override} is not used: the engine ({engine_name()}) is local, "
            "so svcenv publishes ports on 127.0.0.1 only and connects there. To publish them beyond loopback, "
            f"set SVCENV_DOCKER_BIND (e.g. to {override}) as well."
        )
    return remote or "127.0.0.1"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("svcenv").warning("%s", message)


def has_credentials(resolved: Resolved) -> bool:
    """Whether a client needs a secret to use the service (a password svcenv generated or was given)."""
    return any(resolved.secrets.values())


def refuse_unauthenticated(resolved: Resolved, remote: str | None, bind: str) -> None:
    """Refuse to publish a service without credentials beyond loopback unless ``SVCENV_DOCKER_BIND`` opts in."""
    if remote is None or not resolved.ports or has_credentials(resolved) or os.environ.get("SVCENV_DOCKER_BIND"):
        return
    raise ConfigurationError(
        f"service {resolved.name!r} takes no credentials, and the engine at {engine_name()} is remote: its "
        f"ports would be published on {bind}, where anyone who reaches that host could use it. Give it a "
        f"password if its kind takes one, or opt in with SVCENV_DOCKER_BIND={bind}."
    )


def _why(exc: BaseException) -> str:
    """The cause in a few words (requests wraps it in a pool's retry error): "[Errno 111] Connection
    refused", "Read timed out", ..."""
    text = " ".join(str(exc).split())
    errno = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
    if errno:
        return errno.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    return text[:200] or type(exc).__name__


@contextlib.contextmanager
def engine_calls(engine: str, what: str) -> Iterator[None]:
    """Turn "the engine does not answer" (refused, reset, timed out, a name that no longer resolves)
    into a :class:`~svcenv.errors.BackendUnavailable` that names the ``engine`` and ``what`` was asked."""
    import requests.exceptions

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError)
    try:
        yield
    except lost as exc:  # the engine's own answers (docker.errors.APIError) pass through
        said = _why(exc)
        raise BackendUnavailable(
            f"docker: the engine at {engine} does not answer ({what}: {said}). Is it still running? "
            "What svcenv left there is removed when it answers again (by the reaper, or `python -m svcenv prune`)."
        ) from exc


def hub_image(image: str) -> str:
    """The image svcenv checks, pulls and creates for ``image``.

    ``TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX`` (e.g. a registry mirror), if set, is
    prepended here and nowhere else, so the check and the create agree.
    """
    return os.environ.get("TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX", "") + image


def ensure_image(client: DockerClient, resolved: Resolved) -> None:
    """Make sure ``resolved.image`` (exactly that name) is on the engine: pull it, or refuse."""
    import docker.errors

    images = client.images
    try:
        images.get(resolved.image)
        return
    except docker.errors.ImageNotFound:
        pass
    hint = f"SVCENV_{resolved.service.kind.upper()}_IMAGE" if resolved.service.kind != "service" else "image="
    if os.environ.get("SVCENV_PULL", "missing").lower() == "never":
        raise ImageUnavailable(
            f"image {resolved.image!r} is not on the engine and SVCENV_PULL=never forbids pulling it. "
            f"Build or pull it first, or choose another image with {hint}."
        )
    try:
        images.pull(resolved.image)
    except docker.errors.APIError as exc:
        said = " ".join(str(exc.explanation or exc).split())
        raise ImageUnavailable(
            f"image {resolved.image!r} is not on the engine and could not be pulled ({said}). "
            f"Build or pull it first, or choose another image with {hint}."
        ) from exc


@contextlib.contextmanager
def vanished(image: str) -> Iterator[None]:
    """An image that went missing after svcenv checked it (removed meanwhile) is an ImageUnavailable.

    Nothing is pulled then: svcenv pulls only in its check (and the cache images are in no registry).
    """
    import docker.errors

    try:
        yield
    except docker.errors.ImageNotFound as exc:
        said = " ".join(str(exc.explanation or exc).split())
        never = os.environ.get("SVCENV_PULL", "missing").lower() == "never"
        raise ImageUnavailable(
            f"image {image!r} vanished from the engine after svcenv checked it (removed meanwhile, e.g. by "
            f"`docker rmi` or `python -m svcenv cache clear`: {said}); svcenv does not pull it at this point"
            + (" (and SVCENV_PULL=never forbids pulling it)" if never else "")
            + ". Start again."
        ) from exc
