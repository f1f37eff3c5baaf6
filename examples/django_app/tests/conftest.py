"""Records which database each test ran on (``DJANGO_APP_DB_LOG``), for the project's outer test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _record_database(request: pytest.FixtureRequest) -> None:
    log = os.environ.get("DJANGO_APP_DB_LOG")
    uses_db = request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(request.fixturenames)
    if not log or not uses_db:
        return
    request.getfixturevalue("django_db_setup")
    from django.db import connections

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(log, "a") as out:
        for alias in connections:
            out.write(f"{worker} {alias} {connections[alias].settings_dict['NAME']}\n")
