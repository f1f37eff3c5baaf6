"""The jobs example's stack (API + worker built from their Dockerfiles, Postgres, Redis): svcenv vs ``docker run``.

Usage::

    python benchmarks/jobs_peers.py [--cold N] [--warm N] [--json PATH]

Each round starts the same four services from the same images, in the same order
(Postgres and Redis at once, then the API, then the worker), until each is usable:

``svcenv``
    ``Environment(*examples/jobs/stack.services(base)).start()``: builds the two images
    (keyed by their build contexts), one network, references filled in, readiness probes
    (a Postgres query, Redis ``PING``, ``GET /health``, the worker's ready line).
``docker-run``
    The hand-written floor: ``docker build`` of both images, ``docker network create``,
    ``docker run -d`` of each with the same environment, the same readiness checks
    polled every 10 ms from here (psycopg, redis-py, urllib, ``docker logs``).

*Cold* rounds start without the two built images, either tool's (both tools build them
from the base image, which is on the engine; the layers of an earlier build are removed
with its image, so neither reuses the other's); *warm* rounds start with them (svcenv finds its
image by the context's hash; ``docker run`` simply reuses its tag). Teardown is timed
apart. Medians, and the ratio svcenv / docker-run from the same run, are printed and
written as JSON. The script exits 1 if either left a container, network or image behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "jobs"
sys.path.insert(0, str(EXAMPLE))
sys.path.insert(0, str(ROOT))

from stack import services  # noqa: E402

from svcenv import Environment  # noqa: E402


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: S110 (not ready yet)
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{what} not ready within {timeout}s")


def _port(container: str, port: int) -> int:
    return int(_docker("port", container, f"{port}/tcp").splitlines()[0].rsplit(":", 1)[1])


class DockerRun:
    """The stack by hand with the docker CLI."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.images = {name: f"svcbench-{name}:{token}" for name in ("api", "worker")}
        self.containers: list[str] = []
        self.network = f"svcbench-{token}"

    def _run(self, *args: str) -> str:
        cid = _docker("run", "-d", "--label", f"svcbench={self.token}", "--network", self.network, *args)
        self.containers.append(cid)
        return cid

    def start(self) -> None:
        password = secrets.token_hex(8)
        with ThreadPoolExecutor(4) as pool:
            builds = [
                pool.submit(_docker, "build", "-q", "-t", tag, "--build-arg", f"BASE={self.base}", str(EXAMPLE / name))
                for name, tag in self.images.items()
                if not _docker("images", "-q", tag)
            ]
            _docker("network", "create", "--label", f"svcbench={self.token}", self.network)
            pg_image = os.environ.get("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")
            redis_image = os.environ.get("SVCENV_REDIS_IMAGE", "svcenv-test/redis:7")
            env = ["-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=test"]
            pg = pool.submit(self._run, "--network-alias", "postgres", *env, "-p", "127.0.0.1::5432", pg_image)
            rd = pool.submit(
                self._run,
                *("--network-alias", "redis", "-p", "127.0.0.1::6379", redis_image),
                *("redis-server", "--requirepass", password),
            )
            pg_id, rd_id = pg.result(), rd.result()
            pg_url = f"postgresql://postgres:{password}@127.0.0.1:{_port(pg_id, 5432)}/test"
            rd_port = _port(rd_id, 6379)
            ready_pg = pool.submit(_until, lambda: bool(psycopg.connect(pg_url, connect_timeout=1).close() or 1), "pg")
            ready_rd = pool.submit(
                _until, lambda: redis.Redis(port=rd_port, password=password, socket_timeout=1).ping(), "redis"
            )
            for job in (*builds, ready_pg, ready_rd):
                job.result()
        urls = [
            *("-e", f"DATABASE_URL=postgresql://postgres:{password}@postgres:5432/test"),
            *("-e", f"REDIS_URL=redis://:{password}@redis:6379/0"),
        ]
        api = self._run(*urls, "-p", "127.0.0.1::8000", self.images["api"])
        health = f"http://127.0.0.1:{_port(api, 8000)}/health"
        _until(lambda: urllib.request.urlopen(health, timeout=1).status == 200, "api")
        worker = self._run(*urls, self.images["worker"])
        _until(lambda: "worker: ready" in _docker("logs", worker), "worker")

    def stop(self) -> None:
        if self.containers:
            _docker("rm", "-f", "-v", *self.containers)
        self.containers.clear()
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True, check=False)

    def drop_images(self) -> None:
        subprocess.run(["docker", "rmi", *self.images.values()], capture_output=True, check=False)


def _svcenv_images() -> list[str]:
    listed = _docker("images", "--filter", "label=svcenv.build=true", "--format", "{{.Repository}}:{{.Tag}}")
    return [i for i in listed.split() if i.split(":")[0] in ("svcenv-build/api", "svcenv-build/worker")]


def _leftovers(token: str) -> list[str]:
    found = [f"container {c}" for c in _docker("ps", "-aq", "--filter", f"label=svcbench={token}").split()]
    found += [f"network {n}" for n in _docker("network", "ls", "-q", "--filter", f"label=svcbench={token}").split()]
    found += [f"container {c}" for c in _docker("ps", "-aq", "--filter", f"label=svcenv.test={token}").split()]
    found += [f"network {n}" for n in _docker("network", "ls", "-q", "--filter", f"label=svcenv.test={token}").split()]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cold", type=int, default=2)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "jobs_peers.json")
    args = parser.parse_args()
    subprocess.run([sys.executable, str(EXAMPLE / "fetch_wheels.py")], check=True)
    base = (
        os.environ.get("JOBS_BASE_IMAGE")
        or _docker("images", "--format", "{{.Repository}}:{{.Tag}}", "svcenv-test/base").split()[0]
    )
    token = uuid.uuid4().hex[:10]
    had = set(_svcenv_images())
    samples: dict[str, dict[str, list[float]]] = {}
    teardowns: dict[str, list[float]] = {"svcenv": [], "docker-run": []}
    by_hand = DockerRun(base, token)

    def drop_built() -> None:
        """Neither tool's images (nor their layers, which the other's build would reuse) stay."""
        by_hand.drop_images()
        images = _svcenv_images()
        if images:
            subprocess.run(["docker", "rmi", *images], capture_output=True, check=False)

    def svcenv_round(cold: bool) -> tuple[float, float]:
        if cold:
            drop_built()
        began = time.monotonic()
        env = Environment(*services(base), labels={"svcenv.test": token}).start()
        ready = time.monotonic() - began
        began = time.monotonic()
        env.stop()
        return ready, time.monotonic() - began

    def docker_round(cold: bool) -> tuple[float, float]:
        if cold:
            drop_built()
        began = time.monotonic()
        try:
            by_hand.start()
            ready = time.monotonic() - began
        finally:
            began = time.monotonic()
            by_hand.stop()
        return ready, time.monotonic() - began

    methods = {"svcenv": svcenv_round, "docker-run": docker_round}
    try:
        for phase, rounds in (("cold", args.cold), ("warm", args.warm)):
            for round_ in range(rounds):
                order = list(methods) if round_ % 2 == 0 else list(reversed(methods))
                for name in order:
                    ready, down = methods[name](phase == "cold")
                    samples.setdefault(f"{name} {phase}", {"ready": []})["ready"].append(ready)
                    teardowns[name].append(down)
                    print(
                        f"{phase} round {round_ + 1} {name:<11} ready {ready:6.2f}s  teardown {down:5.2f}s", flush=True
                    )
    finally:
        by_hand.stop()
        by_hand.drop_images()
        for image in set(_svcenv_images()) - had:
            subprocess.run(["docker", "rmi", image], capture_output=True, check=False)
    medians = {k: statistics.median(v["ready"]) for k, v in samples.items()}
    print(f"\n{'stack':<22}{'ready (median)':>16}")
    for key, value in medians.items():
        print(f"{key:<22}{value:>15.2f}s")
    ratios = {
        phase: medians[f"svcenv {phase}"] / medians[f"docker-run {phase}"]
        for phase in ("cold", "warm")
        if f"svcenv {phase}" in medians
    }
    for phase, ratio in ratios.items():
        print(f"svcenv / docker-run, {phase}: {ratio:.2f}x")
    down = {k: statistics.median(v) for k, v in teardowns.items() if v}
    print("teardown (median): " + ", ".join(f"{k} {v:.2f}s" for k, v in down.items()))
    left = _leftovers(token)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "samples": samples,
                "medians": medians,
                "ratio_svcenv_to_docker_run": ratios,
                "teardown_medians": down,
                "leftovers": left,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    if left:
        print(f"LEFT BEHIND: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
