"""The fixture factory: every fixture of a service, made from its descriptor.

``fixtures(Postgres(name="analytics"))`` gives ``analytics_service``,
``analytics_database``, ``analytics_connection``, ``analytics_transaction``,
``analytics_template`` (and ``analytics_async_connection`` with pytest-asyncio),
with the same isolation as the built-in ``postgres_*`` fixtures, which the same
factory makes. Put them where pytest finds fixtures, e.g. in a ``conftest.py``::

    from svcenv import Postgres
    from svcenv.pytest import fixtures

    globals().update(fixtures(Postgres(name="analytics"), setup=["schema.sql"]))

Per kind: Redis gives ``<name>_service``, ``<name>_client`` (own logical db per
xdist worker, flushed before and after) and ``<name>_async_client``;
Elasticsearch ``<name>_service``, ``<name>_client`` and ``<name>_prefix``;
MySQL/MariaDB ``<name>_service``, ``<name>_database`` and ``<name>_connection``
(a fresh database per test); any other service ``<name>_service``. Each fixture knows its service, so a run starts
exactly the services its selected tests use. Client libraries are imported only
when a fixture runs.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import secrets
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from ..descriptors import Elasticsearch, Postgres, Redis, Service
from ..errors import ConfigurationError
from ..mysql import MySQL
from ._session import SERVICE_ATTR, Manager, worker

if TYPE_CHECKING:
    from ..environment import Environment
    from ..handles import ServiceHandle
    from ..isolation import PostgresTemplate, Setup

__all__ = ["IsolationWarning", "fixtures", "manager"]

MANAGER = pytest.StashKey[Manager]()
_F = TypeVar("_F", bound=Callable[..., Any])
_ASYNC = importlib.util.find_spec("pytest_asyncio") is not None
_PUBSUB_SAID: set[str] = set()
"""Redis services whose shared pub/sub this process has warned about (once each)."""


class IsolationWarning(UserWarning):
    """A test escaped its isolation (e.g. a SQL COMMIT in a rollback fixture); svcenv repaired it for the next."""


def manager(request: pytest.FixtureRequest) -> Manager:
    """The session's :class:`Manager` (what the plugin keeps in the config's stash)."""
    return request.config.stash[MANAGER]


def _fixture(service: Service, name: str, scope: str = "function", asynchronous: bool = False) -> Callable[[_F], _F]:
    """Register ``func`` as fixture ``name`` of ``service`` (the plugin derives what to start from it)."""

    def decorate(func: _F) -> _F:
        setattr(func, SERVICE_ATTR, service)
        if asynchronous:
            import pytest_asyncio

            return pytest_asyncio.fixture(scope=scope, name=name)(func)  # type: ignore[no-any-return,call-overload]
        return pytest.fixture(scope=scope, name=name)(func)  # type: ignore[call-overload,no-any-return]

    return decorate


def handle_of(request: pytest.FixtureRequest, service: Service) -> Any:
    """The running handle of ``service`` in the session's environment (a clear failure if it has none)."""
    env: Environment = request.getfixturevalue("svcenv")
    if service.name not in env:
        pytest.fail(
            f"svcenv: the session environment has no {service.name!r} service (it has {list(env.services)}); "
            "declare it in svcenv_services, [tool.svcenv] or environment_fixture(...)",
            pytrace=False,
        )
    return env[service.name]


def fixtures(*services: Service, setup: Setup | Sequence[Setup] = ()) -> dict[str, Any]:
    """Fixtures for each of ``services`` by kind, named ``<service name>_<what>`` (see the module doc).

    ``setup`` prepares Postgres templates: SQL files, SQL text, callables taking a
    connection, or ``"package.module:function"``, run in order, once per run.
    """
    if not services:
        raise ConfigurationError("svcenv.pytest.fixtures() needs at least one service descriptor")
    made: dict[str, Any] = {}
    for service in services:
        if not isinstance(service, Service):
            raise ConfigurationError(f"svcenv.pytest.fixtures() takes service descriptors, got {service!r}")
        made.update(_service_fixture(service))
        if isinstance(service, Postgres):
            made.update(_postgres_fixtures(service, setup))
        elif isinstance(service, Redis):
            made.update(_redis_fixtures(service))
        elif isinstance(service, Elasticsearch):
            made.update(_elasticsearch_fixtures(service))
        elif isinstance(service, MySQL):
            made.update(_mysql_fixtures(service, setup))
    return made


def _service_fixture(service: Service) -> dict[str, Any]:
    @_fixture(service, f"{service.name}_service", scope="session")
    def service_handle(request: pytest.FixtureRequest) -> ServiceHandle:
        """The running service (session-scoped handle)."""
        handle: ServiceHandle = handle_of(request, service)
        return handle

    return {f"{service.name}_service": service_handle}


# -- Postgres -------------------------------------------------------------------------------------


def _setup_items(request: pytest.FixtureRequest, given: Setup | Sequence[Setup], builtin: bool) -> list[Setup]:
    items: list[Setup] = list(given) if isinstance(given, (list, tuple)) else [given] if given else []  # type: ignore[list-item]
    if builtin:
        items += [line for line in request.config.getini("svcenv_postgres_setup") if line.strip()]
    root = request.config.rootpath
    return [
        str(root / item) if isinstance(item, str) and item.endswith(".sql") and not os.path.isabs(item) else item
        for item in items
    ]


def _postgres_fixtures(service: Service, given: Setup | Sequence[Setup]) -> dict[str, Any]:
    from ..isolation import run_setup

    n = service.name
    builtin = n == "postgres"

    @_fixture(service, f"{n}_template", scope="session")
    def template(request: pytest.FixtureRequest) -> Iterator[PostgresTemplate]:
        """The template database fresh test databases are cloned from (built once per run)."""
        from ..isolation import PostgresTemplate

        handle = request.getfixturevalue(f"{n}_service")
        items = _setup_items(request, given, builtin)
        prefetch = int(request.config.getini("svcenv_postgres_prefetch") or 0)
        said = str(request.config.getini("svcenv_postgres_reset")).strip().lower()
        reset = None if not said else said not in ("0", "false", "no", "off")
        run = manager(request)
        share = run.share

        def prepare(conn: Any) -> None:
            for item in items:
                run_setup(conn, item)

        name = None if share is None else share.template_name(n)
        built = PostgresTemplate(handle, setup=prepare if items else None, name=name, prefetch=prefetch, reset=reset)
        if share is None:
            built.build()
        else:
            with share.lock(f"template-{n}"):
                built.build(adopt=True)  # the first worker builds it; the others find it built
            run.before_stop.append(lambda: built.drop(built.name))
        yield built
        # Dropping databases on a server that is removed next is wasted time (about 70 ms a run).
        built.destroy(keep_template=share is not None, discard=run.removes_with_session(handle.backend))

    @_fixture(service, f"_{n}_fresh")
    def fresh(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
        pool: PostgresTemplate = request.getfixturevalue(f"{n}_template")
        name, conn = pool.acquire()
        if conn is None:
            conn = pool.handle.connect(name)
        try:
            yield name, conn
        finally:
            pool.release(name, conn)

    @_fixture(service, f"{n}_database")
    def database(request: pytest.FixtureRequest) -> str:
        """The name of the test's fresh database, cloned from the template; dropped after the test."""
        name: str = request.getfixturevalue(f"_{n}_fresh")[0]
        return name

    @_fixture(service, f"{n}_connection")
    def connection(request: pytest.FixtureRequest) -> Any:
        """A psycopg connection to the test's own fresh database (closed and dropped after the test)."""
        return request.getfixturevalue(f"_{n}_fresh")[1]

    @_fixture(service, f"_{n}_rollback", scope="session")
    def rollback_state(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
        pool: PostgresTemplate = request.getfixturevalue(f"{n}_template")
        state: dict[str, Any] = {"database": pool.clone()}
        yield state
        if "conn" in state:
            state["conn"].close()
        if not manager(request).removes_with_session(pool.handle.backend):
            pool.drop(state["database"])

    @_fixture(service, f"{n}_transaction")
    def transaction(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A connection whose work, commits included, is rolled back after the test.

        One connection per worker serves every such test (a transaction each), so a
        test pays no connect; a test that closes or breaks it gets a new one next time.
        """
        from ..isolation import escaped, rolled_back, savepoint_connection

        state = request.getfixturevalue(f"_{n}_rollback")
        conn = state.get("conn")
        if conn is None or conn.closed or conn.broken:
            handle = request.getfixturevalue(f"{n}_service")
            conn = state["conn"] = savepoint_connection(handle, state["database"])
        with rolled_back(conn):
            yield conn
        if escaped(conn):
            # A raw COMMIT/ROLLBACK ended the test's transaction: its work may persist. Later tests get a fresh clone.
            pool: PostgresTemplate = request.getfixturevalue(f"{n}_template")
            conn.close()
            del state["conn"]
            pool.drop(state["database"])
            state["database"] = pool.clone()
            warnings.warn(
                f"svcenv: {request.node.nodeid} ended {n}_transaction's transaction itself (a SQL COMMIT or "
                "ROLLBACK), so its work was not rolled back; later tests get a fresh database. "
                "Use conn.commit() (a savepoint here), or <name>_connection for code that commits for real.",
                IsolationWarning,
                stacklevel=1,
            )

    made = {
        f"{n}_template": template,
        f"_{n}_fresh": fresh,
        f"{n}_database": database,
        f"{n}_connection": connection,
        f"_{n}_rollback": rollback_state,
        f"{n}_transaction": transaction,
    }
    if builtin:
        made["svcenv_postgres_template"] = _fixture(service, "svcenv_postgres_template", scope="session")(
            lambda postgres_template: postgres_template
        )
    if _ASYNC:

        @_fixture(service, f"{n}_async_connection", asynchronous=True)
        async def async_connection(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
            """An async psycopg connection to the test's own fresh database (as ``<name>_connection``)."""
            handle = request.getfixturevalue(f"{n}_service")
            conn = await handle.connect_async(request.getfixturevalue(f"{n}_database"))
            try:
                yield conn
            finally:
                await conn.close()

        made[f"{n}_async_connection"] = async_connection
    from ._sqlalchemy import sqlalchemy_fixtures  # here: it imports this module

    made.update(sqlalchemy_fixtures(service))
    return made


# -- Redis ------------------------------------------------------------------------------------------


def _redis_fixtures(service: Service) -> dict[str, Any]:
    from ..isolation import claim_redis_db, flush_redis_db, redis_db_for_worker

    n = service.name

    def worker_db(request: pytest.FixtureRequest) -> tuple[Any, int]:
        handle = request.getfixturevalue(f"{n}_service")
        return handle, redis_db_for_worker(worker(request.config))

    def said_pubsub(subscribers: dict[int, int], db: int) -> None:
        """Warn (once per process and service) when subscribers of two logical databases share the server's channels."""
        if len(subscribers) < 2 or n in _PUBSUB_SAID:
            return
        _PUBSUB_SAID.add(n)
        dbs = ", ".join(f"db {d}: {c}" for d, c in sorted(subscribers.items()))
        warnings.warn(
            f"svcenv: {n}: pub/sub channels are server-wide, and clients of more than one logical database "
            f"were subscribed at once ({dbs}; this worker uses db {db}), so messages cross xdist workers. "
            "Name channels per worker (e.g. with the db, redis_client.get_connection_kwargs()['db']) "
            "or run those tests on one worker.",
            IsolationWarning,
            stacklevel=1,
        )

    @_fixture(service, f"{n}_client")
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A client on this worker's logical database, flushed (FLUSHDB) before and after the test."""
        handle, db = worker_db(request)
        redis_client = handle.client(db=db)
        claim_redis_db(redis_client, handle.backend, handle.url)
        redis_client.flushdb()
        try:
            yield redis_client
        finally:
            try:
                # Not through the test's client: code under test may have run SELECT on its connections.
                # Before close(), which also ends the test's own subscriptions (they share its pool).
                said_pubsub(flush_redis_db(handle, db), db)
            finally:
                redis_client.close()

    made: dict[str, Any] = {f"{n}_client": client}
    if _ASYNC:

        @_fixture(service, f"{n}_async_client", asynchronous=True)
        async def async_client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
            """An async client on this worker's logical database, flushed before and after (as ``<name>_client``)."""
            handle, db = worker_db(request)
            sync = handle.client(db=db)
            claim_redis_db(sync, handle.backend, handle.url)
            sync.close()
            redis_client = handle.async_client(db=db)
            await redis_client.flushdb()
            try:
                yield redis_client
            finally:
                try:
                    said_pubsub(flush_redis_db(handle, db), db)
                finally:
                    await redis_client.aclose()

        made[f"{n}_async_client"] = async_client
    return made


# -- Elasticsearch ------------------------------------------------------------------------------------

_prefix_counter = itertools.count(1)
_session_token = secrets.token_hex(3)


def _elasticsearch_fixtures(service: Service) -> dict[str, Any]:
    n = service.name

    @_fixture(service, f"{n}_prefix")
    def prefix(request: pytest.FixtureRequest) -> str:
        """A per-test index prefix; indices under it are deleted after the test (with ``<name>_client``)."""
        return f"t{_session_token}_{worker(request.config)}_{next(_prefix_counter)}_"

    @_fixture(service, f"{n}_client")
    def client(request: pytest.FixtureRequest) -> Iterator[Any]:
        """An Elasticsearch client; indices named with ``<name>_prefix`` are removed afterwards."""
        from ..isolation import delete_indices

        handle = request.getfixturevalue(f"{n}_service")
        index_prefix = request.getfixturevalue(f"{n}_prefix")
        es = handle.client()
        try:
            yield es
        finally:
            delete_indices(es, index_prefix)
            es.close()

    return {f"{n}_prefix": prefix, f"{n}_client": client}


# -- MySQL / MariaDB ------------------------------------------------------------------------------------


def _mysql_fixtures(service: Service, given: Setup | Sequence[Setup]) -> dict[str, Any]:
    n = service.name

    @_fixture(service, f"{n}_databases", scope="session")
    def databases(request: pytest.FixtureRequest) -> Iterator[Any]:
        """Makes the fresh databases of ``<name>_database`` (runs ``setup`` in each)."""
        from ..isolation.mysql import MySQLDatabases

        items = list(given) if isinstance(given, (list, tuple)) else [given] if given else []
        made = MySQLDatabases(request.getfixturevalue(f"{n}_service"), setup=items)  # type: ignore[arg-type]
        yield made
        made.close()

    @_fixture(service, f"{n}_database")
    def database(request: pytest.FixtureRequest) -> Iterator[str]:
        """The name of the test's own fresh database (the user has all rights on it); dropped after the test."""
        with request.getfixturevalue(f"{n}_databases").fresh() as name:
            yield name

    @_fixture(service, f"{n}_connection")
    def connection(request: pytest.FixtureRequest) -> Iterator[Any]:
        """A PyMySQL connection to the test's own fresh database (closed and the database dropped after)."""
        handle = request.getfixturevalue(f"{n}_service")
        conn = handle.connect(request.getfixturevalue(f"{n}_database"))
        try:
            yield conn
        finally:
            conn.close()

    return {f"{n}_databases": databases, f"{n}_database": database, f"{n}_connection": connection}
