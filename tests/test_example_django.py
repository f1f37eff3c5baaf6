"""examples/django_app, run as a user runs it: ``python -m pytest -n 2`` in the project, nothing configured.

The example's suite runs in a subprocess with its own ``pytest.ini``; its containers
carry this test's label (``SVCENV_LABELS``), so ``leaks`` sees anything it leaves.
Its data migration appends a line to ``DJANGO_APP_MIGRATION_LOG`` each time it runs,
and its conftest appends, for every database test, the worker and the database each
``DATABASES`` entry is on to ``DJANGO_APP_DB_LOG``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .conftest import IN_CI, LeakCheck, run_example

if importlib.util.find_spec("pytest_django") is None:  # skipped locally; under CI a missing extra fails
    if IN_CI:
        raise ImportError("CI=true and pytest-django is missing: pip install '.[test]'")
    pytest.skip("needs django and pytest-django (pip install '.[test]')", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_app"


def test_the_django_example_migrates_once_and_gives_each_worker_its_own_database(
    leaks: LeakCheck, tmp_path: Path
) -> None:
    migrations, databases = tmp_path / "migrations.log", tmp_path / "databases.log"
    env = {"DJANGO_APP_MIGRATION_LOG": str(migrations), "DJANGO_APP_DB_LOG": str(databases)}
    run_example(EXAMPLE, leaks, ["-n", "2"], env, at_least=12)

    # The data migration ran exactly once for the whole run, into the template.
    runs = migrations.read_text().splitlines()
    assert len(runs) == 1, runs
    _, _, alias, database = runs[0].split()
    assert alias == "default", runs
    assert database.startswith("svcenv_dj_"), runs  # the template, not a worker's database

    # Each worker on its own databases (pytest-django's names), the same one for all its tests.
    seen: dict[tuple[str, str], set[str]] = {}
    for line in databases.read_text().splitlines():
        worker, alias, name = line.split()
        seen.setdefault((worker, alias), set()).add(name)
    workers = {worker for worker, _ in seen}
    assert workers == {"gw0", "gw1"}, seen
    for (worker, alias), names in seen.items():
        expected = {"default": f"test_shop_{worker}", "audit": f"test_shop_audit_{worker}"}[alias]
        assert names == {expected}, seen

    leaks.assert_clean()  # containers, networks, volumes (the fixture checks again after the test)
