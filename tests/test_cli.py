"""``python -m svcenv up`` as a user runs it: a real subprocess on real services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis

from .conftest import containers


def _read_dotenv(proc: subprocess.Popen[str], keys: set[str], timeout: float = 60) -> dict[str, str]:
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not keys <= found.keys():
        assert time.monotonic() < deadline, f"up printed only {sorted(found)}"
        line = proc.stdout.readline()
        assert line, "up exited before printing its variables"
        key, _, value = line.rstrip("\n").partition("=")
        found[key] = value
    return found


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_prints_reachable_services_and_removes_them_on_signal(
    docker_engine: None, stop_signal: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "svcenv", "up", "postgres", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        variables = _read_dotenv(proc, {"DATABASE_URL", "REDIS_URL", "PGPASSWORD"})
        with psycopg.connect(variables["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert redis.Redis.from_url(variables["REDIS_URL"]).ping()
        mine = list(containers(f"svcenv.owner-pid={proc.pid}"))
        assert len(mine) == 2
        proc.send_signal(stop_signal)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "ready in" in err
    assert "nothing left running" in err
    assert variables["PGPASSWORD"] not in err  # progress output never shows a secret
    assert containers(f"svcenv.owner-pid={proc.pid}") == []


def test_unknown_service_exits_2_listing_the_known_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "up", "oracle"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "unknown service 'oracle'" in result.stderr
    assert "postgres, redis, elasticsearch" in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_start_exits_1_with_the_cause(docker_engine: None) -> None:
    env = {**os.environ, "SVCENV_REDIS_IMAGE": "svcenv-test/absent:0"}
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "up", "redis"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert "svcenv-test/absent:0" in result.stderr
    assert "SVCENV_REDIS_IMAGE" in result.stderr
    assert "Traceback" not in result.stderr


def test_cache_list_shows_the_pre_initialised_image(docker_engine: None) -> None:
    from svcenv import Environment, Postgres

    with Environment(Postgres()):
        pass  # makes sure the default configuration's cached image exists
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "cache", "list"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "svcenv-cache/postgres:" in result.stdout
    assert f"base {os.environ['SVCENV_POSTGRES_IMAGE']}" in result.stdout
