"""Per-test isolation: a fresh database per test, rollback, a clean Redis db, an ES prefix.

These are the runner-independent pieces behind the pytest fixtures and the
unittest helpers:

* :class:`PostgresTemplate`: pytest-postgresql's janitor idea. A template
  database is built once (after a setup hook runs migrations or loads seed
  data), and each test gets ``CREATE DATABASE … TEMPLATE …``, dropped afterwards
  with its connections terminated.
* :func:`rollback_connection`: one connection inside a transaction that is
  rolled back at the end. ``commit()`` and ``rollback()`` by the code under test
  act on a savepoint, so even committing code stays isolated. It does not fit
  code that opens its own connections or uses a pool: those see nothing of the
  test's transaction. Use a fresh database there.
* :func:`redis_db_for_worker` / :func:`flush_redis`: a logical database per
  xdist worker and ``FLUSHDB``, never ``FLUSHALL``.
* :func:`delete_indices`: removes the indices under a per-test prefix by name
  (Elasticsearch 8 refuses wildcard deletes by default).
"""

from __future__ import annotations

import os

from .elasticsearch import delete_indices
from .postgres import (
    PostgresTemplate,
    Setup,
    escaped,
    rollback_connection,
    rolled_back,
    savepoint_connection,
)
from .postgres import run_setup as run_setup
from .redis import claim_redis_db, flush_redis, flush_redis_db, redis_db_for_worker

__all__ = [
    "PostgresTemplate",
    "Setup",
    "claim_redis_db",
    "delete_indices",
    "escaped",
    "flush_redis",
    "flush_redis_db",
    "redis_db_for_worker",
    "rollback_connection",
    "rolled_back",
    "savepoint_connection",
    "worker_id",
]


def worker_id() -> str:
    """The pytest-xdist worker id (``gw0``, ...) or ``main`` outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")
