"""Where the engine is: the address to connect to for published ports, and the image name to use."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = ["engine_host", "hub_image"]


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
