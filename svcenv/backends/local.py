"""The local backend (Linux): Postgres, Redis and Elasticsearch as processes on this machine, no engine.

Where the servers come from:

* Postgres: the directory ``SVCENV_POSTGRES_BIN`` names, else the one of
  ``postgres`` on ``PATH``, else ``pg_config --bindir``, else the highest
  version under ``/usr/lib/postgresql/*/bin``; it needs ``postgres`` and ``initdb``.
* Redis: ``SVCENV_REDIS_BIN`` (the binary or its directory), else ``redis-server``
  on ``PATH``.
* Elasticsearch: only a distribution that ``SVCENV_ELASTICSEARCH_HOME`` (or
  ``ES_HOME``) points at; there is no other way to get one locally.
* Generic :class:`~svcenv.Service` descriptors name images, which this backend
  cannot run; :meth:`LocalBackend.create` raises ``BackendUnavailable`` for them.

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

import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import logging
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .._paths import cache_dir
from ..descriptors import Elasticsearch, Postgres, Redis, Service
from ..errors import BackendUnavailable, ServiceExited
from .base import LABEL_ENVIRONMENT, Backend, Instance

if TYPE_CHECKING:
    from ..descriptors import Resolved

__all__ = [
    "ElasticsearchInstall",
    "LocalBackend",
    "LocalElasticsearch",
    "LocalInstance",
    "LocalPostgres",
    "LocalRedis",
    "PostgresInstall",
    "RedisInstall",
    "postgres_template",
]

log = logging.getLogger("svcenv")

TMP_PREFIX = "svcenv-local-"
MARKER = "svcenv.json"
LOG_FILE = "server.log"
WATCHDOG = Path(__file__).with_name("_watchdog.py")
PORT_ATTEMPTS = 3
"""How often a start is retried when another process took the chosen port first."""
INITDB_ARGS = (
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C",
    "--wal-segsize=1",  # 1 MB WAL segments: a smaller data directory to copy
    "--no-instructions",
    "--no-sync",
)
TEMPLATE_LAYOUT = 1
"""Bump when the template's contents change, so old cache entries are not reused."""
COMMAND_TIMEOUT_S = 120.0


class _Missing(Exception):
    """A server is not installed (the message says where svcenv looked)."""


def _run(
    argv: list[str],
    timeout: float = 10.0,
    *,
    stdin: str | None = None,
    account: Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion (as ``account`` if given); its stdout, or RuntimeError with its output."""
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )
    if done.returncode != 0:
        output = " ".join((done.stdout + done.stderr).split())[-800:]
        raise RuntimeError(f"{' '.join(argv[:2])} exited with status {done.returncode}: {output}")
    return str(done.stdout)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# -- discovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresInstall:
    """A PostgreSQL installation: its ``bin`` directory and version (``"15.20"``)."""

    bindir: Path
    version: str

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"


@dataclass(frozen=True)
class RedisInstall:
    """A ``redis-server`` binary and its version."""

    binary: Path
    version: str


@dataclass(frozen=True)
class ElasticsearchInstall:
    """An unpacked Elasticsearch distribution."""

    home: Path

    @property
    def launcher(self) -> Path:
        return self.home / "bin" / "elasticsearch"


def _major_version(bindir: str) -> tuple[int, ...]:
    found = re.search(r"/(\d+(?:\.\d+)*)/bin/?$", bindir)
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def _postgres_candidates(override: str | None, path: str | None) -> Iterator[Path]:
    if override:
        yield Path(override)
        return  # an explicit choice must not silently fall through to another install
    on_path = shutil.which("postgres", path=path)
    if on_path:
        yield Path(os.path.realpath(on_path)).parent
    pg_config = shutil.which("pg_config", path=path)
    if pg_config:
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            yield Path(_run([pg_config, "--bindir"]).strip())
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True):
        yield Path(bindir)


@functools.lru_cache(maxsize=8)
def _find_postgres(override: str | None, path: str | None) -> PostgresInstall:
    looked: list[str] = []
    for bindir in _postgres_candidates(override, path):
        install = PostgresInstall(bindir, "")
        if not (_executable(install.postgres) and _executable(install.initdb)):
            looked.append(str(bindir))
            continue
        said = _run([str(install.postgres), "--version"])
        found = re.search(r"\(PostgreSQL\)\s+(\S+)", said)
        return PostgresInstall(bindir, found.group(1) if found else said.strip())
    where = f"SVCENV_POSTGRES_BIN={override}" if override else "PATH, pg_config --bindir, /usr/lib/postgresql/*/bin"
    checked = f" (checked {', '.join(dict.fromkeys(looked))})" if looked else ""
    raise _Missing(
        f"no postgres and initdb binaries in {where}{checked}; install PostgreSQL or set SVCENV_POSTGRES_BIN"
    )


def find_postgres() -> PostgresInstall:
    """The PostgreSQL installation to use; raises ``_Missing`` saying where it looked."""
    return _find_postgres(os.environ.get("SVCENV_POSTGRES_BIN"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_redis(override: str | None, path: str | None) -> RedisInstall:
    if override:
        binary = Path(override) / "redis-server" if Path(override).is_dir() else Path(override)
        where = f"SVCENV_REDIS_BIN={override}"
    else:
        which = shutil.which("redis-server", path=path)
        binary = Path(which) if which else Path("redis-server")
        where = "PATH"
    if not _executable(binary):
        raise _Missing(f"no redis-server in {where}; install Redis or set SVCENV_REDIS_BIN")
    said = _run([str(binary), "--version"])
    found = re.search(r"v=(\S+)", said)
    return RedisInstall(binary, found.group(1) if found else said.strip())


def find_redis() -> RedisInstall:
    """The ``redis-server`` to use; raises ``_Missing`` saying where it looked."""
    return _find_redis(os.environ.get("SVCENV_REDIS_BIN"), os.environ.get("PATH"))


def find_elasticsearch() -> ElasticsearchInstall:
    """The distribution ``SVCENV_ELASTICSEARCH_HOME``/``ES_HOME`` names; raises ``_Missing`` otherwise."""
    home = os.environ.get("SVCENV_ELASTICSEARCH_HOME") or os.environ.get("ES_HOME")
    if not home:
        raise _Missing("no local distribution; set SVCENV_ELASTICSEARCH_HOME")
    install = ElasticsearchInstall(Path(home))
    if not _executable(install.launcher):
        raise _Missing(f"no executable bin/elasticsearch in {home}; set SVCENV_ELASTICSEARCH_HOME to a distribution")
    return install


# -- the account servers run as when we are root -----------------------------------------


@dataclass(frozen=True)
class Account:
    """The unprivileged user that runs Postgres and Elasticsearch when svcenv runs as root."""

    name: str
    uid: int
    gid: int


ACCOUNTS = ("postgres", "svcenv")
NOLOGIN = "/usr/sbin/nologin"


def _existing_account() -> Account | None:
    for name in ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    return None


def _account_problem() -> str | None:
    """Why no account can run Postgres here, or None (no side effects)."""
    if os.geteuid() != 0 or _existing_account() is not None or os.environ.get("SVCENV_LOCAL_CREATE_USER") == "1":
        return None
    return (
        "svcenv runs as root, and Postgres and Elasticsearch refuse to run as root, but there is no 'postgres' "
        "or 'svcenv' account to run them as: create one (e.g. `useradd --system svcenv`), "
        "set SVCENV_LOCAL_CREATE_USER=1 to let svcenv create 'svcenv', or run as a normal user"
    )


_account_lock = threading.Lock()


def server_account() -> Account | None:
    """The account to run servers as: None when not root (they run as us)."""
    if os.geteuid() != 0:
        return None
    problem = _account_problem()
    if problem:
        raise BackendUnavailable(f"local: {problem}")
    with _account_lock:
        account = _existing_account()
        if account is None:
            log.info("svcenv: creating system user 'svcenv' to run servers (SVCENV_LOCAL_CREATE_USER=1)")
            with contextlib.suppress(RuntimeError):  # another process may have created it meanwhile
                _run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", NOLOGIN, "svcenv"])
            account = _existing_account()
        if account is None:
            raise BackendUnavailable("local: could not create the system user 'svcenv' (useradd failed)")
        return account


def _chown(path: Path, account: Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _server_env() -> dict[str, str]:
    # libpq/server variables of the caller (PGDATA, PGPORT, ...) must not steer the server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


# -- places ---------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where Postgres templates are cached: ``$SVCENV_CACHE_DIR/local`` or ``~/.cache/svcenv/local``."""
    return cache_dir() / "local"


def tmp_base() -> Path:
    """Where private directories go: ``SVCENV_LOCAL_TMPDIR``, else ``/dev/shm`` if writable, else the temp dir."""
    explicit = os.environ.get("SVCENV_LOCAL_TMPDIR")
    if explicit:
        return Path(explicit)
    shm = Path("/dev/shm")  # noqa: S108 (each instance makes a private 0700 directory in it)
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a process from a later one with the same pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie has exited
    return fields[19]


def _alive(pid: int | None, started: str | None) -> bool:
    if not pid:
        return False
    now = _start_time(pid)
    return now is not None and (started is None or now == started)


def _make_workdir(labels: Mapping[str, str], service: str) -> Path:
    env_id = re.sub(r"[^A-Za-z0-9]", "", labels.get(LABEL_ENVIRONMENT, "x"))[:12] or "x"
    short = re.sub(r"[^a-z0-9_.]", "_", service)[:20]
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{env_id}-{short}-", dir=tmp_base()))
    _write_marker(workdir, {"environment": env_id, "service": service})
    return workdir


def _write_marker(workdir: Path, extra: Mapping[str, object]) -> None:
    marker = {"owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()), **extra}
    (workdir / MARKER).write_text(json.dumps(marker))


def _stale(entry: Path) -> bool:
    try:
        owner = int(entry.name[len(TMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    try:
        marker = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    if _alive(owner, marker.get("owner_start")):
        return False
    return not _alive(marker.get("watchdog_pid"), marker.get("watchdog_start"))


def sweep_stale(base: Path | None = None) -> int:
    """Remove private directories whose owner and watchdog are both gone; return how many."""
    base = base or tmp_base()
    removed = 0
    try:
        entries = [e for e in base.iterdir() if e.name.startswith(TMP_PREFIX)]
    except OSError:
        return 0
    for entry in entries:
        if entry.is_dir() and _stale(entry):
            log.debug("svcenv: removing stale %s", entry)
            release_shared_memory(entry / "data")
            shutil.rmtree(entry, ignore_errors=True)
            removed += not entry.exists()
    return removed


# -- the Postgres template ----------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_tree(source: Path, target: Path, account: Account | None) -> None:
    """Copy a data directory, keeping modes and (as root) owners."""
    if shutil.which("cp"):
        _run(["cp", "-a", "--", str(source), str(target)], timeout=COMMAND_TIMEOUT_S)
        return
    shutil.copytree(source, target, symlinks=True)
    if account is not None:
        for root, dirs, files in os.walk(target):
            for name in (".", *dirs, *files):
                os.lchown(os.path.join(root, name), account.uid, account.gid)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _template_key(install: PostgresInstall, account: Account | None, user: str, dbname: str) -> str:
    key = {
        "layout": TEMPLATE_LAYOUT,
        "bindir": str(install.bindir.resolve()),
        "version": install.version,
        "user": user,
        "dbname": dbname,
        "initdb": INITDB_ARGS,
        "owner": account.uid if account else os.geteuid(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _initdb(install: PostgresInstall, account: Account | None, data: Path, user: str, dbname: str) -> None:
    """Run initdb into ``data`` and create ``dbname`` in single-user mode, as ``account``."""
    env, cwd = _server_env(), data.parent
    initdb = [str(install.initdb), "-D", str(data), f"--username={user}", *INITDB_ARGS]
    _run(initdb, COMMAND_TIMEOUT_S, account=account, env=env, cwd=cwd)
    script = "" if dbname == "postgres" else f"CREATE DATABASE {_quote_ident(dbname)}\n"
    # A checkpoint with a small min_wal_size drops WAL segments the copy would otherwise carry.
    single = [str(install.postgres), "--single", "-D", str(data), "-F", "-c", "exit_on_error=true"]
    single += ["-c", "min_wal_size=2MB", "-c", "max_wal_size=4MB", "postgres"]
    _run(single, COMMAND_TIMEOUT_S, stdin=script + "CHECKPOINT\n", account=account, env=env, cwd=cwd)


def postgres_template(install: PostgresInstall, account: Account | None, user: str, dbname: str) -> tuple[Path, bool]:
    """The cached template data directory for (install, user, dbname); builds it if missing.

    Returns ``(data directory, whether this call built it)``. Concurrent callers,
    in this or other processes, wait for one build under a file lock.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"pg-{install.version}-{_template_key(install, account, user, dbname)}"
    if (final / MARKER).is_file():
        return final / "data", False
    with _file_lock(root / f"{final.name}.lock"):
        if (final / MARKER).is_file():
            return final / "data", False
        for leftover in root.glob(f"{final.name}.build-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a build that died; we hold the lock
        _build_template(install, account, user, dbname, final)
    return final / "data", True


def _build_template(install: PostgresInstall, account: Account | None, user: str, dbname: str, final: Path) -> None:
    started = time.monotonic()
    # initdb runs in a scratch directory the account can reach (the cache may be under /root).
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-build-", dir=tmp_base()))
    try:
        _write_marker(scratch, {"build": final.name})
        _chown(scratch, account)
        _initdb(install, account, scratch / "data", user, dbname)
        staging = final.with_name(f"{final.name}.build-{os.getpid()}")
        staging.mkdir()
        _copy_tree(scratch / "data", staging / "data", account)
        info = {"postgres": install.version, "bindir": str(install.bindir), "user": user, "dbname": dbname}
        (staging / MARKER).write_text(json.dumps(info))
        os.sync()  # the rename below must not publish a template whose files are not on disk
        os.rename(staging, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("svcenv: built Postgres %s template %s in %.2fs", install.version, final, time.monotonic() - started)


def release_shared_memory(data: Path) -> bool:
    """Remove the System V segment a killed postmaster left (its ``postmaster.pid`` remains); True if one was."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        shmid = int(lines[6].split()[1])
        pid = int(lines[0])
    except (OSError, IndexError, ValueError):
        return False  # a clean shutdown removes postmaster.pid
    if _alive(pid, None) and Path(f"/proc/{pid}/cwd").resolve() == data.resolve():
        return False  # still running
    import ctypes

    ipc_rmid = 0
    return int(ctypes.CDLL(None, use_errno=True).shmctl(shmid, ipc_rmid, None)) == 0


# -- ports and the owner pipe ------------------------------------------------------------

_ports_lock = threading.Lock()
_recent_ports: deque[int] = deque(maxlen=256)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, not one this process handed out recently."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _recent_ports:
                _recent_ports.append(port)
                return port
    return port


_owner_lock = threading.Lock()
_owner_pipe: tuple[int, int, int] | None = None  # (creator pid, read end, write end)


def _owner_fd() -> int:
    """The read end of a pipe only this process writes to: watchdogs read EOF when we die."""
    global _owner_pipe
    with _owner_lock:
        if _owner_pipe is None or _owner_pipe[0] != os.getpid():  # after fork(), make our own
            read_end, write_end = os.pipe()  # both close-on-exec: no other child inherits them
            _owner_pipe = (os.getpid(), read_end, write_end)
        return _owner_pipe[1]


# -- instances ------------------------------------------------------------------------------


class _PortTaken(Exception):
    """The server could not bind its port (another process took it first)."""


class LocalInstance(Instance):
    """One server process, started through a watchdog, in a private directory.

    ``id`` is the server's pid once started; ``workdir`` holds its data and log.
    """

    backend = "local"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_grace: ClassVar[float] = 5.0
    """Seconds the server gets to stop before it is killed."""

    def __init__(self, resolved: Resolved, labels: Mapping[str, str], workdir: Path, account: Account | None) -> None:
        self.resolved = resolved
        self.labels = dict(labels)
        self.workdir = workdir
        self.account = account
        self.id = ""
        self.host = "127.0.0.1"
        self.ports: dict[int, int] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._saved_log = ""

    # -- what a kind provides ---------------------------------------------------------------

    def prepare(self) -> None:
        """Fill the private directory before the first start (called by ``create``)."""

    def argv(self, port: int) -> list[str]:
        """The server's command line for listening on ``port``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The server's environment."""
        return dict(os.environ)

    def await_up(self, port: int, log_offset: int, deadline: float) -> None:
        """Return once the server listens (raise ``_PortTaken`` if it could not bind)."""

    def release(self) -> None:
        """Free what the stopped server may hold outside its directory."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_FILE

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopped

    @property
    def watchdog_pid(self) -> int | None:
        """The pid of the watchdog that supervises the server."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        deadline = time.monotonic() + self.resolved.service.effective_timeout
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(port)
            try:
                self.await_up(port, offset, deadline)
            except _PortTaken:
                self._terminate()
                if attempt == PORT_ATTEMPTS:
                    raise ServiceExited(f"could not bind a free port in {PORT_ATTEMPTS} attempts") from None
                continue
            self.ports = {self.resolved.ports[0]: port} if self.resolved.ports else {}
            return

    def _spawn(self, port: int) -> None:
        user = self.account.name if self.account else ""
        grace = f"{self.stop_grace:g}"
        fd = _owner_fd()
        command = [sys.executable, "-I", "-S", str(WATCHDOG), str(fd), str(int(self.stop_signal)), grace, user]
        command += [str(self.workdir), "--", *self.argv(port)]
        with self._lock:
            if self._stopped:
                raise ServiceExited("stopped before it started")
            with self.log_path.open("ab") as log_file:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    pass_fds=(fd,),
                    start_new_session=True,
                    env=self.env(),
                )
            self._proc = proc
            pid = _read_pid(proc)
        if pid is None:
            if proc.poll() is None:
                proc.kill()  # the server was never forked, or PDEATHSIG takes it along
            proc.wait()
            raise ServiceExited(f"its watchdog exited with status {proc.returncode} before starting it")
        self.id = str(pid)
        _write_marker(
            self.workdir,
            {"service": self.resolved.name, "watchdog_pid": proc.pid, "watchdog_start": _start_time(proc.pid)},
        )

    def _check_running(self, log_offset: int) -> None:
        """Raise if the server was stopped or has exited (``_PortTaken`` if its port was taken)."""
        if self._stopped:
            raise ServiceExited("stopped while starting")
        status = self.exit_status()
        if status is not None:
            if "Address already in use" in self._read_log(log_offset):
                raise _PortTaken
            raise ServiceExited(f"exited with status {status} while starting")

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._terminate()
        self.release()
        self._saved_log = self.logs()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        """Stop the server through its watchdog; kill both if that takes too long."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the watchdog stops the server and exits with its status
            try:
                proc.wait(self.stop_grace + 5.0)
            except subprocess.TimeoutExpired:
                if self.id:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(self.id), signal.SIGKILL)  # still unreaped: the watchdog lives
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def exit_status(self) -> int | None:
        """``None`` while the server runs; else its exit status (``128+n`` when killed by signal ``n``)."""
        proc = self._proc
        return proc.poll() if proc is not None else None

    def logs(self, tail: int | None = None) -> str:
        text = self._read_log(0) if self.log_path.exists() else self._saved_log
        if tail is None:
            return text
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.resolved.name!r} pid={self.id or '-'} {self.workdir}>"


def _read_pid(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """The server pid the watchdog prints first (None if the watchdog died first)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    return int(line) if line.strip().isdigit() else None


def _pause(delay: float, deadline: float) -> float:
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
    return min(delay * 1.5, 0.02)


class LocalPostgres(LocalInstance):
    """Postgres on a copy of the cached template; the role's password is set as it starts."""

    stop_signal = signal.SIGINT  # "fast shutdown"

    def __init__(
        self,
        resolved: Resolved,
        labels: Mapping[str, str],
        workdir: Path,
        account: Account | None,
        install: PostgresInstall,
    ) -> None:
        super().__init__(resolved, labels, workdir, account)
        self.install = install
        service = resolved.service
        assert isinstance(service, Postgres)
        self.service = service

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
        delay = 0.002
        pidfile = self.data / "postmaster.pid"
        while True:
            self._check_running(log_offset)
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":  # what pg_ctl waits for
                    break
            if time.monotonic() > deadline:
                raise ServiceExited("did not accept connections on its unix socket in time")
            delay = _pause(delay, deadline)
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
            verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier.decode()))
            )


class LocalRedis(LocalInstance):
    """``redis-server`` with a private config file (the password is not on its command line)."""

    def __init__(
        self,
        resolved: Resolved,
        labels: Mapping[str, str],
        workdir: Path,
        account: Account | None,
        install: RedisInstall,
    ) -> None:
        super().__init__(resolved, labels, workdir, account)
        self.install = install

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
        delay = 0.001
        while True:
            logged = self._read_log(log_offset)
            if "Ready to accept connections" in logged:
                return
            self._check_running(log_offset)
            # A --loglevel from the descriptor may hide that line; then a PING tells.
            if "Address already in use" not in logged and _redis_answers(port):
                return
            if time.monotonic() > deadline:
                raise ServiceExited("did not accept connections in time")
            delay = _pause(delay, deadline)


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


class LocalElasticsearch(LocalInstance):
    """Elasticsearch from a local distribution; settings become ``-E key=value``."""

    stop_grace = 20.0

    def __init__(
        self,
        resolved: Resolved,
        labels: Mapping[str, str],
        workdir: Path,
        account: Account | None,
        install: ElasticsearchInstall,
    ) -> None:
        super().__init__(resolved, labels, workdir, account)
        self.install = install

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


# -- the backend ----------------------------------------------------------------------------

KINDS = ("postgres", "redis", "elasticsearch")
_PROGRAMS = {"postgres": "postgres", "redis": "redis-server"}
_swept: set[Path] = set()


class LocalBackend(Backend):
    """Runs Postgres, Redis and Elasticsearch from local installations, as child processes."""

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
    def _locate(kind: str) -> PostgresInstall | RedisInstall | ElasticsearchInstall | str:
        """The installation of ``kind``, or why there is none."""
        try:
            if kind == "postgres":
                return find_postgres()
            if kind == "redis":
                return find_redis()
            return find_elasticsearch()
        except (_Missing, OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            return str(exc)

    def capabilities(self) -> dict[str, str]:
        """Kind -> what would run it here (``"postgres 15.20 at /usr/lib/postgresql/15/bin"``) or why not."""
        described: dict[str, str] = {}
        for kind in KINDS:
            found = self._locate(kind)
            if isinstance(found, str):
                described[kind] = f"not found: {found}"
                continue
            if isinstance(found, PostgresInstall):
                text = f"postgres {found.version} at {found.bindir}"
            elif isinstance(found, RedisInstall):
                text = f"redis {found.version} at {found.binary}"
            else:
                text = f"elasticsearch at {found.home}"
            if kind != "redis" and os.geteuid() == 0:
                problem = _account_problem()
                account = _existing_account()
                runs_as = account.name if account else "svcenv"
                text = f"unavailable: {problem}" if problem else f"{text}, runs as user {runs_as!r}"
            described[kind] = text
        return described

    def supports(self, service: Service | Resolved) -> str | None:
        """None if this backend can run ``service`` (a descriptor or a resolved one); else the reason it cannot."""
        service = service if isinstance(service, Service) else service.service
        kind = service.kind
        if not isinstance(service, (Postgres, Redis, Elasticsearch)):
            return (
                f"local: cannot run service {service.name!r}: the local backend runs only postgres, redis and "
                "elasticsearch from local installations, not images"
            )
        found = self._locate(kind)
        if isinstance(found, str):
            return f"local: cannot serve {kind}: {found}"
        if kind != "redis":
            problem = _account_problem()
            if problem:
                return f"local: cannot serve {kind}: {problem}"
        program = _PROGRAMS.get(kind)
        if service.command and (program is None or os.path.basename(service.command[0]) != program):
            expected = f"start with {program!r}" if program else "be left unset"
            return f"local: cannot serve {service.name!r}: its command must {expected} to run locally"
        return None

    def create(self, resolved: Resolved, labels: Mapping[str, str]) -> LocalInstance:
        reason = self.supports(resolved)
        if reason:
            raise BackendUnavailable(reason)
        service = resolved.service
        install = self._locate(service.kind)
        account = None if isinstance(service, Redis) else server_account()
        workdir = _make_workdir(labels, resolved.name)
        instance: LocalInstance
        try:
            if isinstance(install, PostgresInstall):
                instance = LocalPostgres(resolved, labels, workdir, account, install)
            elif isinstance(install, RedisInstall):
                instance = LocalRedis(resolved, labels, workdir, account, install)
            else:
                assert isinstance(install, ElasticsearchInstall)
                instance = LocalElasticsearch(resolved, labels, workdir, account, install)
            instance.prepare()
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        with self._lock:
            self._instances.append(instance)
        return instance

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
