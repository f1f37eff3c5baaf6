"""The local backend (Linux): Postgres, Redis and Elasticsearch as processes on this machine, no engine.

Where the servers come from:

* Postgres: the directory ``SVCENV_POSTGRES_BIN`` names, else the one of
  ``postgres`` on ``PATH``, else ``pg_config --bindir``, else the highest
  version under ``/usr/lib/postgresql/*/bin``; it needs ``postgres`` and ``initdb``.
* Redis: ``SVCENV_REDIS_BIN`` (the binary or its directory), else ``redis-server``
  on ``PATH``.
* MySQL (MariaDB): ``SVCENV_MYSQL_BIN`` (the binary or its directory), else
  ``mariadbd``/``mysqld`` on ``PATH`` or in ``/usr/sbin``; see :mod:`.mariadb`.
* Elasticsearch: only a distribution that ``SVCENV_ELASTICSEARCH_HOME`` (or
  ``ES_HOME``) points at; there is no other way to get one locally.
* A generic :class:`~svcenv.Service` with a ``command`` and no image (an application,
  a worker) runs that command as a supervised process (:mod:`.command`), told its port
  through ``PORT``. One that names an image, or sets what only a container has
  (``build``, ``files``, ``volumes``, ``options``, ``entrypoint``, ``labels``), cannot run
  here: :meth:`LocalBackend.create` raises ``BackendUnavailable``.

Postgres is fast because ``initdb`` runs once per (version, user, dbname,
options): the result is cached as a template data directory in
``$SVCENV_CACHE_DIR/local`` (default ``~/.cache/svcenv/local``), built in a
scratch directory and renamed into place under an ``fcntl`` lock, so concurrent
processes build it once. Each instance gets a copy (``cp -a``) of the template;
the role's password is then set over the unix socket (a SCRAM verifier is sent,
never the password) and TCP connections must authenticate with
``scram-sha-256``. The unix socket trusts whoever reaches it, which is only the
server's account and root: it lives in the instance's private (0700) directory.

Each instance works in a private directory ``svcenv-local-<owner pid>-<env
id>-<service>-*`` under ``/dev/shm`` when it is writable (tmpfs), else the
system temp dir (``SVCENV_LOCAL_TMPDIR`` overrides both). It holds the data,
the log (``server.log``) and the unix socket, and is removed by ``stop()``.

Running as root: Postgres (and Elasticsearch) refuse to run as root, so when the
effective uid is 0 they run as the existing ``postgres`` account (Debian's
postgresql package creates it), else as ``svcenv``, which is created as a system
user only if ``SVCENV_LOCAL_CREATE_USER=1``; otherwise they are unavailable and
the error says so. Their template and private directories are then owned by
that account. Redis runs as the calling user.

No server outlives its owner: every server is started by a small watchdog
process (``_watchdog.py``) that stops it and removes its directory when the
owner exits, however it exits (a pipe from the owner reads EOF, even after
SIGKILL). The server gets ``PR_SET_PDEATHSIG`` = SIGKILL, so killing the
watchdog itself kills the server too. Servers run in their own sessions, so a
Ctrl-C in the terminal reaches only the owner, which then tears down.

What can be left, and who removes it: a private directory survives only when no
watchdog runs for it (the owner died while copying the template, or the
watchdog itself was killed); ``check()`` sweeps directories whose owner and
watchdog are both gone, and frees the System V segment a killed postmaster
left. Postgres keeps its dynamic shared memory in the data directory
(``dynamic_shared_memory_type=mmap``), so a killed server leaves nothing in
``/dev/shm``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import descriptors
from ...descriptors import Service
from ...errors import BackendUnavailable
from ..base import Backend, Instance
from ._common import INITDB_ARGS, MARKER, TMP_PREFIX, _Missing
from .accounts import Account, server_account
from .command import LocalCommand, command_problem
from .discovery import (
    ElasticsearchInstall,
    PostgresInstall,
    RedisInstall,
    find_postgres,
    find_redis,
)
from .mariadb import LocalMySQL, MySQLInstall, find_mysql
from .places import _make_workdir, cache_root, sweep_stale, tmp_base
from .process import LocalInstance, free_port
from .servers import LocalElasticsearch, LocalPostgres, LocalRedis, _InstalledServer
from .template import postgres_template

if TYPE_CHECKING:
    from ...descriptors import Resolved

__all__ = [
    "INITDB_ARGS",
    "MARKER",
    "TMP_PREFIX",
    "Account",
    "ElasticsearchInstall",
    "LocalBackend",
    "LocalCommand",
    "LocalElasticsearch",
    "LocalInstance",
    "LocalMySQL",
    "LocalPostgres",
    "LocalRedis",
    "MySQLInstall",
    "PostgresInstall",
    "RedisInstall",
    "cache_root",
    "find_mysql",
    "find_postgres",
    "find_redis",
    "free_port",
    "postgres_template",
    "server_account",
    "sweep_stale",
    "tmp_base",
]

# -- the backend ----------------------------------------------------------------------------

_SERVERS: dict[str, type[_InstalledServer[Any]]] = {
    server.kind: server for server in (LocalPostgres, LocalRedis, LocalElasticsearch, LocalMySQL)
}
"""The kinds this backend runs, each with the server class that runs it."""
KINDS = tuple(kind for kind in descriptors.KINDS if kind in _SERVERS)
"""The kinds of :data:`svcenv.descriptors.KINDS` that have a local server, in the order they were defined."""
_swept: set[Path] = set()


class LocalBackend(Backend):
    """Runs Postgres, Redis, Elasticsearch and MariaDB from local installations, as child processes."""

    name = "local"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: list[LocalInstance] = []

    def check(self) -> None:
        """Raise ``BackendUnavailable`` if no server at all is installed; sweep stale directories."""
        if not sys.platform.startswith("linux"):
            raise BackendUnavailable(f"local: needs Linux (prctl, pidfd, /proc); this is {sys.platform}")
        found = {kind: self._locate(kind) for kind in KINDS}
        if all(isinstance(f, str) for f in found.values()):
            said = "; ".join(f"{kind}: {reason}" for kind, reason in found.items())
            raise BackendUnavailable(f"local: no local servers found ({said})")
        base = tmp_base()
        if base not in _swept:
            _swept.add(base)
            sweep_stale(base)

    @staticmethod
    def _locate(kind: str) -> object:
        """The installation of ``kind``, or (a ``str``) why there is none."""
        try:
            return _SERVERS[kind].locate()
        except (_Missing, OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            return str(exc)

    def capabilities(self) -> dict[str, str]:
        """Kind -> what would run it here (``"postgres 15.20 at /usr/lib/postgresql/15/bin"``) or why not."""
        described: dict[str, str] = {}
        for kind in KINDS:
            server, found = _SERVERS[kind], self._locate(kind)
            if isinstance(found, str):
                described[kind] = f"not found: {found}"
                continue
            text = server.describe(found)
            runs_as = server.run_account_name() if os.geteuid() == 0 else None
            if runs_as is not None:
                problem = server.account_problem()
                text = f"unavailable: {problem}" if problem else f"{text}, runs as user {runs_as!r}"
            described[kind] = text
        return described

    def supports(self, service: Service | Resolved) -> str | None:
        """None if this backend can run ``service`` (a descriptor or a resolved one); else the reason it cannot."""
        service = service if isinstance(service, Service) else service.service
        kind = service.kind
        container = [n for n in ("build", "files", "volumes", "options", "entrypoint", "labels") if getattr(service, n)]
        if container:
            return f"local: cannot serve {service.name!r}: it sets {', '.join(container)}, which only containers have"
        if kind == Service.kind:
            return command_problem(service)
        if kind not in KINDS or not isinstance(service, descriptors.KINDS[kind]):
            return (
                f"local: cannot run service {service.name!r}: the local backend runs only "
                f"{', '.join(KINDS)} from local installations, not images"
            )
        found = self._locate(kind)
        if isinstance(found, str):
            return f"local: cannot serve {kind}: {found}"
        problem = _SERVERS[kind].account_problem()
        if problem:
            return f"local: cannot serve {kind}: {problem}"
        program = service.local_program
        if service.command and (program is None or os.path.basename(service.command[0]) != program):
            expected = f"start with {program!r}" if program else "be left unset"
            return f"local: cannot serve {service.name!r}: its command must {expected} to run locally"
        return None

    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> LocalInstance:
        reason = self.supports(resolved)
        if reason:
            raise BackendUnavailable(reason)
        if resolved.service.kind == Service.kind:
            return self._run_command(resolved, labels)
        server = _SERVERS[resolved.service.kind]
        install = server.locate()
        account = server.run_account()
        workdir = _make_workdir(labels, resolved.name)
        try:
            instance = server(resolved, labels, workdir, account, install)
            instance.prepare()
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with self._lock:
            self._instances.append(instance)
        return instance

    def _run_command(self, resolved: Resolved, labels: Mapping[str, str]) -> LocalCommand:
        workdir = _make_workdir(labels, resolved.name)
        try:
            instance = LocalCommand(resolved, labels, workdir, None)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with self._lock:
            self._instances.append(instance)
        return instance

    def attach(self, snapshot: Mapping[str, Any]) -> Instance:
        """The server of another process (its pid and log; a ``log_path`` key in ``snapshot`` wins)."""
        from .attached import AttachedProcess

        return AttachedProcess(snapshot)

    def cleanup(self, labels: Mapping[str, str]) -> int:
        """Stop every instance this backend started whose labels include ``labels``; return how many."""
        with self._lock:
            matching = [i for i in self._instances if all(i.labels.get(k) == v for k, v in labels.items())]
            self._instances = [i for i in self._instances if i not in matching]
        removed = 0
        for instance in matching:
            if not instance.stopped:
                instance.stop()
                removed += 1
        return removed
