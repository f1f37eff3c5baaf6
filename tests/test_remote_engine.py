"""svcenv against a remote engine: a second dockerd on a test host of the tests' own (tests/remote_engine.py).

``DOCKER_HOST=tcp://10.211.A.B:2375`` for each test (and the processes it starts):
services are published on that host's address and reached there, the Postgres
cache builds and probes its seed on that engine, and the fault matrix of
tests/test_faults.py runs unchanged against it, with leftovers counted on the
REMOTE engine. What svcenv promises when the engine stops mid-run (tested below):

* every call svcenv makes to it raises :class:`~svcenv.BackendUnavailable` naming
  the engine (``docker: the engine at tcp://… does not answer (…)``);
* the teardown returns within ``teardown_timeout`` (at once when the engine refuses
  connections), and says what it could not remove (``teardown_problems`` and a
  ``TeardownWarning``, naming the engine);
* the reaper stays armed, and once the owner has ended it keeps trying
  (``SVCENV_REAPER_PATIENCE``, default 600 s): when the engine is back, it removes
  every container, network and volume of the environment.

Also here, on the local engine: ``TESTCONTAINERS_HOST_OVERRIDE`` does not widen where
ports are published (every port stays on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from svcenv import Environment, Postgres, Redis, Service, ServiceStartError
from svcenv.backends import docker_host
from svcenv.backends.pgcache import CACHE_REPOSITORY

from . import test_faults
from .conftest import LeakCheck, docker, no_connect_overrides
from .faults import OWNER_SCENARIOS, ROOT, SETTLE_S, Outcome, _cmdlines, run_owner
from .remote_engine import RemoteEngine, remote_engine  # noqa: F401 (the fixture)

pytestmark = pytest.mark.docker


@pytest.fixture
def remote(remote_engine: RemoteEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteEngine]:  # noqa: F811
    """``DOCKER_HOST`` points at the remote engine for the test and its subprocesses. Afterwards nothing
    of svcenv's may be left there (the engine is the tests' alone: anything labelled, any dangling volume)."""
    monkeypatch.setenv("DOCKER_HOST", remote_engine.url)
    no_connect_overrides(monkeypatch)
    if not remote_engine.answers():  # an earlier test stopped it and failed before restarting it
        remote_engine.stop()  # (it may still be ending)
        remote_engine.start()
    yield remote_engine
    if not remote_engine.answers():
        remote_engine.stop()
        remote_engine.start()
    _seconds, left = remote_engine.settle("svcenv.environment", limit=SETTLE_S)
    assert not left, f"left on the remote engine: {left}"


def _bindings(engine: RemoteEngine | None, container_id: str) -> list[str]:
    """The host addresses every published port of a container binds (on ``engine``, else the local one)."""
    args = ("inspect", "-f", "{{json .HostConfig.PortBindings}}", container_id)
    out = engine.docker(*args) if engine is not None else docker(*args)
    return [b["HostIp"] for bindings in json.loads(out).values() for b in bindings]


def _image(engine: RemoteEngine, container_id: str) -> str:
    return engine.docker("inspect", "-f", "{{.Config.Image}}", container_id).strip()


# -- the bind decision, from the engine's URL alone -----------------------------------------


def test_the_bind_address_comes_from_the_engine_url_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    no_connect_overrides(monkeypatch)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for local in ("http+docker://localhost", "http://127.0.0.1:2375", "http://[::1]:2375", "http://localhost:2375"):
        assert docker_host.remote_host(local) is None, local
    assert docker_host.remote_host("http://10.211.0.2:2375") == "10.211.0.2"
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@10.1.2.3")
    assert docker_host.remote_host("http+docker://ssh") == "10.1.2.3"
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@localhost")
    assert docker_host.remote_host("http+docker://ssh") is None
    monkeypatch.setenv("TESTCONTAINERS_HOST_OVERRIDE", "192.0.2.7")  # connect-side settings do not move it
    monkeypatch.setenv("SVCENV_DOCKER_HOST_IP", "192.0.2.8")
    assert docker_host.bind_address(None) == "127.0.0.1"
    assert docker_host.bind_address("10.211.0.2") == "10.211.0.2"  # the one address, never 0.0.0.0
    assert docker_host.bind_address("localhost") == "127.0.0.1"  # a name is resolved
    monkeypatch.setenv("SVCENV_DOCKER_BIND", "0.0.0.0")
    assert docker_host.bind_address(None) == "0.0.0.0"


def test_the_connect_address_follows_the_overrides_only_where_ports_are_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from testcontainers.core.config import testcontainers_config

    def client(base_url: str) -> Any:  # engine_host reads nothing but the client's base URL
        return SimpleNamespace(api=SimpleNamespace(base_url=base_url))

    no_connect_overrides(monkeypatch)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(testcontainers_config, "tc_host_override", "192.0.2.7")
    assert docker_host.engine_host(client("http+docker://localhost")) == "127.0.0.1"  # local: not widened
    assert docker_host.engine_host(client("http://10.211.0.2:2375")) == "192.0.2.7"  # remote: used
    monkeypatch.setenv("SVCENV_DOCKER_BIND", "192.0.2.7")  # local, with the opt-in: used
    assert docker_host.engine_host(client("http+docker://localhost")) == "192.0.2.7"
    monkeypatch.delenv("SVCENV_DOCKER_BIND")
    monkeypatch.setattr(testcontainers_config, "tc_host_override", None)
    assert docker_host.engine_host(client("http://10.211.0.2:2375")) == "10.211.0.2"


def test_host_override_on_a_local_engine_leaves_every_port_on_loopback(
    leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """TESTCONTAINERS_HOST_OVERRIDE on a LOCAL engine leaves every port on loopback."""
    from testcontainers.core.config import testcontainers_config

    no_connect_overrides(monkeypatch)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    override = next((a for a in addresses if "." in a), "203.0.113.7")  # this host's own, else TEST-NET-3
    monkeypatch.setenv("TESTCONTAINERS_HOST_OVERRIDE", override)
    monkeypatch.setattr(testcontainers_config, "tc_host_override", override)
    plain = Service("plain", image=os.environ["SVCENV_REDIS_IMAGE"], ports=(6379,))  # no credentials at all
    with Environment(Postgres(), Redis(), plain, labels=leaks.labels) as env:
        for handle in env:
            assert handle.host == "127.0.0.1", f"{handle.name} is reached at {handle.host}"
            assert set(_bindings(None, handle.id)) == {"127.0.0.1"}, f"{handle.name} is published beyond loopback"
        with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert env["redis"].client().ping()  # type: ignore[attr-defined]
    said = f"TESTCONTAINERS_HOST_OVERRIDE={override} is not used"
    assert said in caplog.text or any(said in m for m in docker_host._warned), "svcenv says it does not use it"


# -- the contract basics on the remote engine -----------------------------------------------


def test_services_are_published_on_the_engine_host_and_reached_there(remote: RemoteEngine) -> None:
    token = uuid.uuid4().hex[:12]
    with Environment(Postgres(), Redis(), labels={"svcenv.test": token}) as env:
        assert {h.host for h in env} == {remote.address}
        local = docker("--host", docker_host.LOCAL_SOCKET, "ps", "-aq", "--filter", f"label=svcenv.test={token}")
        assert local.split() == [], "the containers run on the remote engine, not the local one"
        for handle in env:
            assert set(_bindings(remote, handle.id)) == {remote.address}, "only the address svcenv connects to"
        assert _image(remote, env["postgres"].id).startswith(CACHE_REPOSITORY), "the cache works remotely"
        assert {h._instance.direct_host for h in env} == {None}, "no route here to a remote engine's bridges"
        with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
            assert conn.info.host == remote.address
            conn.execute("CREATE TEMP TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (41)")
            assert conn.execute("SELECT x + 1 FROM t").fetchone() == (42,)
        client = env["redis"].client()  # type: ignore[attr-defined]
        client.set("where", "remote")
        assert client.get("where") == b"remote"
        variables = env.env_vars()
        assert f"@{remote.address}:" in variables["DATABASE_URL"]
        assert variables["REDIS_HOST"] == remote.address
        assert "Ready to accept connections" in env["redis"].logs()
        assert env["redis"].exit_status() is None
        timings = {name: f"{t.total_s:.2f}s" for name, t in env.timings.items()}
    assert remote.leftovers(f"svcenv.test={token}") == {}
    print(f"\nremote engine, first start (the Postgres cache may be built now): {timings}")


def test_postgres_cache_off_works_remotely_too(remote: RemoteEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_CACHE", "0")
    with Environment(Postgres(), labels={"svcenv.test": "cache-off"}) as env:
        assert _image(remote, env["postgres"].id) == os.environ["SVCENV_POSTGRES_IMAGE"]
        with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SELECT 1").fetchone() == (1,)
        print(f"\nremote engine, SVCENV_POSTGRES_CACHE=0: postgres ready in {env.timings['postgres'].total_s:.2f}s")


def test_a_service_without_credentials_is_published_remotely_only_on_opt_in(
    remote: RemoteEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_redis = Redis(password="")
    with pytest.raises(ServiceStartError) as failed:
        Environment(open_redis, labels={"svcenv.test": "no-credentials"}).start()
    message = str(failed.value)
    assert "takes no credentials" in message
    assert remote.url in message
    assert f"SVCENV_DOCKER_BIND={remote.address}" in message
    monkeypatch.setenv("SVCENV_DOCKER_BIND", remote.address)  # the explicit opt-in
    with Environment(open_redis, labels={"svcenv.test": "no-credentials"}) as env:
        assert set(_bindings(remote, env["redis"].id)) == {remote.address}
        assert env["redis"].client().ping()  # type: ignore[attr-defined]


# -- the fault matrix, against the remote engine ----------------------------------------------

CLEANUP_S: dict[str, float] = {}


@pytest.mark.parametrize("scenario", OWNER_SCENARIOS)
def test_fault_matrix_on_the_remote_engine(
    scenario: str, remote: RemoteEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/test_faults.py's scenario, unchanged, with the owner, the leftover count and ``docker kill`` on
    the remote engine (they all follow DOCKER_HOST)."""
    outcomes: list[Outcome] = []

    def recorded(scenario: str, backend: str, run: Any = None) -> Outcome:
        outcome = run_owner(scenario, backend, run)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(test_faults, "run_owner", recorded)
    test_faults.test_every_exit_path_leaves_nothing(scenario, "docker")
    (outcome,) = outcomes
    assert not outcome.left
    CLEANUP_S[scenario] = outcome.cleanup_s
    print(f"\nremote engine, {scenario}: cleanup {outcome.cleanup_s:.2f}s")


# -- the CLI: up --detach, status, env, logs, down, reuse and prune ---------------------------


def _cli(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcenv", *args], cwd=project, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_cli_works_against_the_remote_engine(remote: RemoteEngine, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "svcenv.toml").write_text("[services.postgres]\n[services.redis]\n")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    env["SVCENV_STATE_DIR"] = str(state)
    label = f"svcenv.state-dir={state}"

    up = _cli(project, env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    dotenv = dict(line.split("=", 1) for line in up.stdout.splitlines())
    assert dotenv["POSTGRES_HOST"] == dotenv["REDIS_HOST"] == remote.address
    assert len(remote.leftovers(label)["containers"]) == 2
    status = _cli(project, env, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("healthy") == 2
    variables = json.loads(_cli(project, env, "env", "--format", "json").stdout)
    with psycopg.connect(variables["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(variables["REDIS_URL"]).ping()
    logs = _cli(project, env, "logs", "redis")
    assert logs.returncode == 0, logs.stderr
    assert "Ready to accept connections" in logs.stdout
    down = _cli(project, env, "down")
    assert down.returncode == 0, down.stderr
    assert "2 container(s) removed" in down.stdout
    assert remote.leftovers(label) == {}

    # Reuse: a second run attaches to the containers the first one left; `down` removes them.
    check = "import os, psycopg; psycopg.connect(os.environ['DATABASE_URL']).close()"
    first = _cli(project, env, "run", "--force-reuse", "--", sys.executable, "-c", check)
    assert first.returncode == 0, first.stderr
    reused = sorted(remote.leftovers(label)["containers"])
    assert len(reused) == 2
    second = _cli(project, env, "run", "--force-reuse", "--", sys.executable, "-c", check)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("attached in") == 2, second.stderr
    assert sorted(remote.leftovers(label)["containers"]) == reused  # the same containers
    down = _cli(project, env, "down")
    assert down.returncode == 0, down.stderr
    assert remote.leftovers(label) == {}

    # Prune: what an owner without a reaper left when it was SIGKILLed.
    token = uuid.uuid4().hex[:12]
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom svcenv import Environment, Redis\n"
            f"env = Environment(Redis(), labels={{'svcenv.test': '{token}'}}).start()\n"
            "print(env.id, flush=True)\ntime.sleep(300)\n",
        ],
        env={**env, "SVCENV_REAPER": "0"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        owner.stdout.readline()
    finally:
        owner.kill()
        owner.wait()
    assert len(remote.leftovers(f"svcenv.test={token}")["containers"]) == 1
    pruned = _cli(project, env, "prune", "--label", f"svcenv.test={token}")
    assert pruned.returncode == 0, pruned.stderr
    assert "pruned 1 container(s)" in pruned.stdout
    assert remote.leftovers(f"svcenv.test={token}") == {}


# -- the engine stops (or hangs) mid-run ------------------------------------------------------

ENGINE_STOPS_OWNER = textwrap.dedent(
    """
    import json, sys, time, warnings
    from svcenv import Environment, Postgres, Redis

    def emit(event, **data):
        print(event, json.dumps(data), flush=True)

    ask = sys.argv[2] == "ask"
    env = Environment(Postgres(), Redis(), teardown_timeout=float(sys.argv[1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with env:
            emit("ready", id=env.id)
            sys.stdin.readline()  # the driver stops the engine now
            if ask:
                try:
                    env["redis"].exit_status()
                    emit("asked", error=None, message="")
                except Exception as exc:
                    emit("asked", error=type(exc).__name__, message=str(exc))
            began = time.monotonic()
    emit(
        "stopped",
        seconds=time.monotonic() - began,
        problems=list(env.teardown_problems),
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
    )
    """
)


def _reapers(env_id: str) -> list[int]:
    return [pid for pid, cmd in _cmdlines().items() if "_docker_reaper" in cmd and env_id in cmd]


@pytest.mark.parametrize("how", ["stopped", "hung"])
def test_the_engine_stopping_mid_run(how: str, remote: RemoteEngine) -> None:
    """``stopped``: dockerd ends (SIGTERM) while an environment is up. ``hung``: dockerd is frozen
    (SIGSTOP), so calls hang rather than fail. Either way the teardown is bounded, and once the engine is
    back the reaper removes everything."""
    token = uuid.uuid4().hex[:12]
    teardown_timeout = 30.0 if how == "stopped" else 5.0
    owner = subprocess.Popen(
        [sys.executable, "-c", ENGINE_STOPS_OWNER, str(teardown_timeout), "ask" if how == "stopped" else "-"],
        env={**os.environ, "SVCENV_LABELS": f"svcenv.test={token}", "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert owner.stdin is not None
    assert owner.stdout is not None
    events: dict[str, dict[str, Any]] = {}
    frozen: int | None = None
    try:
        line = owner.stdout.readline()
        assert line.startswith("ready "), line + (owner.stderr.read() if owner.stderr else "")
        events["ready"] = json.loads(line.split(" ", 1)[1])
        env_id = events["ready"]["id"]
        assert len(remote.leftovers(f"svcenv.test={token}")["containers"]) == 2
        if how == "stopped":
            stop_s = remote.stop()
        else:
            frozen = remote.pid
            assert frozen is not None
            os.kill(frozen, 19)  # SIGSTOP, to the dockerd this fixture started
            stop_s = 0.0
        owner.stdin.write("go\n")
        owner.stdin.flush()
        for line in owner.stdout:
            event, _, data = line.partition(" ")
            events[event] = json.loads(data)
        assert owner.wait(timeout=120) == 0, owner.stderr.read() if owner.stderr else ""
        assert _reapers(env_id), "the reaper stays armed while the engine is gone"
    finally:
        if frozen is not None:
            os.kill(frozen, 18)  # SIGCONT
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    stopped = events["stopped"]
    if how == "stopped":
        asked = events["asked"]
        assert asked["error"] == "BackendUnavailable", asked
        assert remote.url in asked["message"], asked["message"]
        assert "does not answer" in asked["message"], asked["message"]
        assert any(remote.url in p for p in stopped["problems"]), stopped["problems"]
        assert stopped["seconds"] < 5, "an engine that refuses connections fails the teardown at once"
        print(f"\nwhat the user is told: {asked['message']}\nteardown problems: {stopped['problems']}")
    else:
        assert stopped["seconds"] < teardown_timeout + 3, "the teardown is bounded by teardown_timeout"
        assert stopped["problems"], "the teardown says what it could not remove"
    assert any(w.startswith("TeardownWarning") and env_id in w for w in stopped["warnings"]), stopped["warnings"]

    restart_s, settled, clean_s = _reaped_after_restart(remote, token, env_id, restart=how == "stopped")
    print(
        f"\nremote engine {how}: stop {stop_s:.2f}s, owner's teardown {stopped['seconds']:.2f}s, "
        f"restart {restart_s:.2f}s, nothing left {clean_s:.2f}s after the engine was back (settle {settled:.2f}s)"
    )


def _reaped_after_restart(remote: RemoteEngine, token: str, env_id: str, restart: bool) -> tuple[float, float, float]:
    """The engine back (started again if ``restart``): nothing of the test's left, and the reaper gone.
    Returns the restart's seconds, the settle's, and the seconds until the reaper had ended."""
    began = time.monotonic()
    restart_s = remote.start() if restart else 0.0
    settled, left = remote.settle(f"svcenv.test={token}", limit=SETTLE_S)
    assert not left, f"after the engine came back: {left}"
    deadline = time.monotonic() + 10
    while _reapers(env_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _reapers(env_id), "the reaper ends once it has cleaned up"
    return restart_s, settled, time.monotonic() - began


ENGINE_STOPS_DURING_START_OWNER = textwrap.dedent(
    """
    import json, time, warnings
    from svcenv import Environment, Postgres, Redis
    from svcenv.probes import LogLine

    def emit(event, **data):
        print(event, json.dumps(data), flush=True)

    # A third service that is never ready: the start is still under way when the engine stops.
    slow = Redis(name="slow", probe=LogLine("never"), timeout=60)
    env = Environment(Postgres(), Redis(), slow, teardown_timeout=10)
    emit("starting", id=env.id)
    began = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            env.start()
            emit("started")
        except Exception as exc:
            emit(
                "failed",
                error=type(exc).__name__,
                seconds=time.monotonic() - began,
                message=str(exc),
                problems=list(env.teardown_problems),
                warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
            )
    """
)


def test_the_engine_stopping_during_start(remote: RemoteEngine) -> None:
    """dockerd ends while an environment starts (its containers made, one service not ready yet): the
    start fails at once and says that its teardown was incomplete (not that everything was removed),
    the reaper stays armed, and once the engine is back it removes every container, network and volume."""
    token = uuid.uuid4().hex[:12]
    owner = subprocess.Popen(
        [sys.executable, "-c", ENGINE_STOPS_DURING_START_OWNER],
        env={**os.environ, "SVCENV_LABELS": f"svcenv.test={token}", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert owner.stdout is not None
    events: dict[str, dict[str, Any]] = {}
    try:
        line = owner.stdout.readline()
        assert line.startswith("starting "), line + (owner.stderr.read() if owner.stderr else "")
        env_id = json.loads(line.split(" ", 1)[1])["id"]
        deadline = time.monotonic() + 60
        while len(remote.leftovers(f"svcenv.test={token}").get("containers", [])) < 3:
            assert time.monotonic() < deadline, "the three containers were never made"
            assert owner.poll() is None, owner.stdout.read() + (owner.stderr.read() if owner.stderr else "")
            time.sleep(0.05)
        made = remote.leftovers(f"svcenv.test={token}")
        stop_s = remote.stop()
        for line in owner.stdout:
            event, _, data = line.partition(" ")
            events[event] = json.loads(data)
        assert owner.wait(timeout=120) == 0, owner.stderr.read() if owner.stderr else ""
        assert _reapers(env_id), f"the reaper stays armed while the engine is gone: {events}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    failed = events["failed"]
    assert "started" not in events
    assert failed["error"] == "ServiceStartError", failed
    assert failed["seconds"] < 30, "the start fails at once, not at the slow service's timeout"
    assert "teardown after it was incomplete" in failed["message"], failed["message"]
    assert failed["problems"], "the teardown says what it could not remove"
    assert any(w.startswith("TeardownWarning") and env_id in w for w in failed["warnings"]), failed["warnings"]

    restart_s, settled, clean_s = _reaped_after_restart(remote, token, env_id, restart=True)
    print(
        f"\nremote engine stopped during start (made: {made}): stop {stop_s:.2f}s, start failed after "
        f"{failed['seconds']:.2f}s, restart {restart_s:.2f}s, nothing left {clean_s:.2f}s "
        f"after the engine was back (settle {settled:.2f}s)\nwhat the user is told: {failed['message'][:600]}"
    )


def test_a_network_the_engine_forgets_while_shutting_down_is_not_taken_for_removed(remote: RemoteEngine) -> None:
    """dockerd shutting down has closed its store but still answers: it fails a network's removal (500),
    then says 404 for it, and the network is back after its restart. svcenv takes that 404 for no
    proof: the cleanup's settle and the reaper both fail until the engine is back and can record a
    change; then the network goes."""
    import docker as docker_sdk
    import requests

    from svcenv.backends import _docker_reaper
    from svcenv.backends.base import LABEL_ENVIRONMENT
    from svcenv.backends.docker_network import Shared, _engine_writes

    env_id = uuid.uuid4().hex[:12]
    client = docker_sdk.DockerClient(base_url=remote.url, timeout=10)
    try:
        shared = Shared()
        network = shared.acquire(client, {LABEL_ENVIRONMENT: env_id, "svcenv.test": env_id}, ())
        remote.begin_stop()
        deadline = time.monotonic() + 5
        while _engine_writes(client, env_id):  # a ConnectionError here: it ended before its store closed
            assert time.monotonic() < deadline, "dockerd kept recording changes for 5 s after SIGTERM"
            time.sleep(0.01)
        with pytest.raises(docker_sdk.errors.APIError) as failed:
            shared.release(client, env_id)
        assert failed.value.status_code == 500, failed.value
        with pytest.raises(docker_sdk.errors.NotFound):
            client.api.inspect_network(network)  # what the engine says now, and it is not so (below)
        with pytest.raises(RuntimeError, match=f"network {network}: its removal failed .* no proof"):
            shared.settle(client, env_id)
        # The reaper's part: no proof from this engine either (or it has ended by now).
        with pytest.raises((RuntimeError, docker_sdk.errors.DockerException, requests.exceptions.ConnectionError)):
            _docker_reaper.reap(env_id, [("network", network)])
        remote.stop()
        remote.start()
        assert client.api.inspect_network(network)["Name"] == network, "the network is back after the restart"
        assert _docker_reaper.reap(env_id, [("network", network)]) == 0
        with pytest.raises(docker_sdk.errors.NotFound):
            client.api.inspect_network(network)
        shared.settle(client, env_id)  # proven now: the engine records changes again
    finally:
        client.close()


# -- start time, remote vs local ---------------------------------------------------------------


def _start_s(label: str) -> float:
    began = time.monotonic()
    with Environment(Postgres(), Redis(), labels={"svcenv.test": label}) as env:
        took = time.monotonic() - began
        with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
            conn.execute("SELECT 1")
    return took


def test_start_time_remote_vs_local(remote: RemoteEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Postgres + Redis, warm caches on both engines: the median of 3 starts each (printed)."""
    times: dict[str, list[float]] = {}
    for where in ("local", "remote"):
        if where == "local":
            monkeypatch.delenv("DOCKER_HOST")
        else:
            monkeypatch.setenv("DOCKER_HOST", remote.url)
        _start_s(f"timing-{where}")  # warm: the Postgres cache image exists on this engine from here on
        times[where] = [_start_s(f"timing-{where}") for _ in range(3)]
    local, remote_s = statistics.median(times["local"]), statistics.median(times["remote"])
    print(
        f"\nstart (postgres + redis, median of 3): local {local:.2f}s, remote {remote_s:.2f}s, "
        f"ratio remote/local {remote_s / local:.2f}; remote engine started in {remote.timings['start_s']:.2f}s, "
        f"images loaded in {remote.timings.get('load_s', 0):.1f}s"
    )
    assert remote_s < 10 * local + 5, times
