"""Handles: what a test holds for a running service (address, credentials, clients).

Client libraries are imported only when a factory is called, so ``import svcenv``
stays light. No ``repr`` here shows a password or a URL that contains one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._util import env_prefix
from .errors import ConfigurationError

if TYPE_CHECKING:
    import elasticsearch
    import psycopg
    import redis
    import redis.asyncio

    from .backends.base import Instance
    from .descriptors import Elasticsearch, Postgres, Redis, Resolved, Service

__all__ = ["DatabaseHandle", "ElasticsearchHandle", "PostgresHandle", "RedisHandle", "ServiceHandle", "env_prefix"]


class ServiceHandle:
    """A running service: where it listens, how it runs, and its log."""

    def __init__(self, resolved: Resolved, instance: Instance) -> None:
        self._resolved = resolved
        self._instance = instance
        self._scans: dict[str, tuple[object | None, int, str]] = {}
        self._scan_lock = threading.Lock()

    # -- identity and address ----------------------------------------------------------------

    @property
    def descriptor(self) -> Service:
        """The descriptor this service was started from."""
        return self._resolved.service

    @property
    def name(self) -> str:
        return self._resolved.service.name

    @property
    def backend(self) -> str:
        """Which backend runs the service (``"docker"``, ...)."""
        return self._instance.backend

    @property
    def id(self) -> str:
        """The backend's id of the service (container id, pid, ...)."""
        return self._instance.id

    @property
    def image(self) -> str:
        return self._resolved.image

    @property
    def host(self) -> str:
        """The address to connect to (127.0.0.1 for a local engine)."""
        return self._instance.host

    @property
    def ports(self) -> Mapping[int, int]:
        """Container port -> published host port."""
        return dict(self._instance.ports)

    @property
    def port(self) -> int:
        """The published host port of the service's first port."""
        return self.port_for(None)

    def port_for(self, container_port: int | None) -> int:
        """The published host port for ``container_port`` (``None``: the first port)."""
        ports = self._instance.ports
        if container_port is None:
            if not self._resolved.ports:
                raise ConfigurationError(f"service {self.name!r} declares no ports")
            container_port = self._resolved.ports[0]
        try:
            return ports[container_port]
        except KeyError:
            raise ConfigurationError(
                f"service {self.name!r} does not publish port {container_port}; it publishes {sorted(ports)}"
            ) from None

    @property
    def url(self) -> str:
        """``scheme://host:port`` of the first port (kinds add credentials and paths)."""
        return self._url_at(self.host, self.port)

    def _url_at(self, host: str, port: int) -> str:
        """:attr:`url` with another address (kinds add credentials and paths)."""
        return f"{self._connection('scheme', self._scheme())}://{host}:{port}"

    def _scheme(self) -> str:
        """The descriptor's ``scheme``; left at ``tcp`` on a service probed over HTTP, the probe's."""
        scheme = self.descriptor.scheme
        if scheme == "tcp":
            from .probes import HTTP, AllOf

            probe = self.descriptor.readiness_probe
            http = [p for p in (probe.probes if isinstance(probe, AllOf) else (probe,)) if isinstance(p, HTTP)]
            if http:
                return http[0].scheme
        return scheme

    # -- the address inside the environment (other services of it connect here) ---------------

    def _client_address(self, container_port: int | None = None) -> tuple[str, int]:
        """Where svcenv's own clients connect: straight to the container when its backend found a
        direct route there (no port proxy in between) and it answers there now, else :attr:`host`
        and the published port."""
        port = container_port if container_port is not None else (self._resolved.ports or (None,))[0]
        direct = None if port is None else self._instance.direct_address(port)
        if direct is not None and port is not None:
            return direct, port
        return self.host, self.port_for(container_port)

    @property
    def internal_host(self) -> str:
        """Where the environment's other services reach it: on Docker its service name (on the
        environment's network), elsewhere :attr:`host`."""
        return self._instance.internal_host

    @property
    def internal_port(self) -> int:
        """The port of the service's first port on :attr:`internal_host` (on Docker: the container port)."""
        return self.internal_port_for(None)

    def internal_port_for(self, container_port: int | None) -> int:
        """The port for ``container_port`` (``None``: the first port) on :attr:`internal_host`."""
        self.port_for(container_port)  # the same errors for a port it does not have
        ports = self._instance.internal_ports
        return ports[self._resolved.ports[0] if container_port is None else container_port]

    @property
    def internal_url(self) -> str:
        """:attr:`url` as the environment's other services use it: at :attr:`internal_host`:attr:`internal_port`."""
        return self._url_at(self.internal_host, self.internal_port)

    def _connection(self, key: str, default: str) -> str:
        """``key`` from the instance's ``credentials`` (an external service's URL), else ``default``."""
        return self._instance.credentials.get(key, default)

    # -- backend passthroughs -----------------------------------------------------------------

    def logs(self, tail: int | None = None) -> str:
        """The service's log (stdout and stderr), or its last ``tail`` lines."""
        return self._instance.logs(tail)

    def log_matches(self, pattern: str) -> int:
        """How often the regex ``pattern`` matched the log so far, reading only what is new since the
        last call (a probe polls this: a long log is not read again at every attempt)."""
        import re

        with self._scan_lock:
            cursor, count, carry = self._scans.get(pattern, (None, 0, ""))
            new, cursor = self._instance.log_since(cursor)
            complete, newline, carry = (carry + new).rpartition("\n")
            count += len(re.findall(pattern, complete + newline))
            self._scans[pattern] = (cursor, count, carry)
            return count + len(re.findall(pattern, carry))  # a last line without its newline yet

    def follow_logs(self, tail: int | None = None, stop: threading.Event | None = None) -> Iterator[str]:
        """The service's log line by line as it is written (the last ``tail`` lines first; None: all),
        until the service exits or ``stop`` is set: ``docker logs --follow``."""
        return self._instance.follow(tail, stop)

    def exit_status(self) -> int | None:
        """``None`` while the service runs, else its exit status."""
        return self._instance.exit_status()

    def exec(self, argv: Sequence[str]) -> tuple[int, str]:
        """Run ``argv`` inside the service; return (exit status, output)."""
        return self._instance.exec(list(argv))

    def health(self) -> tuple[str, str] | None:
        """``(status, last check's output)`` of its own health check (Docker's ``HEALTHCHECK``:
        ``starting``, ``healthy`` or ``unhealthy``), asked now; None if it has none."""
        return self._instance.health()

    # -- environment variables ----------------------------------------------------------------

    def env_vars(self) -> dict[str, str]:
        """``<NAME>_HOST``, ``<NAME>_PORT`` and ``<NAME>_URL`` for this service."""
        prefix = env_prefix(self.name)
        variables = {f"{prefix}_HOST": self.host}
        if self._resolved.ports:
            variables[f"{prefix}_PORT"] = str(self.port)
            variables[f"{prefix}_URL"] = self.url
        return variables

    def conventional_env_vars(self) -> dict[str, str]:
        """Well-known variables of the kind (``DATABASE_URL``, ...); empty for generic services."""
        return {}

    def __repr__(self) -> str:
        address = f"{self.host}:{self.port}" if self._resolved.ports else self.host
        return f"<{type(self).__name__} {self.name!r} {self.backend} {address} image={self.image!r}>"


class DatabaseHandle(ServiceHandle):
    """A running database server with a user, a password and databases (Postgres, MySQL)."""

    url_scheme = "postgresql"
    """The scheme of :meth:`url_for`."""

    @property
    def user(self) -> str:
        return self._connection("user", getattr(self.descriptor, "user", ""))

    @property
    def password(self) -> str:
        return self._connection("password", self._resolved.secrets["password"])

    @property
    def dbname(self) -> str:
        return self._connection("dbname", getattr(self.descriptor, "dbname", ""))

    def url_for(self, dbname: str, *, internal: bool = False) -> str:
        """The URL of another database on the same server (``internal``: at :attr:`internal_host`)."""
        if internal:
            return self._database_url(dbname, self.internal_host, self.internal_port)
        return self._database_url(dbname, self.host, self.port)

    def client_url_for(self, dbname: str) -> str:
        """The URL ``connect()`` uses for ``dbname``: :meth:`url_for`'s, or the container's own address
        when this host routes there straight (see :attr:`Instance.direct_host`)."""
        return self._database_url(dbname, *self._client_address())

    def _database_url(self, dbname: str, host: str, port: int) -> str:
        return (
            f"{self.url_scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{port}/{quote(dbname, safe='')}"
        )

    @property
    def url(self) -> str:
        """``scheme://user:password@host:port/dbname``."""
        return self.url_for(self.dbname)

    def _url_at(self, host: str, port: int) -> str:
        return self._database_url(self.dbname, host, port)


class PostgresHandle(DatabaseHandle):
    """A running Postgres: ``connect()``, ``url``, ``user``, ``password``, ``dbname``."""

    descriptor: Postgres

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new :class:`psycopg.Connection` (keyword arguments go to ``psycopg.connect``)."""
        import psycopg

        return psycopg.connect(self.client_url_for(dbname or self.dbname), **kwargs)

    async def connect_async(self, dbname: str | None = None, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        """A new :class:`psycopg.AsyncConnection`."""
        import psycopg

        return await psycopg.AsyncConnection.connect(self.client_url_for(dbname or self.dbname), **kwargs)

    def sqlalchemy_url(self, driver: str = "psycopg", dbname: str | None = None, *, internal: bool = False) -> str:
        """A SQLAlchemy URL, ``postgresql+<driver>://user:password@host:port/dbname``, for ``create_engine``.

        ``driver`` is a DBAPI that SQLAlchemy's PostgreSQL dialect knows: ``psycopg``
        (psycopg 3, for ``create_engine`` and ``create_async_engine`` alike), ``asyncpg``,
        ``psycopg2``, ``psycopg2cffi`` or ``pg8000``; svcenv installs none but psycopg 3.
        ``dbname`` defaults to the service's database; ``internal`` gives the in-network
        address (as :meth:`url_for`). User, password and database name are URL-quoted.
        """
        drivers = ("psycopg", "asyncpg", "psycopg2", "psycopg2cffi", "pg8000")
        if driver not in drivers:
            raise ConfigurationError(
                f"postgres service {self.name!r}: no SQLAlchemy driver {driver!r}; use one of {', '.join(drivers)}"
            )
        url = self.url_for(dbname or self.dbname, internal=internal)
        return f"postgresql+{driver}{url[len(self.url_scheme) :]}"

    def conventional_env_vars(self) -> dict[str, str]:
        """``DATABASE_URL`` and libpq's ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE``."""
        return {
            "DATABASE_URL": self.url,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
        }


class RedisHandle(ServiceHandle):
    """A running Redis: ``client()``, ``async_client()``, ``url``, ``password``."""

    descriptor: Redis

    @property
    def password(self) -> str:
        """The AUTH password ("" when the server has none)."""
        return self._connection("password", self._resolved.secrets.get("password", ""))

    def url_for(self, db: int | None = None, *, internal: bool = False) -> str:
        """``redis://[[user]:password@]host:port/db`` (``db`` ``None``: the one the backend names, else 0;
        ``internal``: at :attr:`internal_host`)."""
        if internal:
            return self._redis_url(db, self.internal_host, self.internal_port)
        return self._redis_url(db, self.host, self.port)

    def _redis_url(self, db: int | None, host: str, port: int) -> str:
        user = quote(self._connection("user", ""), safe="")
        auth = f"{user}:{quote(self.password, safe='')}@" if self.password else ""
        db = int(self._connection("db", "0")) if db is None else db
        return f"{self._connection('scheme', 'redis')}://{auth}{host}:{port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for()

    def _url_at(self, host: str, port: int) -> str:
        return self._redis_url(None, host, port)

    def client(self, db: int | None = None, **kwargs: Any) -> redis.Redis:
        """A :class:`redis.Redis` on logical database ``db``."""
        import redis

        return redis.Redis.from_url(self._redis_url(db, *self._client_address()), **kwargs)

    def async_client(self, db: int | None = None, **kwargs: Any) -> redis.asyncio.Redis:
        """A :class:`redis.asyncio.Redis` on logical database ``db``."""
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self._redis_url(db, *self._client_address()), **kwargs)

    def conventional_env_vars(self) -> dict[str, str]:
        return {"REDIS_URL": self.url}


class ElasticsearchHandle(ServiceHandle):
    """A running Elasticsearch: ``client()`` (needs the ``elasticsearch`` extra) and ``url``."""

    descriptor: Elasticsearch

    def client(self, **kwargs: Any) -> elasticsearch.Elasticsearch:
        """An :class:`elasticsearch.Elasticsearch` client for this node."""
        try:
            import elasticsearch
        except ImportError as exc:
            raise ImportError("the Elasticsearch client is not installed: pip install 'svcenv[elasticsearch]'") from exc
        return elasticsearch.Elasticsearch(self.url, **kwargs)

    def conventional_env_vars(self) -> dict[str, str]:
        return {"ELASTICSEARCH_URL": self.url}


def attached_handle(service: Service, snapshot: Mapping[str, Any], instance: Instance | None = None) -> ServiceHandle:
    """A handle for a service another process started, from its part of an environment snapshot.

    ``instance``: the backend's view of it (see :meth:`Backend.attach`), else one
    that knows only the snapshot's address.
    """
    from dataclasses import replace

    from .backends.base import AttachedInstance

    resolved = replace(service.resolve(), image=snapshot["image"], secrets=dict(snapshot["secrets"]))
    return service.handle_class()(resolved, instance or AttachedInstance.from_snapshot(snapshot))
