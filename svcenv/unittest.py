"""unittest support: an environment per test class or per module, and per-test isolation.

One environment per class::

    from svcenv import Postgres, Redis
    from svcenv.unittest import ServiceTestCase

    class OrdersTest(ServiceTestCase):
        services = (Postgres(), Redis())
        postgres_setup = "schema.sql"  # resolved next to this module

        def setUp(self):
            self.conn = self.fresh_database()  # a clone of the class's template, dropped afterwards
            self.cache = self.clean_redis()    # FLUSHDB before and after

One environment per module, shared by the module's classes (their ``services`` stay empty)::

    def setUpModule():
        start_module_environment(Postgres(), Redis())

    def tearDownModule():  # needed only under pytest, which runs no module cleanups
        stop_module_environment()

Teardown is registered with ``addClassCleanup`` / ``addModuleCleanup``, so it
also runs when a ``setUpClass`` or ``setUpModule`` fails after the start.
psycopg and redis are imported only when a helper needs them.
"""

from __future__ import annotations

import os
import sys
import unittest
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .backends.base import Backend
from .descriptors import Postgres, Redis, Service
from .environment import Environment
from .errors import ConfigurationError
from .handles import PostgresHandle, RedisHandle, ServiceHandle, env_prefix
from .isolation import PostgresTemplate, Setup, claim_redis_db, redis_db_for_worker, rollback_connection

if TYPE_CHECKING:
    import psycopg
    import redis

__all__ = ["ServiceTestCase", "module_environment", "start_module_environment", "stop_module_environment"]

RUNNER_LABEL = {"svcenv.runner": "unittest"}
_module_environments: dict[str, Environment] = {}


def start_module_environment(
    *services: Service,
    backend: str | Backend | None = None,
    timeout: float | None = None,
    labels: Mapping[str, str] | None = None,
    module: str | None = None,
) -> Environment:
    """Start an environment for a test module; call it from ``setUpModule``.

    The environment is stopped by ``unittest.addModuleCleanup``, after the
    module's last test, also when ``setUpModule`` fails later on. Test classes
    of the module (``module``, default: the caller's module) that declare no
    ``services`` use it as ``cls.env``.

    pytest runs ``setUpModule`` and ``tearDownModule`` but no module cleanups:
    for tests that pytest may run, call :func:`stop_module_environment` in
    ``tearDownModule`` and start the environment last in ``setUpModule``.
    """
    name = module if module is not None else _caller_module()
    if module_environment(name) is not None:
        raise ConfigurationError(f"module {name} already runs an environment; stop it first")
    env = Environment(*services, backend=backend, timeout=timeout, labels={**RUNNER_LABEL, **(labels or {})})
    unittest.addModuleCleanup(_stop_module_environment, name, env)
    env.start()
    _module_environments[name] = env
    return env


def stop_module_environment(module: str | None = None) -> None:
    """Stop the environment :func:`start_module_environment` started for ``module`` (default: the caller's).

    Call it from ``tearDownModule`` (define the function; do not assign this one
    to the name, or the caller's module is unittest's). Nothing happens if no
    environment runs; the module cleanup may call it again.
    """
    name = module if module is not None else _caller_module()
    env = _module_environments.get(name)
    if env is not None:
        _stop_module_environment(name, env)


def _caller_module() -> str:
    return str(sys._getframe(2).f_globals.get("__name__", ""))


def _stop_module_environment(module: str, env: Environment) -> None:
    if _module_environments.get(module) is env:
        del _module_environments[module]
    env.stop()


def module_environment(module: str) -> Environment | None:
    """The running environment :func:`start_module_environment` started for ``module``, if any."""
    env = _module_environments.get(module)
    return env if env is not None and env.state == "running" else None


class ServiceTestCase(unittest.TestCase):
    """A ``TestCase`` whose class runs the services in ``services``, as ``cls.env``.

    ``setUpClass`` starts ``Environment(*services)`` and registers its ``stop``
    with ``addClassCleanup``: the services are removed after the class's last
    test, and also when a subclass's ``setUpClass`` fails after ``super()``.
    A class without ``services`` uses the environment its module started with
    :func:`start_module_environment`. Subclasses that override ``setUpClass``
    must call ``super().setUpClass()``. The class cooperates through ``super()``,
    so it can be combined with other ``TestCase`` subclasses.

    Per-test helpers (call them in ``setUp`` or in a test; cleanups are registered
    with ``addCleanup`` and run even when the test fails):
    :meth:`fresh_database`, :meth:`rollback_connection`, :meth:`clean_redis`,
    :meth:`use_env_vars`.
    """

    services: ClassVar[tuple[Service, ...]] = ()
    """The services this class runs; empty: use the module's environment."""
    labels: ClassVar[Mapping[str, str]] = {}
    """Extra labels for the class's containers."""
    services_backend: ClassVar[str | Backend | None] = None
    """Where the services run (default: as ``Environment`` chooses: per descriptor, ``SVCENV_BACKEND``, auto)."""
    services_timeout: ClassVar[float | None] = None
    """Readiness deadline per service in seconds (default: per kind)."""
    postgres_setup: ClassVar[Setup] = None
    """Prepares the template database that :meth:`fresh_database` clones: a callable given a
    connection, a ``.sql`` file (a relative path is resolved next to the module that sets it),
    SQL text, or ``"package.module:function"``."""

    env: ClassVar[Environment]
    """The running environment (set by ``setUpClass``)."""

    _svcenv_templates: ClassVar[dict[str, PostgresTemplate]]
    _svcenv_rollback_databases: ClassVar[dict[str, str]]

    @classmethod
    def setUpClass(cls) -> None:
        """Start the class's services (or find the module's environment)."""
        super().setUpClass()
        cls._svcenv_templates = {}
        cls._svcenv_rollback_databases = {}
        if not cls.services:
            env = module_environment(cls.__module__)
            if env is None:
                raise ConfigurationError(
                    f"{cls.__qualname__} declares no services and module {cls.__module__} started no "
                    "environment: set `services = (Postgres(), ...)` or call start_module_environment() "
                    "in setUpModule"
                )
            cls.env = env
            return
        env = Environment(
            *cls.services,
            backend=cls.services_backend,
            timeout=cls.services_timeout,
            labels={**RUNNER_LABEL, **cls.labels},
        )
        cls.addClassCleanup(env.stop)
        env.start()
        cls.env = env

    # -- Postgres -------------------------------------------------------------------------------

    def _postgres(self, service: Postgres | PostgresHandle | str | None) -> PostgresHandle:
        if isinstance(service, PostgresHandle):
            return service
        if service is None:
            if "postgres" in self.env:
                service = "postgres"
            else:
                found = [h for h in self.env if isinstance(h, PostgresHandle)]
                if len(found) != 1:
                    raise ConfigurationError(
                        f"name the Postgres service: the environment has {len(found)} of them, "
                        f"and none is named 'postgres' ({list(self.env.services)})"
                    )
                return found[0]
        handle = self.env[service]
        if not isinstance(handle, PostgresHandle):
            raise ConfigurationError(f"service {handle.name!r} is not a Postgres service")
        return handle

    @classmethod
    def _postgres_setup(cls) -> Setup:
        setup = cls.postgres_setup
        if isinstance(setup, str) and setup.endswith(".sql") and "\n" not in setup and not os.path.isabs(setup):
            owner = next((k for k in cls.__mro__ if "postgres_setup" in vars(k)), cls)
            module_file = getattr(sys.modules.get(owner.__module__), "__file__", None)
            if module_file:
                return str(Path(module_file).resolve().parent / setup)
        return setup

    def postgres_template(self, service: Postgres | PostgresHandle | str | None = None) -> PostgresTemplate:
        """The class's template database on ``service``, built on first use with ``postgres_setup``.

        It is dropped by a class cleanup, after the class's last test.
        """
        cls = type(self)
        handle = self._postgres(service)
        template = cls._svcenv_templates.get(handle.name)
        if template is None:
            template = PostgresTemplate(handle, setup=cls._postgres_setup())
            cls.addClassCleanup(template.destroy)
            template.build()
            cls._svcenv_templates[handle.name] = template
        return template

    def fresh_database_name(self, service: Postgres | PostgresHandle | str | None = None) -> str:
        """Create a database cloned from the class's template; it is dropped after the test."""
        template = self.postgres_template(service)
        name = template.clone()
        self.addCleanup(template.drop, name)
        self._svcenv_database = (template.handle, name)
        return name

    def fresh_database(
        self, service: Postgres | PostgresHandle | str | None = None, **connect_kwargs: Any
    ) -> psycopg.Connection[Any]:
        """A connection to a fresh database cloned from the class's template.

        The connection is closed and the database dropped (its other connections
        terminated) after the test, even a failed one. ``connect_kwargs`` go to
        ``psycopg.connect``.
        """
        name = self.fresh_database_name(service)
        conn = self._postgres(service).connect(name, **connect_kwargs)
        self.addCleanup(conn.close)
        return conn

    def rollback_connection(
        self, service: Postgres | PostgresHandle | str | None = None, dbname: str | None = None
    ) -> psycopg.Connection[Any]:
        """A connection whose work, commits included, is rolled back after the test.

        It connects to ``dbname`` or else to one clone of the class's template that
        the class's tests share (dropped after the class). Not for code that opens
        its own connections or a pool: use :meth:`fresh_database` there.
        """
        handle = self._postgres(service)
        if dbname is None:
            cls = type(self)
            dbname = cls._svcenv_rollback_databases.get(handle.name)
            if dbname is None:
                template = self.postgres_template(handle)
                dbname = template.clone()
                cls.addClassCleanup(template.drop, dbname)
                cls._svcenv_rollback_databases[handle.name] = dbname
        context = rollback_connection(handle, dbname)
        conn = context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)
        return conn

    # -- Redis ----------------------------------------------------------------------------------

    def clean_redis(self, db: int | None = None, service: Redis | RedisHandle | str | None = None) -> redis.Redis:
        """A client on logical database ``db`` (default: 1, or the xdist worker's), flushed before and after.

        Only that database is flushed (``FLUSHDB``, never ``FLUSHALL``); the client
        is closed after the test. On a server svcenv did not start (the external
        backend) the database must be empty when svcenv first uses it.
        """
        handle = service if isinstance(service, RedisHandle) else self.env[service or "redis"]
        if not isinstance(handle, RedisHandle):
            raise ConfigurationError(f"service {handle.name!r} is not a Redis service")
        db = redis_db_for_worker() if db is None else db
        client = handle.client(db=db)
        self.addCleanup(client.close)
        claim_redis_db(client, handle.backend, handle.url)  # on an external server: only an empty db
        self.addCleanup(client.flushdb)
        client.flushdb()
        self._svcenv_redis = (handle, db)
        return client

    # -- environment variables ------------------------------------------------------------------

    def use_env_vars(self, **overrides: str) -> dict[str, str]:
        """Put ``env.env_vars()`` into ``os.environ`` for this test and return them.

        If the test made a fresh database, ``<NAME>_URL`` of its Postgres points at it,
        and so do ``DATABASE_URL`` and ``PGDATABASE`` when that Postgres provides them;
        likewise ``REDIS_URL`` for the database of :meth:`clean_redis`. ``overrides`` win.
        The previous values come back after the test.
        """
        variables = self.env.env_vars()
        database = getattr(self, "_svcenv_database", None)
        if database is not None:
            handle, name = database
            _redirect(variables, handle, handle.url_for(name), "DATABASE_URL", PGDATABASE=name)
        redis_db = getattr(self, "_svcenv_redis", None)
        if redis_db is not None:
            rhandle, db = redis_db
            _redirect(variables, rhandle, rhandle.url_for(db), "REDIS_URL")
        variables.update(overrides)
        saved = {key: os.environ.get(key) for key in variables}
        self.addCleanup(_restore_environ, saved)
        os.environ.update(variables)
        return variables


def _redirect(variables: dict[str, str], handle: ServiceHandle, url: str, conventional: str, **more: str) -> None:
    """Point ``<NAME>_URL`` of ``handle`` at ``url``; ``conventional`` (and ``more``) too if ``handle`` sets it."""
    variables[f"{env_prefix(handle.name)}_URL"] = url
    if variables.get(conventional) == handle.url:  # the kind's primary service
        variables.update({conventional: url, **more})


def _restore_environ(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
