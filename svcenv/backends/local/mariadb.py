"""MariaDB as a local process (:class:`LocalMySQL`): finding ``mariadbd``, its cached data directory, setup.

Where the server comes from: ``SVCENV_MYSQL_BIN`` (the binary or its directory),
else ``mariadbd`` or ``mysqld`` on ``PATH``, else in ``/usr/sbin`` (Debian's
``mariadb-server``). It needs ``mariadb-install-db`` (or ``mysql_install_db``)
next to it, on ``PATH`` or in ``/usr/bin``; Oracle MySQL is not supported here.

``mariadb-install-db`` runs once per (server, version, account): the result is
cached next to the Postgres templates and copied per instance. Its only
administrator is ``root@localhost`` (and the calling OS user's account),
authenticated by ``unix_socket``: only the OS user who runs svcenv can log in,
over the socket in the instance's private (0700) directory, and nobody can
over TCP. After the start, svcenv sets the root password, creates the database
and the user over that socket, sending password hashes, never passwords. The
server listens on 127.0.0.1 only and, when svcenv runs as root, runs as the
``mysql`` account (Debian's package creates it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pwd
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._util import NotYet, poll
from ...errors import BackendUnavailable, ServiceExited
from ...mysql import MySQL
from ._common import COMMAND_TIMEOUT_S, TMP_PREFIX, _executable, _Missing, _run
from .accounts import Account, _account_problem, _chown, _existing_account, server_account
from .places import _write_marker, tmp_base
from .servers import _InstalledServer
from .template import _copy_tree, cached_data_dir, publish, template_key

__all__ = [
    "LocalMySQL",
    "MySQLInstall",
    "find_mysql",
    "mariadb_template",
    "mysql_account",
    "mysql_account_name",
    "mysql_account_problem",
]

log = logging.getLogger("svcenv")

PROGRAM = "mariadbd"
"""What a descriptor's own ``command`` must start with to run locally."""
ACCOUNT = "mysql"
TEMPLATE_LAYOUT = 1
"""Bump when the template's contents change, so old cache entries are not reused."""

SERVER_ARGS = (
    "--skip-name-resolve",
    "--skip-log-bin",
    "--character-set-server=utf8mb4",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=8M",  # a smaller data directory to copy
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
    # Plain I/O: tmpfs has no O_DIRECT, and containers often forbid io_uring/libaio.
    "--innodb-flush-method=fsync",
    "--innodb-use-native-aio=0",
    # A throw-away test server: speed over crash safety.
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--loose-innodb-buffer-pool-load-at-startup=0",
    "--loose-innodb-buffer-pool-dump-at-shutdown=0",
)
"""Options of every server (and of ``mariadb-install-db``)."""


# -- discovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MySQLInstall:
    """A MariaDB server binary, its ``mariadb-install-db`` and its version (``"10.11.19"``)."""

    server: Path
    install_db: Path
    version: str

    @property
    def basedir(self) -> Path:
        """The installation prefix (``/usr`` for ``/usr/sbin/mariadbd``)."""
        return self.server.parent.parent


def _server_candidates(override: str | None, path: str | None) -> list[Path]:
    names = ("mariadbd", "mysqld")
    if override:
        given = Path(override)
        return [given / name for name in names] if given.is_dir() else [given]
    found = [Path(p) for p in (shutil.which(name, path=path) for name in names) if p]
    return [*found, *(Path("/usr/sbin") / name for name in names)]


def _install_db_for(server: Path, path: str | None) -> Path | None:
    names = ("mariadb-install-db", "mysql_install_db")
    real = Path(os.path.realpath(server))
    dirs = dict.fromkeys([server.parent, real.parent, real.parent.parent / "bin", real.parent.parent / "scripts"])
    for directory in dirs:
        for name in names:
            if _executable(directory / name):
                return directory / name
    for name in names:
        which = shutil.which(name, path=path)
        if which:
            return Path(which)
    for name in names:
        if _executable(Path("/usr/bin") / name):
            return Path("/usr/bin") / name
    return None


@functools.lru_cache(maxsize=8)
def _find_mysql(override: str | None, path: str | None) -> MySQLInstall:
    candidates = _server_candidates(override, path)
    for server in candidates:
        if not _executable(server):
            continue
        said = _run([str(server), "--no-defaults", "--version"])
        if "mariadb" not in said.lower():
            raise _Missing(f"{server} is not MariaDB ({said.strip()[:80]}); the local backend runs MariaDB only")
        install_db = _install_db_for(server, path)
        if install_db is None:
            raise _Missing(f"no mariadb-install-db next to {server}, on PATH or in /usr/bin")
        found = re.search(r"Ver\s+(\d+(?:\.\d+)*)", said)
        return MySQLInstall(server, install_db, found.group(1) if found else said.strip())
    where = f"SVCENV_MYSQL_BIN={override}" if override else "PATH and /usr/sbin"
    raise _Missing(
        f"no mariadbd (or mysqld) in {where}; install MariaDB (Debian: apt-get install mariadb-server) "
        "or set SVCENV_MYSQL_BIN"
    )


def find_mysql() -> MySQLInstall:
    """The MariaDB server to use; raises ``_Missing`` saying where it looked."""
    return _find_mysql(os.environ.get("SVCENV_MYSQL_BIN"), os.environ.get("PATH"))


# -- the account ----------------------------------------------------------------------------


def _mysql_entry() -> Account | None:
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def mysql_account_problem() -> str | None:
    """Why no account can run MariaDB here, or None (no side effects)."""
    if os.geteuid() != 0 or _mysql_entry() is not None:
        return None
    problem = _account_problem()
    return problem.replace("Postgres and Elasticsearch refuse", "MariaDB refuses") if problem else None


def mysql_account_name() -> str:
    """Who MariaDB would run as when svcenv runs as root (no side effects)."""
    existing = _mysql_entry() or _existing_account()
    return existing.name if existing else "svcenv"


def mysql_account() -> Account | None:
    """The account MariaDB runs as: None when not root; else ``mysql``, else the Postgres account (or ``svcenv``)."""
    if os.geteuid() != 0:
        return None
    return _mysql_entry() or server_account()


def _socket_user() -> str:
    """The OS user svcenv runs as: the server's ``unix_socket`` administrator."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise BackendUnavailable(f"local: uid {os.geteuid()} has no user name, which MariaDB's setup needs") from None


# -- the template ---------------------------------------------------------------------------


def _template_key(install: MySQLInstall, account: Account | None, socket_user: str) -> str:
    server = str(install.server.resolve())
    material = {"server": server, "version": install.version, "args": SERVER_ARGS, "socket_user": socket_user}
    return template_key(TEMPLATE_LAYOUT, account, **material)


def mariadb_template(install: MySQLInstall, account: Account | None) -> tuple[Path, bool]:
    """The cached data directory ``mariadb-install-db`` made; builds it if missing.

    Returns ``(data directory, whether this call built it)``; concurrent callers wait for one build.
    """
    socket_user = _socket_user()
    name = f"mariadb-{install.version}-{_template_key(install, account, socket_user)}"
    return cached_data_dir(name, lambda final: _build_template(install, account, socket_user, final))


def _build_template(install: MySQLInstall, account: Account | None, socket_user: str, final: Path) -> None:
    started = time.monotonic()
    # mariadb-install-db runs in a scratch directory the account can reach (the cache may be under /root).
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-build-", dir=tmp_base()))
    try:
        _write_marker(scratch, {"build": final.name})
        _chown(scratch, account)
        argv = [str(install.install_db), "--no-defaults", f"--basedir={install.basedir}"]
        argv += [f"--datadir={scratch / 'data'}", "--auth-root-authentication-method=socket"]
        argv += [f"--auth-root-socket-user={socket_user}", "--skip-test-db", *SERVER_ARGS]
        _run(argv, COMMAND_TIMEOUT_S, account=account, env=_server_env(), cwd=scratch)
        info = {"mariadb": install.version, "server": str(install.server), "socket_user": socket_user}
        publish(scratch / "data", final, account, info)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("svcenv: built MariaDB %s template %s in %.2fs", install.version, final, time.monotonic() - started)


def _server_env() -> dict[str, str]:
    # Client/server variables of the caller (MYSQL_TCP_PORT, MYSQL_UNIX_PORT, ...) must not steer the server.
    return {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "MARIADB"))}


# -- the instance ---------------------------------------------------------------------------


def native_hash(password: str) -> str:
    """The ``mysql_native_password`` hash of ``password`` (what ``IDENTIFIED BY PASSWORD`` takes)."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()  # noqa: S324


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class LocalMySQL(_InstalledServer[MySQLInstall]):
    """``mariadbd`` on a copy of the cached data directory; root, database and user are set as it starts."""

    kind = "mysql"
    described_as = "mariadb {version} at {server}"
    stop_grace = 10.0
    locate = staticmethod(find_mysql)

    @classmethod
    def account_problem(cls) -> str | None:
        return mysql_account_problem()

    @classmethod
    def run_account_name(cls) -> str | None:
        return mysql_account_name()

    @classmethod
    def run_account(cls) -> Account | None:
        return mysql_account()

    @property
    def service(self) -> MySQL:
        service = self.resolved.service
        assert isinstance(service, MySQL)
        return service

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def socket(self) -> Path:
        return self.workdir / "mysqld.sock"

    def prepare(self) -> None:
        template, _ = mariadb_template(self.install, self.account)
        _chown(self.workdir, self.account)  # the server creates its socket, pid file and tmp here
        _copy_tree(template, self.data, self.account)
        tmp = self.workdir / "tmp"
        tmp.mkdir(mode=0o700)
        _chown(tmp, self.account)

    def argv(self, port: int) -> list[str]:
        argv = [str(self.install.server), "--no-defaults", f"--basedir={self.install.basedir}"]
        argv += [f"--datadir={self.data}", f"--tmpdir={self.workdir / 'tmp'}", *SERVER_ARGS]
        command = self.service.command
        if command and os.path.basename(command[0]) == PROGRAM:
            argv += command[1:]
        # Ours come last: later options win.
        argv += [f"--socket={self.socket}", f"--pid-file={self.workdir / 'mariadbd.pid'}"]
        return [*argv, "--bind-address=127.0.0.1", f"--port={port}"]

    def env(self) -> dict[str, str]:
        return _server_env()

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        def ready() -> None:
            self._check_running(log_offset)
            if self.socket.exists() and "ready for connections" in self._read_log(log_offset):
                return
            raise NotYet("did not accept connections on its unix socket in time")

        try:
            poll(ready, deadline - time.monotonic(), first=0.005, cap=0.02)
        except NotYet as late:
            raise ServiceExited(str(late)) from None
        self._set_up()

    def _set_up(self) -> None:
        """Root password, database, user: over the socket, as the ``unix_socket`` administrator."""
        try:
            import pymysql
        except ImportError as exc:
            raise ImportError("the MySQL client (PyMySQL) is not installed: pip install 'svcenv[mysql]'") from exc

        service, secrets = self.service, self.resolved.secrets
        root = _literal(native_hash(secrets["root_password"]))
        statements = [
            f"ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING {root}",
            f"CREATE USER 'root'@'%' IDENTIFIED BY PASSWORD {root}",
            "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION",
            f"CREATE DATABASE IF NOT EXISTS {_ident(service.dbname)}",
        ]
        if not service.is_root:
            user = f"{_literal(service.user)}@'%'"
            statements.append(f"CREATE USER {user} IDENTIFIED BY PASSWORD {_literal(native_hash(secrets['password']))}")
            pattern = service.dbname.replace("_", "\\_")  # in GRANT, '_' is a wildcard
            statements.append(f"GRANT ALL ON {_ident(pattern)}.* TO {user}")
        conn: Any = pymysql.connect(unix_socket=str(self.socket), user=_socket_user(), connect_timeout=10)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()
