"""The Docker backend, on the Docker SDK (docker-py) and one client per backend.

What svcenv does, and why:

* Containers carry svcenv's labels only (``svcenv.*`` and those the caller
  passes): no ``org.testcontainers.*`` label, so a Ryuk that testcontainers
  starts in the same process never removes svcenv's (kept or reused) containers.
* Each environment has a bridge network of its own, made on its first
  container: every container joins it (and no other: never the default bridge,
  nor the caller's own network, which testcontainers would attach when it runs
  inside a container) with its service name as alias, so services reach each
  other by name (:attr:`Instance.internal_host`). It goes with the last container
  (see :mod:`svcenv.backends.docker_network`), as do the environment's named volumes.
* ``Service(build=...)`` images are built on the engine and cached by the hash of
  their context (see :mod:`svcenv.backends.docker_build`).
* Where ports publish is decided from the engine's URL alone: on 127.0.0.1 for a
  local engine (a unix socket, or TCP/ssh to loopback), whatever else is set; for a
  remote engine (``DOCKER_HOST=tcp://HOST:PORT``/``ssh://HOST``) on the one address of
  its host that svcenv connects to (``HOST``, resolved), never on every interface.
  ``SVCENV_DOCKER_BIND`` is the explicit opt-in to any other address. On a remote
  engine a service that takes no credentials (``Redis(password="")``, Elasticsearch,
  a generic ``Service``) is refused unless ``SVCENV_DOCKER_BIND`` is set.
* svcenv connects to 127.0.0.1 for a local engine even when it runs inside a
  container (testcontainers would pick the bridge gateway), to the engine's host
  for a remote one. ``SVCENV_DOCKER_HOST_IP`` overrides that; so does
  ``TESTCONTAINERS_HOST_OVERRIDE`` for a remote engine, or a local one with
  ``SVCENV_DOCKER_BIND`` (alone on a local engine it would name an address where
  nothing is published: svcenv logs that it is not used).
* An engine that stops answering (refused, reset, timed out) is a
  :class:`~svcenv.errors.BackendUnavailable` naming it, from every call; the
  teardown stays bounded, and the reaper removes what is left once it answers again.
* No Ryuk: the environment removes its containers by label on every exit path.
  If the owner dies (even by SIGKILL), a small reaper process
  (:mod:`svcenv.backends._docker_reaper`) removes them instead: it watches the
  owner's pipe and the owner process itself (a forked child that inherited the
  pipe does not keep the containers alive), and a reaper that is killed is
  started again by the owner. ``SVCENV_REAPER=0`` turns it off. Nothing depends
  on pulling Ryuk's image.
* Containers are removed with their anonymous volumes (the postgres image
  declares a ``VOLUME``).
* The image checked, pulled or refused is the image created (see :func:`hub_image`).
  A missing image is pulled, unless ``SVCENV_PULL=never`` (compose's
  ``pull_policy: never``): then it is an :class:`~svcenv.errors.ImageUnavailable`
  at once, without asking any registry. svcenv's own tests run that way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any, cast

from .._util import flag, process_start
from ..errors import BackendUnavailable, ConfigurationError, ServiceExited
from ._route import direct_wanted
from .base import LABEL_ENVIRONMENT, Backend, Instance
from .docker_container import create_container, follow_container, log_since, put_files, tar_of
from .docker_host import (
    bind_address,
    engine_calls,
    engine_host,
    engine_name,
    engine_url,
    ensure_image,
    hub_image,
    refuse_unauthenticated,
    remote_host,
    vanished,
)
from .docker_network import Shared, bridge_address

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from ..descriptors import Resolved, Service

__all__ = ["DockerBackend", "DockerInstance", "put_files", "tar_of"]

PING_TIMEOUT = 5
"""Seconds an engine gets to answer svcenv's first ping."""

API_TIMEOUT = 60
"""Seconds any later call to the engine may take (docker-py's default)."""

REARMS = 5
"""How many times a reaper that exits while armed is started again within :data:`REARM_WINDOW_S`."""

REARM_WINDOW_S = 60.0

_BACKENDS: weakref.WeakSet[DockerBackend] = weakref.WeakSet()
"""Every Docker backend of this process: a fork's child makes each forget its reaper."""

_exiting = False
"""Set at interpreter exit: a reaper that ends then is not started again."""


def _forget_reapers_in_child() -> None:
    for backend in list(_BACKENDS):
        backend._after_fork_in_child()


def _at_exit() -> None:
    global _exiting
    _exiting = True


os.register_at_fork(after_in_child=_forget_reapers_in_child)
atexit.register(_at_exit)


def _watch_reaper(backend_ref: weakref.ref[DockerBackend], reaper: subprocess.Popen[bytes]) -> None:
    """A watcher thread: wait for ``reaper`` to exit, then tell its backend (unless that is gone)."""
    with contextlib.suppress(Exception):  # a daemon thread has no one to report to
        reaper.wait()
        backend = backend_ref()
        if backend is not None:
            backend._reaper_ended(reaper)


class DockerInstance(Instance):
    """A container created through the Docker SDK."""

    backend = "docker"

    def __init__(
        self,
        container: Container,
        host: str,
        ports: tuple[int, ...],
        post_start: Callable[[Container], None] | None = None,
        alias: str | None = None,
        on_removed: Callable[[], None] | None = None,
        engine: str | None = None,
        direct_on: str | None = None,
    ) -> None:
        self._engine = engine or engine_name()
        self._direct_on = direct_on
        self._post_start = post_start
        self._container = container
        self.id = str(container.id)
        self.host = host
        self._wanted = ports
        self.ports: dict[int, int] = {}
        self._removed = False
        self._alias = alias or host
        self._on_removed = on_removed

    @property
    def internal_host(self) -> str:
        """Its service name: the alias it has on the environment's network."""
        return self._alias

    @property
    def internal_ports(self) -> Mapping[int, int]:
        """Each container port as itself: on the network, nothing is published or mapped."""
        return {port: port for port in self._wanted}

    def start(self) -> None:
        with engine_calls(self._engine, f"starting container {self.id[:12]}"):
            self._start()

    def _start(self) -> None:
        self._container.start()
        self._container.reload()
        published = self._container.attrs["NetworkSettings"]["Ports"] or {}
        for port in self._wanted:
            bindings = published.get(f"{port}/tcp") or []
            if bindings:
                self.ports[port] = int(bindings[0]["HostPort"])
        if self._direct_on is not None:
            self.direct_host, self.direct_via = bridge_address(self._container.attrs, self._direct_on, self._wanted)
        status = self._status()
        if status not in (None, 0):  # 0 may be a one-shot job done already; a probe judges the others
            raise ServiceExited(f"exited with status {status} right after it started")
        if self._post_start is not None:
            self._post_start(self._container)

    def stop(self) -> None:
        if self._removed:
            return
        import docker.errors

        try:
            with engine_calls(self._engine, f"removing container {self.id[:12]}"):
                self._container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # "removal already in progress" means another path is removing it.
            if exc.status_code != 409:
                raise
        self._removed = True
        if self._on_removed is not None:
            self._on_removed()  # the environment's last container takes its network and volumes along

    def exit_status(self) -> int | None:
        import docker.errors

        try:
            with engine_calls(self._engine, f"asking for container {self.id[:12]}"):
                self._container.reload()
        except docker.errors.NotFound:
            return -1
        return self._status()

    def _status(self) -> int | None:
        state = self._container.attrs.get("State") or {}
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", -1))
        return None

    def health(self) -> tuple[str, str] | None:
        """Docker's view of the image's (or ``options["healthcheck"]``'s) HEALTHCHECK, asked now."""
        self.exit_status()  # reloads
        health = (self._container.attrs.get("State") or {}).get("Health")
        if not health:
            return None
        checks = health.get("Log") or [{}]
        return str(health.get("Status")), str(checks[-1].get("Output") or "").strip()

    def logs(self, tail: int | None = None) -> str:
        import docker.errors

        try:
            with engine_calls(self._engine, f"reading the log of container {self.id[:12]}"):
                raw = self._container.logs(tail=tail if tail is not None else "all")
        except docker.errors.APIError as exc:
            return f"(log unavailable: {exc})"
        return bytes(raw).decode("utf-8", errors="replace")

    def log_since(self, cursor: object | None) -> tuple[str, object]:
        """The lines the container wrote after ``cursor`` (its last line's timestamp), asked from then on."""
        with engine_calls(self._engine, f"reading the log of container {self.id[:12]}"):
            return log_since(self._container, cursor)

    def follow(self, tail: int | None = None, stop: threading.Event | None = None) -> Iterator[str]:
        """The container's log as the engine streams it (``docker logs --follow``)."""
        with engine_calls(self._engine, f"following the log of container {self.id[:12]}"):
            yield from follow_container(self._container, tail, stop)

    def exec(self, argv: list[str]) -> tuple[int, str]:
        with engine_calls(self._engine, f"running {argv[:1]} in container {self.id[:12]}"):
            code, output = self._container.exec_run(argv)
        return int(code if code is not None else -1), cast(bytes, output or b"").decode("utf-8", errors="replace")


class DockerBackend(Backend):
    """Runs each service as a container on the engine ``DOCKER_HOST`` names (or the local one)."""

    name = "docker"
    outlives_owner = True  # containers run on the engine, not in this process
    reusable = True

    def __init__(self) -> None:
        self._client: DockerClient | None = None
        self._host: str | None = None
        self._remote: str | None = None
        self._bind: str | None = None
        self._engine = engine_name()
        self._docker_host: str | None = None
        self._error: BackendUnavailable | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._reaper_stdin: IO[bytes] | None = None
        """The write end of the reaper's stdin (held here, not by the Popen, which its watcher holds)."""
        self._reaper_env = ""
        self._rearms: list[float] = []
        """When the reaper was started again in the last :data:`REARM_WINDOW_S` seconds."""
        self._reaper_lock = threading.Lock()  # services are created from several threads at once
        self._shared = Shared()
        self._lock = threading.Lock()
        self._reached: dict[str, set[str]] = {}
        """Environment id -> networks of the reused services it attached (its new containers join them)."""
        self._volumes_of: dict[str, tuple[str, ...]] = {}
        self._build_failures: dict[str, Exception] = {}
        """Service name -> why :meth:`prepare` could not build its image (raised again by create)."""
        _BACKENDS.add(self)

    def _arm_reaper(self, env_id: str) -> None:
        """Start the process that removes this environment's containers if this process dies.

        A daemon thread watches it: killed (or ended) while still armed, it is started again, at
        most :data:`REARMS` times in :data:`REARM_WINDOW_S` seconds; after that a
        :class:`~svcenv.TeardownWarning` says the environment is no longer protected.
        """
        if not flag("SVCENV_REAPER", default=True):
            return
        with self._reaper_lock:
            if self._reaper is not None:
                return
            self._start_reaper(env_id)

    def _start_reaper(self, env_id: str) -> None:
        """Start a reaper for ``env_id`` and its watcher (the caller holds ``_reaper_lock``)."""
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        if self._docker_host:  # the engine this backend uses, whatever DOCKER_HOST says by now
            env["DOCKER_HOST"] = self._docker_host
        owner = os.getpid()
        reaper = subprocess.Popen(
            [sys.executable, "-m", "svcenv.backends._docker_reaper", env_id, str(owner), process_start(owner) or "-"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            bufsize=0,  # `disarm` goes out at once: nothing is left in a buffer a fork could copy
            start_new_session=True,  # a Ctrl-C for the owner's process group must not reach it
        )
        # The backend alone holds the write end (the watcher holds the Popen): a backend that is
        # garbage-collected unstopped closes it, and the reaper reaps, as before there was a watcher.
        self._reaper_stdin, reaper.stdin = reaper.stdin, None
        self._reaper = reaper
        self._reaper_env = env_id
        self._tell_reaper_owed()  # a reaper started again learns what its predecessor was told
        watcher = threading.Thread(
            target=_watch_reaper,
            args=(weakref.ref(self), reaper),
            name=f"svcenv-reaper-watch-{env_id[:12]}",
            daemon=True,  # never keeps the interpreter alive; blocked in waitpid, it is abandoned at exit
        )
        watcher.start()

    def _reaper_ended(self, reaper: subprocess.Popen[bytes]) -> None:
        """The watcher's report: ``reaper`` exited. Start another if it was still armed (not disowned)."""
        with self._reaper_lock:
            if self._reaper is not reaper or _exiting:
                return  # disowned, closed, replaced, or this process is exiting: nothing to protect
            now = time.monotonic()
            self._rearms = [t for t in self._rearms if now - t < REARM_WINDOW_S]
            self._forget_reaper()
            env_id = self._reaper_env
            why = (
                f"ended (status {reaper.returncode}) again after {REARMS} restarts within {REARM_WINDOW_S:.0f}s"
                " and was not started again"
            )
            if len(self._rearms) < REARMS:
                self._rearms.append(now)
                try:
                    self._start_reaper(env_id)
                    return
                except (OSError, subprocess.SubprocessError) as exc:
                    why = f"exited (status {reaper.returncode}) and could not be started again: {exc}"
        from ..environment import TeardownWarning

        warnings.warn(
            f"svcenv: the Docker reaper of environment {env_id} {why}: the environment is no longer "
            "protected against a crash of its owner; if this process dies, `python -m svcenv prune` "
            "removes what is left",
            TeardownWarning,
            stacklevel=1,
        )

    def _tell_reaper_owed(self) -> None:
        """Send the reaper each network or volume whose removal is not proven (``owe KIND NAME`` lines):
        once the owner is gone, it removes them by name and waits for proof (see ``docker_network.unproven``).
        The caller holds ``_reaper_lock``."""
        stdin = self._reaper_stdin
        if stdin is None:
            return
        lines = "".join(f"owe {item.kind} {item.name}\n" for item in self._shared.owed(self._reaper_env))
        if lines:
            with contextlib.suppress(OSError, ValueError):
                stdin.write(lines.encode())

    def _forget_reaper(self) -> None:
        """Drop the reaper without a word to it (closing our write end; the caller holds the lock)."""
        stdin, self._reaper_stdin, self._reaper = self._reaper_stdin, None, None
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()

    def _after_fork_in_child(self) -> None:
        """In a fork of the owner: close the child's copy of the reaper's pipe and forget the reaper.

        The child must neither keep the reaper from seeing its owner's end nor disarm it. The
        descriptor is replaced by /dev/null rather than closed, so that the file object, whenever it
        is collected, closes that and not some later descriptor with the same number.
        """
        self._reaper_lock = threading.Lock()  # another thread of the parent may have held it
        stdin, self._reaper_stdin, self._reaper = self._reaper_stdin, None, None
        self._rearms = []
        if stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.dup2(devnull, stdin.fileno(), inheritable=False)
                finally:
                    os.close(devnull)

    def disown(self) -> None:
        """Disarm the reaper: the containers may outlive this process (they are still removed by stop())."""
        with self._reaper_lock:  # the watcher re-arms under it too: after this, nothing re-arms
            reaper, stdin = self._reaper, self._reaper_stdin
            self._reaper = self._reaper_stdin = None
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.write(b"disarm")
            with contextlib.suppress(OSError):
                stdin.close()
        if reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(timeout=5)

    @property
    def client(self) -> DockerClient:
        """The backend's one Docker SDK client (made, and the engine pinged, on first use)."""
        if self._client is None:
            self.check()
        assert self._client is not None
        return self._client

    def supports(self, service: Service) -> str | None:
        """None if a container can run ``service`` here; else why not (no engine, or no image to run)."""
        try:
            _ = service.effective_image
        except ConfigurationError as exc:  # a command without image is a local process's
            return f"docker: {exc} (a command without image runs on the local backend)"
        return super().supports(service)

    def check(self) -> None:
        if self._client is not None:
            return
        if self._error is not None:
            raise self._error
        client: DockerClient | None = None
        self._docker_host = engine_url()  # DOCKER_HOST, or a Podman socket when there is no other
        self._engine = engine_name()
        try:
            import docker

            # A short timeout for the version negotiation and the ping: an engine
            # that does not answer fails in seconds. Later calls get the usual one.
            environment = {**os.environ, "DOCKER_HOST": self._docker_host} if self._docker_host else None
            client = docker.from_env(version="auto", timeout=PING_TIMEOUT, environment=environment)
            client.ping()
            client.api.timeout = API_TIMEOUT
        except Exception as exc:
            if client is not None:
                client.close()
            self._error = BackendUnavailable(
                f"docker: no Docker engine answers at {self._engine}: {' '.join(str(exc).split())}. "
                "Start the engine (e.g. `dockerd &`) or point DOCKER_HOST at one."
            )
            raise self._error from exc
        try:
            self._remote = remote_host(client.api.base_url)
            self._bind = bind_address(self._remote)
            self._host = engine_host(client)
        except BackendUnavailable as exc:
            client.close()
            self._error = exc
            raise
        self._client = client

    @property
    def host(self) -> str:
        self.check()
        assert self._host is not None
        return self._host

    def describe(self) -> list[str]:
        """The engine: where, which version and API version (negotiated), remote or not, its memory;
        and what Elasticsearch needs of its host (``vm.max_map_count``)."""
        try:
            self.check()
        except BackendUnavailable as exc:
            return [str(exc)]
        with engine_calls(self._engine, "asking the engine for its version"):
            version, info = self.client.version(), self.client.info()
        where = f" (remote, at {self._remote})" if self._remote else ""
        product = "podman" if "podman" in str(version.get("Components", "")).lower() else "docker"
        lines = [
            f"engine {self._engine}{where}: {product} {version.get('Version')}, API {version.get('ApiVersion')} "
            f"(minimum {version.get('MinAPIVersion')}; svcenv's client negotiated {self.client.api.api_version})",
            f"engine memory {int(info.get('MemTotal') or 0) / 2**30:.1f} GiB, {info.get('NCPU')} CPUs, "
            f"{info.get('OperatingSystem')}; ports publish on {self.bind_address}",
        ]
        if self._remote:
            lines.append("vm.max_map_count: on the engine's host (Elasticsearch needs >= 262144: sysctl it there)")
        else:
            try:
                count = int(open("/proc/sys/vm/max_map_count").read())  # noqa: SIM115
            except (OSError, ValueError):
                count = 0
            verdict = "ok" if count >= 262144 else "too low for Elasticsearch: sysctl -w vm.max_map_count=262144"
            lines.append(f"vm.max_map_count {count or 'unknown'}: {verdict}")
        return lines

    @property
    def remote(self) -> str | None:
        """The engine's host if the engine is remote (from its URL), else None."""
        self.check()
        return self._remote

    @property
    def bind_address(self) -> str:
        """Where ports publish: 127.0.0.1 for a local engine, the engine host's address for a remote one
        (see :func:`~svcenv.backends.docker_host.bind_address`)."""
        self.check()
        assert self._bind is not None
        return self._bind

    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> DockerInstance:
        self.check()
        with engine_calls(self._engine, f"creating service {resolved.name!r}"):
            return self._create(resolved, labels)

    def _create(self, resolved: Resolved, labels: Mapping[str, str]) -> DockerInstance:
        from . import pgcache

        self._arm_reaper(labels.get(LABEL_ENVIRONMENT, ""))
        resolved = self._image_for(resolved, labels)
        refuse_unauthenticated(resolved, self._remote, self.bind_address)
        post_start: Callable[[Container], None] | None = None
        if pgcache.enabled(resolved):
            # The cache image is built from the image just checked, on this engine: it is used as named.
            with vanished(resolved.image):
                resolved, _ = pgcache.prepare(self.client, resolved, labels)
            timeout = resolved.service.effective_timeout
            final = resolved
            post_start = lambda container: pgcache.set_password(container, final, timeout)  # noqa: E731
        bind = self.bind_address
        env_id = labels.get(LABEL_ENVIRONMENT, "x")
        network = self._shared.acquire(self.client, labels, resolved.volumes)
        client = self.client
        try:
            # An image removed since the check is an ImageNotFound here, whatever SVCENV_PULL says.
            with vanished(resolved.image):
                declared = self._declared_volumes(resolved.image)
                created = create_container(client, resolved, labels, bind, env_id, network, declared)
            with self._lock:
                reached = sorted(self._reached.get(env_id, ()))
            for other in reached:  # the networks of the reused services it may refer to
                try:
                    client.api.connect_container_to_network(str(created.id), other)
                except BaseException:
                    with contextlib.suppress(Exception):
                        created.remove(force=True, v=True)
                    raise
            if resolved.files:
                try:
                    put_files(created, resolved.files)
                except BaseException:
                    with contextlib.suppress(Exception):
                        created.remove(force=True, v=True)
                    raise
        except BaseException:
            self._shared.release(client, env_id)
            raise
        release = lambda: self._shared.release(client, env_id)  # noqa: E731
        # Straight to the container's bridge address when this host routes there (a local engine only).
        direct_on = network if self._remote is None and direct_wanted() else None
        return DockerInstance(
            created, self.host, resolved.ports, post_start, resolved.name, release, self._engine, direct_on
        )

    def _declared_volumes(self, image: str) -> tuple[str, ...]:
        """The ``VOLUME`` paths ``image`` declares (asked once per image name and backend)."""
        with self._lock:
            known = self._volumes_of.get(image)
        if known is None:
            config = self.client.images.get(image).attrs.get("Config") or {}
            known = tuple(sorted(config.get("Volumes") or {}))
            with self._lock:
                self._volumes_of[image] = known
        return known

    def prepare(self, service: Service, labels: Mapping[str, str]) -> None:
        """Build ``service``'s image now (a service that waits for others is built meanwhile)."""
        if service.build is None:
            return
        from .docker_build import ensure_built

        self.check()
        try:
            ensure_built(self.client, service, labels)
        except Exception as exc:  # create() reports it, in its place in the start
            with self._lock:
                self._build_failures[service.name] = exc

    def _image_for(self, resolved: Resolved, labels: Mapping[str, str]) -> Resolved:
        """``resolved`` with the image to create: built now (``build=``), else checked or pulled."""
        if resolved.service.build is not None:
            from .docker_build import ensure_built

            with self._lock:
                failed = self._build_failures.pop(resolved.name, None)
            if failed is not None:
                raise failed
            return replace(resolved, image=ensure_built(self.client, resolved.service, labels))
        resolved = replace(resolved, image=hub_image(resolved.image))
        ensure_image(self.client, resolved)
        return resolved

    def cleanup(self, labels: Mapping[str, str]) -> int:
        if self._client is None:
            return 0
        from ._docker_reaper import remove_labelled
        from .docker_network import remove_unused

        with engine_calls(self._engine, "removing the environment's containers, network and volumes"):
            removed = remove_labelled(self._client, labels)
            remove_unused(self._client, labels)  # the network and volumes, unless a container still uses them
            # What a removal failed to remove is asked for by name: a list is no proof it went.
            try:
                self._shared.settle(self._client, labels.get(LABEL_ENVIRONMENT, "x"))
            except Exception:
                with self._reaper_lock:
                    self._tell_reaper_owed()  # it stays armed, and must see these gone before it is done
                raise
        return removed

    # -- containers another process started (see docker_records) ----------------------------

    def attach(self, snapshot: Mapping[str, Any]) -> Instance:
        from .docker_records import AttachedContainer

        return AttachedContainer(lambda: self.client, snapshot)

    def join(self, instance: Instance, name: str, labels: Mapping[str, str]) -> Callable[[], None] | None:
        """Let the containers this environment creates from now on reach the reused container by ``name``:
        they also join the network it is on (connecting *it* to ours would make the engine publish its
        ports anew, on other host ports, under the feet of whoever uses them). Returns what undoes that."""
        from .docker_records import AttachedContainer

        if not isinstance(instance, AttachedContainer):
            return None
        env_id = labels.get(LABEL_ENVIRONMENT, "x")
        with engine_calls(self._engine, f"inspecting container {instance.id[:12]}"):
            networks = instance.networks()
        with self._lock:
            self._reached.setdefault(env_id, set()).update(networks)
        instance.joined_as = name

        def leave() -> None:
            with self._lock:
                self._reached.pop(env_id, None)

        return leave

    def remove_labelled(self, labels: Mapping[str, str]) -> int:
        from .docker_records import remove_labelled

        return remove_labelled(self.client, labels)

    def prune(self, *, only: Mapping[str, str], keep_alive: Callable[[Mapping[str, str]], bool]) -> int:
        """See :meth:`Backend.prune`; raises :class:`~svcenv.backends.docker_records.PruneIncomplete`
        (after trying them all) if the engine refused to remove some containers."""
        from .docker_records import prune

        try:
            self.check()
        except BackendUnavailable:
            return 0  # no engine answers: no containers to prune
        return prune(self.client, only, keep_alive)

    # -- the pre-initialised Postgres images (see pgcache) --------------------------------

    def cached_images(self) -> list[dict[str, str]]:
        """The pre-initialised Postgres images on the engine."""
        from . import pgcache

        return pgcache.entries(self.client)

    def clear_cache(self) -> int:
        """Remove the pre-initialised Postgres images; return how many."""
        from . import pgcache

        return pgcache.clear(self.client)

    def built_images(self) -> list[dict[str, str]]:
        """The images built for ``Service(build=...)`` on the engine."""
        from .docker_build import entries

        return entries(self.client)

    def image_problem(self, service: Service) -> str | None:
        """See :meth:`Backend.image_problem`."""
        import docker.errors

        if service.build is not None or not service.effective_image:
            return None
        image = hub_image(service.effective_image)
        try:
            self.client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            return f"image {image} could not be looked up on the engine ({' '.join(str(exc).split())})"
        if os.environ.get("SVCENV_PULL", "missing").lower() == "never":
            return f"image {image} is missing on the engine and SVCENV_PULL=never forbids pulling it"
        return f"image {image} is missing on the engine: it would be pulled at the first start"

    def clear_builds(self) -> int:
        """Remove the images built for ``Service(build=...)`` that no container uses; return how many."""
        from .docker_build import clear

        return clear(self.client)

    def close(self) -> None:
        self.disown()  # everything is removed by now: the reaper has nothing left to do
        if self._client is not None:
            self._client.close()
