"""Where the engine is: the address to connect to for published ports; the image to use, and that it is there."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ImageUnavailable

if TYPE_CHECKING:
    from docker import DockerClient

    from .._resolved import Resolved

__all__ = ["engine_host", "ensure_image", "hub_image", "vanished"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_host(client: DockerClient) -> str:
    """The address at which this process reaches ports the engine publishes (``client``: a docker-py client)."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.docker_client import get_docker_host_hostname

    override = os.environ.get("SVCENV_DOCKER_HOST_IP") or testcontainers_config.tc_host_override
    if override:
        return override
    ssh_host = get_docker_host_hostname()
    if ssh_host:
        return ssh_host
    url = urllib.parse.urlparse(client.api.base_url)
    remote = url.scheme in ("http", "https", "tcp") and url.hostname not in (None, "localnpipe")
    if remote and url.hostname and not _is_loopback(url.hostname):
        return url.hostname
    return "127.0.0.1"


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
