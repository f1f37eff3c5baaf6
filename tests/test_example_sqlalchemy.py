"""examples/sqlalchemy_app, run as a user runs it: ``python -m pytest -n 2`` from its directory.

Its template is built by Alembic (``svcenv_postgres_setup = svcenv.sqlalchemy:alembic_upgrade_head``);
the data migration appends a line to ``SHOP_MIGRATION_LOG`` each time it runs, so
the log tells how often the migrations ran in the whole run, both workers included.
Its containers carry this test's label (``SVCENV_LABELS``), so ``leaks`` sees
anything it leaves.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from .conftest import LeakCheck, run_example

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sqlalchemy_app"


def test_the_sqlalchemy_example_passes_under_xdist_and_leaves_nothing_behind(leaks: LeakCheck, tmp_path: Path) -> None:
    log = tmp_path / "migrations.log"
    out = run_example(EXAMPLE, leaks, ["-n", "2", "-rA"], {"SHOP_MIGRATION_LOG": str(log)}, at_least=7, timeout=300)
    assert "IsolationWarning" not in out, out
    assert re.search(r"\b2 workers \[\d+ items\]", out), f"not run on two xdist workers:\n{out}"

    # Alembic ran once for the run: one worker built the template, the other cloned it.
    runs = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    assert len(runs) == 1, f"the data migration ran {len(runs)} times: {runs}\n{out}"

    # The committing rollback-session tests each started clean; at least two of them ran one after
    # the other on the same worker's database, so the later one saw nothing of the earlier's commits.
    sessions = re.findall(r"^rollback-session worker=(\S+) database=(\S+)$", out, re.MULTILINE)
    assert len(sessions) == 3, out
    assert max(collections.Counter(sessions).values()) >= 2, sessions
    assert {worker for worker, _ in sessions} <= {"gw0", "gw1"}, sessions

    assert "PASSED tests/test_shop.py::test_the_async_engine" in out, out
    assert "PASSED tests/test_shop.py::test_code_with_its_own_sessions_uses_the_engine" in out, out
    assert leaks.leftovers() == [], "the sqlalchemy example left containers"
    assert leaks.networks() == [], "the sqlalchemy example left its network"
