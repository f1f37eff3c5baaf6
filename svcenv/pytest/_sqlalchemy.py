"""SQLAlchemy fixtures of a Postgres service: ``<name>_engine``, ``<name>_async_engine``, ``<name>_session``.

Made by :func:`sqlalchemy_fixtures` beside the other Postgres fixtures when
SQLAlchemy is installed (``<name>_async_engine`` also needs pytest-asyncio).
SQLAlchemy itself is imported only when one of them runs.

* ``<name>_engine``: an :class:`~sqlalchemy.engine.Engine` (``postgresql+psycopg``)
  bound to the test's fresh database (``<name>_database``), disposed after the test.
* ``<name>_async_engine``: the :class:`~sqlalchemy.ext.asyncio.AsyncEngine` twin
  (psycopg 3's async mode), disposed after the test.
* ``<name>_session``: a :class:`~sqlalchemy.orm.Session` whose work, ``commit()``
  included, is rolled back after the test (:func:`svcenv.sqlalchemy.rollback_session`),
  on one database per worker cloned from the template and reused by every such
  test, so a test pays neither a clone nor a connect.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..descriptors import Service
from .fixtures import IsolationWarning, _fixture

if TYPE_CHECKING:
    from ..isolation import PostgresTemplate

__all__ = ["sqlalchemy_fixtures"]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def sqlalchemy_fixtures(service: Service) -> dict[str, Any]:
    """The SQLAlchemy fixtures of the Postgres ``service`` (none if SQLAlchemy is not installed)."""
    if not _installed("sqlalchemy"):
        return {}
    n = service.name

    def url(request: pytest.FixtureRequest, dbname: str) -> str:
        handle = request.getfixturevalue(f"{n}_service")
        made: str = handle.sqlalchemy_url("psycopg", dbname)
        return made

    @_fixture(service, f"{n}_engine")
    def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A SQLAlchemy ``Engine`` on the test's fresh database (``<name>_database``); disposed after the test."""
        import sqlalchemy

        made = sqlalchemy.create_engine(url(request, request.getfixturevalue(f"{n}_database")))
        try:
            yield made
        finally:
            made.dispose()

    @_fixture(service, f"_{n}_session_state", scope="session")
    def session_state(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
        import sqlalchemy

        pool: PostgresTemplate = request.getfixturevalue(f"{n}_template")
        state: dict[str, Any] = {}

        def fresh() -> None:
            state["database"] = pool.clone()
            state["engine"] = sqlalchemy.create_engine(url(request, state["database"]))

        def renew() -> None:
            state["engine"].dispose()
            pool.drop(state["database"])
            fresh()

        fresh()
        state["renew"] = renew
        yield state
        state["engine"].dispose()
        pool.drop(state["database"])

    @_fixture(service, f"{n}_session")
    def session(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A SQLAlchemy ``Session`` whose work, ``commit()`` included, is rolled back after the test.

        It runs on one database per worker (cloned from the template), reused by every
        such test, so a test pays neither a clone nor a connect. Code that opens its own
        connections sees nothing of the test's transaction: give it ``<name>_engine``
        (a fresh database) instead.
        """
        from ..sqlalchemy import rollback_session, session_escaped

        state = request.getfixturevalue(f"_{n}_session_state")
        with rollback_session(state["engine"]) as made:
            yield made
        if session_escaped(made):
            # A raw COMMIT/ROLLBACK ended the outer transaction: its work may persist. Later tests get a fresh clone.
            state["renew"]()
            warnings.warn(
                f"svcenv: {request.node.nodeid} ended {n}_session's transaction itself (a SQL COMMIT or "
                "ROLLBACK), so its work was not rolled back; later tests get a fresh database. "
                "Use session.commit() (a savepoint here), or <name>_engine for code that commits for real.",
                IsolationWarning,
                stacklevel=1,
            )

    made: dict[str, Any] = {f"{n}_engine": engine, f"_{n}_session_state": session_state, f"{n}_session": session}
    if _installed("pytest_asyncio"):

        @_fixture(service, f"{n}_async_engine", asynchronous=True)
        async def async_engine(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
            """A SQLAlchemy ``AsyncEngine`` on the test's fresh database (as ``<name>_engine``); disposed after."""
            from sqlalchemy.ext.asyncio import create_async_engine

            created = create_async_engine(url(request, request.getfixturevalue(f"{n}_database")))
            try:
                yield created
            finally:
                await created.dispose()

        made[f"{n}_async_engine"] = async_engine
    return made
