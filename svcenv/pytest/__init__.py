"""svcenv's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures, with nothing to configure::

    def test_orders(postgres_connection, redis_client): ...

* ``svcenv``: the session's :class:`~svcenv.Environment` (started lazily, with
  only the services the selected tests use).
* ``postgres_service`` / ``redis_service`` / ``elasticsearch_service``: running handles.
* ``postgres_connection``: a psycopg connection to a fresh database cloned from
  a template (built once per run, after the ``svcenv_postgres_setup`` hooks) and
  dropped after the test, even a failed one. ``postgres_database`` is its name.
* ``postgres_transaction``: a connection whose work (commits included) is
  rolled back after the test. Not for code that opens its own connections or a pool.
* ``redis_client``: a client on the worker's own logical db, ``FLUSHDB`` before and after.
* ``postgres_async_connection`` / ``redis_async_client``: async twins of the two
  above, available when pytest-asyncio is installed.
* ``elasticsearch_client`` / ``elasticsearch_prefix``: a per-test index prefix;
  the indices under it are deleted after the test.
* ``mysql_service`` / ``mysql_database`` / ``mysql_connection``: MySQL/MariaDB, a fresh
  database per test (PyMySQL, ``pip install 'svcenv[mysql]'``).
* ``svcenv_env_vars``: puts the variables of the services the test uses into
  ``os.environ`` (``DATABASE_URL`` points at the test's fresh database when it has one).

The same fixtures for any other service come from :func:`fixtures`
(``fixtures(Postgres(name="analytics"))`` -> ``analytics_connection``, ...);
services declared in ``[tool.svcenv]`` get theirs automatically.
Configuration: ini keys ``svcenv_services``, ``svcenv_backend``, ``svcenv_timeout``,
``svcenv_postgres_setup``, ``svcenv_missing`` (``auto``/``skip``/``fail``),
``svcenv_xdist`` (``shared``/``per-worker``); options ``--svcenv-backend``,
``--svcenv-timeout``, ``--svcenv-keep``, ``--svcenv-reuse``; and
:func:`environment_fixture` for custom descriptors. Importing this module loads
no client library (psycopg, redis, elasticsearch, docker, testcontainers).
"""

from __future__ import annotations

from typing import Any

import pytest

from .._util import env_prefix
from ..descriptors import Elasticsearch, Postgres, Redis, Service
from ..environment import Environment
from ..errors import ConfigurationError
from ..isolation import redis_db_for_worker
from ..mysql import MySQL
from ._session import worker
from .fixtures import fixtures, manager

# The module is the plugin (pytest11): pytest finds its hooks here.
from .plugin import (  # noqa: F401
    _svcenv_marker,
    pytest_addoption,
    pytest_collection_finish,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)

__all__ = ["environment_fixture", "fixtures"]


@pytest.fixture(scope="session")
def svcenv(request: pytest.FixtureRequest) -> Environment:
    """The session's environment: started on first use, shared by xdist workers."""
    return manager(request).environment()


@pytest.fixture
def svcenv_env_vars(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Puts the variables of the services this test uses into ``os.environ`` for the test; returns them.

    With ``postgres_connection``/``postgres_database`` in the test, ``DATABASE_URL``
    and ``PGDATABASE`` point at the test's fresh database; with ``redis_client``,
    ``REDIS_URL`` points at the worker's logical database.
    """
    variables = env_vars_for(request, request.getfixturevalue("svcenv"))
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    return variables


def env_vars_for(request: pytest.FixtureRequest, env: Environment) -> dict[str, str]:
    """The variables of the services this test uses (all when it names none), pointed at its own state.

    A test with ``<name>_connection``/``<name>_database`` gets ``<NAME>_URL`` (and
    ``DATABASE_URL``/``PGDATABASE``/``POSTGRES_URL`` if that is the primary Postgres) for
    its fresh database; one with ``<name>_client`` of a Redis gets the worker's db.
    """
    used, _ = manager(request).uses(request.node)
    names = [name for name in used if name in env]
    variables = env.env_vars(only=names or None)
    for name in names:
        handle = env[name]
        prefix = env_prefix(name)
        if isinstance(handle.descriptor, Postgres) and f"_{name}_fresh" in request.fixturenames:
            database = request.getfixturevalue(f"_{name}_fresh")[0]
            url = handle.url_for(database)  # type: ignore[attr-defined]
            if variables.get("DATABASE_URL") == handle.url:
                variables.update(DATABASE_URL=url, POSTGRES_URL=url, PGDATABASE=database)
            variables[f"{prefix}_URL"] = url
        if isinstance(handle.descriptor, Redis) and {f"{name}_client", f"{name}_async_client"} & set(
            request.fixturenames
        ):
            url = handle.url_for(redis_db_for_worker(worker(request.config)))  # type: ignore[attr-defined]
            if variables.get("REDIS_URL") == handle.url:
                variables["REDIS_URL"] = url
            variables[f"{prefix}_URL"] = url
    return variables


def environment_fixture(*services: Service) -> Any:
    """A session fixture for your own descriptors; assign it to ``svcenv`` in a conftest::

        from svcenv import Postgres
        from svcenv.pytest import environment_fixture

        svcenv = environment_fixture(Postgres(), Postgres(name="replica"))

    The plugin's fixtures (``postgres_service``, ``postgres_connection``, ...) then
    use the services with those names from it; :func:`fixtures` makes them for others.
    """
    if not services:
        raise ConfigurationError("environment_fixture needs at least one service descriptor")

    @pytest.fixture(scope="session", name="svcenv")
    def _svcenv(request: pytest.FixtureRequest) -> Environment:
        return manager(request).environment(services)

    return _svcenv


# The built-in fixtures: the factory's, for the default descriptors.
globals().update(fixtures(Postgres(), Redis(), Elasticsearch(), MySQL()))
