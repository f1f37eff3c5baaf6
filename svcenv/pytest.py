"""svcenv's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures, with nothing to configure::

    def test_orders(postgres_connection, redis_client): ...

* ``svcenv``: the session's :class:`~svcenv.Environment` (started lazily).
* ``postgres_service`` / ``redis_service`` / ``elasticsearch_service``: running handles.
* ``postgres_connection``: a psycopg connection to a fresh database cloned from
  a template (built once, after the ``svcenv_postgres_setup`` hook) and dropped
  after the test, even a failed one. ``postgres_database`` is that database's name.
* ``postgres_transaction``: a connection whose work (commits included) is
  rolled back after the test. Not for code that opens its own connections or a pool.
* ``redis_client``: a client on the worker's own logical db, ``FLUSHDB`` before and after.
* ``postgres_async_connection`` / ``redis_async_client``: async twins of the two
  above, available when pytest-asyncio is installed.
* ``elasticsearch_client`` / ``elasticsearch_prefix``: a per-test index prefix;
  the indices under it are deleted after the test.
* ``svcenv_env_vars``: puts ``env_vars()`` into ``os.environ`` for the test
  (``DATABASE_URL`` points at the test's fresh database when it has one).

Configuration: ini keys ``svcenv_services``, ``svcenv_backend``, ``svcenv_timeout``,
``svcenv_postgres_setup``, ``svcenv_missing`` (``auto``/``skip``/``fail``),
``svcenv_xdist`` (``shared``/``per-worker``); options ``--svcenv-backend``,
``--svcenv-timeout``, ``--svcenv-keep``; and :func:`environment_fixture` for
custom descriptors. Services start only when a selected test needs them. Under
pytest-xdist one environment serves all workers by default.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .descriptors import Elasticsearch, Postgres, Redis, Service
from .environment import Environment
from .errors import BackendUnavailable, ConfigurationError, ServiceStartError
from .isolation import (
    PostgresTemplate,
    claim_redis_db,
    delete_indices,
    redis_db_for_worker,
    rolled_back,
    savepoint_connection,
)
from .state import pid_alive

if TYPE_CHECKING:
    import elasticsearch
    import psycopg
    import redis

    from .handles import ElasticsearchHandle, PostgresHandle, RedisHandle
    from .reuse import Acquired

__all__ = ["environment_fixture"]

KINDS: dict[str, Callable[[], Service]] = {"postgres": Postgres, "redis": Redis, "elasticsearch": Elasticsearch}
# Which service each fixture needs; used to start only what the selected tests use.
FIXTURE_NEEDS = {
    "postgres_service": "postgres",
    "postgres_connection": "postgres",
    "postgres_database": "postgres",
    "_svcenv_fresh": "postgres",
    "postgres_transaction": "postgres",
    "redis_service": "redis",
    "redis_client": "redis",
    "redis_async_client": "redis",
    "postgres_async_connection": "postgres",
    "elasticsearch_service": "elasticsearch",
    "elasticsearch_client": "elasticsearch",
    "elasticsearch_prefix": "elasticsearch",
}
ALL = "*"
_manager_key = pytest.StashKey["_Manager"]()


# -- configuration ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svcenv", "real services for tests (svcenv)")
    group.addoption("--svcenv-backend", default=None, help="auto, docker, local or external (default: auto)")
    group.addoption("--svcenv-timeout", type=float, default=None, help="seconds each service gets to become ready")
    group.addoption(
        "--svcenv-keep",
        action="store_true",
        default=False,
        help="leave the services running after the session and print how to reach and remove them",
    )
    group.addoption(
        "--svcenv-reuse",
        action="store_true",
        default=False,
        help="attach to services kept from earlier runs (same configuration), keep new ones for later runs",
    )
    parser.addini("svcenv_reuse", "reuse services across runs, as --svcenv-reuse", type="bool", default=False)
    parser.addini("svcenv_services", "services the session may start", type="linelist", default=list(KINDS))
    parser.addini("svcenv_backend", "backend for the session's services (default: $SVCENV_BACKEND or auto)", default="")
    parser.addini("svcenv_timeout", "readiness deadline in seconds (default: per kind)", default="")
    parser.addini(
        "svcenv_postgres_setup",
        "prepares the template database: a .sql file, or package.module:function(conn)",
        default="",
    )
    parser.addini("svcenv_postgres_prefetch", "fresh databases cloned ahead of use by a background worker", default="2")
    parser.addini("svcenv_missing", "when no backend can run a needed service: auto|skip|fail", default="auto")
    parser.addini("svcenv_xdist", "under xdist: shared (one environment) or per-worker", default="shared")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "svcenv(*services): the test needs these services; skipped (locally) or failed (CI) if none can run",
    )
    config.stash[_manager_key] = _Manager(config)
    if _xdist_controller(config) and config.getoption("testrunuid", None) is None:
        # Fix the run id the workers get (xdist's own option), so that the controller can clean their dir.
        config.option.testrunuid = secrets.token_hex(16)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _xdist_controller(config) and config.getoption("testrunuid", None):
        _XdistShare.remove(str(config.getoption("testrunuid")))


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that runs xdist workers (and so outlives them all)."""
    return (
        not hasattr(config, "workerinput")
        and config.pluginmanager.hasplugin("xdist")
        and bool(getattr(config.option, "numprocesses", None) or getattr(config.option, "tx", None))
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needed: set[str] = set()
    for item in items:
        closure = getattr(item, "fixturenames", ())
        needed.update(FIXTURE_NEEDS[name] for name in closure if name in FIXTURE_NEEDS)
        # Every fixture depends on `svcenv`; only asking for it (or the env vars) directly means "all".
        direct = set(getattr(getattr(item, "_fixtureinfo", None), "argnames", ()))
        for marker in item.iter_markers("usefixtures"):
            direct.update(marker.args)
        if direct & {"svcenv", "svcenv_env_vars"}:
            needed.add(ALL)
        for marker in item.iter_markers("svcenv"):
            needed.update(marker.args or (ALL,))
    config.stash[_manager_key].needed = needed


def pytest_runtest_setup(item: pytest.Item) -> None:
    names = [name for marker in item.iter_markers("svcenv") for name in marker.args]
    if any(True for _ in item.iter_markers("svcenv")):
        env = item.config.stash[_manager_key].environment()
        missing = [name for name in names if name not in env]
        if missing:
            raise ConfigurationError(
                f"@pytest.mark.svcenv needs {missing}, but the environment has {list(env.services)}"
            )


def pytest_sessionfinish(session: pytest.Session) -> None:
    manager = session.config.stash.get(_manager_key, None)
    if manager is not None:
        manager.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    manager = config.stash.get(_manager_key, None)
    if manager is not None and manager.summary:
        terminalreporter.write_sep("-", "svcenv")
        for line in manager.summary:
            terminalreporter.write_line(line)


# -- the session's environment ------------------------------------------------------------------


class _Manager:
    """Owns (or attaches to) the session's environment."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.needed: set[str] = {ALL}
        self.custom: tuple[Service, ...] | None = None
        self.env: Environment | None = None
        self.error: BaseException | None = None
        self.summary: list[str] = []
        self._share: _XdistShare | None = None
        self._acquired: Acquired | None = None

    def _option(self, name: str) -> Any:
        value = self.config.getoption(f"--svcenv-{name}")
        return value if value not in (None, "") else (self.config.getini(f"svcenv_{name}") or None)

    def descriptors(self) -> tuple[Service, ...]:
        if self.custom is not None:
            return self.custom
        from .config import load_config

        project = load_config(start=self.config.rootpath)  # [tool.svcenv] / svcenv.toml, shared with the CLI
        if project.declared:
            declared = list(project.services)
            chosen = declared if ALL in self.needed else [n for n in declared if n in self.needed]
            return tuple(project.descriptors(chosen)) if chosen else ()
        allowed = [n for line in self.config.getini("svcenv_services") for n in line.replace(",", " ").split()]
        unknown = [name for name in allowed if name not in KINDS]
        if unknown:
            raise ConfigurationError(f"svcenv_services: unknown {unknown}; known: {list(KINDS)}")
        wanted = allowed if ALL in self.needed else [n for n in allowed if n in self.needed]
        return tuple(KINDS[name]() for name in wanted)

    def environment(self, custom: Sequence[Service] | None = None) -> Environment:
        if custom is not None:
            self.custom = tuple(custom)
        if self.env is not None:
            return self.env
        if isinstance(self.error, BackendUnavailable):
            _missing(self.config, self.error)
        if self.error is not None:
            raise self.error
        try:
            self.env = self._start()
        except BackendUnavailable as exc:
            self.error = exc
            _missing(self.config, exc)
        except ServiceStartError as exc:
            self.error = exc
            raise
        assert self.env is not None
        return self.env

    def _start(self) -> Environment:
        services = self.descriptors()
        timeout = self._option("timeout")
        kwargs: dict[str, Any] = {
            "backend": self._option("backend"),
            "timeout": float(timeout) if timeout else None,
            "labels": {"svcenv.runner": "pytest"},
        }
        from .config import load_config
        from .reuse import reuse_wanted

        project = load_config(start=self.config.rootpath)
        asked = bool(self.config.getoption("--svcenv-reuse") or self.config.getini("svcenv_reuse"))
        if reuse_wanted(asked=asked, configured=project.reuse, notice=self.summary.append):
            return self._reuse(services, kwargs, project.project_dir)
        shared = _xdist_run_id(self.config) and self.config.getini("svcenv_xdist") != "per-worker"
        if shared:
            self._share = _XdistShare(_xdist_run_id(self.config))
            env = self._share.join(services, kwargs)
        else:
            env = Environment(*services, **kwargs).start()
        if not env.attached:
            timings = ", ".join(f"{n} {t.total_s:.2f}s ({t.backend})" for n, t in env.timings.items())
            self.summary.append(f"environment {env.id}: {timings}")
        return env

    def _reuse(self, services: Sequence[Service], kwargs: dict[str, Any], project_dir: Path) -> Environment:
        """Attach to kept services of this configuration, or start and keep them (each worker on its own)."""
        from .reuse import Reuser
        from .state import StateDir

        reuser = Reuser(StateDir(), project_dir, backend=kwargs["backend"], timeout=kwargs["timeout"])
        try:
            self._acquired = reuser.acquire(services)
        finally:
            reuser.close()
        how = ", ".join(f"{name} {outcome}" for name, outcome in self._acquired.outcomes.items())
        self.summary.append(f"reuse: {how}; they stay up for the next run (`python -m svcenv down` removes them)")
        return self._acquired.env

    def close(self) -> None:
        env, self.env = self.env, None
        if env is None:
            return
        if self._acquired is not None:
            self._acquired.stop()  # external services are released; reused ones stay up
            return
        if self.config.getoption("--svcenv-keep"):
            env.disown()
            self.summary.append(
                f"--svcenv-keep: environment {env.id} is still running; remove it with "
                f"`docker rm -fv $(docker ps -aq --filter label=svcenv.environment={env.id})`"
            )
            return
        if self._share is not None:
            self._share.leave(env)
        else:
            env.stop()


def _missing(config: pytest.Config, error: BaseException) -> None:
    mode = config.getini("svcenv_missing")
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if mode == "fail" or (mode == "auto" and in_ci):
        pytest.fail(f"svcenv: needed services are unavailable: {error}", pytrace=False)
    pytest.skip(f"svcenv: needed services are unavailable: {error}")


def _worker(config: pytest.Config) -> str:
    """This process's xdist worker id (``gw0``...) or ``main``, from pytest itself, not the environment
    (a pytest subprocess inherits ``PYTEST_XDIST_WORKER`` from an xdist parent)."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "main"


def _xdist_run_id(config: pytest.Config) -> str:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["testrunuid"]) if workerinput else ""


class _XdistShare:
    """One environment for all xdist workers: the first starts it under a lock, the others attach.

    The state file (0600, in a 0700 dir) holds the snapshot, secrets included.
    The owner waits at the end until every other worker has left, then stops it.
    """

    def __init__(self, run_id: str) -> None:
        self.dir = Path(tempfile.gettempdir()) / f"svcenv-xdist-{os.getuid()}-{run_id}"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.state = self.dir / "state.json"
        self.members = self.dir / "members"
        self.owner = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_members(self, pids: set[int]) -> None:
        self.members.write_text(json.dumps(sorted(pids)))

    def _read_members(self) -> set[int]:
        return set(json.loads(self.members.read_text())) if self.members.exists() else set()

    def _owner_alive(self) -> bool:
        try:
            return pid_alive(int((self.dir / "owner").read_text()))
        except (OSError, ValueError):
            return False

    def join(self, services: Sequence[Service], kwargs: dict[str, Any]) -> Environment:
        with self._locked():
            if self.state.exists() and self._owner_alive():
                env = Environment.attach(json.loads(self.state.read_text()), *services)
            else:
                # First worker, or the owner died (its reaper removed the services): start them anew.
                self.state.unlink(missing_ok=True)
                env = Environment(*services, **kwargs).start()
                fd = os.open(self.state, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    json.dump(env.snapshot(), out)
                (self.dir / "owner").write_text(str(os.getpid()))
                self.owner = True
            self._write_members(self._read_members() | {os.getpid()})
        return env

    def leave(self, env: Environment, wait: float = 600.0) -> None:
        with self._locked():
            self._write_members(self._read_members() - {os.getpid()})
        if not self.owner:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._locked():
                alive = {pid for pid in self._read_members() if pid_alive(pid)}
            if not alive:
                break
            time.sleep(0.1)
        env.stop()
        with contextlib.suppress(OSError):
            for path in (self.state, self.members, self.dir / "owner", self.dir / "lock"):
                path.unlink(missing_ok=True)
            self.dir.rmdir()

    @staticmethod
    def remove(run_id: str) -> None:
        """The controller's last word: remove the run's dir (what a killed owner could not)."""
        shutil.rmtree(Path(tempfile.gettempdir()) / f"svcenv-xdist-{os.getuid()}-{run_id}", ignore_errors=True)


# -- declaring custom descriptors ---------------------------------------------------------------


def environment_fixture(*services: Service) -> Any:
    """A session fixture for your own descriptors; assign it to ``svcenv`` in a conftest::

        from svcenv import Postgres
        from svcenv.pytest import environment_fixture

        svcenv = environment_fixture(Postgres(), Postgres(name="replica"))

    The plugin's fixtures (``postgres_service``, ``postgres_connection``, ...) then
    use the services with the default names from it.
    """
    if not services:
        raise ConfigurationError("environment_fixture needs at least one service descriptor")

    @pytest.fixture(scope="session", name="svcenv")
    def _svcenv(request: pytest.FixtureRequest) -> Environment:
        return request.config.stash[_manager_key].environment(services)

    return _svcenv


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def svcenv(request: pytest.FixtureRequest) -> Environment:
    """The session's environment: started on first use, shared by xdist workers."""
    return request.config.stash[_manager_key].environment()


def _handle(env: Environment, name: str) -> Any:
    if name not in env:
        pytest.fail(
            f"svcenv: the session environment has no {name!r} service (it has {list(env.services)}); "
            f"add it to svcenv_services or to environment_fixture(...)",
            pytrace=False,
        )
    return env[name]


@pytest.fixture(scope="session")
def postgres_service(svcenv: Environment) -> PostgresHandle:
    """The running Postgres (session-scoped handle)."""
    handle: PostgresHandle = _handle(svcenv, "postgres")
    return handle


@pytest.fixture(scope="session")
def redis_service(svcenv: Environment) -> RedisHandle:
    """The running Redis (session-scoped handle)."""
    handle: RedisHandle = _handle(svcenv, "redis")
    return handle


@pytest.fixture(scope="session")
def elasticsearch_service(svcenv: Environment) -> ElasticsearchHandle:
    """The running Elasticsearch (session-scoped handle)."""
    handle: ElasticsearchHandle = _handle(svcenv, "elasticsearch")
    return handle


@pytest.fixture(scope="session")
def svcenv_postgres_template(
    postgres_service: PostgresHandle, pytestconfig: pytest.Config
) -> Iterator[PostgresTemplate]:
    """The template database fresh test databases are cloned from (built once per worker)."""
    setup = pytestconfig.getini("svcenv_postgres_setup") or None
    if setup and setup.endswith(".sql") and not os.path.isabs(setup):
        setup = str(pytestconfig.rootpath / setup)
    prefetch = int(pytestconfig.getini("svcenv_postgres_prefetch") or 0)
    template = PostgresTemplate(postgres_service, setup=setup, prefetch=prefetch)
    template.build()
    yield template
    template.destroy()


@pytest.fixture
def _svcenv_fresh(
    svcenv_postgres_template: PostgresTemplate, postgres_service: PostgresHandle
) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    name, conn = svcenv_postgres_template.acquire()
    if conn is None:
        conn = postgres_service.connect(name)
    try:
        yield name, conn
    finally:
        svcenv_postgres_template.release(name, conn)


@pytest.fixture
def postgres_database(_svcenv_fresh: tuple[str, psycopg.Connection[Any]]) -> str:
    """The name of the test's fresh database, cloned from the template; dropped after the test."""
    return _svcenv_fresh[0]


@pytest.fixture
def postgres_connection(_svcenv_fresh: tuple[str, psycopg.Connection[Any]]) -> psycopg.Connection[Any]:
    """A psycopg connection to the test's own fresh database (closed and dropped after the test)."""
    return _svcenv_fresh[1]


@pytest.fixture(scope="session")
def _svcenv_rollback_database(svcenv_postgres_template: PostgresTemplate) -> Iterator[str]:
    name = svcenv_postgres_template.clone()
    yield name
    svcenv_postgres_template.drop(name)


@pytest.fixture(scope="session")
def _svcenv_rollback_state(
    postgres_service: PostgresHandle, _svcenv_rollback_database: str
) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    state: dict[str, psycopg.Connection[Any]] = {}
    yield state
    if "conn" in state:
        state["conn"].close()


@pytest.fixture
def postgres_transaction(
    postgres_service: PostgresHandle,
    _svcenv_rollback_database: str,
    _svcenv_rollback_state: dict[str, psycopg.Connection[Any]],
) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose work, commits included, is rolled back after the test.

    One connection per worker serves every such test (a transaction each), so a
    test pays no connect; a test that closes or breaks it gets a new one next time.
    """
    conn = _svcenv_rollback_state.get("conn")
    if conn is None or conn.closed or conn.broken:
        conn = _svcenv_rollback_state["conn"] = savepoint_connection(postgres_service, _svcenv_rollback_database)
    with rolled_back(conn):
        yield conn


@pytest.fixture
def redis_client(redis_service: RedisHandle, pytestconfig: pytest.Config) -> Iterator[redis.Redis]:
    """A client on this worker's logical database, flushed (FLUSHDB) before and after the test."""
    client = redis_service.client(db=redis_db_for_worker(_worker(pytestconfig)))
    claim_redis_db(client, redis_service.backend, redis_service.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


_prefix_counter = itertools.count(1)
_session_token = secrets.token_hex(3)


@pytest.fixture
def elasticsearch_prefix(pytestconfig: pytest.Config) -> str:
    """A per-test index prefix; indices under it are deleted after the test (with ``elasticsearch_client``)."""
    return f"t{_session_token}_{_worker(pytestconfig)}_{next(_prefix_counter)}_"


@pytest.fixture
def elasticsearch_client(
    elasticsearch_service: ElasticsearchHandle, elasticsearch_prefix: str
) -> Iterator[elasticsearch.Elasticsearch]:
    """An Elasticsearch client; indices named with ``elasticsearch_prefix`` are removed afterwards."""
    client = elasticsearch_service.client()
    try:
        yield client
    finally:
        delete_indices(client, elasticsearch_prefix)
        client.close()


@pytest.fixture
def svcenv_env_vars(
    svcenv: Environment, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Puts the environment's variables into ``os.environ`` for this test and returns them.

    With ``postgres_connection``/``postgres_database`` in the test, ``DATABASE_URL``
    and ``PGDATABASE`` point at the test's fresh database; with ``redis_client``,
    ``REDIS_URL`` points at the worker's logical database.
    """
    variables = svcenv.env_vars()
    if "_svcenv_fresh" in request.fixturenames and "postgres" in svcenv:
        database = request.getfixturevalue("_svcenv_fresh")[0]
        handle: PostgresHandle = svcenv["postgres"]  # type: ignore[assignment]
        variables.update(
            DATABASE_URL=handle.url_for(database), PGDATABASE=database, POSTGRES_URL=handle.url_for(database)
        )
    if "redis_client" in request.fixturenames and "redis" in svcenv:
        rhandle: RedisHandle = svcenv["redis"]  # type: ignore[assignment]
        variables.update(REDIS_URL=rhandle.url_for(redis_db_for_worker(_worker(request.config))))
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    return variables


# -- async twins (when pytest-asyncio is installed) ---------------------------------------------

if importlib.util.find_spec("pytest_asyncio") is not None:  # async fixtures need an async runner plugin
    import pytest_asyncio
    import redis.asyncio

    @pytest_asyncio.fixture
    async def postgres_async_connection(
        postgres_service: PostgresHandle, postgres_database: str
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An async psycopg connection to the test's own fresh database (as ``postgres_connection``)."""
        conn = await postgres_service.connect_async(postgres_database)
        try:
            yield conn
        finally:
            await conn.close()

    @pytest_asyncio.fixture
    async def redis_async_client(
        redis_service: RedisHandle, pytestconfig: pytest.Config
    ) -> AsyncIterator[redis.asyncio.Redis]:
        """An async client on this worker's logical database, flushed before and after (as ``redis_client``)."""
        client = redis_service.async_client(db=redis_db_for_worker(_worker(pytestconfig)))
        sync = redis_service.client(db=redis_db_for_worker(_worker(pytestconfig)))
        claim_redis_db(sync, redis_service.backend, redis_service.url)
        sync.close()
        await client.flushdb()
        try:
            yield client
        finally:
            await client.flushdb()
            await client.aclose()
