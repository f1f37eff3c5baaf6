"""One compose file, two tools: ``python -m svcenv up -f`` vs ``docker-compose up`` + wait for health.

Usage::

    python benchmarks/compose_peers.py [--rounds N] [--json PATH]

The file (written to a temp dir) has Postgres and Redis with healthchecks, a one-shot
``migrate`` job that the ``app`` waits for (``service_completed_successfully``) and the
``app`` itself: the shape of a test stack. Each round runs, in alternating order:

``svcenv``
    ``python -m svcenv up -f compose.yaml``: wall time from launching the command to its
    ``all ready`` line (Postgres answers a query, Redis ``PING``, their healthchecks pass,
    ``migrate`` exited 0, ``app`` is up). Teardown: SIGINT (Ctrl-C) until it exits.
``docker-compose``
    Debian's ``docker-compose`` 1.29 (the v1 tool; ``docker compose`` v2 is not packaged for
    Debian 12): ``docker-compose up -d``, then, as v2's ``up --wait`` does, poll ``docker
    inspect`` every 50 ms until every service with a healthcheck is ``healthy``, the job
    has exited 0 and the app runs. Teardown: ``docker-compose down -v``.

Both start the same images (``SVCENV_POSTGRES_IMAGE``, ``SVCENV_REDIS_IMAGE``, default the
Debian-built test images) from the same file. Reported: medians per method, and the ratio
svcenv / docker-compose from the same run. At the end the script checks that neither tool
left a container, network or named volume behind, and exits 1 if one did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

COMPOSE = """
services:
  postgres:
    image: ${PG_IMAGE}
    environment: {POSTGRES_USER: app, POSTGRES_PASSWORD: bench-pw, POSTGRES_DB: appdb}
    ports: ["127.0.0.1::5432"]
    healthcheck: {test: ["CMD-SHELL", "pg_isready -h 127.0.0.1 -U app -d appdb"], interval: 1s, retries: 30}
  redis:
    image: ${REDIS_IMAGE}
    ports: ["127.0.0.1::6379"]
    healthcheck: {test: ["CMD", "redis-cli", "ping"], interval: 1s, retries: 30}
  migrate:
    image: ${PG_IMAGE}
    environment: {PGPASSWORD: bench-pw}
    command: ["psql", "-h", "postgres", "-U", "app", "-d", "appdb", "-c", "CREATE TABLE items (n int)"]
    depends_on: {postgres: {condition: service_healthy}}
  app:
    image: ${REDIS_IMAGE}
    command: ["sleep", "infinity"]
    depends_on:
      migrate: {condition: service_completed_successfully}
      redis: {condition: service_healthy}
"""

SERVICES = ("postgres", "redis", "migrate", "app")


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def _svcenv(project: Path, env: dict[str, str]) -> tuple[float, float]:
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "svcenv", "up", "-f", "compose.yaml"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    said: list[str] = []
    for line in process.stderr:
        said.append(line)
        if "all ready in" in line:
            break
    else:
        process.wait()
        raise RuntimeError("svcenv up did not get ready:\n" + "".join(said))
    ready = time.monotonic() - began
    stopping = time.monotonic()
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    if process.returncode not in (0, 130):
        raise RuntimeError(f"svcenv up exited {process.returncode}:\n" + "".join(said) + rest)
    return ready, time.monotonic() - stopping


def _compose_state(project_name: str) -> dict[str, tuple[str, str | None, int]]:
    ids = _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project_name}").split()
    if not ids:
        return {}
    state: dict[str, tuple[str, str | None, int]] = {}
    for info in json.loads(_docker("inspect", *ids)):
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        health = (info["State"].get("Health") or {}).get("Status")
        state[service] = (info["State"]["Status"], health, int(info["State"]["ExitCode"]))
    return state


def _ready(state: dict[str, tuple[str, str | None, int]]) -> bool:
    if set(state) != set(SERVICES):
        return False
    for service, (status, health, code) in state.items():
        if service == "migrate":
            if status == "exited" and code != 0:
                raise RuntimeError(f"migrate exited {code}")
            if status != "exited":
                return False
        elif status != "running" or health not in (None, "healthy"):
            return False
    return True


def _compose(project: Path, env: dict[str, str]) -> tuple[float, float]:
    name = f"svcbench{env['SVCBENCH_TOKEN']}{uuid.uuid4().hex[:6]}"
    base = ["docker-compose", "-p", name, "-f", "compose.yaml"]
    began = time.monotonic()
    try:
        subprocess.run([*base, "up", "-d"], cwd=project, env=env, check=True, capture_output=True, timeout=300)
        while not _ready(_compose_state(name)):
            if time.monotonic() - began > 300:
                raise RuntimeError(f"docker-compose services not ready: {_compose_state(name)}")
            time.sleep(0.05)
        ready = time.monotonic() - began
    finally:
        stopping = time.monotonic()
        subprocess.run([*base, "down", "-v"], cwd=project, env=env, check=True, capture_output=True, timeout=300)
    return ready, time.monotonic() - stopping


def _leftovers(token: str) -> list[str]:
    """What either tool left of this run: compose projects are named ``svcbench<token>...``, svcenv's
    environments carry ``svcbench=<token>``."""
    found = []
    for kind, ident_field in ((["ps", "-a"], ".ID"), (["network", "ls"], ".ID"), (["volume", "ls"], ".Name")):
        listing = _docker(*kind, "--format", '{{.Label "com.docker.compose.project"}} {{' + ident_field + "}}")
        for line in listing.splitlines():
            project, _, ident = line.partition(" ")
            if project.startswith(f"svcbench{token}"):
                found.append(f"{kind[0]} {ident} (docker-compose)")
        labelled = _docker(*kind, "-q", "--filter", f"label=svcbench={token}").split()
        found += [f"{kind[0]} {i} (svcenv)" for i in labelled]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "compose_peers.json")
    args = parser.parse_args()
    if shutil.which("docker-compose") is None:
        print("docker-compose not found: apt-get install docker-compose (Debian's v1.29)", file=sys.stderr)
        return 2
    token = uuid.uuid4().hex[:8]
    project = Path(tempfile.mkdtemp(prefix="svcenv-compose-bench-"))
    (project / "compose.yaml").write_text(COMPOSE)
    env = {
        **os.environ,
        "PG_IMAGE": os.environ.get("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15"),
        "REDIS_IMAGE": os.environ.get("SVCENV_REDIS_IMAGE", "svcenv-test/redis:7"),
        "SVCENV_STATE_DIR": str(project / "state"),
        "SVCENV_LABELS": f"svcbench={token}",
        "SVCBENCH_TOKEN": token,
    }
    methods = {"svcenv": _svcenv, "docker-compose": _compose}
    samples: dict[str, dict[str, list[float]]] = {m: {"ready": [], "teardown": []} for m in methods}
    try:
        for method in methods.values():  # warm-up: the engine's caches, svcenv's Postgres cache image
            method(project, env)
        for round_ in range(args.rounds):
            order = list(methods) if round_ % 2 == 0 else list(reversed(methods))
            for name in order:
                ready, teardown = methods[name](project, env)
                samples[name]["ready"].append(ready)
                samples[name]["teardown"].append(teardown)
                print(f"round {round_ + 1} {name:<15} ready {ready:6.2f}s  teardown {teardown:5.2f}s", flush=True)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    medians = {m: {k: statistics.median(v) for k, v in s.items()} for m, s in samples.items()}
    ratio_ready = medians["svcenv"]["ready"] / medians["docker-compose"]["ready"]
    ratio_down = medians["svcenv"]["teardown"] / medians["docker-compose"]["teardown"]
    print(f"\n{'method':<16}{'ready (median)':>16}{'teardown (median)':>20}")
    for name, m in medians.items():
        print(f"{name:<16}{m['ready']:>15.2f}s{m['teardown']:>19.2f}s")
    print(f"{'svcenv / compose':<16}{ratio_ready:>15.2f}x{ratio_down:>19.2f}x")
    left = _leftovers(token)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "docker_compose": subprocess.run(
            ["docker-compose", "version", "--short"], capture_output=True, text=True
        ).stdout.strip(),
        "rounds": args.rounds,
        "samples": samples,
        "medians": medians,
        "ratio_svcenv_to_compose": {"ready": ratio_ready, "teardown": ratio_down},
        "leftovers": left,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if left:
        print(f"LEFT BEHIND: {left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
