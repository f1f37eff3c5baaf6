"""The fault matrix: every exit path of an environment's owner, on Docker and on local binaries.

Each scenario runs a real owner process (tests/fault_owner.py) into its fault and
then counts what is left (tests/faults.py): containers and networks by label, new
dangling volumes, local server directories and processes, reaper processes, state
files. Every count must be zero. docs/guarantees.md is the table of these
guarantees; benchmarks/cleanup.py measures how long each cleanup takes.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import need
from .faults import DOCKER_ONLY, OWNER_SCENARIOS, SETTLE_S, Run, run_owner

EXPECTED_EVENTS = {
    "normal": ("ready", "clean"),
    "exception": ("ready", "clean"),
    "one_fails": ("failed",),
    "probe_timeout": ("failed",),
    "image_missing": ("failed",),
    "ctrl_c_start": ("interrupted",),
    "sigterm": ("ready",),
    "sigkill": ("ready",),
    "service_killed": ("ready", "reported", "clean"),
}
FAILED_SERVICE = {"one_fails": "broken", "probe_timeout": "silent", "image_missing": "ghost"}
CAUSE = {
    "one_fails": "unrecognized configuration parameter",
    "probe_timeout": "not ready within 3s",
    "image_missing": "not on the engine",
}
EXIT = {"normal": 0, "exception": 1, "ctrl_c_start": 130, "sigterm": -15, "sigkill": -9, "service_killed": 0}


CASES = [(s, b) for b in ("docker", "local") for s in OWNER_SCENARIOS if b == "docker" or s not in DOCKER_ONLY]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    else:
        from svcenv.backends.local import LocalBackend

        capabilities = LocalBackend().capabilities()
        for kind in ("postgres", "redis"):
            if capabilities[kind].startswith(("not found", "unavailable")):
                need(f"local {kind} {capabilities[kind]}")
        os.environ.setdefault("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")  # named in messages only
    return str(request.param)


@pytest.mark.parametrize(("scenario", "backend"), CASES, indirect=["backend"])
def test_every_exit_path_leaves_nothing(scenario: str, backend: str) -> None:
    outcome = run_owner(scenario, backend)
    assert not outcome.left, f"{scenario} on {backend} left: {outcome.left}\n{outcome.stderr[-2000:]}"
    for event in EXPECTED_EVENTS[scenario]:
        assert event in outcome.events, f"no {event!r} event: {outcome.events}\n{outcome.stderr[-2000:]}"
    if scenario in EXIT:
        assert outcome.returncode == EXIT[scenario], outcome.stderr[-2000:]
    if scenario in FAILED_SERVICE:
        message = outcome.events["failed"]["message"]
        assert outcome.events["failed"]["error"] == "ServiceStartError"
        assert f"service {FAILED_SERVICE[scenario]!r} ({backend} backend" in message
        assert CAUSE[scenario] in message
        assert "'postgres'" not in message, "only the failing service is blamed"
        assert "'redis'" not in message, "only the failing service is blamed"
    if scenario == "ctrl_c_start":
        assert "ready" not in outcome.events, "the interrupt came after the start: the scenario tested nothing"
        assert outcome.events["interrupted"]["state"] == "stopped"
    if scenario == "service_killed":
        reported = outcome.events["reported"]
        assert reported["exit_status"] == 137, "the handle reports the killed server's status"
        assert reported["error"] == "OperationalError", "the next query fails loudly"
    assert outcome.cleanup_s < SETTLE_S


def _write_project(root: Path) -> None:
    (root / "svcenv.toml").write_text("[services.postgres]\n[services.redis]\n")


CHILD = textwrap.dedent(
    """
    import os, sys, time, psycopg, redis
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("CREATE TABLE mine (session text)")
        conn.execute("INSERT INTO mine VALUES (%s)", (sys.argv[1],))
    redis.Redis.from_url(os.environ["REDIS_URL"]).set("owner", sys.argv[1])
    time.sleep(1.5)  # both sessions overlap here
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT session FROM mine").fetchall() == [(sys.argv[1],)]
    assert redis.Redis.from_url(os.environ["REDIS_URL"]).get("owner") == sys.argv[1].encode()
    print(os.environ["DATABASE_URL"].rsplit("@", 1)[1], os.environ["REDIS_URL"].rsplit("@", 1)[1])
    """
)


def test_two_cli_sessions_in_one_project_do_not_collide(docker_engine: None, tmp_path: Path) -> None:
    run = Run()
    _write_project(tmp_path)
    state = tmp_path / "state"
    run.state_dirs.append(state)
    env = {**run.env, "SVCENV_STATE_DIR": str(state), "SVCENV_BACKEND": "docker"}
    sessions = [
        subprocess.Popen(
            [sys.executable, "-m", "svcenv", "run", "--", sys.executable, "-c", CHILD, name],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    results = [proc.communicate(timeout=180) for proc in sessions]
    for proc, (_out, err) in zip(sessions, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    (pg_1, redis_1), (pg_2, redis_2) = (out.split() for out, _ in results)
    assert pg_1 != pg_2, "two sessions, two Postgres servers"
    assert redis_1 != redis_2, "two sessions, two Redis servers"
    _seconds, left = run.settle(time.monotonic())
    assert not left, left


def test_killed_xdist_worker_and_parallel_sessions_leave_nothing(
    docker_engine: None, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pytest -n 2 sessions at once in one project; in one of them a worker dies by SIGKILL mid-test."""
    run = Run()
    for key, value in run.env.items():
        monkeypatch.setenv(key, value)
    pytester.makeini("[pytest]\nsvcenv_services = postgres redis\n")
    pytester.makepyfile(
        test_work=textwrap.dedent(
            """
            import os, signal, time
            import pytest

            @pytest.mark.parametrize("n", range(6))
            def test_uses_services(n, postgres_connection, redis_client):
                postgres_connection.execute("CREATE TABLE t (n int)")
                redis_client.set("n", n)
                time.sleep(0.2)
                if n == 2 and os.environ.get("SVCENV_KILL_ONE"):  # whichever worker runs it dies
                    os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    xdist_dirs = Path(f"/tmp/pytest-of-{getpass.getuser()}")
    xdist_dirs_before = set(xdist_dirs.glob("pytest-*/svcenv-xdist"))
    args = [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-q"]
    procs = [
        subprocess.Popen(
            args,
            cwd=pytester.path,
            env={**os.environ, **({"SVCENV_KILL_ONE": "1"} if kill else {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for kill in (True, False)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    crashed, calm = outputs
    assert "crashed" in crashed.lower() or "replacing" in crashed.lower(), crashed[-3000:]
    assert procs[1].returncode == 0, calm[-3000:]
    assert "6 passed" in calm
    _seconds, left = run.settle(time.monotonic())
    assert not left, left
    assert set(xdist_dirs.glob("pytest-*/svcenv-xdist")) <= xdist_dirs_before, "xdist state dir left"
