"""One contract, three backends: the same tests run on docker, local and external.

External is exercised against servers this module starts itself (through the
local backend), so every case talks to a real Postgres and a real Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from svcenv import BackendUnavailable, Elasticsearch, Environment, Postgres, Redis

from .conftest import containers, need

BACKENDS = ["docker", "local", "external"]


def _local_available() -> None:
    from svcenv.backends.local import LocalBackend

    for kind in (Postgres(), Redis()):
        reason = LocalBackend().supports(kind)
        if reason:
            need(reason)


@pytest.fixture(scope="module")
def external_servers() -> Iterator[dict[str, str]]:
    """A real Postgres and Redis started by this module; their URLs as SVCENV_*_URL values."""
    _local_available()
    with Environment(Postgres(), Redis(), backend="local") as servers:
        yield {"SVCENV_POSTGRES_URL": servers["postgres"].url, "SVCENV_REDIS_URL": servers["redis"].url}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "docker":
        request.getfixturevalue("docker_engine")
    elif name == "local":
        _local_available()
    else:
        for key, value in request.getfixturevalue("external_servers").items():
            monkeypatch.setenv(key, value)
    return name


def _server_pids(handle_ids: list[str], backend: str) -> list[int]:
    return [int(i) for i in handle_ids] if backend == "local" else []


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


def test_start_probe_connect_env_vars_and_leave_nothing(backend: str) -> None:
    pg, rd = Postgres(), Redis()
    env = Environment(pg, rd, backend=backend, labels={"svcenv.test": "contract"})
    with env:
        assert {h.backend for h in env} == {backend}
        assert {t.backend for t in env.timings.values()} == {backend}
        with env[pg].connect() as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (41)")
            assert conn.execute("SELECT x + 1 FROM t").fetchone() == (42,)
        client = env[rd].client()
        client.set("contract", backend)
        assert client.get("contract") == backend.encode()
        client.close()
        variables = env.env_vars()
        with psycopg.connect(variables["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (env[pg].user,)
        assert redis.Redis.from_url(variables["REDIS_URL"]).ping()
        ids = [h.id for h in env]
        pids = _server_pids(ids, backend)
        assert all(_running(pid) for pid in pids)
        workdirs = _workdirs(env.id)
        if backend == "local":
            assert len(workdirs) == 2
        if backend == "docker":
            assert len(containers(f"svcenv.environment={env.id}")) == 2
    # Teardown leaves nothing: no container (by label), no server process (by pid), no temp dir.
    assert containers(f"svcenv.environment={env.id}") == []
    assert [pid for pid in pids if _running(pid)] == []
    assert [d for d in workdirs if d.exists()] == []
    assert _workdirs(env.id) == []


def _workdirs(env_id: str) -> list[Path]:
    from svcenv.backends.local import tmp_base

    return sorted(tmp_base().glob(f"*-{env_id}-*"))


def test_external_never_stops_what_it_did_not_start(
    external_servers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in external_servers.items():
        monkeypatch.setenv(key, value)
    with Environment(Redis(), backend="external") as env:
        env["redis"].client(db=3).set("kept", "yes")
    with redis.Redis.from_url(external_servers["SVCENV_REDIS_URL"].rsplit("/", 1)[0] + "/3") as client:
        assert client.get("kept") == b"yes"
        client.delete("kept")


def _auto(*services: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run an auto-backend environment in a fresh process with a controlled environment."""
    code = (
        "import json, svcenv\n"
        f"services = [getattr(svcenv, k.capitalize())() for k in {list(services)!r}]\n"
        "try:\n"
        "    with svcenv.Environment(*services) as e:\n"
        "        print(json.dumps({h.name: h.backend for h in e}))\n"
        "except svcenv.BackendUnavailable as exc:\n"
        "    print('UNAVAILABLE', exc)\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("SVCENV_") or k.endswith("_IMAGE")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**base, **env}, check=True
    )


# A stopped engine, simulated: DOCKER_HOST names a socket nobody listens on (stopping the
# real dockerd would break the tests running beside this one).
NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_auto_uses_local_when_docker_is_unavailable() -> None:
    _local_available()
    out = _auto("postgres", "redis", **NO_DOCKER).stdout
    assert '"postgres": "local"' in out
    assert '"redis": "local"' in out


def test_auto_uses_docker_when_an_engine_answers(docker_engine: None) -> None:
    assert '"redis": "docker"' in _auto("redis").stdout


def test_auto_prefers_a_configured_url(external_servers: dict[str, str]) -> None:
    out = _auto("postgres", "redis", **NO_DOCKER, SVCENV_REDIS_URL=external_servers["SVCENV_REDIS_URL"]).stdout
    assert '"redis": "external"' in out
    assert '"postgres": "local"' in out


def test_auto_with_nothing_available_names_each_backends_reason() -> None:
    out = _auto("elasticsearch", **NO_DOCKER).stdout
    assert out.startswith("UNAVAILABLE no backend can run service 'elasticsearch'")
    assert "external: SVCENV_ELASTICSEARCH_URL is not set" in out
    assert "docker: no Docker engine answers at unix:///nonexistent/docker.sock" in out
    assert "local: cannot serve elasticsearch: no local distribution" in out
    assert "Fix one of them" in out


def test_backend_can_be_forced_per_descriptor_and_by_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _local_available()
    with Environment(Redis(backend="local")) as env:
        assert env["redis"].backend == "local"
    monkeypatch.setenv("SVCENV_BACKEND", "local")
    with Environment(Redis()) as env:
        assert env["redis"].backend == "local"
    monkeypatch.setenv("SVCENV_BACKEND", "external")
    with pytest.raises(BackendUnavailable, match="SVCENV_ELASTICSEARCH_URL"):
        Environment(Elasticsearch()).start()


def test_doctor_reports_each_backend_and_exits_1_when_a_service_has_none() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SVCENV_") or k.endswith("_IMAGE")}
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "doctor", "redis", "elasticsearch"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **NO_DOCKER},
    )
    assert result.returncode == 1
    assert "elasticsearch: auto uses NOTHING" in result.stdout
    assert "no backend can run: elasticsearch" in result.stderr
    assert "redis: auto uses local" in result.stdout or "redis: auto uses NOTHING" in result.stdout


def test_tuned_settings_apply_to_owned_servers_not_external_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _local_available()
    with Environment(Postgres(tuned=False), backend="local") as outside:
        monkeypatch.setenv("SVCENV_POSTGRES_URL", outside["postgres"].url)
        with Environment(Postgres(), backend="external") as env, env["postgres"].connect() as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)  # untouched
    with Environment(Postgres(), backend="local") as owned, owned["postgres"].connect() as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
