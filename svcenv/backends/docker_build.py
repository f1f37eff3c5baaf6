"""Images that ``Service(build=...)`` describes: built on the engine, cached by what goes into them.

The tag is ``svcenv-build/<service>:<hash>``. The hash covers every file of the
context that ``.dockerignore`` leaves (its path, type, mode and content; not its
mtime, as Docker's own cache), the Dockerfile (also one outside the context), the
build args, the target stage and the platform. An image with that tag and hash on
the engine is used as it is: an unchanged context is never built again. Two
processes that miss the same hash build it once (a lock per hash). The build
goes through docker-py's low-level API, so the log streams (at debug level on
the ``svcenv`` logger) and its last lines are at hand when the build fails.

The image itself is not in the hash: a ``FROM`` image that changes under the same
name does not invalidate a built image (remove it: ``docker rmi``, or every build
at once with :func:`clear`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._paths import cache_dir
from .._util import file_lock
from ..container import BuildSpec, build_repository
from ..errors import BuildFailed, ConfigurationError, ServiceFailure
from .base import (
    LABEL_ENVIRONMENT,
    LABEL_KEEP,
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_PROJECT,
    LABEL_REUSE_HASH,
    LABEL_SERVICE,
    LABEL_STATE_DIR,
)

if TYPE_CHECKING:
    from docker import DockerClient

    from ..descriptors import Service

__all__ = ["BUILD_LABEL", "HASH_LABEL", "clear", "context_digest", "ensure_built", "entries", "image_tag"]

BUILD_LABEL = "svcenv.build"
HASH_LABEL = "svcenv.build-hash"
FORMAT = "1"
"""Bumped when what the hash covers changes."""
BUILD_TIMEOUT = 600
"""Seconds the engine may stay silent during a build (a long ``RUN`` step) before svcenv gives up."""
LOG_TAIL = 25
"""Lines of the build log a :class:`~svcenv.errors.BuildFailed` carries."""

log = logging.getLogger("svcenv")


def _context(service_name: str, build: BuildSpec) -> tuple[Path, str | None, Path]:
    """(context directory, the Dockerfile relative to it or None if outside, the Dockerfile's path)."""
    root = build.context.expanduser().resolve()
    if not root.is_dir():
        raise ConfigurationError(f"service {service_name!r}: build context {str(build.context)!r} is not a directory")
    given = Path(build.dockerfile or "Dockerfile").expanduser()
    dockerfile = given if given.is_absolute() else root / given
    if not dockerfile.is_file():
        raise ConfigurationError(f"service {service_name!r}: no Dockerfile at {dockerfile}")
    inside = os.path.relpath(dockerfile.resolve(), root)
    return root, None if inside.startswith("..") else inside, dockerfile


def _ignore_patterns(root: Path) -> list[str]:
    """``.dockerignore``'s patterns, read as docker-py reads them for the context it sends."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_digest(service_name: str, build: BuildSpec, platform: str | None = None) -> str:
    """The hash of everything the image is built from (see the module's docstring)."""
    from docker.utils.build import exclude_paths

    root, inside, dockerfile = _context(service_name, build)
    digest = hashlib.sha256()
    header = {"format": FORMAT, "dockerfile": inside, "args": dict(build.args), "target": build.target}
    digest.update(json.dumps({**header, "platform": platform}, sort_keys=True).encode())
    if inside is None:
        digest.update(b"outside\0" + dockerfile.read_bytes())
    for relative in sorted(exclude_paths(str(root), _ignore_patterns(root), dockerfile=inside)):
        path = root / relative
        info = path.lstat()
        digest.update(f"\0{relative}\0{stat.S_IFMT(info.st_mode)}\0{stat.S_IMODE(info.st_mode)}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def image_tag(service_name: str, digest: str) -> str:
    """The tag of the image built for ``service_name`` from a context with ``digest``."""
    return f"{build_repository(service_name)}:{digest[:16]}"


def _have(client: DockerClient, tag: str, digest: str) -> bool:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(HASH_LABEL) == digest


_ENVIRONMENT_LABELS = frozenset(
    (LABEL_ENVIRONMENT, LABEL_OWNER_PID, LABEL_SERVICE, LABEL_KEEP, LABEL_REUSE_HASH, LABEL_STATE_DIR, LABEL_PROJECT)
) | frozenset((LABEL_OWNER_HOST, LABEL_OWNER_START))


def ensure_built(client: DockerClient, service: Service, labels: Mapping[str, str] | None = None) -> str:
    """The tag of ``service``'s built image: on the engine already, or built now.

    A new image also carries ``labels``: those of the environment that built it, but for the ones
    that name that environment, its owner or its services (the image is a cache that outlives it).

    Raises :class:`~svcenv.errors.BuildFailed` (with the log's last lines) if the build fails.
    """
    build = service.build
    assert isinstance(build, BuildSpec)  # the descriptor made it one
    platform = service.options.get("platform")
    platform = platform if isinstance(platform, str) else None
    digest = context_digest(service.name, build, platform)
    tag = image_tag(service.name, digest)
    if _have(client, tag, digest):
        log.debug("svcenv: %s: image %s is built already", service.name, tag)
        return tag
    with file_lock(cache_dir() / "locks" / f"build-{digest[:16]}.lock"):
        if not _have(client, tag, digest):
            own = {k: v for k, v in (labels or {}).items() if k not in _ENVIRONMENT_LABELS}
            _build(client, service, build, tag, digest, platform, own)
    return tag


def _build(
    client: DockerClient,
    service: Service,
    build: BuildSpec,
    tag: str,
    digest: str,
    platform: str | None,
    labels: Mapping[str, str],
) -> None:
    import docker.errors

    root = build.context.expanduser().resolve()
    lines: deque[str] = deque(maxlen=LOG_TAIL)
    error: str | None = None
    log.debug("svcenv: %s: building %s from %s", service.name, tag, root)
    kwargs: dict[str, Any] = {"platform": platform} if platform else {}
    try:
        for chunk in client.api.build(
            path=str(root),
            dockerfile=build.dockerfile,
            tag=tag,
            buildargs=dict(build.args),
            target=build.target,
            labels={**labels, BUILD_LABEL: "true", HASH_LABEL: digest},
            rm=True,
            forcerm=True,  # the intermediate containers go, also when a step fails
            pull=False,
            decode=True,
            timeout=BUILD_TIMEOUT,
            **kwargs,
        ):
            for line in str(chunk.get("stream") or "").splitlines():
                if line.strip():
                    lines.append(line.rstrip())
                    log.debug("svcenv: %s: build: %s", service.name, line.rstrip())
            if chunk.get("error"):
                error = " ".join(str(chunk["error"]).split())
    except docker.errors.APIError as exc:
        error = " ".join(str(exc.explanation or exc).split())
    except docker.errors.DockerException as exc:
        error = " ".join(str(exc).split())
    if error is None and not _have(client, tag, digest):
        error = "the engine reported no error, but the image is not there"
    if error is not None:
        reason = f"could not build its image from {root}: {error}"
        raise BuildFailed([ServiceFailure(service.name, "docker", tag, reason, "\n".join(lines))])


def entries(client: DockerClient) -> list[dict[str, str]]:
    """The images built for ``Service(build=...)``: tag, size and age."""
    return [
        {
            "image": ", ".join(image.tags) or image.short_id,
            "size_mb": f"{image.attrs.get('Size', 0) / 1e6:.0f}",
            "created": str(image.attrs.get("Created", "")),
        }
        for image in client.images.list(filters={"label": f"{BUILD_LABEL}=true"})
    ]


def clear(client: DockerClient) -> int:
    """Remove every image svcenv built (unless a container uses it); return how many went."""
    import docker.errors

    removed = 0
    for image in client.images.list(filters={"label": f"{BUILD_LABEL}=true"}):
        for tag in image.tags or [str(image.id)]:
            try:
                client.images.remove(tag)
                removed += 1
            except docker.errors.APIError:
                pass  # in use (or gone): left for a later clear
    return removed
