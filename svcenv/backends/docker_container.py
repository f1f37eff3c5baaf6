"""How the Docker backend creates a container: its configuration, its network and volumes, its files.

Kept apart from :mod:`svcenv.backends.docker` (which runs and removes
containers). The container options a descriptor may give are checked when the
descriptor is made (:mod:`svcenv.container`); here they become docker-py's
arguments.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from ..errors import ServiceExited
from .base import LABEL_SERVICE
from .docker_network import shared_labels, volume_name

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from ..descriptors import Resolved

__all__ = ["create_container", "docker_options", "put_files", "tar_of"]


def tar_of(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """An in-memory tar of ``files`` (absolute container path -> (content, mode)), owned by root, to
    extract at ``/``. It holds no directory entries: the engine creates missing parents (root, 0755)
    and leaves existing ones (``/run``, ``/tmp``) as they are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(str(PurePosixPath(path).relative_to("/")))
            info.size, info.mode, info.mtime = len(content), mode, int(time.time())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def put_files(container: Container, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Copy ``files`` into the (created, maybe not started) ``container``: nothing in its argv or config.

    An engine error (5xx) is tried twice more, 0.1 s apart: the copy is idempotent, and Podman 4.3
    now and then fails one under load ("passing bulk input to subprocess: write |1: broken pipe").
    """
    import docker.errors

    archive = tar_of(files)
    for attempt in range(3):
        try:
            copied = container.put_archive("/", archive)
            break
        except docker.errors.APIError as exc:
            if attempt == 2 or not exc.is_server_error():
                raise
            time.sleep(0.1)
    if not copied:
        raise ServiceExited(f"the engine refused to copy {sorted(files)} into the container")


def _thaw(value: object) -> Any:
    """A checked option value (tuples, frozen mappings) as docker-py takes it (lists, dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _nanoseconds(seconds: object) -> int:
    return int(float(cast(float, seconds)) * 1_000_000_000)


def docker_options(options: Mapping[str, object]) -> dict[str, Any]:
    """docker-py's ``containers.create`` arguments for checked container ``options``."""
    from docker.types import Ulimit

    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        plain = _thaw(value)
        if name == "cpus":
            kwargs["nano_cpus"] = int(float(plain) * 1_000_000_000)
        elif name == "ulimits":
            limits = {k: (v, v) if isinstance(v, int) else tuple(v) for k, v in plain.items()}
            kwargs["ulimits"] = [Ulimit(name=k, soft=soft, hard=hard) for k, (soft, hard) in limits.items()]
        elif name == "healthcheck":
            test = plain["test"]
            check: dict[str, Any] = {"test": ["CMD-SHELL", test] if isinstance(test, str) else test}
            for key in ("interval", "timeout", "start_period"):
                if key in plain:
                    check[key] = _nanoseconds(plain[key])
            if "retries" in plain:
                check["retries"] = int(plain["retries"])
            kwargs["healthcheck"] = check
        else:
            kwargs[name] = plain
    return kwargs


def create_container(
    client: DockerClient,
    resolved: Resolved,
    labels: Mapping[str, str],
    bind: str,
    env_id: str,
    network: str,
    declared: Sequence[str] = (),
) -> Container:
    """Create (not start) the container of ``resolved`` on ``network``, with its service name as alias.

    ``declared``: the image's ``VOLUME`` paths. Each one the descriptor does not mount gets an
    anonymous volume that carries the environment's labels (removed with the container, as the
    engine's own would be): should that removal fail, the label sweeps and the reaper still find it.
    ``containers.create`` never pulls (docker-py's ``containers.run`` would).
    """
    from docker.types import Mount

    endpoint = client.api.create_endpoint_config(aliases=[resolved.name])
    mounts = {
        volume_name(env_id, name): {"bind": path.removesuffix(":ro"), "mode": "ro" if path.endswith(":ro") else "rw"}
        for name, path in resolved.volumes.items()
    }
    taken = {m["bind"] for m in mounts.values()} | set(resolved.tmpfs)
    anonymous = [
        Mount(target=path, source=None, type="volume", labels=shared_labels(labels))
        for path in declared
        if path not in taken
    ]
    return client.containers.create(
        resolved.image,
        command=list(resolved.command) if resolved.command is not None else None,
        environment=dict(resolved.env),
        # docker-py takes (host_ip,) as "this interface, any free port" (its stubs do not say so).
        ports={f"{port}/tcp": cast(Any, (bind,)) for port in resolved.ports},
        labels={**resolved.service.labels, **labels, LABEL_SERVICE: resolved.name},
        name=f"svcenv-{env_id}-{resolved.name}",
        tmpfs=dict.fromkeys(resolved.tmpfs, ""),
        entrypoint=list(resolved.entrypoint) if resolved.entrypoint else None,
        network=network,
        networking_config={network: endpoint},
        volumes=cast(Any, mounts),
        mounts=anonymous or None,
        detach=True,
        **docker_options(resolved.options),
    )


def follow_container(container: Container, tail: int | None, stop: threading.Event | None) -> Iterator[str]:
    """``container``'s log line by line as the engine streams it (the last ``tail`` lines first),
    until the container exits or ``stop`` is set (the stream is then closed from another thread)."""
    import docker.errors

    stop = stop or threading.Event()
    stream = container.logs(stream=True, follow=True, tail=tail if tail is not None else "all")
    done = threading.Event()

    def close_on_stop() -> None:
        while not done.wait(0.1):
            if stop.is_set():
                stream.close()
                return

    threading.Thread(target=close_on_stop, name="svcenv-log-closer", daemon=True).start()
    pending = b""
    try:
        for chunk in stream:
            *lines, pending = (pending + bytes(chunk)).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
    except (docker.errors.APIError, OSError, ValueError, AttributeError):
        if not stop.is_set():  # a closed stream ends the way a broken one does
            raise
    finally:
        done.set()  # close_on_stop ends
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _stamp(stamp: str) -> tuple[int, int]:
    """An engine log timestamp (RFC 3339, nanoseconds, trailing zeros trimmed) as (seconds, nanoseconds)."""
    import calendar

    base, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds, int((fraction + "000000000")[:9])


def log_since(container: Container, cursor: object | None) -> tuple[str, object]:
    """What ``container`` logged after the line stamped ``cursor`` (None: from the start), and the stamp
    of its last line: the engine is asked from that moment on, so a long log is not read again."""
    last = cursor if isinstance(cursor, tuple) else None
    since = {"since": last[0] + last[1] / 1e9 - 1e-6} if last else {}
    raw = bytes(container.logs(timestamps=True, **since)).decode("utf-8", errors="replace")
    out: list[str] = []
    overlap = last is not None
    stamp = ""
    for line in raw.splitlines(keepends=True):
        stamp, _, text = line.partition(" ")
        if overlap:  # the lines up to the cursor's come again: the engine's since is inclusive
            try:
                if _stamp(stamp) <= last:  # type: ignore[operator]
                    continue
            except ValueError:
                pass
            overlap = False
        out.append(text)
    try:
        following = _stamp(stamp) if stamp else last
    except ValueError:
        following = last
    return "".join(out), following
