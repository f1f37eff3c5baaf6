"""svcenv under pytest-django: the Django test databases on the session's services, migrated once per run.

Registered by the plugin only when pytest-django is active (and ``svcenv_django``
is not false); importing this module imports nothing of Django, which is loaded
only when a fixture or a hook finds Django's settings configured.

* **Which entries.** Each ``DATABASES`` entry whose backend svcenv serves: vendor
  ``postgresql`` (``django.db.backends.postgresql``, PostGIS and other backends
  built on it) on the session's ``postgres`` service, vendor ``mysql`` on its
  ``mysql`` service. Its ``HOST``/``PORT``/``USER``/``PASSWORD`` are pointed at the
  service (MySQL as root: Django creates the test databases) and the ``OPTIONS``
  that name another server or its TLS (``service``, ``passfile``, ``ssl*``) are
  dropped; ``NAME``, ``TEST`` and the rest stay. A selected test that uses such an
  entry (``db``, ``transactional_db``, ``live_server``, ``django_db(databases=...)``)
  makes the run start that service. ``TEST: {"MIRROR": ...}`` entries follow their
  primary, as in Django.
* **Once per run.** A served Postgres entry is migrated once, into a template
  database ``svcenv_dj_<entry>_<fingerprint>`` (the fingerprint hashes the migration
  files, the installed apps, the models of apps without migrations, the entry's
  ``TEST`` settings and ``--no-migrations``); xdist workers build it under the run's
  shared lock, the first one runs the migrations, and every worker's test database
  (``test_<NAME>_gwN``, pytest-django's name) is a ``CREATE DATABASE … TEMPLATE``
  clone of it. MySQL has no template databases: its entries get Django's own
  per-worker creation, on the session's server.
* **pytest-django's meaning stays.** ``db``/``transactional_db``/``django_db(...)``
  work as before (only the creation differs); ``--reuse-db`` keeps the test
  databases and the template after the run and reuses a kept test database whose
  template is still the current one (a changed migration re-clones it); ``--create-db``
  rebuilds the template (once for the run) and the test databases.
* **Caches.** ``CACHES`` entries of ``django.core.cache.backends.redis.RedisCache``
  (or django-redis) point at the worker's logical db of the session's ``redis``
  (``redis_db_for_worker``; flushed once when pointed), when the session has one: a
  test that uses a served database brings Redis into the session if ``CACHES`` has
  such an entry; a test that uses only the cache says ``@pytest.mark.svcenv("redis")``.

A project's own ``django_db_setup`` (conftest) overrides this one, as it overrides
pytest-django's.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._session import _descriptor, worker
from .fixtures import MANAGER

if TYPE_CHECKING:
    from ..environment import Environment
    from ..handles import PostgresHandle, RedisHandle
    from ._session import Manager

__all__ = ["POSTGRES_ENGINES", "REDIS_CACHES", "database_services", "django_db_setup"]

POSTGRES_ENGINES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
MYSQL_ENGINES = ("django.db.backends.mysql", "django.contrib.gis.db.backends.mysql")
SERVICE_OF_VENDOR = {"postgresql": "postgres", "mysql": "mysql"}
"""A backend's ``vendor`` -> the svcenv service that serves it."""
REDIS_CACHES = ("django.core.cache.backends.redis.RedisCache", "django_redis.cache.RedisCache")
DROPPED_OPTIONS = ("service", "passfile", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "ssl")
"""``OPTIONS`` that would send a served entry to another server (or demand TLS of the test server)."""
TEMPLATE_PREFIX = "svcenv_dj_"
STATE = pytest.StashKey["DjangoState"]()


def _configured() -> bool:
    """Django's settings are configured (pytest-django's own test, which imports no Django by itself)."""
    from pytest_django.lazy_django import django_settings_is_configured

    return bool(django_settings_is_configured())


def _service_of_engine(engine: str) -> str | None:
    """The svcenv service that serves a ``DATABASES`` ENGINE, or None."""
    if engine in POSTGRES_ENGINES:
        return "postgres"
    if engine in MYSQL_ENGINES:
        return "mysql"
    try:  # a third-party backend built on one of Django's: its class says which vendor
        from importlib import import_module

        vendor = getattr(import_module(f"{engine}.base").DatabaseWrapper, "vendor", "")
    except Exception:
        return None
    return SERVICE_OF_VENDOR.get(vendor)


def database_services() -> dict[str, str]:
    """``DATABASES`` alias -> the service that serves it (only the served ones), from the settings."""
    from django.conf import settings

    served = {}
    for alias, entry in settings.DATABASES.items():
        service = _service_of_engine(str(entry.get("ENGINE", "")))
        if service is not None:
            served[alias] = service
    return served


def _redis_caches() -> list[str]:
    from django.conf import settings

    return [alias for alias, entry in settings.CACHES.items() if entry.get("BACKEND") in REDIS_CACHES]


def _aliases_of(item: pytest.Item) -> Iterable[str]:
    """The ``DATABASES`` aliases a test uses (pytest-django's own rule)."""
    try:
        from pytest_django.fixtures import _get_databases_for_test
    except ImportError:  # an older pytest-django: the documented rule, without TestCase classes
        marker = item.get_closest_marker("django_db")
        names = set(getattr(item, "fixturenames", ()))
        if marker is None and not names & {"db", "transactional_db", "live_server"}:
            return ()
        databases = marker.kwargs.get("databases") if marker is not None else None
        if databases == "__all__":
            from django.db import connections

            return list(connections)
        return databases or ("default",)
    return list(_get_databases_for_test(item)[0])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Tests that use a served database need its service (and Redis, with a Redis cache): tell the manager
    before it works out the rest (plugin.py's hook runs after this one)."""
    if not _configured():
        return
    run: Manager | None = session.config.stash.get(MANAGER, None)
    if run is None:
        return
    served = database_services()
    if not served:
        return
    redis = bool(_redis_caches())
    for item in session.items:
        names = {served[alias] for alias in _aliases_of(item) if alias in served}
        if names and redis:
            names.add("redis")
        for name in names:
            run.needed.add(name)
            run.known.setdefault(name, _descriptor(name))  # the kind's default unless one is configured


@dataclass
class DjangoState:
    """What this process did to Django's settings and on the servers."""

    pointed: set[str] = field(default_factory=set)
    """``DATABASES`` aliases pointed at the session's services."""
    caches_pointed: bool = False
    """Whether the Redis ``CACHES`` entries point at the session's Redis."""
    templates: dict[str, str] = field(default_factory=dict)
    """Template databases ready in this process, by alias."""


def _state(config: pytest.Config) -> DjangoState:
    state = config.stash.get(STATE, None)
    if state is None:
        state = config.stash[STATE] = DjangoState()
    return state


# -- pointing the settings ----------------------------------------------------------------------------


def point_databases(env: Environment, state: DjangoState) -> None:
    """Point each served ``DATABASES`` entry whose service ``env`` has at that service (once per process)."""
    from django.conf import settings
    from django.db import connections

    served = database_services()
    for alias, service in served.items():
        if service not in env or alias in state.pointed:
            continue
        handle: Any = env[service]  # a PostgresHandle or a MySQLHandle
        if service == "mysql" and handle.user == "root":
            user, password = handle.user, handle.password
        elif service == "mysql":
            if not handle.root_password:
                pytest.fail(
                    f"svcenv: DATABASES[{alias!r}] is MySQL, and Django creates test databases, which needs the "
                    "root password, which svcenv does not know for this server (an external one): give root's "
                    "credentials in its URL",
                    pytrace=False,
                )
            user, password = "root", handle.root_password
        else:
            user, password = handle.user, handle.password
        fields = {"HOST": handle.host, "PORT": str(handle.port), "USER": user, "PASSWORD": password}
        entries = [settings.DATABASES[alias]]
        connection = connections[alias]
        if connection.settings_dict is not entries[0]:
            entries.append(connection.settings_dict)
        connection.close()
        for entry in entries:
            entry.update(fields)
            if not entry.get("NAME"):
                entry["NAME"] = "django"
            options = entry.get("OPTIONS") or {}
            for key in DROPPED_OPTIONS:
                options.pop(key, None)
        state.pointed.add(alias)


def point_caches(env: Environment, config: pytest.Config, state: DjangoState) -> None:
    """Point the Redis-backed ``CACHES`` entries at this worker's logical db of the session's Redis."""
    if "redis" not in env or state.caches_pointed:
        return
    from django.conf import settings
    from django.core.cache import caches

    from ..isolation import claim_redis_db, flush_redis_db, redis_db_for_worker

    handle: RedisHandle = env["redis"]  # type: ignore[assignment]
    db = redis_db_for_worker(worker(config))
    aliases = _redis_caches()
    if aliases:
        client = handle.client(db=db)
        try:
            claim_redis_db(client, handle.backend, handle.url)
        finally:
            client.close()
        flush_redis_db(handle, db)
    for alias in aliases:
        entry = settings.CACHES[alias]
        entry["LOCATION"] = handle.url_for(db)
        options = entry.get("OPTIONS") or {}
        for key in ("password", "username", "db", "PASSWORD", "USERNAME", "DB"):
            options.pop(key, None)
        made = getattr(caches._connections, alias, None)  # a cache made before: made again from the new settings
        if made is not None:
            with suppress(Exception):
                made.close()
            with suppress(AttributeError):
                del caches[alias]
    state.caches_pointed = True


@pytest.fixture(autouse=True)
def _svcenv_django_caches(request: pytest.FixtureRequest) -> None:
    """A test that does not use the database but runs with Redis in the session gets the cache pointed too."""
    state = request.config.stash.get(STATE, None)
    if state is not None and state.caches_pointed:
        return
    run: Manager | None = request.config.stash.get(MANAGER, None)
    if run is None or "redis" not in run.needed or not _configured() or not _redis_caches():
        return
    try:
        env = request.getfixturevalue("svcenv")
    except (pytest.skip.Exception, pytest.fail.Exception):
        return  # no backend: the tests that need Redis say so themselves
    point_caches(env, request.config, _state(request.config))


# -- the template -----------------------------------------------------------------------------------


def fingerprint(connection: Any, use_migrations: bool) -> str:
    """A hash of what the migrated schema of ``connection``'s database depends on."""
    import django
    from django.apps import apps
    from django.conf import settings
    from django.db.migrations.loader import MigrationLoader

    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        digest.update(repr(parts).encode())
        digest.update(b"\0")

    test = connection.settings_dict.get("TEST") or {}
    add("django", django.get_version(), connection.alias, connection.settings_dict.get("NAME"), use_migrations)
    add("test", sorted((k, str(v)) for k, v in test.items() if k not in ("NAME", "MIRROR", "DEPENDENCIES")))
    add("apps", [(app.label, app.name) for app in apps.get_app_configs()])
    add("routers", [r if isinstance(r, str) else type(r).__qualname__ for r in settings.DATABASE_ROUTERS])
    migrated: set[str] = set()
    if use_migrations and test.get("MIGRATE", True) is not False:
        loader = MigrationLoader(None, ignore_no_migrations=True)
        migrated = set(loader.migrated_apps)
        for key, migration in sorted(loader.disk_migrations.items()):
            module = sys.modules.get(type(migration).__module__)
            path = getattr(module, "__file__", None)
            try:
                with open(str(path), "rb") as source:
                    add("migration", key, hashlib.sha256(source.read()).hexdigest())
            except OSError:
                add("migration", key, type(migration).__module__)
    for app in apps.get_app_configs():
        if app.label in migrated:
            continue
        for model in app.get_models(include_auto_created=True):  # synced from the models themselves
            fields = [
                (f.name, type(f).__qualname__, f.column, f.null, f.unique, getattr(f, "max_length", None))
                for f in model._meta.local_fields
            ]
            add("model", model._meta.label, model._meta.db_table, fields)
    return digest.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class PostgresTemplates:
    """Builds (once per run) and clones the template databases of the served Postgres entries."""

    def __init__(self, request: pytest.FixtureRequest, env: Environment, state: DjangoState) -> None:
        self.config = request.config
        self.run: Manager = request.config.stash[MANAGER]
        self.handle: PostgresHandle = env["postgres"]  # type: ignore[assignment]
        self.state = state
        self.verbosity = int(request.config.option.verbose)

    def _log(self, connection: Any, message: str) -> None:
        if self.verbosity >= 1:
            connection.creation.log(message)

    def template(self, connection: Any, use_migrations: bool, rebuild: bool) -> str:
        """The name of ``connection``'s template: adopted if built (this run, or kept and still current), else
        built now, its migrations run once, under the run's lock (xdist) and a server-wide advisory lock."""
        alias = connection.alias
        if alias in self.state.templates:
            return self.state.templates[alias]
        entry = _key(str(self.config.rootpath), alias, connection.settings_dict.get("NAME"))[:8]
        prefix = f"{TEMPLATE_PREFIX}{entry}_"
        name = prefix + fingerprint(connection, use_migrations)[:16]
        built_mark, lock = self._coordination(name)
        with lock, self.handle.connect(autocommit=True) as admin:
            lock_id = int(_key("svcenv-django", name)[:15], 16)
            admin.execute(b"SELECT pg_advisory_lock(%s)", (lock_id,))
            try:
                row = admin.execute(b"SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)).fetchone()
                complete = row is not None and not row[0]
                rebuilt = built_mark is not None and built_mark.exists()
                if complete and (not rebuild or rebuilt):
                    self._log(connection, f"Using svcenv template {name} for alias {alias!r}...")
                    self.run.summary.append(f"django: {alias!r} cloned from template {name} (built before)")
                else:
                    self._build(admin, connection, name, exists=row is not None)
                    if built_mark is not None:
                        built_mark.touch()
                    self._drop_stale(admin, prefix, name)
            finally:
                admin.execute(b"SELECT pg_advisory_unlock(%s)", (lock_id,))
        self.state.templates[alias] = name
        return name

    def _coordination(self, name: str) -> tuple[Path | None, Any]:
        """Under xdist: a mark that ``name`` was (re)built on this server in this run, and the run's lock for it.

        In the run's basetemp (private to the user, as the environment's share), so also with
        ``--svcenv-reuse`` or ``svcenv_xdist = per-worker``, where the workers share no environment.
        """
        if not self.run.xdist:
            return None, nullcontext()
        from .._util import file_lock
        from ._share import private_dir

        where = private_dir(self.run.run_dir() / "svcenv-django")
        key = f"{name}-{_key(self.handle.host, self.handle.port)[:8]}"
        return where / f"{key}.built", file_lock(where / f"{key}.lock")

    def _build(self, admin: Any, connection: Any, name: str, exists: bool) -> None:
        from ..isolation.postgres_reset import drop_database
        from ..isolation.postgres_setup import ident

        if exists:  # half-built (its builder died) or --create-db
            drop_database(admin, name)
        started = time.perf_counter()
        test = connection.settings_dict.setdefault("TEST", {})
        saved = test.get("NAME")
        test["NAME"] = name
        try:
            self._log(connection, f"Building svcenv template {name} for alias {connection.alias!r} (migrations)...")
            connection.creation.create_test_db(
                verbosity=self.verbosity, autoclobber=True, serialize=False, keepdb=False
            )
        finally:
            test["NAME"] = saved
            connection.close()
        # No one may connect to a template: CREATE DATABASE … TEMPLATE needs that (and it marks it complete).
        admin.execute(f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS false".encode())
        took = time.perf_counter() - started
        self.run.summary.append(f"django: {connection.alias!r} migrated once into template {name} ({took:.2f}s)")

    def _drop_stale(self, admin: Any, prefix: str, current: str) -> None:
        """Templates of the same entry with another fingerprint (kept by --reuse-db runs) go."""
        from ..isolation.postgres_reset import drop_database

        rows = admin.execute(
            b"SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s AND NOT datallowconn",
            (prefix, current),
        ).fetchall()
        for (stale,) in rows:
            with suppress(Exception):  # another run may be cloning it right now: it stays for then
                drop_database(admin, stale, patience=0)

    def create_test_db(self, connection: Any, use_migrations: bool, keepdb: bool, rebuild: bool) -> str:
        """What Django's ``create_test_db`` does, with a clone of the template instead of the migrations."""
        from django.conf import settings

        from ..isolation.postgres_reset import drop_database
        from ..isolation.postgres_setup import ident

        test_name = connection.creation._get_test_db_name()
        template = self.template(connection, use_migrations, rebuild)
        mark = f"svcenv-django {template}"
        with self.handle.connect(autocommit=True) as admin:
            row = admin.execute(
                b"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (test_name,)
            ).fetchone()
            if keepdb and row is not None and row[0] == mark:
                self._log(connection, f"Using existing test database for alias {connection.alias!r} ({test_name})...")
            else:
                if row is not None:
                    drop_database(admin, test_name)
                self._log(connection, f"Cloning test database for alias {connection.alias!r} ({test_name})...")
                admin.execute(f"CREATE DATABASE {ident(test_name)} TEMPLATE {ident(template)}".encode())
                admin.execute(f"COMMENT ON DATABASE {ident(test_name)} IS {_literal(mark)}".encode())
        connection.close()
        settings.DATABASES[connection.alias]["NAME"] = test_name
        connection.settings_dict["NAME"] = test_name
        connection.ensure_connection()
        return str(test_name)

    def drop_templates(self) -> None:
        """Drop this process's templates (the run's last word, unless --reuse-db keeps them)."""
        from ..isolation.postgres_reset import drop_database

        names = set(self.state.templates.values())
        if not names:
            return
        with self.handle.connect(autocommit=True) as admin:
            for name in names:
                drop_database(admin, name)
        self.state.templates.clear()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def setup_databases(
    templates: PostgresTemplates | None,
    aliases: Iterable[str],
    serialized_aliases: Iterable[str] | None,
    *,
    verbosity: int,
    use_migrations: bool,
    keepdb: bool,
    rebuild: bool,
) -> list[tuple[Any, str, bool]]:
    """Django's ``setup_databases`` (same mirrors, same order, same result for ``teardown_databases``),
    each served Postgres database cloned from its template."""
    from django.db import connections
    from django.test.utils import get_unique_databases_and_mirrors

    postgres = {alias for alias, service in database_services().items() if service == "postgres"}
    serialized = None if serialized_aliases is None else set(serialized_aliases)
    test_databases, mirrored_aliases = get_unique_databases_and_mirrors(set(aliases))
    old_names: list[tuple[Any, str, bool]] = []
    serialize = []
    for db_name, group in test_databases.values():
        first = None
        for alias in group:
            connection = connections[alias]
            old_names.append((connection, db_name, first is None))
            if first is None:
                first = alias
                if templates is not None and alias in postgres:
                    templates.create_test_db(connection, use_migrations, keepdb, rebuild)
                else:
                    connection.creation.create_test_db(
                        verbosity=verbosity, autoclobber=True, keepdb=keepdb, serialize=False
                    )
                if serialized is None or alias in serialized:
                    serialize.append(connection)
            else:
                connection.creation.set_as_test_mirror(connections[first].settings_dict)
    for alias, mirror in mirrored_aliases.items():
        connections[alias].creation.set_as_test_mirror(connections[mirror].settings_dict)
    for connection in serialize:
        connection._test_serialized_contents = connection.creation.serialize_db_to_string()
    return old_names


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_use_migrations: bool,
    django_db_keepdb: bool,
    django_db_createdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """pytest-django's ``django_db_setup`` on svcenv's services: served entries pointed at the session's
    service, each Postgres test database cloned from a template migrated once per run (module doc)."""
    from django.test.utils import teardown_databases

    try:
        from pytest_django.fixtures import _get_databases_for_setup
    except ImportError:  # an older pytest-django
        _get_databases_for_setup = None  # type: ignore[assignment]

    verbosity = int(request.config.option.verbose)
    if _get_databases_for_setup is not None:
        aliases, serialized_aliases = _get_databases_for_setup(request.session.items)
    else:
        from django.db import connections

        aliases, serialized_aliases = set(connections), None
    served = database_services()
    state = _state(request.config)
    templates = None
    if {alias for alias in aliases if alias in served} or _redis_caches():
        run: Manager = request.config.stash[MANAGER]
        wanted = {served[alias] for alias in aliases if alias in served}
        env = request.getfixturevalue("svcenv") if wanted or "redis" in run.needed else None
        if env is not None:
            missing = sorted(wanted - set(env.services))
            if missing:
                pytest.fail(
                    f"svcenv: DATABASES entries {sorted(a for a in aliases if served.get(a) in missing)} need the "
                    f"{missing} service(s), which the session environment lacks (it has {list(env.services)}); add "
                    "them to it, or set svcenv_django = false to leave DATABASES alone",
                    pytrace=False,
                )
            point_databases(env, state)
            point_caches(env, request.config, state)
            if "postgres" in env and "postgres" in wanted:
                templates = PostgresTemplates(request, env, state)
                if not django_db_keepdb:
                    run.before_stop.append(templates.drop_templates)  # the share's owner: after all workers
    if not django_db_use_migrations:
        from pytest_django.fixtures import _disable_migrations

        _disable_migrations()
    keepdb = django_db_keepdb and not django_db_createdb
    with django_db_blocker.unblock():
        old_config = setup_databases(
            templates,
            aliases,
            serialized_aliases,
            verbosity=verbosity,
            use_migrations=django_db_use_migrations,
            keepdb=keepdb,
            rebuild=django_db_createdb,
        )
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            try:
                teardown_databases(old_config, verbosity=verbosity)
            except Exception as exc:
                request.node.warn(pytest.PytestWarning(f"Error when trying to teardown test databases: {exc!r}"))
