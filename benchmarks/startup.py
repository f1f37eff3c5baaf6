"""Start-up benchmark: svcenv vs testcontainers (serial) vs the raw ``docker run`` floor.

Usage (``nox -s bench`` runs it with the test images)::

    python benchmarks/startup.py [--rounds N] [--json PATH] [--services pg,redis,es]

Each round measures, in a rotating order so that drift on the machine hits every
method alike, the wall time from "nothing running" to "every service usable":

``svcenv``
    ``Environment(Postgres(), Redis(), Elasticsearch()).start()`` until it returns
    (each service's readiness probe speaks the real protocol); ``stop()`` is timed
    separately. The per-service phases come from ``env.timings``.
``testcontainers-serial``
    What a user writes today: ``PostgresContainer`` then ``RedisContainer`` then a
    ``DockerContainer`` for Elasticsearch waiting for HTTP 200 on
    ``/_cluster/health``, started one after another with testcontainers' own wait
    strategies and default settings, each used once (psycopg ``SELECT 1``, redis
    ``PING``, ``GET /_cluster/health``). Teardown (``stop()`` of each) is timed
    separately.
``raw-floor``
    The floor for a tool that starts services in parallel: one ``docker run -d -p
    127.0.0.1::PORT`` per service, all launched at once, each then probed every
    10 ms with the real protocol until it answers; ``docker rm -fv`` is timed
    separately. "Slowest service" is the largest per-service time (from that
    service's own ``docker run`` to its first successful probe) of the round.

Every container is removed after each method, also on error, with its anonymous
volumes; at the end the script checks that nothing it started is left and that
the engine's dangling volumes did not grow, and exits 1 if something of its own
leaked or a sample failed. All traffic goes to 127.0.0.1.

Images come from ``SVCENV_POSTGRES_IMAGE``/``SVCENV_REDIS_IMAGE``/
``SVCENV_ELASTICSEARCH_IMAGE``; any that is unset falls back (with a printed note)
to the images ``tests/images/build.sh`` builds. All three methods run the same images.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

# testcontainers starts a "Ryuk" reaper container (image testcontainers/ryuk) before its first
# container, to remove containers if the test process dies. That image cannot be pulled here (no
# registry is reachable) and the benchmark removes everything itself in try/finally blocks, so
# Ryuk is off. testcontainers reads this variable when it is imported: it must be set before.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"

LOOPBACK = "127.0.0.1"
BENCH_LABEL = "svcenv-bench.run"
SVCENV_LABEL = "svcenv.environment"
POLL_S = 0.010
METHODS = ("svcenv", "testcontainers-serial", "raw-floor")
ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Kind:
    """One service kind: how each method runs and probes it."""

    key: str  # name on the command line
    name: str  # svcenv's service name
    image_var: str
    fallback_image: str
    port: int


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind("pg", "postgres", "SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15", 5432),
        Kind("redis", "redis", "SVCENV_REDIS_IMAGE", "svcenv-test/redis:7", 6379),
        Kind("es", "elasticsearch", "SVCENV_ELASTICSEARCH_IMAGE", "svcenv-test/es-standin:8", 9200),
    )
}
ES_ENV = {"discovery.type": "single-node", "xpack.security.enabled": "false"}


# -- small helpers -------------------------------------------------------------------------------


def docker_cli(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    """Run the docker CLI and return its stdout (raises with stderr on failure if ``check``)."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def container_ids(*filters: str) -> list[str]:
    args = [arg for f in filters for arg in ("--filter", f)]
    return docker_cli("ps", "-aq", "--no-trunc", *args).split()


def dangling_volumes() -> set[str]:
    return set(docker_cli("volume", "ls", "-qf", "dangling=true").split())


def all_volumes() -> set[str]:
    return set(docker_cli("volume", "ls", "-q").split())


def volumes_of(ids: list[str]) -> set[str]:
    """Names of the volumes mounted by the containers ``ids`` (those that still exist)."""
    if not ids:
        return set()
    out = docker_cli("inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", *ids, check=False)
    return set(out.split())


def remove_containers(ids: list[str]) -> None:
    """``docker rm -fv``; an id that is already gone is fine."""
    if ids:
        docker_cli("rm", "-fv", *ids, check=False)


def other_running_containers(own: set[str]) -> int:
    """Running containers this run did not start: a marker of concurrent load on the engine."""
    return len([c for c in docker_cli("ps", "-q", "--no-trunc").split() if c not in own])


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def postgres_select_1(url: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
        if row is None or row[0] != 1:
            raise RuntimeError(f"SELECT 1 answered {row!r}")


def redis_ping(port: int, password: str | None) -> None:
    import redis

    client = redis.Redis(
        host=LOOPBACK, port=port, password=password or None, socket_timeout=1, socket_connect_timeout=1
    )
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


def es_health(port: int) -> None:
    url = f"http://{LOOPBACK}:{port}/_cluster/health"
    with urllib.request.urlopen(url, timeout=2) as response:
        body = json.loads(response.read())
    if response.status != 200 or body.get("status") not in ("green", "yellow"):
        raise RuntimeError(f"GET /_cluster/health: {response.status} {body.get('status')!r}")


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


# -- the run's state -------------------------------------------------------------------------------


@dataclass
class Run:
    token: str
    kinds: list[Kind]
    images: dict[str, str]
    timeout: float
    pause: float = 0.5  # seconds of rest after each method
    started: set[str] = field(default_factory=set)  # ids of every container this run created
    volumes: set[str] = field(default_factory=set)  # volumes those containers mounted
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)

    def own(self, ids: list[str]) -> None:
        with self.lock:
            self.started.update(ids)

    def note_volumes(self, ids: list[str]) -> None:
        found = volumes_of(ids)
        with self.lock:
            self.volumes.update(found)


# -- method 1: svcenv ------------------------------------------------------------------------------


def bench_svcenv(run: Run) -> dict[str, Any]:
    from svcenv import Elasticsearch, Environment, Postgres, Redis, Service
    from svcenv.handles import PostgresHandle, RedisHandle

    factories: dict[str, Callable[[], Service]] = {"pg": Postgres, "redis": Redis, "es": Elasticsearch}
    descriptors = [factories[k.key]() for k in run.kinds]
    sample: dict[str, Any] = {}
    t0 = time.perf_counter()
    env = Environment(*descriptors, labels={BENCH_LABEL: run.token})
    try:
        env.start()
        sample["start_s"] = time.perf_counter() - t0
        ids = container_ids(f"label={SVCENV_LABEL}={env.id}")
        run.own(ids)
        run.note_volumes(ids)
        for handle in env:
            if handle.host != LOOPBACK:
                raise RuntimeError(f"svcenv connected to {handle.host}, not loopback")
        # First use, timed on its own: testcontainers-serial's time includes it.
        t_use = time.perf_counter()
        for handle in env:
            if isinstance(handle, PostgresHandle):
                postgres_select_1(handle.url)
            elif isinstance(handle, RedisHandle):
                redis_ping(handle.port, handle.password)
            else:
                es_health(handle.port)
        sample["first_use_s"] = time.perf_counter() - t_use
        sample["timings"] = {
            name: {
                "begin": t.begin,
                "created": t.created,
                "started": t.started,
                "ready": t.ready,
                "attempts": t.attempts,
                "create_s": t.create_s,
                "start_s": t.start_s,
                "ready_s": t.ready_s,
                "total_s": t.total_s,
            }
            for name, t in env.timings.items()
        }
    finally:
        t_stop = time.perf_counter()
        env.stop()
        sample["teardown_s"] = time.perf_counter() - t_stop
        # Belt and braces: whatever svcenv might have left is removed here, and counted by the final check.
        leftovers = container_ids(f"label={SVCENV_LABEL}={env.id}")
        if leftovers:
            sample["left_after_stop"] = leftovers
            run.own(leftovers)
            run.note_volumes(leftovers)
            remove_containers(leftovers)
    return sample


# -- method 2: testcontainers, serial --------------------------------------------------------------


@contextlib.contextmanager
def testcontainers_on_loopback() -> Iterator[None]:
    """Make testcontainers connect to 127.0.0.1 (only while this method runs).

    This machine has /.dockerenv, so testcontainers believes it runs inside a
    container and would connect through the bridge gateway. TESTCONTAINERS_HOST_OVERRIDE
    alone does not change that (the override 127.0.0.1 is "local", and inside a
    container a local host selects the gateway_ip mode), so the connection mode is set
    to docker_host as well. testcontainers reads both variables at import time into
    ``testcontainers_config``, so the config object is set too, and restored after.
    """
    from testcontainers.core.config import ConnectionMode, testcontainers_config

    keys = ("TESTCONTAINERS_HOST_OVERRIDE", "TESTCONTAINERS_CONNECTION_MODE")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved = (testcontainers_config.tc_host_override, testcontainers_config.connection_mode_override)
    os.environ["TESTCONTAINERS_HOST_OVERRIDE"] = LOOPBACK
    os.environ["TESTCONTAINERS_CONNECTION_MODE"] = ConnectionMode.docker_host.value
    testcontainers_config.tc_host_override = LOOPBACK
    testcontainers_config.connection_mode_override = ConnectionMode.docker_host
    try:
        yield
    finally:
        testcontainers_config.tc_host_override, testcontainers_config.connection_mode_override = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tc_classes() -> tuple[type[Any], type[Any]]:
    try:  # testcontainers >= 4.15
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # older 4.x
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer
    return PostgresContainer, RedisContainer


def _assert_loopback(container: DockerContainer) -> None:
    """Refuse to start anything whose traffic would leave loopback."""
    from testcontainers.core.config import ConnectionMode

    client = container.get_docker_client()
    mode, host = client.get_connection_mode(), client.host()
    if mode != ConnectionMode.docker_host or host != LOOPBACK:
        raise RuntimeError(f"testcontainers would connect via {mode.value} to {host}, not loopback")


def bench_testcontainers(run: Run) -> dict[str, Any]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HttpWaitStrategy

    postgres_cls, redis_cls = _tc_classes()
    containers: list[DockerContainer] = []
    per_service: dict[str, float] = {}
    sample: dict[str, Any] = {"per_service_s": per_service}

    def start_and_use(kind: Kind, container: DockerContainer, use: Callable[[], None]) -> None:
        t = time.perf_counter()
        _assert_loopback(container)
        containers.append(container)
        try:
            container.start()
        finally:
            wrapped = container._container  # set as soon as it was created, even if start failed
            if wrapped is not None:
                run.own([str(wrapped.id)])
        use()
        per_service[kind.key] = time.perf_counter() - t

    with testcontainers_on_loopback():
        t0 = time.perf_counter()
        try:
            for kind in run.kinds:
                image = run.images[kind.key]
                if kind.key == "pg":
                    pg = postgres_cls(image, driver=None)
                    start_and_use(kind, pg, functools.partial(_tc_postgres_select_1, pg))
                elif kind.key == "redis":
                    rd = redis_cls(image)
                    start_and_use(kind, rd, functools.partial(_tc_redis_ping, rd))
                else:
                    es = DockerContainer(image).with_exposed_ports(kind.port)
                    for key, value in ES_ENV.items():
                        es.with_env(key, value)
                    es.waiting_for(HttpWaitStrategy(kind.port, "/_cluster/health").for_status_code(200))
                    start_and_use(kind, es, functools.partial(_tc_es_health, es, kind.port))
            sample["start_s"] = time.perf_counter() - t0
            run.note_volumes([str(c._container.id) for c in containers if c._container is not None])
        finally:
            t_stop = time.perf_counter()
            errors = []
            for container in reversed(containers):
                try:
                    container.stop()  # remove(force=True, v=True)
                except Exception as exc:
                    errors.append(one_line(exc))
            sample["teardown_s"] = time.perf_counter() - t_stop
            if errors:
                sample["teardown_errors"] = errors
                remove_containers([str(c._container.id) for c in containers if c._container is not None])
    return sample


def _tc_postgres_select_1(container: Any) -> None:
    postgres_select_1(container.get_connection_url())


def _tc_es_health(container: DockerContainer, port: int) -> None:
    es_health(int(container.get_exposed_port(port)))


def _tc_redis_ping(container: Any) -> None:
    client = container.get_client(socket_timeout=1, socket_connect_timeout=1)
    try:
        if not client.ping():
            raise RuntimeError("PING did not answer PONG")
    finally:
        client.close()


# -- method 3: the raw floor -------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResult:
    cid: str
    launched: float  # perf_counter() when `docker run` was launched
    ran: float  # ... when `docker run -d` returned (container created and started)
    ported: float  # ... when `docker port` answered
    ready: float  # ... when the first probe passed
    attempts: int


def _raw_one(run: Run, kind: Kind, round_label: str) -> RawResult:
    """``docker run`` one service and poll it every 10 ms until it answers."""
    password = secrets.token_urlsafe(18)
    args = [
        "run",
        "-d",
        "--label",
        f"{BENCH_LABEL}={run.token}",
        "--label",
        f"svcenv-bench.round={round_label}",
        "-p",
        f"{LOOPBACK}::{kind.port}",
    ]
    # The same configuration svcenv's descriptors give each image.
    if kind.key == "pg":
        env = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "test"}
        command: list[str] = []
    elif kind.key == "redis":
        env = {}
        command = ["redis-server", "--save", "", "--appendonly", "no", "--requirepass", password]
    else:
        env = {
            **ES_ENV,
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "ES_JAVA_OPTS": "-Xms512m -Xmx512m",
        }
        command = []
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    launched = time.perf_counter()
    cid = docker_cli(*args, run.images[kind.key], *command).strip()
    run.own([cid])
    ran = time.perf_counter()
    mapping = docker_cli("port", cid, f"{kind.port}/tcp").split()
    host, _, port_text = mapping[0].rpartition(":")
    if host != LOOPBACK:
        raise RuntimeError(f"{kind.key} published on {host}, not loopback")
    port = int(port_text)
    ported = time.perf_counter()
    probe: Callable[[], None]
    if kind.key == "pg":
        probe = lambda: postgres_select_1(f"postgresql://postgres:{password}@{LOOPBACK}:{port}/test")  # noqa: E731
    elif kind.key == "redis":
        probe = lambda: redis_ping(port, password)  # noqa: E731
    else:
        probe = lambda: es_health(port)  # noqa: E731
    deadline = launched + run.timeout
    last: BaseException | None = None
    attempts = 0
    while time.perf_counter() < deadline and not run.cancel.is_set():
        attempts += 1
        try:
            probe()
            return RawResult(cid, launched, ran, ported, time.perf_counter(), attempts)
        except Exception as exc:
            last = exc
            time.sleep(POLL_S)
    if run.cancel.is_set():
        raise RuntimeError(f"{kind.key}: cancelled")
    raise TimeoutError(f"{kind.key} not ready within {run.timeout:g}s: {one_line(last) if last else '?'}")


def bench_raw(run: Run, round_label: str) -> dict[str, Any]:
    sample: dict[str, Any] = {}
    ids: list[str] = []
    run.cancel.clear()
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=len(run.kinds), thread_name_prefix="raw") as pool:
            futures = {k.key: pool.submit(_raw_one, run, k, round_label) for k in run.kinds}
            results: dict[str, RawResult] = {}
            errors: list[str] = []
            for key, future in futures.items():
                try:
                    results[key] = future.result()
                except Exception as exc:
                    errors.append(f"{key}: {one_line(exc)}")
            ids = [r.cid for r in results.values()]
            if errors:
                raise RuntimeError("; ".join(errors))
        sample["start_s"] = max(r.ready for r in results.values()) - t0
        sample["per_service_s"] = {key: r.ready - r.launched for key, r in results.items()}
        sample["phases"] = {
            key: {
                "launch_offset_s": r.launched - t0,
                "docker_run_s": r.ran - r.launched,
                "docker_port_s": r.ported - r.ran,
                "probe_wait_s": r.ready - r.ported,
                "attempts": r.attempts,
            }
            for key, r in results.items()
        }
        sample["slowest_service_s"] = max(sample["per_service_s"].values())
        run.note_volumes(ids)
    except BaseException:
        run.cancel.set()  # the other services' pollers stop too
        raise
    finally:
        # Everything this round's runs created, including one whose `docker run` failed half-way.
        every = sorted(set(ids) | set(container_ids(f"label=svcenv-bench.round={round_label}")))
        run.own(every)
        t_stop = time.perf_counter()
        remove_containers(every)
        sample["teardown_s"] = time.perf_counter() - t_stop
    return sample


# -- driving it ------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "nproc_cli": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        version = json.loads(docker_cli("version", "--format", "{{json .}}"))
        info["docker"] = {
            "server": version.get("Server", {}).get("Version"),
            "client": version.get("Client", {}).get("Version"),
            "api": version.get("Server", {}).get("ApiVersion"),
        }
        engine = json.loads(docker_cli("info", "--format", "{{json .}}"))
        info["docker"].update(
            storage_driver=engine.get("Driver"), kernel=engine.get("KernelVersion"), ncpu=engine.get("NCPU")
        )
    except (RuntimeError, ValueError) as exc:
        info["docker"] = {"error": one_line(exc)}
    packages: dict[str, str | None] = {}
    for name in ("svcenv", "testcontainers", "docker", "psycopg", "redis", "tenacity"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    info["packages"] = packages
    info["git_start"] = git_state()
    return info


def git_state() -> dict[str, Any]:
    """HEAD and a digest of uncommitted changes to svcenv/ (the code measured may be a work tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT.parent), *args], capture_output=True, check=False)
        return done.stdout.decode(errors="replace")

    status = git("status", "--porcelain", "--", "svcenv")
    diff = git("diff", "HEAD", "--", "svcenv") + status
    return {
        "head": git("rev-parse", "HEAD").strip() or None,
        "svcenv_dirty": bool(status.strip()),
        "svcenv_changes_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if status.strip() else None,
    }


def resolve_images(kinds: list[Kind]) -> dict[str, str]:
    images = {}
    for kind in kinds:
        image = os.environ.get(kind.image_var)
        if not image:
            image = kind.fallback_image
            print(f"note: {kind.image_var} is unset; using {image}")
            os.environ[kind.image_var] = image  # svcenv reads it too: all methods run the same image
        images[kind.key] = image
        if not docker_cli("images", "-q", image).strip():
            sys.exit(f"image {image} is not on the engine (build it with `bash tests/images/build.sh`)")
    return images


def preflight() -> None:
    """Import every client now (so no method pays for an import) and check svcenv's address."""
    import psycopg  # noqa: F401
    import redis  # noqa: F401
    import testcontainers.core.container  # noqa: F401

    import svcenv.backends.docker as svcenv_docker

    _tc_classes()
    backend = svcenv_docker.DockerBackend()
    try:
        if backend.host != LOOPBACK or backend.bind_address != LOOPBACK:
            sys.exit(f"svcenv would use {backend.host} (bind {backend.bind_address}), not loopback")
    finally:
        backend.close()


def run_round(run: Run, label: str, order: list[str]) -> dict[str, Any]:
    samples: dict[str, Any] = {}
    for method in order:
        other = other_running_containers(run.started)
        try:
            if method == "svcenv":
                sample = bench_svcenv(run)
            elif method == "testcontainers-serial":
                sample = bench_testcontainers(run)
            else:
                sample = bench_raw(run, f"{run.token}-{label}")
        except Exception as exc:
            sample = {"error": one_line(exc)}
        sample["other_running_containers"] = other
        sample["loadavg_1m"] = os.getloadavg()[0]
        samples[method] = sample
        time.sleep(run.pause)
    return samples


def own_containers(run: Run) -> list[str]:
    """Every container of this run that exists, found by id and by each label this run's containers carry."""
    from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

    return sorted(
        (run.started & set(container_ids()))
        | set(container_ids(f"label={BENCH_LABEL}={run.token}"))  # svcenv's and the raw floor's
        | set(container_ids(f"label=svcenv.owner-pid={os.getpid()}", f"label={SVCENV_LABEL}"))
        | set(container_ids(f"label={LABEL_SESSION_ID}={SESSION_ID}"))  # testcontainers' (and svcenv's)
    )


def verify_clean(run: Run, dangling_before: set[str]) -> dict[str, Any]:
    """Nothing this run started may be left; report (not blame) what other processes hold."""
    mine_left = own_containers(run)
    others_svcenv = sorted(set(container_ids(f"label={SVCENV_LABEL}")) - set(mine_left))
    dangling_after = dangling_volumes()
    grown = sorted(dangling_after - dangling_before)
    volumes_left = sorted(run.volumes & all_volumes())
    return {
        "containers_started": len(run.started),
        "own_containers_left": mine_left,
        "other_processes_svcenv_containers": others_svcenv,
        "own_volumes_seen": len(run.volumes),
        "own_volumes_left": volumes_left,
        "dangling_before": len(dangling_before),
        "dangling_after": len(dangling_after),
        "dangling_new": grown,
        "dangling_new_not_own": sorted(set(grown) - run.volumes),
        "clean": not mine_left and not volumes_left and not (set(grown) & run.volumes),
    }


def stats(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    def values(method: str, *path: str) -> list[float]:
        out = []
        for r in rounds:
            item: Any = r["samples"].get(method, {})
            if "error" in item:
                continue
            for key in path:
                item = item.get(key) if isinstance(item, dict) else None
            if isinstance(item, (int, float)):
                out.append(float(item))
        return out

    rows: dict[str, list[float]] = {
        "svcenv start": values("svcenv", "start_s"),
        "svcenv start + first use": [
            a + b for a, b in zip(values("svcenv", "start_s"), values("svcenv", "first_use_s"), strict=True)
        ],
        "svcenv teardown": values("svcenv", "teardown_s"),
        "testcontainers-serial start+use": values("testcontainers-serial", "start_s"),
        "testcontainers-serial teardown": values("testcontainers-serial", "teardown_s"),
        "raw floor, all ready (parallel)": values("raw-floor", "start_s"),
        "raw floor, slowest service": values("raw-floor", "slowest_service_s"),
        "raw floor teardown": values("raw-floor", "teardown_s"),
    }
    keys = sorted({k for r in rounds for k in r["samples"].get("raw-floor", {}).get("per_service_s", {})})
    for key in keys:
        rows[f"  raw floor {key}: ready"] = values("raw-floor", "per_service_s", key)
        rows[f"  raw floor {key}: docker run"] = values("raw-floor", "phases", key, "docker_run_s")
        rows[f"  raw floor {key}: probe wait"] = values("raw-floor", "phases", key, "probe_wait_s")
    for key in keys:
        rows[f"  testcontainers {key}: start+use"] = values("testcontainers-serial", "per_service_s", key)
    names = sorted({n for r in rounds for n in r["samples"].get("svcenv", {}).get("timings", {})})
    for name in names:
        rows[f"  svcenv {name}: begin offset"] = values("svcenv", "timings", name, "begin")
        rows[f"  svcenv {name}: create"] = values("svcenv", "timings", name, "create_s")
        rows[f"  svcenv {name}: start"] = values("svcenv", "timings", name, "start_s")
        rows[f"  svcenv {name}: probe wait"] = values("svcenv", "timings", name, "ready_s")
        rows[f"  svcenv {name}: ready at"] = values("svcenv", "timings", name, "ready")
    return {name: summary(v) for name, v in rows.items()}


def ratios(table: dict[str, dict[str, float | int]], rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    def median(row: str) -> float | None:
        value = table.get(row, {}).get("median")
        return float(value) if value is not None else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def paired(method: str, key: str) -> float | None:
        per_round = []
        for r in rounds:
            s, o = r["samples"].get("svcenv", {}), r["samples"].get(method, {})
            if "start_s" in s and key in o:
                per_round.append(s["start_s"] / o[key])
        return statistics.median(per_round) if per_round else None

    sv = median("svcenv start")
    return {
        "svcenv/raw_floor_all_ready": ratio(sv, median("raw floor, all ready (parallel)")),
        "svcenv/slowest_service_floor": ratio(sv, median("raw floor, slowest service")),
        "svcenv/testcontainers_serial": ratio(sv, median("testcontainers-serial start+use")),
        "svcenv_with_use/testcontainers_serial": ratio(
            median("svcenv start + first use"), median("testcontainers-serial start+use")
        ),
        "paired_median_svcenv/slowest_service_floor": paired("raw-floor", "slowest_service_s"),
        "paired_median_svcenv/testcontainers_serial": paired("testcontainers-serial", "start_s"),
    }


def print_table(table: dict[str, dict[str, float | int]], ratio: dict[str, float | None]) -> None:
    print()
    print(f"{'seconds':<40} {'n':>3} {'min':>8} {'median':>8} {'max':>8}")
    print("-" * 71)
    for name, row in table.items():
        if not row.get("n"):
            print(f"{name:<40} {0:>3} {'-':>8} {'-':>8} {'-':>8}")
            continue
        print(f"{name:<40} {row['n']:>3} {row['min']:>8.3f} {row['median']:>8.3f} {row['max']:>8.3f}")
    print()
    for name, value in ratio.items():
        print(f"{name:<45} {'-' if value is None else f'{value:.3f}'}")
    goal = ratio.get("svcenv/slowest_service_floor")
    if goal is not None:
        verdict = "met" if goal <= 1.10 else "NOT met"
        print(f"goal svcenv <= 1.10 x slowest-service floor: {verdict} ({goal:.3f})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first (default 1)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "startup.json", help="where to write the results"
    )
    parser.add_argument("--services", default="pg,redis,es", help="comma list of pg, redis, es")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest after each method")
    parser.add_argument("--timeout", type=float, default=180.0, help="readiness deadline of the raw floor")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.services.split(",") if k.strip()]
    unknown = [k for k in keys if k not in KINDS]
    if unknown or not keys or len(set(keys)) != len(keys):
        parser.error(f"--services takes a comma list of {', '.join(KINDS)} without repeats")
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    args.kinds = [KINDS[k] for k in KINDS if k in keys]  # declaration order
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds: list[Kind] = args.kinds
    images = resolve_images(kinds)
    preflight()
    run = Run(token=secrets.token_hex(6), kinds=kinds, images=images, timeout=args.timeout, pause=args.pause)
    info = machine_info()
    dangling_before = dangling_volumes()
    print(
        f"svcenv start-up benchmark: services {[k.key for k in kinds]}, {args.rounds} rounds "
        f"(+{args.warmup} warm-up), nproc {info['nproc']}, docker {info['docker'].get('server')}"
    )
    rounds: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []
    total = args.warmup + args.rounds
    check: dict[str, Any] = {}
    interrupted = False
    try:
        for i in range(total):
            warm = i < args.warmup
            n = i - args.warmup
            label = f"w{i}" if warm else f"r{n}"
            shift = i % len(METHODS)
            order = list(METHODS[shift:] + METHODS[:shift])  # rotate: each method takes each position
            t = time.perf_counter()
            samples = run_round(run, label, order)
            record = {"round": label, "order": order, "samples": samples}
            (warmups if warm else rounds).append(record)
            brief = ", ".join(
                f"{m} {'ERROR' if 'error' in s else format(s['start_s'], '.3f')}" for m, s in samples.items()
            )
            print(f"  {'warm-up' if warm else 'round'} {label}: {brief}  ({time.perf_counter() - t:.1f}s)")
            for method, s in samples.items():
                if "error" in s:
                    print(f"    {method} failed: {s['error']}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Whatever escaped a method's own cleanup (e.g. after a second Ctrl-C) goes now.
        remove_containers(own_containers(run))
        check = verify_clean(run, dangling_before)
    if interrupted:
        left = len(check["own_containers_left"]) + len(check["own_volumes_left"])
        print(f"interrupted; nothing written; {left} container(s)/volume(s) left", file=sys.stderr)
        return 130
    table = stats(rounds)
    ratio = ratios(table, rounds)
    print_table(table, ratio)
    info["loadavg_end"] = os.getloadavg()
    info["git_end"] = git_state()
    if info["git_end"] != info["git_start"]:
        print("note: svcenv's code changed while the benchmark ran (see machine.git_start/git_end)")
    errors = [f"{r['round']} {m}: {s['error']}" for r in rounds + warmups for m, s in failed(r)]
    result = {
        "schema": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "config": {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "services": [k.key for k in kinds],
            "images": images,
            "raw_poll_s": POLL_S,
            "pause_s": args.pause,
            "order": "rotated by one method each round",
            "testcontainers_poll_s": _tc_poll_interval(),
        },
        "machine": info,
        "summary": table,
        "ratios": ratio,
        "rounds": rounds,
        "warmup_rounds": warmups,
        "errors": errors,
        "checks": check,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    print(
        f"cleanup: {check['containers_started']} containers started, "
        f"{len(check['own_containers_left'])} left; {check['own_volumes_seen']} volumes seen, "
        f"{len(check['own_volumes_left'])} left; dangling volumes "
        f"{check['dangling_before']} -> {check['dangling_after']}"
    )
    if check["dangling_new_not_own"]:
        print(f"note: {len(check['dangling_new_not_own'])} new dangling volume(s) not mounted by this run")
    if check["other_processes_svcenv_containers"]:
        others = len(check["other_processes_svcenv_containers"])
        print(f"note: {others} svcenv container(s) of other processes")
    if not check["clean"]:
        print("FAILED: this run left containers or volumes behind", file=sys.stderr)
        return 1
    if errors:
        print(f"FAILED: {len(errors)} sample(s) failed", file=sys.stderr)
        return 1
    return 0


def failed(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(m, s) for m, s in record["samples"].items() if "error" in s]


def _tc_poll_interval() -> float | None:
    try:
        from testcontainers.core.config import testcontainers_config

        return float(testcontainers_config.sleep_time)
    except (ImportError, AttributeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
