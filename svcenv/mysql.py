"""MySQL and MariaDB: the descriptor, its readiness probe and its handle, in one module.

Follows the official ``mysql``/``mariadb`` images' contract: ``MYSQL_ROOT_PASSWORD``,
``MYSQL_DATABASE``, ``MYSQL_USER`` and ``MYSQL_PASSWORD`` (and their ``MARIADB_*``
twins) set up the server on its first start; svcenv passes the passwords as files
(``MYSQL_ROOT_PASSWORD_FILE``, ``MYSQL_PASSWORD_FILE``), so ``docker inspect`` does not
show them. The client is PyMySQL, imported only
when a connection is made (``pip install 'svcenv[mysql]'``).

    from svcenv import Environment, MySQL

    with Environment(MySQL()) as env:
        with env["mysql"].connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ._checks import database_credentials
from .descriptors import Resolved, Service, _env_with, generate_password
from .errors import ConfigurationError, ProbeFailed
from .handles import DatabaseHandle, ServiceHandle
from .probes import Probe, _one_line

SECRETS_DIR = "/run/svcenv-secrets"
"""Where the passwords are put in a MySQL/MariaDB container (read by its entrypoint through ``*_FILE``)."""

if TYPE_CHECKING:
    import pymysql.connections

__all__ = ["MySQL", "MySQLHandle", "MySQLQuery"]

ACCESS_DENIED = 1045
"""``ER_ACCESS_DENIED_ERROR``: the server refused the user or password."""
_REFUSED = frozenset({ACCESS_DENIED, 1698})  # 1698: ER_ACCESS_DENIED_NO_PASSWORD_ERROR


def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError as exc:
        raise ImportError("the MySQL client (PyMySQL) is not installed: pip install 'svcenv[mysql]'") from exc
    return pymysql


@dataclass(frozen=True, kw_only=True)
class MySQL(Service):
    """MySQL or MariaDB, following the official ``mysql``/``mariadb`` images' contract.

    ``user``/``password``/``dbname`` become ``MYSQL_USER``/``MYSQL_PASSWORD``/
    ``MYSQL_DATABASE`` (and ``MARIADB_*``), ``root_password`` becomes
    ``MYSQL_ROOT_PASSWORD``; both passwords are generated per environment unless
    given. The user gets all privileges on ``dbname``. With ``user="root"`` no
    extra user is created and the password is the root password. Ready when
    PyMySQL logs in to ``dbname`` and ``SELECT 1`` answers.
    """

    name: str = "mysql"
    ports: tuple[int, ...] = (3306,)
    scheme: str = "mysql"
    user: str = "test"
    password: str | None = field(default=None, repr=False)
    root_password: str | None = field(default=None, repr=False)
    dbname: str = "test"

    kind: ClassVar[str] = "mysql"
    default_image: ClassVar[str | None] = "mariadb:11"
    default_timeout: ClassVar[float] = 60.0
    url_schemes: ClassVar[tuple[str, ...]] = ("mysql",)
    local_program: ClassVar[str | None] = "mariadbd"

    def __post_init__(self) -> None:
        self._check_types()
        if self.root_password is not None and not isinstance(self.root_password, str):
            raise self._wrong("root_password", "a string", self.root_password)
        super().__post_init__()
        if not self.user or not self.dbname:
            raise ConfigurationError(f"service {self.name!r}: user and dbname must not be empty")
        if (
            self.is_root
            and self.password is not None
            and self.root_password is not None
            and self.password != self.root_password
        ):
            raise ConfigurationError(
                f"service {self.name!r}: with user='root' the password is the root password; "
                "give password or root_password, not two different ones"
            )

    @property
    def is_root(self) -> bool:
        """Whether the service logs in as ``root`` (then no other user is created)."""
        return self.user == "root"

    @property
    def readiness_probe(self) -> Probe:
        return self.probe or MySQLQuery()

    def resolve(self) -> Resolved:
        if self.is_root:
            root_password = self.password or self.root_password or generate_password()
            password = root_password
        else:
            root_password = self.root_password or generate_password()
            password = self.password or generate_password()
        # The passwords go in files the image's entrypoint reads (its *_FILE contract), not in the
        # container's environment, which `docker inspect` shows to anyone who may use the engine.
        secret_files = {"ROOT_PASSWORD": (SECRETS_DIR + "/root-password", root_password)}
        managed = {"MYSQL_DATABASE": self.dbname}
        if not self.is_root:
            managed["MYSQL_USER"] = self.user
            secret_files["PASSWORD"] = (SECRETS_DIR + "/password", password)
        managed.update({f"MYSQL_{name}_FILE": path for name, (path, _) in secret_files.items()})
        twins = {f"MARIADB_{key.removeprefix('MYSQL_')}": value for key, value in managed.items()}
        env = _env_with(self.env, **managed, **twins)
        resolved = self._resolved(env, self.command, {"password": password, "root_password": root_password})
        # 0644: the entrypoint reads them after dropping to the mysql user (only the container sees them).
        files = {path: (value.encode(), 0o644) for path, value in secret_files.values()}
        return replace(resolved, files={**resolved.files, **files})

    def handle_class(self) -> type[ServiceHandle]:
        return MySQLHandle

    @classmethod
    def external_default_port(cls, scheme: str) -> int | None:
        return 3306

    def url_credentials(self, user: str | None, password: str | None, path: str) -> dict[str, str]:
        return database_credentials(user, password, path, self.user, self.password or "", self.dbname)


@dataclass(frozen=True)
class MySQLQuery(Probe):
    """Ready when PyMySQL logs in with the handle's user and password to its database and ``SELECT 1`` answers."""

    timeout: float = 2.0

    def check(self, service: ServiceHandle) -> None:
        if not isinstance(service, MySQLHandle):
            raise ProbeFailed(f"mysql: {service.name!r} is not a MySQL service")
        pymysql = _pymysql()
        try:
            conn = service.connect(connect_timeout=self.timeout, read_timeout=self.timeout, write_timeout=self.timeout)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT 1")
                    cursor.fetchone()
            finally:
                conn.close()
        except OSError as exc:
            raise ProbeFailed(f"mysql: {_one_line(exc)}") from exc
        except Exception as exc:
            # By name: after pymysql.install_as_MySQLdb() (Django settings do it), PyMySQL's errors may
            # come from a second copy of its module, which `except pymysql.err.MySQLError` misses.
            if not isinstance(exc, pymysql.err.MySQLError) and "MySQLError" not in {
                c.__name__ for c in type(exc).__mro__
            }:
                raise
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            raise ProbeFailed(f"mysql: {_one_line(exc)}", credentials=code in _REFUSED) from exc


class MySQLHandle(DatabaseHandle):
    """A running MySQL/MariaDB: ``connect()``, ``url``, ``user``, ``password``, ``root_password``, ``dbname``."""

    descriptor: MySQL
    url_scheme = "mysql"

    @property
    def root_password(self) -> str:
        """The root password ("" when unknown, e.g. for an external server)."""
        return self._connection("root_password", self._resolved.secrets.get("root_password", ""))

    def connect(self, dbname: str | None = None, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A new PyMySQL connection (keyword arguments go to ``pymysql.connect``)."""
        client = _pymysql()
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": dbname or self.dbname,
            **kwargs,
        }
        connection: pymysql.connections.Connection[Any] = client.connect(**options)
        return connection

    def conventional_env_vars(self) -> dict[str, str]:
        """``MYSQL_URL``, ``MYSQL_HOST``, ``MYSQL_PORT``, ``MYSQL_USER``, ``MYSQL_PASSWORD``, ``MYSQL_DATABASE``."""
        return {
            "MYSQL_URL": self.url,
            "MYSQL_HOST": self.host,
            "MYSQL_PORT": str(self.port),
            "MYSQL_USER": self.user,
            "MYSQL_PASSWORD": self.password,
            "MYSQL_DATABASE": self.dbname,
        }
