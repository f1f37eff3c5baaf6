"""svcenv.unittest on real services: suites run programmatically, the way unittest runs them.

The test classes are defined inside the tests (pytest would collect module-level
``TestCase`` subclasses itself), and every environment carries the ``leaks`` label,
so a container left behind fails the test.
"""

from __future__ import annotations

import os
import sys
import types
import unittest
from typing import Any

import psycopg
import pytest
import redis

from svcenv import Postgres, Redis
from svcenv import unittest as svcenv_unittest
from svcenv.isolation import redis_db_for_worker

from .conftest import LeakCheck

SEED = "CREATE TABLE seeded (body text); INSERT INTO seeded VALUES ('seed');"


def _run(*classes: type[unittest.TestCase]) -> unittest.TestResult:
    loader = unittest.TestLoader()
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(cls) for cls in classes)
    result = unittest.TestResult()
    suite.run(result)
    return result


def _problems(result: unittest.TestResult) -> str:
    return "\n".join(f"{test}: {trace}" for test, trace in result.errors + result.failures)


def _databases(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_each_test_gets_a_fresh_database_and_a_clean_redis_db(leaks: LeakCheck) -> None:
    seen: dict[str, Any] = {}

    class Isolated(svcenv_unittest.ServiceTestCase):
        services = (Postgres(), Redis())
        labels = leaks.labels
        postgres_setup = SEED

        @classmethod
        def setUpClass(cls) -> None:
            super().setUpClass()
            stale = cls.env["redis"].client(db=redis_db_for_worker())
            stale.set("from-an-earlier-run", "1")  # clean_redis() flushes before the test, too
            stale.close()

        def setUp(self) -> None:
            self.conn = self.fresh_database()
            self.redis = self.clean_redis()

        def check_clean(self) -> None:
            assert self.conn.execute("SELECT count(*) FROM seeded").fetchone() == (1,)
            assert self.conn.execute("SELECT to_regclass('public.notes')").fetchone() == (None,)
            assert self.redis.dbsize() == 0

        def write(self) -> None:
            self.conn.execute("CREATE TABLE notes (body text)")
            self.conn.execute("INSERT INTO seeded VALUES ('mine')")
            self.conn.commit()
            self.redis.set("left-behind", "1")

        def test_1_writes(self) -> None:
            self.check_clean()
            self.write()
            seen["db1"] = self.conn.info.dbname

        def test_2_sees_nothing_of_test_1(self) -> None:
            self.check_clean()
            self.write()
            seen["db2"] = self.conn.info.dbname
            with self.env["postgres"].connect() as admin:
                seen["db1 still there"] = seen["db1"] in _databases(admin)

        def test_3_rollback_connection_writes(self) -> None:
            conn = self.rollback_connection()
            conn.execute("INSERT INTO seeded VALUES ('rolled back')")
            conn.commit()  # a savepoint: still rolled back after the test
            assert conn.execute("SELECT count(*) FROM seeded").fetchone() == (2,)
            seen["rollback db"] = conn.info.dbname

        def test_4_rollback_connection_sees_nothing_of_test_3(self) -> None:
            conn = self.rollback_connection()
            assert conn.info.dbname == seen["rollback db"]  # one clone shared by the class
            assert conn.execute("SELECT count(*) FROM seeded").fetchone() == (1,)

        def test_5_env_vars_point_at_the_tests_own_databases(self) -> None:
            seen["environ before"] = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL", "SHOP_EXTRA")}
            variables = self.use_env_vars(SHOP_EXTRA="x")
            assert os.environ["SHOP_EXTRA"] == "x"
            with psycopg.connect(os.environ["DATABASE_URL"]) as other:
                assert other.info.dbname == self.conn.info.dbname
            assert os.environ["PGDATABASE"] == self.conn.info.dbname
            assert variables["POSTGRES_URL"] == os.environ["DATABASE_URL"]
            self.redis.set("k", "v")
            other_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
            assert other_redis.get("k") == b"v"  # the same logical db as clean_redis()
            other_redis.close()

    result = _run(Isolated)
    assert result.wasSuccessful(), _problems(result)
    assert result.testsRun == 5
    assert seen["db1"] != seen["db2"]
    assert not seen["db1 still there"], "the first test's database must be dropped"
    after = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL", "SHOP_EXTRA")}
    assert after == seen["environ before"], "use_env_vars must restore os.environ"
    assert Isolated.env.state == "stopped"
    assert leaks.leftovers() == []


def test_failing_setupclass_of_a_subclass_still_removes_the_services(leaks: LeakCheck) -> None:
    seen: dict[str, Any] = {}

    class Base(svcenv_unittest.ServiceTestCase):
        services = (Redis(),)
        labels = leaks.labels

    class Broken(Base):
        @classmethod
        def setUpClass(cls) -> None:
            super().setUpClass()
            seen["running"] = len(leaks.leftovers())
            raise RuntimeError("setUpClass fails after the services started")

        def test_never_runs(self) -> None:
            seen["ran"] = True

    result = _run(Broken)
    assert seen["running"] == 1, "the service ran while setUpClass went on"
    assert "ran" not in seen
    assert len(result.errors) == 1, _problems(result)
    assert "setUpClass" in str(result.errors[0][0])
    assert "RuntimeError: setUpClass fails" in result.errors[0][1]
    assert leaks.leftovers() == []


def test_failed_tests_still_drop_their_databases(leaks: LeakCheck) -> None:
    created: list[str] = []
    seen: dict[str, Any] = {}

    class Failing(svcenv_unittest.ServiceTestCase):
        services = (Postgres(),)
        labels = leaks.labels

        def setUp(self) -> None:
            self.conn = self.fresh_database()
            created.append(self.conn.info.dbname)
            if self._testMethodName == "test_2_setup_fails":
                raise RuntimeError("setUp fails after fresh_database()")

        def test_1_fails(self) -> None:
            self.conn.execute("CREATE TABLE t (x int)")
            self.conn.commit()
            self.fail("this test fails on purpose")

        def test_2_setup_fails(self) -> None:
            pass

        def test_3_errors(self) -> None:
            with self.env["postgres"].connect() as other:  # an open connection does not stop the drop
                other.execute("SELECT 1")
                raise ValueError("this test errors on purpose")

        def test_4_checks(self) -> None:
            with self.env["postgres"].connect() as admin:
                seen["left"] = set(created[:3]) & _databases(admin)
                seen["mine"] = self.conn.info.dbname in _databases(admin)

    result = _run(Failing)
    assert result.testsRun == 4
    assert [str(t).split()[0] for t, _ in result.failures] == ["test_1_fails"]
    assert sorted(str(t).split()[0] for t, _ in result.errors) == ["test_2_setup_fails", "test_3_errors"]
    assert len(set(created)) == 4
    assert seen["mine"], "the check sees its own database"
    assert seen["left"] == set(), "the failed tests' databases must be dropped"
    assert leaks.leftovers() == []


MODULE_SOURCE = """
from svcenv import Postgres, Redis
from svcenv.unittest import ServiceTestCase, module_environment, start_module_environment, stop_module_environment

SEEN = {}
LABELS = {}
FAIL_SETUP_MODULE = False

def setUpModule():
    SEEN["env"] = start_module_environment(Postgres(), Redis(), labels=LABELS)
    if FAIL_SETUP_MODULE:
        raise RuntimeError("setUpModule fails after the start")

def tearDownModule():
    stop_module_environment()
    SEEN["state in tearDownModule"] = SEEN["env"].state

class First(ServiceTestCase):
    postgres_setup = "CREATE TABLE t (x int)"

    def test_it(self):
        SEEN["first"] = self.env
        self.fresh_database().execute("INSERT INTO t VALUES (1)")
        SEEN["template"] = self.postgres_template().name
        self.clean_redis().set("k", "v")

class Second(ServiceTestCase):
    def test_it(self):
        SEEN["second"] = self.env
        assert self.clean_redis().get("k") is None
        with self.env["postgres"].connect() as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        SEEN["first template dropped"] = SEEN["template"] not in names
"""


def _fake_module(name: str, monkeypatch: pytest.MonkeyPatch, **attrs: Any) -> types.ModuleType:
    """A test module as unittest sees one: its functions' globals say ``__name__ == name``."""
    module = types.ModuleType(name)
    exec(compile(MODULE_SOURCE, f"<{name}>", "exec"), module.__dict__)  # noqa: S102
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_module_environment_is_shared_by_the_classes_and_removed(
    leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _fake_module("svcenv_fake_test_module", monkeypatch)
    module.LABELS.update(leaks.labels)
    result = _run(module.First, module.Second)
    assert result.wasSuccessful(), _problems(result)
    seen = module.SEEN
    assert seen["first"] is seen["second"] is seen["env"], "one environment for the module"
    assert seen["first template dropped"], "a class's template is dropped after the class"
    assert seen["state in tearDownModule"] == "stopped"
    assert svcenv_unittest.module_environment(module.__name__) is None
    assert leaks.leftovers() == []


def test_failing_setupmodule_still_removes_the_module_environment(
    leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _fake_module("svcenv_fake_failing_module", monkeypatch, FAIL_SETUP_MODULE=True)
    module.LABELS.update(leaks.labels)
    result = _run(module.First, module.Second)
    assert result.testsRun == 0
    assert len(result.errors) == 1, _problems(result)
    assert "setUpModule" in str(result.errors[0][0])
    assert module.SEEN["env"].state == "stopped", "the module cleanup stops it"
    assert "state in tearDownModule" not in module.SEEN  # unittest skips tearDownModule here
    assert leaks.leftovers() == []


def test_a_class_without_services_needs_a_module_environment() -> None:
    class Empty(svcenv_unittest.ServiceTestCase):
        def test_it(self) -> None:
            raise AssertionError("never runs")

    result = _run(Empty)
    assert len(result.errors) == 1
    assert "ConfigurationError" in result.errors[0][1]
    assert "Empty declares no services" in result.errors[0][1]


PYTEST_RUN = """
import os
from svcenv import Postgres, Redis
from svcenv.unittest import ServiceTestCase, start_module_environment, stop_module_environment

LABELS = {"svcenv.test": os.environ["SVCENV_TEST_TOKEN"]}

def setUpModule():
    start_module_environment(Redis(), labels=LABELS)

def tearDownModule():
    stop_module_environment()

class UsesModule(ServiceTestCase):
    def test_redis(self):
        assert self.clean_redis().ping()

class OwnServices(ServiceTestCase):
    services = (Postgres(),)
    labels = LABELS
    postgres_setup = "seed.sql"  # next to this file, not in the working directory

    def test_fresh(self):
        assert self.fresh_database().execute("SELECT count(*) FROM t").fetchone() == (0,)

class Broken(OwnServices):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        raise RuntimeError("setUpClass fails on purpose")
"""


def test_service_test_cases_also_clean_up_under_pytest(
    pytester: pytest.Pytester, leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests = pytester.mkpydir("suite")
    (tests / "test_under_pytest.py").write_text(PYTEST_RUN)
    (tests / "seed.sql").write_text("CREATE TABLE t (x int);")
    monkeypatch.setenv("SVCENV_TEST_TOKEN", leaks.token)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: setUpClass fails on purpose*"])
    assert leaks.leftovers() == []
