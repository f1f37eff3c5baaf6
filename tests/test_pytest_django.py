"""svcenv under pytest-django (svcenv/pytest/_django.py), run as users run it: pytest in a subprocess.

A tiny Django project is written per test. Its data migration appends a line to
``MIGRATION_LOG`` each time it runs. The runs that need a server that outlives
them (``--reuse-db``, a changed migration) use the external backend, pointed at a
Postgres this test starts (``SVCENV_POSTGRES_URL``), so what each run leaves on
the server can be listed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from svcenv import Environment, Postgres

from .conftest import IN_CI, LeakCheck

if importlib.util.find_spec("pytest_django") is None:  # skipped locally; under CI a missing extra fails
    if IN_CI:
        raise ImportError("CI=true and pytest-django is missing: pip install '.[test]'")
    pytest.skip("needs django and pytest-django (pip install '.[test]')", allow_module_level=True)

SETTINGS = """
INSTALLED_APPS = ["things"]
SECRET_KEY = "not-a-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "proj", "HOST": "db.invalid", "PORT": "5432",
                "USER": "app", "PASSWORD": "wrong", "OPTIONS": {"sslmode": "require"}},
    "side": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
"""
MODELS = """
from django.db import models

class Thing(models.Model):
    name = models.CharField(max_length=50)
"""
INITIAL = """
from django.db import migrations, models

class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            "Thing", [("id", models.AutoField(primary_key=True)), ("name", models.CharField(max_length=50))]
        ),
    ]
"""
SEED = """
import os
from django.db import migrations

def seed(apps, schema_editor):
    apps.get_model("things", "Thing").objects.using(schema_editor.connection.alias).create(name="seeded")
    with open(os.environ["MIGRATION_LOG"], "a") as out:
        out.write(schema_editor.connection.settings_dict["NAME"] + "\\n")

class Migration(migrations.Migration):
    dependencies = [("things", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
"""
TESTS = """
import os
import pytest
from django.db import connection, connections
from things.models import Thing

@pytest.mark.parametrize("n", range(4))
def test_seeded_and_rolled_back(db, n):
    assert connection.settings_dict["HOST"] != "db.invalid"
    assert "sslmode" not in connection.settings_dict["OPTIONS"]
    assert list(Thing.objects.values_list("name", flat=True)) == ["seeded"]
    Thing.objects.create(name=f"mine-{n}")

@pytest.mark.django_db(transaction=True)
def test_transactional(request):
    Thing.objects.create(name="committed")
    assert Thing.objects.count() == 2
    with open(os.environ["DB_LOG"], "a") as out:
        out.write(connection.settings_dict["NAME"] + "\\n")

@pytest.mark.django_db(databases=["default", "side"])
def test_two_databases():
    assert connections["side"].vendor == "sqlite"
    assert Thing.objects.count() >= 0
"""


def _project(root: Path) -> Path:
    (root / "things" / "migrations").mkdir(parents=True)
    (root / "settings.py").write_text(SETTINGS)
    (root / "things" / "__init__.py").write_text("")
    (root / "things" / "models.py").write_text(MODELS)
    (root / "things" / "migrations" / "__init__.py").write_text("")
    (root / "things" / "migrations" / "0001_initial.py").write_text(textwrap.dedent(INITIAL))
    (root / "things" / "migrations" / "0002_seed.py").write_text(SEED)
    (root / "test_things.py").write_text(TESTS)
    (root / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    return root


def _pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=project,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )


def test_importing_svcenv_pytest_imports_nothing_of_django() -> None:
    code = (
        "import sys, svcenv.pytest; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'pytest_django') "
        "or m == 'svcenv.pytest._django'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


INERT = """
import sys

def test_nothing_of_django(request):
    assert "django" not in sys.modules
    plugins = request.config.pluginmanager
    active = request.config.getini("svcenv_django") and plugins.has_plugin("django")
    assert plugins.has_plugin("svcenv-django") == active
"""


@pytest.mark.parametrize("args", [(), ("-p", "no:django"), ("-o", "svcenv_django=false")])
def test_a_project_without_django_settings_pays_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "test_inert.py").write_text(INERT)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {"DJANGO_SETTINGS_MODULE": ""}
    proc = _pytest(tmp_path, *args, env=env)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed" in proc.stdout


@pytest.fixture
def server(leaks: LeakCheck) -> Iterator[Environment]:
    with Environment(Postgres(), labels=leaks.labels) as env:
        yield env


def _databases(env: Environment) -> set[str]:
    with env["postgres"].connect(autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'svcenv_dj_%' OR datname LIKE 'test_%'")
        return {row[0] for row in rows}


def _passed(proc: subprocess.CompletedProcess[str], count: int = 6) -> None:
    assert proc.returncode == 0, proc.stdout
    assert re.search(rf"\b{count} passed\b", proc.stdout), proc.stdout


def test_migrations_run_once_per_run_and_reuse_db_keeps_its_meaning(
    tmp_path: Path, server: Environment, docker_engine: None
) -> None:
    project = _project(tmp_path / "proj")
    log, db_log = tmp_path / "migrations.log", tmp_path / "databases.log"
    env = {"SVCENV_POSTGRES_URL": server["postgres"].url, "MIGRATION_LOG": str(log), "DB_LOG": str(db_log)}

    def runs() -> int:
        """How often the migrations ran on Postgres (the sqlite entry is migrated per worker, as Django does)."""
        lines = [line for line in log.read_text().splitlines() if not line.startswith("file:")] if log.exists() else []
        assert all(line.startswith("svcenv_dj_") for line in lines), lines  # into a template, always
        return len(lines)

    # A plain run under xdist: migrated once, into the template; each worker on its own clone; nothing left.
    _passed(_pytest(project, "-n", "2", env=env))
    assert runs() == 1
    assert _databases(server) == set()

    # Without xdist: the same, the test database named as pytest-django names it.
    _passed(_pytest(project, "-p", "no:xdist", env=env))
    assert runs() == 2
    assert db_log.read_text().split()[-1] == "test_proj"
    assert _databases(server) == set()

    # --reuse-db keeps the template and the workers' databases...
    _passed(_pytest(project, "-n", "2", "--reuse-db", env=env))
    assert runs() == 3
    kept = _databases(server)
    templates = {name for name in kept if name.startswith("svcenv_dj_")}
    assert len(templates) == 1, kept
    assert kept - templates == {"test_proj_gw0", "test_proj_gw1"}, kept

    # ... and the next --reuse-db run uses them as they are (no migration, no new clone), as
    # pytest-django does: a database a transactional test flushed last time is still empty, so
    # the seeded-row tests of that worker may fail here, as they would under pytest-django alone.
    proc = _pytest(project, "-n", "2", "--reuse-db", "-v", env=env)
    assert runs() == 3, proc.stdout
    assert "Using existing test database for alias 'default' (test_proj_gw" in proc.stdout, proc.stdout
    assert _databases(server) == kept

    # A changed migration makes a new template (the old one goes) and new clones, once for the run.
    seed = project / "things" / "migrations" / "0002_seed.py"
    seed.write_text(seed.read_text() + "# changed\n")
    _passed(_pytest(project, "-n", "2", "--reuse-db", env=env))
    assert runs() == 4
    now = _databases(server)
    assert len({n for n in now if n.startswith("svcenv_dj_")} - templates) == 1
    assert not templates & now

    # --create-db rebuilds the template once for the run (not once per worker), and keeps with --reuse-db.
    _passed(_pytest(project, "-n", "2", "--reuse-db", "--create-db", env=env))
    assert runs() == 5
    _passed(_pytest(project, "-n", "2", "--create-db", env=env))
    assert runs() == 6
    assert _databases(server) == set()  # without --reuse-db: the kept ones were re-created, then dropped


def test_opting_out_leaves_pytest_django_alone(tmp_path: Path, server: Environment, docker_engine: None) -> None:
    project = _project(tmp_path / "proj")
    env = {"SVCENV_POSTGRES_URL": server["postgres"].url, "MIGRATION_LOG": str(tmp_path / "m.log")}
    proc = _pytest(project, "-p", "no:xdist", "-o", "svcenv_django=false", "-x", env=env)
    assert proc.returncode != 0
    assert "db.invalid" in proc.stdout  # pytest-django's own setup, on the settings as written
    assert not (tmp_path / "m.log").exists()


MYSQL_SETTINGS = """
import pymysql

pymysql.install_as_MySQLdb()  # Django's MySQL backend on PyMySQL (the test extras have no mysqlclient)
INSTALLED_APPS = ["things"]
SECRET_KEY = "not-a-secret"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {"default": {"ENGINE": "django.db.backends.mysql", "NAME": "proj", "HOST": "db.invalid", "USER": "app"}}
"""
MYSQL_TESTS = """
import os
import pytest
from django.db import connection
from things.models import Thing

@pytest.mark.parametrize("n", range(4))
def test_seeded(db, n):
    assert connection.vendor == "mysql"
    assert list(Thing.objects.values_list("name", flat=True)) == ["seeded"]
    with open(os.environ["DB_LOG"], "a") as out:
        out.write(connection.settings_dict["NAME"] + "\\n")
"""


def test_mysql_entries_get_djangos_own_creation_on_the_session_server(
    tmp_path: Path, leaks: LeakCheck, mysql_image: str
) -> None:
    project = _project(tmp_path / "proj")
    (project / "settings.py").write_text(MYSQL_SETTINGS)
    (project / "test_things.py").write_text(MYSQL_TESTS)
    log, db_log = tmp_path / "migrations.log", tmp_path / "databases.log"
    from svcenv import MySQL

    # An external server given as root (a MySQL test database is made by Django, which needs CREATE).
    with Environment(MySQL(), labels=leaks.labels) as env:
        handle = env["mysql"]
        url = f"mysql://root:{handle.root_password}@{handle.host}:{handle.port}/test"
        proc = _pytest(
            project, "-n", "2", env={"SVCENV_MYSQL_URL": url, "MIGRATION_LOG": str(log), "DB_LOG": str(db_log)}
        )
        _passed(proc, 4)
        # No template on MySQL: each worker migrates its own database, as pytest-django does.
        assert sorted(log.read_text().split()) == ["test_proj_gw0", "test_proj_gw1"]
        assert set(db_log.read_text().split()) == {"test_proj_gw0", "test_proj_gw1"}
        with handle.connect(user="root", password=handle.root_password, database=None) as conn, conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'test_proj%'")
            assert cur.fetchall() == ()  # dropped after the run
