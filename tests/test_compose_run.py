"""A compose file runs with svcenv's guarantees: ``run -f``, ``[tool.svcenv] compose``, the pytest plugin.

The file names the test images through variables (``${PG_IMAGE:-postgres:16}``) and says
which kind each service is with ``x-svcenv``, since no official image can be pulled here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from svcenv.config import load_config

from .conftest import LeakCheck

COMPOSE = """
services:
  postgres:
    image: ${PG_IMAGE:-postgres:16}
    x-svcenv: {kind: postgres}
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: ${PG_PASSWORD:?set PG_PASSWORD}
      POSTGRES_DB: appdb
    ports: ["5432:5432"]
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U app -d appdb"]
      interval: 1s
  redis:
    image: ${REDIS_IMAGE:-redis:7}
    x-svcenv: {kind: redis}
    restart: always
  tools:
    image: busybox
    profiles: [debug]
"""

SUITE = """
import pytest

@pytest.mark.parametrize("n", range(4))
def test_fresh_database(postgres_connection, n):
    postgres_connection.execute("CREATE TABLE t (n int)")  # fails if a database were shared
    postgres_connection.execute("INSERT INTO t VALUES (%s)", (n,))
    assert postgres_connection.execute("SELECT current_user").fetchone() == ("app",)

@pytest.mark.parametrize("n", range(4))
def test_redis(redis_client, n):
    assert redis_client.dbsize() == 0
    redis_client.set("k", n)
"""


@pytest.fixture
def project(tmp_path: Path, docker_engine: None, leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    (tmp_path / ".env").write_text(
        f"PG_IMAGE={os.environ['SVCENV_POSTGRES_IMAGE']}\nREDIS_IMAGE={os.environ['SVCENV_REDIS_IMAGE']}\n"
    )
    monkeypatch.setenv("PG_PASSWORD", "s3cret-from-env")
    monkeypatch.setenv("SVCENV_LABELS", ",".join(f"{k}={v}" for k, v in leaks.labels.items()))
    monkeypatch.setenv("SVCENV_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_run_f_starts_the_file_services_with_their_credentials(project: Path) -> None:
    check = (
        "import os, psycopg, redis; "
        "c = psycopg.connect(os.environ['DATABASE_URL']); "
        "print(c.execute('SELECT current_user, current_database()').fetchone()); "
        "print(redis.Redis.from_url(os.environ['REDIS_URL']).ping()); "
        "print(os.environ['POSTGRES_PORT'] != '5432')"
    )
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "run", "-f", "compose.yaml", "--", sys.executable, "-c", check],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["('app', 'appdb')", "True", "True"]
    assert "restart: ignored" in result.stderr
    assert "s3cret-from-env" not in result.stdout + result.stderr
    assert "tools" not in result.stderr  # its profile is not enabled


def test_a_missing_required_variable_is_a_usage_error(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PG_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "svcenv", "run", "-f", "compose.yaml", "--", "true"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "set PG_PASSWORD" in result.stderr
    assert "services.postgres.environment" in result.stderr


def test_tool_svcenv_compose_declares_the_services(project: Path) -> None:
    (project / "pyproject.toml").write_text('[tool.svcenv]\ncompose = "compose.yaml"\ncompose_profiles = ["debug"]\n')
    config = load_config(project / "pyproject.toml")
    assert config.known == ["postgres", "redis", "tools"]
    assert config.declared
    assert any("restart: ignored" in n for n in config.notices)


def test_the_plugin_runs_a_compose_file_under_xdist(project: Path, pytester: pytest.Pytester) -> None:
    for name in ("compose.yaml", ".env"):
        (pytester.path / name).write_text((project / name).read_text())
    pytester.makeini("[pytest]\nsvcenv_compose = compose.yaml\n")
    pytester.makepyfile(test_app=textwrap.dedent(SUITE))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=300)
    result.assert_outcomes(passed=8)


JOBS = """
services:
  postgres:
    image: ${PG_IMAGE}
    x-svcenv: {kind: postgres}
    environment: {POSTGRES_USER: app, POSTGRES_PASSWORD: pw, POSTGRES_DB: appdb}
  migrate:
    image: ${PG_IMAGE}
    environment: {PGPASSWORD: pw}
    command: ["sh", "-c", "psql -h postgres -U app -d appdb -v ON_ERROR_STOP=1 -c \\"${SQL}\\" && echo migrated"]
    depends_on: {postgres: {condition: service_healthy}}
  app:
    image: ${PG_IMAGE}
    command: ["sleep", "infinity"]
    healthcheck: {test: ["CMD", "true"]}
    depends_on: {migrate: {condition: service_completed_successfully}}
"""


def _run_jobs(project: Path, sql: str) -> subprocess.CompletedProcess[str]:
    (project / "compose.yaml").write_text(JOBS)
    check = (
        "import os, psycopg; c = psycopg.connect(os.environ['DATABASE_URL']); "
        "print(c.execute('SELECT count(*) FROM items').fetchone()[0])"
    )
    return subprocess.run(
        [sys.executable, "-m", "svcenv", "run", "-f", "compose.yaml", "--", sys.executable, "-c", check],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SQL": sql},
    )


@pytest.mark.docker
def test_a_one_shot_migration_completes_before_the_app_starts(project: Path, leaks: LeakCheck) -> None:
    result = _run_jobs(project, "CREATE TABLE items (n int); INSERT INTO items VALUES (1), (2), (3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert "migrate" in result.stderr
    assert "completed in" in result.stderr
    leaks.assert_clean()


@pytest.mark.docker
def test_a_failing_one_shot_migration_fails_the_start_with_its_log(project: Path, leaks: LeakCheck) -> None:
    result = _run_jobs(project, "INSERT INTO missing_table VALUES (1)")
    assert result.returncode != 0
    assert "migrate" in result.stderr
    assert "exited with status" in result.stderr
    assert 'relation "missing_table" does not exist' in result.stderr  # the job's own log
    assert "app" not in result.stdout
    leaks.assert_clean()


NAMED_SUITE = """
import psycopg
import pytest

@pytest.mark.svcenv("app")  # the app, and the migration job it waits for
def test_the_job_ran_before_the_app(db_service):
    with psycopg.connect(db_service.url) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)

def test_a_service_of_any_name_gets_its_fixtures(db_connection):
    db_connection.execute("CREATE TABLE mine (x int)")  # its own fresh database
"""


@pytest.mark.docker
def test_the_plugin_gives_compose_services_their_fixtures_and_dependencies(
    project: Path, pytester: pytest.Pytester
) -> None:
    """A service named ``db`` gets ``db_service``/``db_connection``; a marked ``app`` brings the job it waits for."""
    jobs = JOBS.replace("\n  postgres:\n", "\n  db:\n").replace("-h postgres", "-h db").replace("{postgres:", "{db:")
    jobs = jobs.replace("${SQL}", "CREATE TABLE items (n int)")
    (pytester.path / "compose.yaml").write_text(jobs)
    (pytester.path / ".env").write_text((project / ".env").read_text())
    pytester.makeini("[pytest]\nsvcenv_compose = compose.yaml\n")
    pytester.makepyfile(test_named=NAMED_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=2)
