"""Postgres, Redis and Elasticsearch as :class:`LocalInstance` subclasses."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from ..._util import NotYet, poll
from ...descriptors import Postgres, Service
from ...errors import ServiceExited
from ..pgcache import scram_verifier
from .accounts import Account, _account_problem, _chown, _existing_account, _server_env, server_account
from .discovery import (
    ElasticsearchInstall,
    PostgresInstall,
    RedisInstall,
    find_elasticsearch,
    find_postgres,
    find_redis,
)
from .places import release_shared_memory
from .process import LocalInstance, free_port
from .template import _copy_tree, postgres_template

if TYPE_CHECKING:
    from ...descriptors import Resolved


_Install = TypeVar("_Install")


class _InstalledServer(LocalInstance, Generic[_Install]):
    """A server run from a local installation (``install``) that the backend located.

    Each subclass says which kind it serves, how its installation is found and
    described, and which account runs it when svcenv runs as root; the backend
    reads only these.
    """

    kind: ClassVar[str]
    described_as: ClassVar[str]
    """What runs this kind here, from the installation's fields: ``postgres {version} at {bindir}``."""

    @classmethod
    def locate(cls) -> _Install:
        """The installation, or ``_Missing``/``OSError`` saying why there is none."""
        raise NotImplementedError

    @classmethod
    def describe(cls, install: _Install) -> str:
        """What runs this kind here, e.g. ``postgres 15.20 at /usr/lib/postgresql/15/bin``."""
        return cls.described_as.format_map(vars(install))

    @classmethod
    def account_problem(cls) -> str | None:
        """Why no account can run this server here (as root), or None; no side effects."""
        return _account_problem()

    @classmethod
    def run_account_name(cls) -> str | None:
        """Who runs it when svcenv runs as root (None: the calling user)."""
        existing = _existing_account()
        return existing.name if existing else "svcenv"

    @classmethod
    def run_account(cls) -> Account | None:
        """The account to run it as (None: the calling user); may create ``svcenv`` (see accounts)."""
        return server_account()

    def __init__(
        self,
        resolved: Resolved,
        labels: Mapping[str, str],
        workdir: Path,
        account: Account | None,
        install: _Install,
    ) -> None:
        super().__init__(resolved, labels, workdir, account)
        self.install: _Install = install


class LocalPostgres(_InstalledServer[PostgresInstall]):
    """Postgres on a copy of the cached template; the role's password is set as it starts."""

    kind = "postgres"
    described_as = "postgres {version} at {bindir}"
    stop_signal = signal.SIGINT  # "fast shutdown"
    locate = staticmethod(find_postgres)

    @property
    def service(self) -> Postgres:
        service = self.resolved.service
        assert isinstance(service, Postgres)
        return service

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def prepare(self) -> None:
        template, _ = postgres_template(self.install, self.account, self.service.user, self.service.dbname)
        _chown(self.workdir, self.account)  # the server creates its socket here
        _copy_tree(template, self.data, self.account)

    def argv(self, port: int) -> list[str]:
        argv = [str(self.install.postgres), "-D", str(self.data)]
        # Dynamic shared memory in the data directory: a killed server cannot leave it in /dev/shm.
        argv += ["-c", "dynamic_shared_memory_type=mmap", *_extra_args(self.service, "postgres")]
        for key, value in self.service.server_settings.items():  # test-tuned defaults, then settings
            argv += ["-c", f"{key}={value}"]
        # Ours come last: later options win.
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.workdir}"]
        return [*argv, "-c", f"port={port}"]

    def env(self) -> dict[str, str]:
        return _server_env()

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        pidfile = self.data / "postmaster.pid"

        def ready() -> None:
            self._check_running(log_offset)
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":  # what pg_ctl waits for
                    return
            raise NotYet("did not accept connections on its unix socket in time")

        _await(ready, deadline, first=0.002)
        self._set_password(port)

    def release(self) -> None:
        """If the server died without shutting down, remove the System V segment it left."""
        release_shared_memory(self.data)

    def _set_password(self, port: int) -> None:
        import psycopg
        from psycopg import sql

        user, password = self.service.user, self.resolved.secrets["password"]
        socket_dir, dbname = str(self.workdir), self.service.dbname
        with psycopg.connect(host=socket_dir, port=port, user=user, dbname=dbname, autocommit=True) as conn:
            # A verifier computed here keeps the password out of the server's statement log.
            verifier = scram_verifier(password, self.service.scram_iterations())
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier)))


class LocalRedis(_InstalledServer[RedisInstall]):
    """``redis-server`` with a private config file (the password is not on its command line); runs as the caller."""

    kind = "redis"
    described_as = "redis {version} at {binary}"
    locate = staticmethod(find_redis)

    @classmethod
    def account_problem(cls) -> str | None:
        return None

    @classmethod
    def run_account_name(cls) -> str | None:
        return None

    @classmethod
    def run_account(cls) -> Account | None:
        return None

    @property
    def config(self) -> Path:
        return self.workdir / "redis.conf"

    def prepare(self) -> None:
        (self.workdir / "data").mkdir()
        lines = ["bind 127.0.0.1", 'save ""', "appendonly no", "daemonize no", 'logfile ""']
        lines.append(f"dir {_redis_quote(str(self.workdir / 'data'))}")
        password = self.resolved.secrets.get("password", "")
        if password:
            lines.append(f"requirepass {_redis_quote(password)}")
        descriptor = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def argv(self, port: int) -> list[str]:
        extra = _extra_args(self.resolved.service, "redis-server")
        return [str(self.install.binary), str(self.config), *extra, "--port", str(port)]

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        def ready() -> None:
            logged = self._read_log(log_offset)
            if "Ready to accept connections" in logged:
                return
            self._check_running(log_offset)
            # A --loglevel from the descriptor may hide that line; then a PING tells.
            if "Address already in use" not in logged and _redis_answers(port):
                return
            raise NotYet("did not accept connections in time")

        _await(ready, deadline, first=0.001)


def _await(ready: Callable[[], None], deadline: float, first: float) -> None:
    """Poll ``ready`` (it raises NotYet until the server is up) until ``deadline``, then raise ServiceExited."""
    try:
        poll(ready, deadline - time.monotonic(), first=first, cap=0.02)
    except NotYet as late:
        raise ServiceExited(str(late)) from None


def _redis_answers(port: int) -> bool:
    """Whether a Redis server answers PING on ``port`` (``-NOAUTH`` counts: it is Redis)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _redis_quote(value: str) -> str:
    """A double-quoted string as redis.conf parses it."""
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in value)
    return f'"{escaped}"'


class LocalElasticsearch(_InstalledServer[ElasticsearchInstall]):
    """Elasticsearch from a local distribution; settings become ``-E key=value``."""

    kind = "elasticsearch"
    described_as = "elasticsearch at {home}"
    stop_grace = 20.0
    locate = staticmethod(find_elasticsearch)

    def prepare(self) -> None:
        config = self.install.home / "config"
        if config.is_dir():  # a private copy: Elasticsearch writes its keystore there
            shutil.copytree(config, self.workdir / "config", symlinks=True)
        else:
            (self.workdir / "config").mkdir()
        for name in ("data", "logs", "tmp"):
            (self.workdir / name).mkdir()
        if self.account is not None:
            for root, dirs, files in os.walk(self.workdir):
                for name in (".", *dirs, *files):
                    os.lchown(os.path.join(root, name), self.account.uid, self.account.gid)

    def argv(self, port: int) -> list[str]:
        settings = {k: v for k, v in self.resolved.env.items() if not _is_env_name(k)}
        settings.update(
            {
                "http.port": str(port),
                "transport.port": str(free_port()),
                "network.host": "127.0.0.1",
                "path.data": str(self.workdir / "data"),
                "path.logs": str(self.workdir / "logs"),
            }
        )
        return [str(self.install.launcher), *(arg for k, v in settings.items() for arg in ("-E", f"{k}={v}"))]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: v for k, v in self.resolved.env.items() if _is_env_name(k)})
        env.update({"ES_PATH_CONF": str(self.workdir / "config"), "ES_TMPDIR": str(self.workdir / "tmp")})
        return env


def _is_env_name(key: str) -> bool:
    """``ES_JAVA_OPTS`` is an environment variable; ``discovery.type`` is a setting."""
    return re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) is not None


def _extra_args(service: Service, program: str) -> list[str]:
    """Arguments after the program in a descriptor's own ``command`` (``supports`` vetted it)."""
    command = service.command
    if not command:
        return []
    return list(command[1:]) if os.path.basename(command[0]) == program else []
