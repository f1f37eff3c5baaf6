"""svcenv on Podman: Debian's ``podman system service`` (4.3, rootful) as the engine (tests/podman_engine.py).

``DOCKER_HOST=unix:///run/svcenv-podman/podman.sock`` for each test (and the processes it
starts): the contract basics (Postgres with its cache, Redis, env vars, logs, a reference
across the environment's network, a one-shot job), the engine's detection when
``DOCKER_HOST`` is unset, ``doctor``, and the fault matrix of tests/test_faults.py unchanged,
with leftovers counted on the Podman engine (by the docker CLI through Podman's API, as the
matrix counts them, and again by the podman CLI on Podman's own storage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from svcenv import Environment, Postgres, Redis, Service
from svcenv.backends import docker_host
from svcenv.backends.docker import DockerBackend
from svcenv.backends.pgcache import CACHE_REPOSITORY
from svcenv.handles import PostgresHandle, RedisHandle
from svcenv.probes import Command, LogLine

from . import test_faults
from .conftest import no_connect_overrides
from .faults import OWNER_SCENARIOS, ROOT, SETTLE_S, Outcome, _cmdlines, run_owner
from .podman_engine import SOCKET, PodmanEngine, podman_engine  # noqa: F401 (the fixture)

pytestmark = pytest.mark.docker


@pytest.fixture
def podman(podman_engine: PodmanEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[PodmanEngine]:  # noqa: F811
    """``DOCKER_HOST`` points at the Podman engine for the test and its subprocesses, whose environments
    carry a label of the test's (``SVCENV_LABELS``). Afterwards nothing of theirs may be left there
    (containers, pods, networks, named volumes, anonymous volumes left dangling)."""
    label = f"svcenv.podman-test={uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DOCKER_HOST", podman_engine.url)
    monkeypatch.setenv("SVCENV_LABELS", label)
    no_connect_overrides(monkeypatch)
    volumes_before = podman_engine.dangling_volumes()
    yield podman_engine
    _seconds, left = podman_engine.settle(label, volumes_before, limit=SETTLE_S)
    assert not left, f"left on the podman engine: {left}"


def _inspect(engine: PodmanEngine, container_id: str) -> dict[str, Any]:
    return dict(json.loads(engine.docker("inspect", container_id))[0])


def _bindings(engine: PodmanEngine, container_id: str) -> list[str]:
    ports = _inspect(engine, container_id)["HostConfig"]["PortBindings"] or {}
    return [b["HostIp"] for bindings in ports.values() for b in bindings]


# -- which engine, and what doctor says ---------------------------------------------------------


def test_doctor_says_podman(podman: PodmanEngine) -> None:
    backend = DockerBackend()
    try:
        lines = backend.describe()
    finally:
        backend.close()
    assert lines[0].startswith(f"engine {podman.url}: podman 4."), lines
    assert "API 1.41" in lines[0], lines
    assert "ports publish on 127.0.0.1" in lines[1], lines
    doctor = subprocess.run(
        [sys.executable, "-m", "svcenv", "doctor"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    said = doctor.stdout + doctor.stderr
    assert f"engine {podman.url}: podman 4." in said, said
    print("\n" + "\n".join(lines))
    if podman.timings:  # this process started the engine
        started, loaded = podman.timings["start_s"], podman.timings["load_s"]
        print(f"podman engine started in {started:.1f}s, images loaded in {loaded:.1f}s")


@pytest.mark.parametrize("where", ["rootful", "rootless"])
def test_a_podman_socket_is_found_when_docker_host_is_unset_and_there_is_no_docker_socket(
    where: str, podman: PodmanEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``/run/podman/podman.sock`` (rootful), else ``$XDG_RUNTIME_DIR/podman/podman.sock`` (rootless):
    here both are stood in for by the test engine's socket (a symlink), and /var/run/docker.sock
    by a path that does not exist; the reaper is told the same engine."""
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setattr(docker_host, "LOCAL_SOCKET", f"unix://{tmp_path}/no-docker.sock")
    link = tmp_path / "run" / "podman" / "podman.sock"
    link.parent.mkdir(parents=True)
    link.symlink_to(SOCKET)
    rootful = str(link) if where == "rootful" else str(tmp_path / "absent" / "podman.sock")
    monkeypatch.setattr(docker_host, "PODMAN_SOCKETS", (rootful, "$XDG_RUNTIME_DIR/podman/podman.sock"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert docker_host.engine_url() == f"unix://{link}"
    assert docker_host.engine_name().startswith(f"unix://{link} (Podman's socket")
    token = uuid.uuid4().hex[:12]
    with Environment(Redis(), labels={"svcenv.test": token}) as env:
        handle = env["redis"]
        assert isinstance(handle, RedisHandle)
        assert handle.client().ping()
        assert podman.podman("ps", "-q", "--filter", f"label=svcenv.test={token}").split(), "on the podman engine"
        reapers = [pid for pid, cmd in _cmdlines().items() if "_docker_reaper" in cmd and env.id in cmd]
        assert len(reapers) == 1, reapers
        environ = Path(f"/proc/{reapers[0]}/environ").read_bytes().split(b"\0")
        assert f"DOCKER_HOST=unix://{link}".encode() in environ, "the reaper goes to the same engine"
    assert podman.leftovers(f"svcenv.test={token}") == {}


def test_without_podman_sockets_the_docker_socket_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(docker_host, "PODMAN_SOCKETS", ("/nonexistent/podman.sock",))
    assert docker_host.podman_socket() is None
    assert docker_host.engine_name() == f"{docker_host.LOCAL_SOCKET} (the local socket)"
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")  # an explicit engine always wins
    monkeypatch.setattr(docker_host, "PODMAN_SOCKETS", (str(SOCKET),))
    assert docker_host.engine_url() == "tcp://192.0.2.1:2375"


# -- the contract basics on Podman -----------------------------------------------------------


def test_postgres_and_redis_on_podman(podman: PodmanEngine) -> None:
    token = uuid.uuid4().hex[:12]
    with Environment(Postgres(), Redis(), labels={"svcenv.test": token}) as env:
        assert {h.host for h in env} == {"127.0.0.1"}
        for handle in env:
            assert set(_bindings(podman, handle.id)) == {"127.0.0.1"}, f"{handle.name} is published beyond loopback"
        image = _inspect(podman, env["postgres"].id)["Config"]["Image"]
        assert CACHE_REPOSITORY in image, f"the Postgres cache works on podman: {image}"
        pg = env["postgres"]
        assert isinstance(pg, PostgresHandle)
        with pg.connect() as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (41)")
            assert conn.execute("SELECT x + 1 FROM t").fetchone() == (42,)
        rd = env["redis"]
        assert isinstance(rd, RedisHandle)
        client = rd.client()
        client.set("where", "podman")
        assert client.get("where") == b"podman"
        variables = env.env_vars()
        assert "@127.0.0.1:" in variables["DATABASE_URL"]
        assert variables["REDIS_HOST"] == "127.0.0.1"
        assert "Ready to accept connections" in rd.logs()
        assert "database system is ready to accept connections" in pg.logs()
        assert rd.exit_status() is None
        timings = {name: f"{t.total_s:.2f}s" for name, t in env.timings.items()}
        assert len(podman.leftovers(f"svcenv.test={token}")["networks"]) == 1, "one network per environment"
    assert podman.leftovers(f"svcenv.test={token}") == {}
    print(f"\npodman engine: {timings}")


def test_the_postgres_cache_is_built_once_and_then_hit(podman: PodmanEngine) -> None:
    """Podman 4.3's compat API ignores ``commit``'s config body (svcenv also sends it as Dockerfile
    ``changes``) and matches no image when an image filter names two labels (svcenv filters by one):
    without both fixes every start would build a new cache image."""
    cached = Postgres(env={"SVCENV_PODMAN_CACHE_PROBE": uuid.uuid4().hex})  # a key of its own
    token = uuid.uuid4().hex[:12]
    for _ in range(2):
        with Environment(cached, labels={"svcenv.test": token}) as env:
            handle = env["postgres"]
            assert isinstance(handle, PostgresHandle)
            with handle.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    images = podman.podman("images", "--filter", "label=svcenv.cache=true", "--format", "{{.ID}} {{.Labels}}")
    mine = [line for line in images.splitlines() if "postgres" in line]
    keys = {line.split("svcenv.cache-key:")[1].split()[0].rstrip("]") for line in mine}
    counts = {key: sum(key in line for line in mine) for key in keys}
    assert all(n == 1 for n in counts.values()), f"one image per cache key: {images}"
    config = json.loads(podman.podman("image", "inspect", f"{CACHE_REPOSITORY}:{max(keys, key=len)}"))
    env_vars = config[0]["Config"]["Env"]
    assert "POSTGRES_PASSWORD_FILE=" in env_vars, env_vars  # the seed's password file is not the image's
    assert "PGDATA=/svcenv-pgdata" in env_vars, env_vars


def test_a_reference_across_the_network_and_a_one_shot_job(podman: PodmanEngine) -> None:
    """Services reach each other by name on the environment's network (aardvark-dns serves the aliases)."""
    rd = Redis(password="pw")
    pg = Postgres()
    pinger = Service(
        "pinger",
        image=os.environ["SVCENV_REDIS_IMAGE"],
        command=("sh", "-c", 'redis-cli -h "$TARGET" -a pw --no-auth-warning PING && exec sleep infinity'),
        env={"TARGET": rd.internal_host},
        probe=LogLine("PONG"),
    )
    migrate = Service(
        "migrate",
        image=os.environ["SVCENV_POSTGRES_IMAGE"],
        command=("sh", "-c", f"psql '{pg.internal_url}' -v ON_ERROR_STOP=1 -c 'CREATE TABLE items (n int)' && echo ok"),
        one_shot=True,
    )
    token = uuid.uuid4().hex[:12]
    with Environment(rd, pg, pinger, migrate, labels={"svcenv.test": token}) as env:
        assert env.outcomes["migrate"] == "completed"
        assert env["migrate"].exit_status() == 0
        assert "ok" in env["migrate"].logs()
        assert "PONG" in env["pinger"].logs()
        handle = env["postgres"]
        assert isinstance(handle, PostgresHandle)
        with handle.connect() as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
        code, out = env["pinger"].exec(["redis-cli", "-h", "redis", "-a", "pw", "--no-auth-warning", "PING"])
        assert (code, out) == (0, "PONG\n")
    assert podman.leftovers(f"svcenv.test={token}") == {}


def test_files_go_into_the_container(podman: PodmanEngine) -> None:
    """``files=`` is an archive put into the created container (``put_archive``)."""
    idle = Service(
        "idle",
        image=os.environ["SVCENV_REDIS_IMAGE"],
        command=("sleep", "infinity"),
        files={"/etc/svcenv/hello.txt": "from svcenv\n"},
        probe=Command(["test", "-f", "/etc/svcenv/hello.txt"]),
    )
    with Environment(idle, labels={"svcenv.test": uuid.uuid4().hex[:12]}) as env:
        assert env["idle"].exec(["cat", "/etc/svcenv/hello.txt"]) == (0, "from svcenv\n")


# -- the fault matrix on Podman ------------------------------------------------------------------

CLEANUP_S: dict[str, float] = {}


@pytest.mark.parametrize("scenario", OWNER_SCENARIOS)
def test_fault_matrix_on_podman(scenario: str, podman: PodmanEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/test_faults.py's scenario, unchanged, with the owner, the leftover count and ``docker kill``
    on the Podman engine (they all follow DOCKER_HOST); then counted again by podman itself."""
    outcomes: list[Outcome] = []

    def recorded(scenario: str, backend: str, run: Any = None) -> Outcome:
        outcome = run_owner(scenario, backend, run)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(test_faults, "run_owner", recorded)
    test_faults.test_every_exit_path_leaves_nothing(scenario, "docker")
    (outcome,) = outcomes
    assert not outcome.left
    token = outcome.events.get("environment", {}).get("id", "")
    if token:
        assert podman.leftovers(f"svcenv.environment={token}") == {}
    CLEANUP_S[scenario] = outcome.cleanup_s
    print(f"\npodman engine, {scenario}: cleanup {outcome.cleanup_s:.2f}s")
