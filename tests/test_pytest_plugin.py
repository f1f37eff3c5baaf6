"""The pytest plugin, exercised the way users run it: pytest in a subprocess, real services."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import containers, networks

ISOLATION_TESTS = """
import json, os, pathlib
import pytest

OUT = pathlib.Path(os.environ["SVCENV_TEST_OUT"])

def record(name, value):
    with open(OUT / f"{name}.{os.getpid()}.json", "a") as f:
        f.write(json.dumps(value) + "\\n")

@pytest.mark.parametrize("n", [1, 2])
def test_fresh_database(postgres_connection, n):
    # Each test gets its own database: a table created by an earlier test is never there.
    exists = postgres_connection.execute("SELECT to_regclass('public.notes') IS NOT NULL").fetchone()[0]
    assert not exists
    assert postgres_connection.execute("SELECT count(*) FROM seeded").fetchone() == (1,)
    postgres_connection.execute("CREATE TABLE notes (body text)")
    postgres_connection.execute("INSERT INTO notes VALUES ('x')")
    postgres_connection.commit()
    record("fresh", postgres_connection.info.dbname)

@pytest.mark.parametrize("n", [1, 2])
def test_transaction_rollback_even_after_commit(postgres_transaction, n):
    conn = postgres_transaction
    assert conn.execute("SELECT count(*) FROM seeded").fetchone() == (1,)
    conn.execute("INSERT INTO seeded VALUES ('from test')")
    conn.commit()  # code under test commits: still isolated
    assert conn.execute("SELECT count(*) FROM seeded").fetchone() == (2,)

@pytest.mark.parametrize("n", [1, 2])
def test_redis_is_clean(redis_client, n):
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", "1")

@pytest.mark.parametrize("n", [1, 2])
def test_es_prefix_is_clean(elasticsearch_client, elasticsearch_prefix, n):
    assert elasticsearch_client.indices.get(index=elasticsearch_prefix + "*") == {}
    elasticsearch_client.indices.create(index=elasticsearch_prefix + "books")
    assert elasticsearch_client.indices.exists(index=elasticsearch_prefix + "books")

def test_env_vars_point_at_the_tests_own_database(postgres_connection, svcenv_env_vars):
    import psycopg
    assert os.environ["DATABASE_URL"] == svcenv_env_vars["DATABASE_URL"]
    with psycopg.connect(os.environ["DATABASE_URL"]) as other:
        assert other.info.dbname == postgres_connection.info.dbname

def test_failing_test_still_drops_its_database(postgres_connection):
    record("failed", postgres_connection.info.dbname)
    postgres_connection.execute("CREATE TABLE left_by_failure (x int)")
    postgres_connection.execute("INSERT INTO seeded VALUES ('left by failure')")
    postgres_connection.commit()
    assert False, "this test fails on purpose"

def test_zz_failed_database_was_dropped_or_reset(postgres_service):
    import time
    failed = [json.loads(l) for p in OUT.glob("failed.*.json") for l in p.read_text().splitlines()]
    assert failed
    # Used databases are recycled in the background: dropped, or the template's again (maybe kept by name).
    deadline = time.monotonic() + 10
    while True:
        with postgres_service.connect(autocommit=True) as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        left = []
        for name in set(failed) & names:
            try:
                with postgres_service.connect(name, autocommit=True) as conn:
                    if conn.execute("SELECT to_regclass('left_by_failure') IS NOT NULL OR "
                                    "(SELECT count(*) FROM seeded) <> 1").fetchone()[0]:
                        left.append(name)
            except Exception:
                pass  # dropped meanwhile
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"the failed test's writes are still in {left}"
"""

SEED_SQL = "CREATE TABLE seeded (body text); INSERT INTO seeded VALUES ('seed');"

REVERSIBLE_CONFTEST = """
import os
def pytest_collection_modifyitems(items):
    # Reverse the order, but keep the after-the-fact check (test_zz_...) last.
    if os.environ.get("REVERSE"):
        checks = [i for i in items if "test_zz_" in i.name]
        items[:] = [i for i in reversed(items) if i not in checks] + checks
"""


def _ini(pytester: pytest.Pytester, extra: str = "") -> None:
    pytester.makeini(f"[pytest]\nsvcenv_postgres_setup = seed.sql\n{extra}")
    pytester.makefile(".sql", seed=SEED_SQL)


def _env_id(output: str) -> str:
    match = re.search(r"environment ([0-9a-f]{12}):", output)
    assert match, output
    return match.group(1)


@pytest.mark.parametrize("reverse", [False, True])
def test_isolation_holds_in_any_order(
    pytester: pytest.Pytester, docker_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reverse: bool
) -> None:
    _ini(pytester)
    pytester.makeconftest(REVERSIBLE_CONFTEST)
    pytester.makepyfile(test_isolation=ISOLATION_TESTS)
    monkeypatch.setenv("SVCENV_TEST_OUT", str(tmp_path))
    if reverse:
        monkeypatch.setenv("REVERSE", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=10, failed=1)  # the same in both orders
    result.stdout.fnmatch_lines(["*test_failing_test_still_drops_its_database*"])
    fresh = [json.loads(line) for p in tmp_path.glob("fresh.*.json") for line in p.read_text().splitlines()]
    assert len(fresh) == 2  # each created the table "notes": the second saw none of the first's (or failed)
    assert containers(f"svcenv.environment={_env_id(result.stdout.str())}") == []


def test_xdist_workers_share_one_environment_and_see_only_their_own_data(
    pytester: pytest.Pytester, docker_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ini(pytester)
    pytester.makepyfile(
        test_workers="""
        import json, os, pathlib, time
        import pytest

        OUT = pathlib.Path(os.environ["SVCENV_TEST_OUT"])

        @pytest.mark.parametrize("n", range(6))
        def test_worker(svcenv, redis_client, postgres_connection, n):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            redis_client.set(f"mine-{worker}", worker)
            time.sleep(0.2)
            assert [k.decode() for k in redis_client.keys("mine-*")] == [f"mine-{worker}"]
            ids = sorted(h.id for h in svcenv)
            with open(OUT / f"{worker}.{n}.json", "w") as f:
                json.dump({"env": svcenv.id, "containers": ids, "db": postgres_connection.info.dbname,
                           "attached": svcenv.attached}, f)
        """
    )
    monkeypatch.setenv("SVCENV_TEST_OUT", str(tmp_path))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    workers = {p.name.split(".")[0] for p in tmp_path.glob("*.json")}
    assert workers == {"gw0", "gw1"}, "both workers must have run tests"
    assert len({r["env"] for r in records}) == 1, "one environment for the whole run"
    assert len({tuple(r["containers"]) for r in records}) == 1
    assert {r["attached"] for r in records} == {True, False}  # one owner, one attached
    databases: dict[str, set[str]] = {}
    for path in tmp_path.glob("*.json"):
        databases.setdefault(path.name.split(".")[0], set()).add(json.loads(path.read_text())["db"])
    assert not databases["gw0"] & databases["gw1"], "a database went to both workers"
    assert containers(f"svcenv.environment={records[0]['env']}") == []


def test_services_start_lazily(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makepyfile(
        test_lazy="""
        def test_plain():
            assert 1 + 1 == 2

        def test_needs_redis(redis_client):
            assert redis_client.ping()
        """
    )
    result = pytester.runpytest_subprocess("-k", "plain", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=1)
    assert re.search(r"environment [0-9a-f]{12}:", result.stdout.str()) is None, "nothing may start"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    env_id = _env_id(result.stdout.str())
    summary = next(line for line in result.outlines if f"environment {env_id}:" in line)
    assert "redis" in summary
    assert "postgres" not in summary  # only what the selected tests needed
    assert containers(f"svcenv.environment={env_id}") == []


@pytest.mark.parametrize(("ci", "outcome"), [("", "skipped"), ("true", "errors")])
def test_marker_skips_locally_and_fails_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.svcenv("postgres")
        def test_needs_postgres(svcenv):
            assert "postgres" in svcenv
        """
    )
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # no engine answers here
    monkeypatch.setenv("SVCENV_BACKEND", "docker")  # and no other backend may serve it
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*no Docker engine answers*"])


def test_environment_fixture_declares_custom_descriptors(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeconftest(
        """
        from svcenv import Postgres
        from svcenv.pytest import environment_fixture

        svcenv = environment_fixture(Postgres(), Postgres(name="replica", dbname="reports"))
        """
    )
    pytester.makepyfile(
        test_custom="""
        def test_two_postgres(svcenv, postgres_service):
            assert postgres_service is svcenv["postgres"]
            with svcenv["replica"].connect() as conn:
                assert conn.execute("SELECT current_database()").fetchone() == ("reports",)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert containers(f"svcenv.environment={_env_id(result.stdout.str())}") == []


def test_keep_leaves_services_running(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makepyfile(test_keep="def test_it(redis_client):\n    redis_client.set('k', 'v')\n")
    result = pytester.runpytest_subprocess("--svcenv-keep", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    env_id = _env_id(result.stdout.str())
    try:
        time.sleep(3)  # long enough for a (wrongly) armed reaper to remove it after pytest exited
        assert len(containers(f"svcenv.environment={env_id}")) == 1
        result.stdout.fnmatch_lines(["*--svcenv-keep: environment * is still running*svcenv prune --label*"])
    finally:
        # What the message says to run removes everything: containers and the environment's network.
        label = f"svcenv.environment={env_id}"
        subprocess.run([sys.executable, "-m", "svcenv", "prune", "--label", label], capture_output=True, timeout=120)
    assert containers(label) == []
    assert networks(label) == []


def test_async_twins_with_pytest_asyncio(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytest.importorskip("pytest_asyncio")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nsvcenv_postgres_setup = CREATE TABLE notes (body text);\n")
    pytester.makepyfile(
        test_async="""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        async def test_postgres(postgres_async_connection, n):
            cur = await postgres_async_connection.execute("SELECT count(*) FROM notes")
            assert await cur.fetchone() == (0,)
            await postgres_async_connection.execute("INSERT INTO notes VALUES ('x')")
            await postgres_async_connection.commit()

        @pytest.mark.parametrize("n", [1, 2])
        async def test_redis(redis_async_client, n):
            assert await redis_async_client.dbsize() == 0
            await redis_async_client.set("k", "v")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert containers(f"svcenv.environment={_env_id(result.stdout.str())}") == []


def test_every_xdist_worker_is_a_member_of_the_share_before_its_first_test(
    pytester: pytest.Pytester, docker_engine: None
) -> None:
    # The owner stops the environment once no member is left. A worker whose first test came late
    # used to join only then, and could attach to an environment being stopped (a fresh-clone CI
    # run saw "connection refused"): every worker that may need it now counts from its collection.
    _ini(pytester)
    pytester.makepyfile(
        test_a="""
        import json

        from svcenv.pytest.fixtures import manager

        def test_uses(request, redis_client):
            members = json.loads(manager(request).share.members.read_text())
            assert len(members) == 2, members
        """,
        test_b="""
        import time

        def test_plain():
            time.sleep(2)  # this worker stays in its session while the other one looks
        """,
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_xdist_per_worker_mode_gives_each_worker_its_own_environment(
    pytester: pytest.Pytester, docker_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nsvcenv_xdist = per-worker\n")
    pytester.makepyfile(
        test_per_worker="""
        import json, os, pathlib, time
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_it(svcenv, redis_client, n):
            time.sleep(0.3)
            out = pathlib.Path(os.environ["SVCENV_TEST_OUT"]) / f"{os.environ['PYTEST_XDIST_WORKER']}.{n}"
            out.write_text(json.dumps({"env": svcenv.id, "attached": svcenv.attached}))
        """
    )
    monkeypatch.setenv("SVCENV_TEST_OUT", str(tmp_path))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    records = {p.name.split(".")[0]: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert set(records) == {"gw0", "gw1"}
    assert records["gw0"]["env"] != records["gw1"]["env"]
    assert not any(r["attached"] for r in records.values())
    for record in records.values():
        assert containers(f"svcenv.environment={record['env']}") == []


@pytest.mark.parametrize("how", ["--svcenv-keep", "--svcenv-reuse"])
def test_a_server_that_stays_keeps_none_of_the_runs_databases(
    how: str, pytester: pytest.Pytester, docker_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server the session removes takes its databases along, so the session's end drops nothing
    # there (removes_with_session). One that stays (kept, reused) must be left without them.
    token = f"stays-{time.monotonic_ns()}"
    monkeypatch.setenv("SVCENV_LABELS", f"svcenv.test={token}")
    if how == "--svcenv-reuse":
        monkeypatch.setenv("SVCENV_REUSE", "force")  # under CI=true, reuse only when forced
    else:
        monkeypatch.delenv("SVCENV_REUSE", raising=False)
    pytester.makeini("[pytest]\nsvcenv_postgres_prefetch = 2\nsvcenv_postgres_setup = CREATE TABLE t (id int);\n")
    pytester.makepyfile(
        test_stays="""
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_fresh(postgres_connection, n):
            postgres_connection.execute("INSERT INTO t VALUES (1)")
            postgres_connection.commit()

        def test_rolled_back(postgres_transaction):
            postgres_transaction.execute("INSERT INTO t VALUES (2)")
        """
    )
    label = f"svcenv.test={token}"
    try:
        result = pytester.runpytest_subprocess(how, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=4)
        (container,) = containers(label)
        listed = subprocess.run(
            ["docker", "exec", container, "psql", "-U", "postgres", "-Atc", "SELECT datname FROM pg_database"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        names = listed.stdout.split()
        assert "postgres" in names, names
        assert [n for n in names if n.startswith("svcenv_")] == [], names
    finally:
        subprocess.run(
            [sys.executable, "-m", "svcenv", "prune", "--force", "--label", label],
            capture_output=True,
            timeout=120,
            cwd=pytester.path,
        )
    assert containers(label) == []
    assert networks(label) == []
