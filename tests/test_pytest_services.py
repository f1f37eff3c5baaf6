"""The plugin starts exactly what the selected tests use; fixtures for any service; a light import.

Each test runs pytest in a subprocess (pytester) the way a user's project would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from .conftest import containers

USER_SUITE = """
import os
import pytest

@pytest.mark.svcenv("postgres")
@pytest.mark.parametrize("n", range(3))
def test_fresh_database(postgres_connection, n):
    postgres_connection.execute("CREATE TABLE t (n int)")
    postgres_connection.execute("INSERT INTO t VALUES (%s)", (n,))
    assert postgres_connection.execute("SELECT count(*) FROM t").fetchone() == (1,)

@pytest.mark.parametrize("n", range(3))
def test_rollback(postgres_transaction, n):
    postgres_transaction.execute("CREATE TABLE IF NOT EXISTS r (n int)")
    postgres_transaction.execute("INSERT INTO r VALUES (%s)", (n,))
    postgres_transaction.commit()
    assert postgres_transaction.execute("SELECT count(*) FROM r").fetchone() == (1,)

@pytest.mark.parametrize("n", range(3))
def test_redis(redis_client, n):
    assert redis_client.dbsize() == 0
    redis_client.set("k", n)

def test_env_vars(postgres_connection, redis_client, svcenv_env_vars):
    assert os.environ["DATABASE_URL"] == svcenv_env_vars["DATABASE_URL"]
    assert os.environ["REDIS_URL"].startswith("redis://")
    assert "ELASTICSEARCH_URL" not in os.environ

@pytest.mark.svcenv("postgres", "redis")
def test_env_vars_alone(svcenv_env_vars):
    assert "DATABASE_URL" in svcenv_env_vars and "REDIS_URL" in svcenv_env_vars
    assert "ELASTICSEARCH_URL" not in svcenv_env_vars
"""


def _run(pytester: pytest.Pytester, *args: str, **env: str) -> pytest.RunResult:
    for key, value in env.items():
        os.environ[key] = value
    try:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)
    finally:
        for key in env:
            del os.environ[key]


def test_no_elasticsearch_image_and_only_two_containers(pytester: pytest.Pytester, docker_engine: None) -> None:
    # The user's machine has Postgres and Redis images, but no Elasticsearch image at all.
    token = uuid.uuid4().hex[:10]
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=USER_SUITE)
    pytester.makeconftest(
        f"""
        import subprocess

        def pytest_runtest_teardown(item):
            ids = subprocess.run(
                ["docker", "ps", "-q", "--filter", "label=svcenv.test={token}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            with open("containers.txt", "a") as out:
                out.write(f"{{len(ids)}}\\n")
        """
    )
    result = _run(
        pytester,
        "-n",
        "2",
        SVCENV_ELASTICSEARCH_IMAGE="svcenv-test/does-not-exist:0",
        SVCENV_LABELS=f"svcenv.test={token}",
    )
    result.assert_outcomes(passed=11)
    counts = {int(line) for line in (pytester.path / "containers.txt").read_text().split()}
    assert counts == {2}, counts  # Postgres and Redis, never a third
    assert containers(f"svcenv.test={token}") == []


def test_one_redis_test_starts_only_redis(pytester: pytest.Pytester, docker_engine: None) -> None:
    token = uuid.uuid4().hex[:10]
    pytester.makepyfile(test_user=USER_SUITE)
    result = _run(
        pytester,
        "-k",
        "test_redis and 1",
        "-rA",
        SVCENV_LABELS=f"svcenv.test={token}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*environment *: redis *s (docker)"])
    assert "postgres" not in "\n".join(line for line in result.outlines if line.startswith("environment "))
    assert containers(f"svcenv.test={token}") == []


def test_factory_fixtures_for_a_second_postgres_are_isolated(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeconftest(
        """
        from svcenv import Postgres
        from svcenv.pytest import fixtures

        globals().update(fixtures(Postgres(name="analytics", dbname="reports"),
                                  setup=["CREATE TABLE facts (n int);"]))
        """
    )
    pytester.makepyfile(
        test_two="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_fresh(analytics_connection, analytics_database, n):
            rows = analytics_connection.execute("SELECT count(*) FROM facts").fetchone()
            assert rows == (0,)  # the template's table, and no row of another test
            analytics_connection.execute("INSERT INTO facts VALUES (%s)", (n,))
            analytics_connection.commit()
            assert analytics_database.startswith("svcenv_t_")

        @pytest.mark.parametrize("n", range(4))
        def test_rollback(analytics_transaction, n):
            assert analytics_transaction.execute("SELECT count(*) FROM facts").fetchone() == (0,)
            analytics_transaction.execute("INSERT INTO facts VALUES (%s)", (n,))
            analytics_transaction.commit()

        def test_service(analytics_service):
            assert analytics_service.name == "analytics" and analytics_service.dbname == "reports"
        """
    )
    result = _run(pytester, "-n", "2", "-rA")
    result.assert_outcomes(passed=9)


def test_setup_hooks_run_in_order_once_per_run(pytester: pytest.Pytester, docker_engine: None) -> None:
    count = pytester.path / "migrations.log"
    pytester.makepyfile(
        migrations="""
        def migrate(conn):
            with open(LOG_PATH, "a") as log:
                log.write("ran\\n")
            conn.execute("INSERT INTO items VALUES ('from the migration')")
        """.replace("LOG_PATH", repr(str(count)))
    )
    pytester.makefile(".sql", schema="CREATE TABLE items (body text);")
    pytester.makeini("[pytest]\nsvcenv_postgres_setup =\n    schema.sql\n    migrations:migrate\n")
    pytester.makepyfile(
        test_items="""
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_items(postgres_connection, n):
            assert postgres_connection.execute("SELECT body FROM items").fetchall() == [("from the migration",)]
        """
    )
    result = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=6)
    assert count.read_text().splitlines() == ["ran"]  # once for the run, not once per worker


def test_keep_on_the_local_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_keep="def test_it(redis_client):\n    raise AssertionError('must not run')\n")
    result = _run(pytester, "--svcenv-keep", "--svcenv-backend", "local")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--svcenv-keep: redis on the local backend cannot outlive pytest*"])
    assert "environment" not in result.stdout.str()


def test_importing_the_plugin_loads_no_client_library(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import svcenv.pytest"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "svcenv" in imported
    heavy = {"psycopg", "redis", "elasticsearch", "docker", "testcontainers", "pymysql"} & imported
    assert not heavy, f"import svcenv.pytest loaded {sorted(heavy)}"


def test_svcenv_alone_in_a_suite_uses_the_configured_services(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeini("[pytest]\nsvcenv_services = redis\n")
    pytester.makepyfile(
        test_alone=textwrap.dedent(
            """
            def test_alone(svcenv, svcenv_env_vars):
                assert list(svcenv.services) == ["redis"]
                assert "REDIS_URL" in svcenv_env_vars
            """
        )
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1)


def test_mysql_fixtures_give_each_test_a_fresh_database(pytester: pytest.Pytester, mysql_image: str) -> None:
    pytester.makepyfile(
        test_mysql="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_fresh(mysql_connection, mysql_database, n):
            with mysql_connection.cursor() as cursor:
                cursor.execute("CREATE TABLE t (n int)")  # would fail if another test's table were here
                cursor.execute("INSERT INTO t VALUES (%s)", (n,))
                mysql_connection.commit()
                cursor.execute("SELECT DATABASE(), count(*) FROM t")
                assert cursor.fetchone() == (mysql_database, 1)
        """
    )
    result = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=4)
