"""What a service is: frozen, hashable descriptors.

A descriptor names an image, its ports, environment, command and readiness
probe. It holds no running state: :class:`~svcenv.Environment` turns it into a
running service and a handle. Defaults follow the official images' contracts,
and every default image can be replaced per descriptor (``image=``) or through
``SVCENV_<KIND>_IMAGE`` (read when the environment starts).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote

from ._checks import FrozenMap, check_types, database_credentials
from ._resolved import Resolved
from .container import BuildSpec, build_repository, check_container, read_files
from .errors import ConfigurationError
from .probes import PostgresQuery, Probe, RedisPing

if TYPE_CHECKING:
    from .handles import ServiceHandle

__all__ = ["KINDS", "Elasticsearch", "Postgres", "Redis", "Resolved", "Service", "generate_password"]

RAM_PGDATA = "/svcenv-run"
"""Where a tuned server keeps its data in the container: a tmpfs mount (RAM, no disk I/O)."""

TEST_TUNED_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""Postgres settings for servers svcenv owns: speed over crash safety (the server is thrown away)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


KINDS: dict[str, type[Service]] = {}
"""Every kind by name (``postgres``, ``redis``, ...; ``service`` for the generic one): filled as kinds are defined."""


GENERATED_SCRAM_ITERATIONS = 128
"""SCRAM iterations for a generated Postgres password (see :meth:`Postgres.scram_iterations`)."""


def generate_password() -> str:
    """A fresh password with 192 bits from :mod:`secrets`, safe in URLs."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Service:
    """A generic service: any image, its ports, env, command and readiness probe.

    ``name`` identifies the service in an environment (and in ``env_vars()``);
    ``ports`` are container ports, each published on a random host port;
    ``probe`` decides readiness (default: a TCP connect to the first port);
    ``depends_on`` names services that must be ready before this one starts;
    ``timeout`` is how many seconds the service gets from start to ready;
    ``scheme`` builds the handle's ``url`` (``scheme://host:port``);
    ``backend`` pins where it runs (``docker``, ``local``, ``external``; default: the
    environment's choice, else ``SVCENV_BACKEND``, else ``auto``).
    On Docker (see :mod:`svcenv.container`): ``build`` builds the image (a context path
    or a :class:`~svcenv.BuildSpec`) instead of naming one; ``files`` (container path ->
    ``Path``, bytes or text) are copied in before it starts; ``volumes`` (name -> container
    path) are named volumes of the environment; ``options`` are checked container options;
    ``entrypoint`` replaces the image's entrypoint; ``labels`` are added to the container's
    (svcenv's own ``svcenv.*`` labels cannot be given).
    ``one_shot`` marks a job (a migration, a seeder): instead of being probed it must exit
    with status 0 within its timeout; services that depend on it start after it completed,
    and it is removed at teardown like the others (compose's ``service_completed_successfully``).
    """

    name: str
    image: str | None = None
    ports: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=FrozenMap)
    command: tuple[str, ...] | None = None
    probe: Probe | None = None
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    scheme: str = "tcp"
    tmpfs: tuple[str, ...] = ()
    backend: str | None = None
    build: BuildSpec | str | Path | None = None
    files: Mapping[str, Path | bytes | str] = field(default_factory=FrozenMap, repr=False)
    volumes: Mapping[str, str] = field(default_factory=FrozenMap)
    options: Mapping[str, object] = field(default_factory=FrozenMap)
    entrypoint: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenMap)
    one_shot: bool = False

    kind: ClassVar[str] = "service"
    default_image: ClassVar[str | None] = None
    default_timeout: ClassVar[float] = 60.0
    url_schemes: ClassVar[tuple[str, ...]] = ()
    """The schemes an external service's URL may use (empty: any valid scheme)."""
    canonical_url_scheme: ClassVar[str | None] = None
    """The scheme the handle gets whichever of :attr:`url_schemes` the URL used (None: the URL's own)."""
    url_query_hint: ClassVar[str] = ""
    """Appended to the error for a URL with query parameters: what to do instead."""
    example_url: ClassVar[str | None] = None
    """An external URL of this kind, for error messages (None: ``scheme://host:port``)."""
    local_program: ClassVar[str | None] = None
    """The program that runs this kind locally; a ``command`` must start with it (None: no command allowed)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The first class that names a kind is that kind (a user's subclass of Postgres is no new kind).
        KINDS.setdefault(cls.kind, cls)

    def __post_init__(self) -> None:
        self._check_types()
        set_ = object.__setattr__
        set_(self, "ports", tuple(self.ports))
        set_(self, "env", FrozenMap({str(k): str(v) for k, v in dict(self.env).items()}))
        if self.command is not None:
            # A string is split like a shell would split words, never run through one.
            command = shlex.split(self.command) if isinstance(self.command, str) else self.command
            set_(self, "command", tuple(command))
        if self.entrypoint is not None:
            entrypoint = shlex.split(self.entrypoint) if isinstance(self.entrypoint, str) else self.entrypoint
            set_(self, "entrypoint", tuple(entrypoint))
        set_(self, "labels", FrozenMap({str(k): str(v) for k, v in dict(self.labels).items()}))
        deps = (self.depends_on,) if isinstance(self.depends_on, (str, Service)) else self.depends_on
        set_(self, "depends_on", tuple(d.name if isinstance(d, Service) else str(d) for d in deps))
        set_(self, "tmpfs", tuple(self.tmpfs))
        check_container(self)
        self._validate()

    def _wrong(self, name: str, expected: str, value: object) -> ConfigurationError:
        return ConfigurationError(
            f"service {self.name!r}: {name} must be {expected}, got {value!r} ({type(value).__name__})"
        )

    def _check_types(self) -> None:
        """Reject values of the wrong type now, with the field's name, instead of failing later in a backend."""
        check_types(self)

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigurationError(
                f"service name {self.name!r} is not valid: use lower-case letters, digits, '.', '_', '-'"
            )
        for port in self.ports:
            if not 0 < port < 65536:
                raise ConfigurationError(f"service {self.name!r}: port {port} is not in 1..65535")
        if self.timeout is not None and not 0 < self.timeout < math.inf:
            raise ConfigurationError(
                f"service {self.name!r}: timeout must be a finite number of seconds > 0, got {self.timeout!r}"
            )
        nul = next(self._nul_fields(), None)
        if nul is not None:
            raise ConfigurationError(
                f"service {self.name!r}: {nul} contains a NUL character; no server can be given one "
                "(a C string, an argv item, an environment variable and a password end at NUL)"
            )
        if self.name in self.depends_on:
            raise ConfigurationError(f"service {self.name!r} cannot depend on itself")
        if self.backend not in (None, "auto", "docker", "local", "external"):
            raise ConfigurationError(
                f"service {self.name!r}: unknown backend {self.backend!r}; choose auto, docker, local or external"
            )
        if self.probe is not None and not isinstance(self.probe, Probe):
            raise ConfigurationError(f"service {self.name!r}: probe must be a svcenv.probes.Probe")
        for key in self.labels:
            if key.startswith("svcenv.") or not key:
                raise ConfigurationError(
                    f"service {self.name!r}: label {key!r} cannot be set; svcenv.* labels are svcenv's own"
                )
        if self.one_shot and type(self).kind != "service":
            raise ConfigurationError(
                f"service {self.name!r}: a {self.kind} service cannot be one-shot; use Service(one_shot=True) for a job"
            )
        if self.one_shot and self.probe is not None:
            raise ConfigurationError(
                f"service {self.name!r}: a one-shot service is not probed (it must exit with status 0); drop probe="
            )

    def _nul_fields(self) -> Iterator[str]:
        """The names of the fields (and env variables, argv items) that contain a NUL character."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str) and "\0" in value:
                yield item.name
        for key, value in self.env.items():
            if "\0" in key or "\0" in str(value):
                yield f"env variable {key.replace(chr(0), '<NUL>')!r}"
        for part in ("command", "entrypoint"):
            if any("\0" in arg for arg in getattr(self, part) or ()):
                yield part

    # -- what the environment asks of a descriptor -------------------------------------------

    @property
    def effective_image(self) -> str:
        """The image to run: ``image=``, else the one ``build=`` makes (its tag is added when it is built),
        else ``SVCENV_<KIND>_IMAGE``, else the default."""
        if self.build is not None and not self.image:
            return build_repository(self.name)
        image = self.image or os.environ.get(f"SVCENV_{self.kind.upper()}_IMAGE") or self.default_image
        if not image:
            raise ConfigurationError(f"service {self.name!r}: no image given")
        return image

    @property
    def imageless(self) -> bool:
        """A generic service that names no image and builds none: a command the local backend runs
        as a process (any other backend says it needs an image)."""
        return self.kind == "service" and not self.image and self.build is None

    # -- how other services refer to this one (see svcenv.refs) -------------------------------

    @property
    def internal_url(self) -> str:
        """This service's URL as the environment's other services reach it, filled in when it is ready."""
        return self.ref("internal_url")

    @property
    def internal_host(self) -> str:
        """Its host as the other services reach it (on Docker: its name on the environment's network)."""
        return self.ref("internal_host")

    @property
    def internal_port(self) -> str:
        """Its first port as the other services reach it (a string: it goes into ``env`` and ``command``)."""
        return self.ref("internal_port")

    def ref(self, attribute: str) -> str:
        """A reference to ``attribute`` of this service's handle (one of :data:`svcenv.refs.ATTRIBUTES`)."""
        from .refs import Ref

        return Ref(self.name, attribute)

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.default_timeout

    @property
    def readiness_probe(self) -> Probe:
        """The probe that decides readiness (the descriptor's, or the kind's default)."""
        if self.one_shot:
            from .probes import Completed

            return Completed()
        if self.probe is not None:
            return self.probe
        from .probes import TCP

        return TCP()

    def resolve(self) -> Resolved:
        """Make the descriptor concrete for one environment (generates passwords)."""
        return self._resolved(dict(self.env), self.command)

    def _resolved(
        self, env: Mapping[str, str], command: tuple[str, ...] | None, secrets: Mapping[str, str] | None = None
    ) -> Resolved:
        tmpfs = dict.fromkeys(self.tmpfs, "rw")
        files, volumes = read_files(self), dict(self.volumes)
        image = "" if self.imageless else self.effective_image
        return Resolved(
            self, image, self.ports, env, command, secrets or {}, tmpfs, self.entrypoint, files, volumes, self.options
        )

    def handle_class(self) -> type[ServiceHandle]:
        from .handles import ServiceHandle

        return ServiceHandle

    # -- what the external backend asks of a descriptor ------------------------------------------

    @classmethod
    def external_default_port(cls, scheme: str) -> int | None:
        """The port an external URL with ``scheme`` means when it names none (None: it must name one)."""
        return None

    def url_credentials(self, user: str | None, password: str | None, path: str) -> dict[str, str]:
        """The connection settings an external URL's user, password and path give this service.

        ``user`` and ``password`` are decoded (None when the URL has none); ``path`` is
        still percent-encoded, without its leading ``/``. Raises :class:`ValueError`
        with the problem (e.g. "has a path, ...") when the kind cannot take them.
        """
        if user is not None or password is not None:
            raise ValueError(f"carries credentials, which svcenv cannot pass to a {self.kind} service")
        if path:
            raise ValueError(f"has a path, which svcenv cannot pass to a {self.kind} service")
        return {}


def _env_with(base: Mapping[str, str], **managed: str) -> dict[str, str]:
    env = dict(base)
    env.update(managed)
    return env


@dataclass(frozen=True, kw_only=True)
class Postgres(Service):
    """PostgreSQL, following the official ``postgres`` image's contract.

    ``user``/``password``/``dbname`` become ``POSTGRES_USER``/``POSTGRES_PASSWORD``/
    ``POSTGRES_DB``; the password is generated per environment unless given.
    ``settings`` are server options passed as ``-c key=value``. Servers svcenv
    creates are tuned for tests unless ``tuned=False``: :data:`TEST_TUNED_SETTINGS`
    (no fsync, no synchronous commit, no full-page writes) trade crash safety,
    which a throw-away test server does not need, for speed. ``settings`` win
    over them. Services of the external backend are never changed. On Docker,
    ``cache`` starts fresh instances from a pre-initialised image of the same
    configuration, skipping ``initdb`` (see :mod:`svcenv.backends.pgcache`).
    Ready when psycopg connects to ``dbname`` and ``SELECT 1`` answers.
    """

    name: str = "postgres"
    ports: tuple[int, ...] = (5432,)
    scheme: str = "postgresql"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    dbname: str = "test"
    settings: Mapping[str, str] = field(default_factory=FrozenMap)
    tuned: bool = True
    cache: bool = True

    kind: ClassVar[str] = "postgres"
    default_image: ClassVar[str | None] = "postgres:16-alpine"
    url_schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    canonical_url_scheme: ClassVar[str | None] = "postgresql"
    url_query_hint: ClassVar[str] = "; set libpq's variables instead (PGSSLMODE, ...)"
    example_url: ClassVar[str | None] = "postgresql://user:password@host:5432/dbname"
    local_program: ClassVar[str | None] = "postgres"

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "settings", FrozenMap({str(k): str(v) for k, v in dict(self.settings).items()}))
        super().__post_init__()
        if not self.user or not self.dbname:
            raise ConfigurationError(f"service {self.name!r}: user and dbname must not be empty")

    @property
    def readiness_probe(self) -> Probe:
        return self.probe or PostgresQuery()

    @classmethod
    def external_default_port(cls, scheme: str) -> int | None:
        return 5432

    def url_credentials(self, user: str | None, password: str | None, path: str) -> dict[str, str]:
        return database_credentials(user, password, path, self.user, self.password or "", self.dbname)

    def scram_iterations(self) -> int:
        """The PBKDF2 iteration count of the SCRAM verifier svcenv stores for this service's password.

        Key stretching guards guessable passwords; a generated one has 192 random bits, which no
        iteration count makes harder to guess, while every client pays the iterations on every
        connect (4096 of them were half of a 6 ms connect here). So a generated password gets
        :data:`GENERATED_SCRAM_ITERATIONS`, a given one Postgres's default of 4096.
        """
        return 4096 if self.password else GENERATED_SCRAM_ITERATIONS

    @property
    def server_settings(self) -> dict[str, str]:
        """The ``-c`` options for a server svcenv creates: tuned defaults, then ``settings``."""
        return {**(TEST_TUNED_SETTINGS if self.tuned else {}), **self.settings}

    def resolve(self) -> Resolved:
        password = self.password or generate_password()
        env = _env_with(self.env, POSTGRES_USER=self.user, POSTGRES_PASSWORD=password, POSTGRES_DB=self.dbname)
        command = self.command
        settings = self.server_settings
        if command is None and settings:
            command = ("postgres", *(arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")))
        resolved = self._resolved(env, command, {"password": password})
        if self.tuned and "PGDATA" not in self.env:
            # A throw-away server's data needs no disk: on tmpfs, per-test CREATE DATABASE stays fast.
            resolved = replace(resolved, env={**env, "PGDATA": RAM_PGDATA}, tmpfs={**resolved.tmpfs, RAM_PGDATA: "rw"})
        return resolved

    def handle_class(self) -> type[ServiceHandle]:
        from .handles import PostgresHandle

        return PostgresHandle


REDIS_CONF = "/run/svcenv/redis.conf"
"""Where a Redis container's config file (with its password) is put before it starts."""


@dataclass(frozen=True, kw_only=True)
class Redis(Service):
    """Redis, following the official ``redis`` image's contract.

    A password is generated per environment and set as ``requirepass`` in a config
    file put into the container before it starts (not on its command line, where
    ``ps`` and ``docker inspect`` would show it); pass ``password=""`` for a server
    without AUTH. Ready when ``PING`` answers.
    """

    name: str = "redis"
    ports: tuple[int, ...] = (6379,)
    scheme: str = "redis"
    password: str | None = field(default=None, repr=False)

    kind: ClassVar[str] = "redis"
    default_image: ClassVar[str | None] = "redis:7-alpine"
    default_timeout: ClassVar[float] = 30.0
    url_schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    example_url: ClassVar[str | None] = "redis://:password@host:6379/0"
    local_program: ClassVar[str | None] = "redis-server"

    @classmethod
    def external_default_port(cls, scheme: str) -> int | None:
        return 6379

    def url_credentials(self, user: str | None, password: str | None, path: str) -> dict[str, str]:
        db = unquote(path)
        if db and not re.fullmatch(r"[0-9]+", db):
            raise ValueError("has a path that is not a database number (redis://host:port/0)")
        details = {"password": password if password is not None else (self.password or ""), "db": db or "0"}
        if user:
            details["user"] = user
        return details

    @property
    def readiness_probe(self) -> Probe:
        return self.probe or RedisPing()

    def resolve(self) -> Resolved:
        password = generate_password() if self.password is None else self.password
        # The settings, the password among them, go in a config file the backend copies into the
        # container: never on the command line (``ps`` on the host) nor in ``docker inspect``.
        lines = ['save ""', "appendonly no"]
        if password:
            quoted = "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in password)
            lines.append(f'requirepass "{quoted}"')
        conf = "\n".join(lines) + "\n"
        command = self.command or ("redis-server",)
        if os.path.basename(command[0]) == "redis-server":
            command = (command[0], REDIS_CONF, *command[1:])  # the file first; later arguments override it
        elif command[0].startswith("-"):
            command = (REDIS_CONF, *command)  # the image's entrypoint prepends redis-server
        elif password:
            command = (*command, "--requirepass", password)  # some other program: it gets the flag, as before
        resolved = self._resolved(dict(self.env), command, {"password": password})
        # 0644: the image's entrypoint drops to the redis user, who must read it.
        return replace(resolved, files={**resolved.files, REDIS_CONF: (conf.encode(), 0o644)})

    def handle_class(self) -> type[ServiceHandle]:
        from .handles import RedisHandle

        return RedisHandle


# Defined in its own module (as MySQL is); imported here so that it is a kind before "service".
from .elasticsearch import Elasticsearch  # noqa: E402

KINDS["service"] = Service
