"""Django test-database setup: svcenv's template (migrate once per run, clone per worker) vs pytest-django's own.

A generated Django project (``--models`` models, one migration each, the last a
data migration, plus ``contenttypes`` and ``auth``: a few dozen migrations in all)
and a suite of ``--tests`` trivial database tests run under ``-n 0`` and ``-n 2``:

* **svcenv**: svcenv's pytest-django integration (``svcenv/pytest/_django.py``): the
  first worker migrates into a template, every worker's test database is a
  ``CREATE DATABASE … TEMPLATE`` clone;
* **pytest-django**: ``svcenv_django = false``, pytest-django's own
  ``django_db_setup`` (every worker creates its database and runs every
  migration), its ``DATABASES`` pointed at the same kind of server by a
  ``django_db_modify_db_settings`` override: svcenv's Postgres (Docker backend,
  image ``svcenv-test/postgres:15``, ``SVCENV_PULL=never``), one per run for both.

The time measured is the ``django_db_setup`` fixture's setup in each worker (the
server is already up: a session fixture asks for it first), and the run's setup
time is the slowest worker's (the workers wait for it in parallel). The whole
pytest run's wall time is shown too. Methods run interleaved, round by round; the
table shows medians and the ratio to pytest-django at the same ``-n``. Each run's
data migration appends to a log: svcenv must have migrated once per run, and
pytest-django once per worker.

Run from the repository root::

    .venv/bin/python benchmarks/django_setup.py [--models 30] [--tests 20] [--rounds 3] [--workers 0,2]
        [--json benchmarks/results/django_setup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["svcenv", "pytest-django"]
PEER = "pytest-django"

SETTINGS = """
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "bench"]
SECRET_KEY = "benchmark-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "bench", "HOST": "localhost", "PORT": "5432",
                "USER": "bench", "PASSWORD": ""},
}
"""

MIGRATION = """
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = {dependencies}
    operations = [
        migrations.CreateModel(
            name="Model{i}",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=100, db_index=True)),
                ("amount", models.DecimalField(max_digits=12, decimal_places=2, default=0)),
                ("created", models.DateTimeField(auto_now_add=True)),
                ("payload", models.JSONField(default=dict)),
{parent}            ],
        ),
    ]
"""

PARENT_FIELD = """                ("parent", models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE,
                                             to="bench.model{previous}")),
"""

DATA_MIGRATION = """
import os
from django.db import migrations


def seed(apps, schema_editor):
    alias = schema_editor.connection.alias
    for i in range({models}):
        apps.get_model("bench", f"Model{{i}}").objects.using(alias).create(name=f"seed-{{i}}")
    with open(os.environ["BENCH_MIGRATION_LOG"], "a") as out:
        out.write(schema_editor.connection.settings_dict["NAME"] + "\\n")


class Migration(migrations.Migration):
    dependencies = [("bench", "{last}")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
"""

MODEL = """
class Model{i}(models.Model):
    name = models.CharField(max_length=100, db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    created = models.DateTimeField(auto_now_add=True)
    payload = models.JSONField(default=dict)
{parent}
"""

TESTS = """
import pytest
from bench.models import Model0

pytestmark = pytest.mark.svcenv("postgres")


@pytest.mark.parametrize("n", range({tests}))
def test_seeded(db, n):
    assert Model0.objects.count() == 1
    Model0.objects.create(name=f"test-{{n}}")
"""

CONFTEST = """
import os
import time

import pytest


@pytest.fixture(scope="session", autouse=True)
def _server_first(svcenv):
    # The server is up before django_db_setup starts: its start is not part of the setup time.
    return svcenv


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname != "django_db_setup":
        return (yield)
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        took = time.perf_counter() - started
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["BENCH_OUT"], f"setup-{{worker}}.txt"), "a") as out:
            out.write(f"{{took}}\\n")
{peer}
"""

PEER_CONFTEST = """

@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, svcenv):
    # pytest-django's own setup, on the same kind of server: svcenv's Postgres.
    from django.conf import settings

    handle = svcenv["postgres"]
    for entry in settings.DATABASES.values():
        entry.update(HOST=handle.host, PORT=str(handle.port), USER=handle.user, PASSWORD=handle.password)
"""


def _project(root: Path, method: str, models: int, tests: int) -> Path:
    project = root / method
    migrations = project / "bench" / "migrations"
    migrations.mkdir(parents=True)
    (project / "settings.py").write_text(SETTINGS)
    (project / "bench" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    body = ["from django.db import models\n"]
    last = ""
    for i in range(models):
        name = f"{i + 1:04d}_model{i}"
        dependencies = repr([("bench", last)] if last else [])
        parent = PARENT_FIELD.format(previous=i - 1) if i else ""
        (migrations / f"{name}.py").write_text(MIGRATION.format(dependencies=dependencies, i=i, parent=parent))
        model_parent = (
            f'    parent = models.ForeignKey("Model{i - 1}", null=True, on_delete=models.CASCADE)\n' if i else ""
        )
        body.append(MODEL.format(i=i, parent=model_parent))
        last = name
    (project / "bench" / "models.py").write_text("".join(body))
    (migrations / f"{models + 1:04d}_seed.py").write_text(DATA_MIGRATION.format(models=models, last=last))
    (project / "test_bench.py").write_text(TESTS.format(tests=tests))
    (project / "conftest.py").write_text(CONFTEST.format(peer=PEER_CONFTEST if method == PEER else ""))
    ini = "[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n"
    if method == PEER:
        ini += "svcenv_django = false\n"
    (project / "pytest.ini").write_text(ini)
    return project


def _run(project: Path, workers: int, tests: int, out: Path) -> tuple[float, float, int]:
    """(slowest worker's django_db_setup in s, the run's wall time in s, how often the data migration ran)."""
    for stale in out.iterdir():
        stale.unlink()
    log = out / "migrations.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.setdefault("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")
    env.setdefault("SVCENV_PULL", "never")
    env.update(BENCH_OUT=str(out), BENCH_MIGRATION_LOG=str(log))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    args += ["--svcenv-backend", "docker"]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=1800, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0 or f"{tests} passed" not in result.stdout:
        raise SystemExit(f"{project.name} -n {workers} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    setups = [float(line) for path in out.glob("setup-*.txt") for line in path.read_text().split()]
    if len(setups) != max(1, workers):
        raise SystemExit(f"{project.name} -n {workers}: {len(setups)} workers set up a database, not {workers}")
    return max(setups), wall, len(log.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=30, help="generated models, one migration each")
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,2", help="comma list of xdist worker counts (0: no xdist)")
    parser.add_argument("--json", default="benchmarks/results/django_setup.json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    setup_s: dict[str, list[float]] = {}
    wall_s: dict[str, list[float]] = {}
    migration_runs: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="svcenv-django-bench-") as tmp:
        projects = {m: _project(Path(tmp), m, args.models, args.tests) for m in METHODS}
        migrations = len(list((projects[PEER] / "bench" / "migrations").glob("0*.py")))
        out = Path(tmp) / "out"
        out.mkdir()
        for _ in range(args.rounds):
            for w in workers:
                for m in METHODS:  # interleaved: drift hits every method alike
                    key = f"-n {w}|{m}"
                    setup, wall, ran = _run(projects[m], w, args.tests, out)
                    setup_s.setdefault(key, []).append(setup)
                    wall_s.setdefault(key, []).append(wall)
                    migration_runs.setdefault(key, []).append(ran)
                    expected = 1 if m == "svcenv" else max(1, w)
                    if ran != expected:
                        raise SystemExit(f"{key}: the data migration ran {ran} times, expected {expected}")
    medians = {key: statistics.median(values) for key, values in setup_s.items()}
    wall_medians = {key: statistics.median(values) for key, values in wall_s.items()}
    ratios: dict[str, float] = {}
    print(
        f"Django test-database setup: {args.models} generated models/migrations + contenttypes/auth "
        f"({migrations} app migrations), {args.tests} tests, {args.rounds} rounds; "
        f"setup = slowest worker's django_db_setup; ratio: / {PEER} at the same -n"
    )
    print(f"{'-n':>3} {'method':<14} {'min s':>7} {'median s':>9} {'ratio':>6} {'run wall s':>11} {'migrated':>9}")
    for key, values in setup_s.items():
        w, m = key.split("|")
        peer_key = f"{w}|{PEER}"
        ratio = medians[key] / medians[peer_key] if peer_key in medians else float("nan")
        ratios[key] = ratio
        print(
            f"{w[3:]:>3} {m:<14} {min(values):>7.2f} {medians[key]:>9.2f} {ratio:>6.2f} "
            f"{wall_medians[key]:>11.2f} {migration_runs[key][0]:>8}x"
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "models": args.models,
                "app_migrations": migrations,
                "tests": args.tests,
                "rounds": args.rounds,
                "setup_samples_s": setup_s,
                "setup_medians_s": medians,
                "wall_samples_s": wall_s,
                "wall_medians_s": wall_medians,
                "ratios": ratios,
                "migration_runs": migration_runs,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
