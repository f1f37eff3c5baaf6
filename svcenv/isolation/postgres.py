"""Postgres isolation: a template database cloned per test, and connections rolled back at the end."""

from __future__ import annotations

import itertools
import logging
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import psycopg

    from ..handles import PostgresHandle

__all__ = [
    "PostgresTemplate",
    "Setup",
    "escaped",
    "rollback_connection",
    "rolled_back",
    "run_setup",
    "savepoint_connection",
]

Setup: TypeAlias = "Callable[[psycopg.Connection[Any]], None] | str | Path | None"
"""How a template is prepared: a callable given a connection, a ``.sql`` file, SQL text, or
``"package.module:function"``."""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_callable(spec: str) -> Callable[[psycopg.Connection[Any]], None]:
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"postgres template setup {spec!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ConfigurationError(f"postgres template setup {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def run_setup(conn: psycopg.Connection[Any], setup: Setup) -> None:
    """Apply ``setup`` (callable, SQL file, SQL text or ``module:function``) on ``conn``."""
    if setup is None:
        return
    if callable(setup):
        setup(conn)
        return
    text = str(setup)
    path = Path(text)
    if isinstance(setup, Path) or (text.endswith(".sql") and "\n" not in text):
        if not path.is_file():
            raise ConfigurationError(f"postgres template setup file {text!r} does not exist")
        conn.execute(path.read_text(encoding="utf-8").encode())
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
        _load_callable(text)(conn)
    else:
        conn.execute(text.encode())


class PostgresTemplate:
    """A template database built once, cloned into a fresh database per test.

    ::

        template = PostgresTemplate(env[postgres], setup="schema.sql")
        with template.fresh_database() as dbname:
            with env[postgres].connect(dbname) as conn: ...

    With ``prefetch`` > 0 a background worker (its own admin connection) keeps
    that many clones ready, each with an open connection, and drops used
    databases after the test, so a test waits only for a hand-over, not for
    ``CREATE DATABASE`` and ``DROP DATABASE``. No database is handed out twice.
    Names carry a random token, so several processes (xdist workers, parallel
    sessions) can share one server without colliding.
    """

    def __init__(
        self,
        handle: PostgresHandle,
        setup: Setup = None,
        name: str | None = None,
        prefetch: int = 0,
        workers: int = 2,
    ) -> None:
        self.handle = handle
        self.setup = setup
        self.prefetch = prefetch
        self.max_prefetch = max(prefetch, 6)
        self.token = secrets.token_hex(3)
        self.name = name or f"svcenv_tpl_{self.token}"
        self._counter = itertools.count(1)
        self._admin: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._built = False
        self._ready: queue.Queue[tuple[str, psycopg.Connection[Any] | None] | BaseException] = queue.Queue()
        self._tasks: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self.workers = max(1, workers)

    def _conn(self) -> psycopg.Connection[Any]:
        if self._admin is None or self._admin.closed:
            self._admin = self.handle.connect(autocommit=True)
        return self._admin

    def build(self, adopt: bool = False) -> None:
        """Create the template and run the setup hook in it (once).

        With ``adopt``, a complete template of this name that another process built
        (xdist workers of one run, under a lock the caller holds) is used as it is;
        a half-built one (its builder died) is dropped and built again.
        """
        if self._built:
            return
        with self._lock:
            if self._built:
                return
            if adopt:
                row = (
                    self._conn()
                    .execute(b"SELECT datallowconn FROM pg_database WHERE datname = %s", (self.name,))
                    .fetchone()
                )
                if row is not None and not row[0]:
                    self._built = True
                    return
                if row is not None:
                    _drop(self._conn(), self.name)
            self._conn().execute(f"CREATE DATABASE {_ident(self.name)}".encode())
            with self.handle.connect(self.name) as conn:
                run_setup(conn, self.setup)
                conn.commit()
            # No one may connect to the template any more: CREATE DATABASE … TEMPLATE requires that.
            self._conn().execute(f"ALTER DATABASE {_ident(self.name)} WITH ALLOW_CONNECTIONS false".encode())
            self._built = True

    def _new_name(self) -> str:
        return f"svcenv_t_{self.token}_{next(self._counter)}"

    def clone(self) -> str:
        """Create a new database from the template now; return its name."""
        self.build()
        name = self._new_name()
        with self._lock:
            self._conn().execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(self.name)}".encode())
        return name

    def drop(self, name: str) -> None:
        """Drop a database now, terminating its connections first."""
        with self._lock:
            _drop(self._conn(), name)

    # -- the prefetching pool -------------------------------------------------------------------

    def _start_worker(self) -> None:
        self.build()
        # Several workers (each with its own admin connection) keep up with short tests.
        self._workers = [
            threading.Thread(target=self._work, name=f"svcenv-pool-{self.token}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._workers:
            thread.start()
        self._worker = self._workers[0]
        for _ in range(self.prefetch):
            self._tasks.put(("clone", ""))

    def _work(self) -> None:
        admin = self.handle.connect(autocommit=True)
        drops: list[str] = []  # dropped when there is nothing to clone: refills come first
        try:
            while True:
                try:
                    task = self._tasks.get(timeout=0.02 if drops else None)
                except queue.Empty:
                    self._drop_quietly(admin, drops.pop(0))
                    continue
                if task is None:
                    break
                action, name = task
                if action == "drop":
                    drops.append(name)
                    continue
                try:
                    name = self._new_name()
                    admin.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(self.name)}".encode())
                    self._ready.put((name, self.handle.connect(name)))
                except Exception as exc:
                    self._ready.put(exc)
            for name in drops:
                self._drop_quietly(admin, name)
        finally:
            admin.close()

    def _drop_quietly(self, admin: psycopg.Connection[Any], name: str) -> None:
        """Drop a used clone; a failure (the server went away) must not end the worker, whose clone
        requests then fail at once with the server's error instead of leaving tests waiting."""
        try:
            _drop(admin, name)
        except Exception as exc:
            logging.getLogger("svcenv").warning("could not drop test database %s: %s", name, exc)

    def acquire(self, timeout: float = 60.0) -> tuple[str, psycopg.Connection[Any] | None]:
        """A fresh database (name, and an open connection to it when prefetched).

        The pool adapts to demand: when a caller finds it empty, one more clone
        is kept ready from then on, up to :attr:`max_prefetch`.
        """
        if self.prefetch <= 0:
            return self.clone(), None
        if self._worker is None:
            self._start_worker()
        self._tasks.put(("clone", ""))  # refill while this one is in use
        if self._ready.empty() and self.prefetch < self.max_prefetch:
            self.prefetch += 1
            self._tasks.put(("clone", ""))
        item = self._ready.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, name: str, conn: psycopg.Connection[Any] | None = None) -> None:
        """Give a database back: it is dropped (in the background when prefetching)."""
        if conn is not None:
            conn.close()
        if self._worker is not None:
            self._tasks.put(("drop", name))
        else:
            self.drop(name)

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A fresh clone for the block; dropped afterwards even if the block fails."""
        name, conn = self.acquire()
        try:
            yield name
        finally:
            self.release(name, conn)

    @contextmanager
    def fresh_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection to a fresh clone; closed and the clone dropped afterwards."""
        name, conn = self.acquire()
        try:
            if conn is None:
                conn = self.handle.connect(name)
            yield conn
        finally:
            self.release(name, conn)

    def destroy(self, keep_template: bool = False) -> None:
        """Drop every prefetched clone and (unless ``keep_template``) the template, and close connections."""
        if self._worker is not None:
            for _ in self._workers:
                self._tasks.put(None)
            for thread in self._workers:
                thread.join(timeout=60)
            self._worker = None
            while not self._ready.empty():
                item = self._ready.get_nowait()
                if not isinstance(item, BaseException):
                    self.release(*item)
        if self._built and not keep_template:
            self.drop(self.name)
        self._built = False
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def _drop(admin: psycopg.Connection[Any], name: str, patience: float = 2.0) -> None:
    """``DROP DATABASE … WITH (FORCE)``, once the backends of just-closed connections are gone.

    Postgres makes a drop wait in 100 ms steps for backends that are still
    exiting; polling pg_stat_activity first is much finer-grained.
    """
    from .._util import NotYet, poll

    query = b"SELECT count(*) FROM pg_stat_activity WHERE datname = %s"

    def backends_gone() -> None:
        row = admin.execute(query, (name,)).fetchone()
        if row and row[0] != 0:
            raise NotYet(f"{row[0]} backends still on {name}")

    with suppress(NotYet):  # out of patience: FORCE terminates the rest
        poll(backends_gone, patience, first=0.002, cap=0.002)
    admin.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)".encode())


_SAVEPOINT = "svcenv_test"
_savepoint_class: type[Any] | None = None


def _savepoint_connection_class() -> type[psycopg.Connection[Any]]:
    global _savepoint_class
    if _savepoint_class is None:
        import psycopg

        class SavepointConnection(psycopg.Connection[Any]):
            """commit()/rollback() act on a savepoint; the outer transaction is rolled back at the end."""

            def commit(self) -> None:
                self.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}; SAVEPOINT {_SAVEPOINT}".encode())

            def rollback(self) -> None:
                self.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}".encode())

            def _svcenv_rollback_all(self) -> None:
                psycopg.Connection.rollback(self)

        _savepoint_class = SavepointConnection
    return _savepoint_class


@contextmanager
def rollback_connection(handle: PostgresHandle, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose work is rolled back when the block ends, commits included."""
    conn = _savepoint_connection_class().connect(handle.url_for(dbname or handle.dbname))
    try:
        with rolled_back(conn):
            yield conn
    finally:
        conn.close()


@contextmanager
def rolled_back(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """Run the block in a transaction on ``conn`` (from :func:`savepoint_connection`) and roll it back.

    Reusing one connection for many blocks saves a connect (with its password
    exchange) per test.
    """
    conn.execute(f"SAVEPOINT {_SAVEPOINT}".encode())  # opens the outer transaction too
    try:
        yield conn
    finally:
        if not conn.closed and not conn.broken:
            conn._svcenv_escaped = not _savepoint_intact(conn)  # type: ignore[attr-defined]
            conn._svcenv_rollback_all()  # type: ignore[attr-defined]
            # Session state outlives a rollback: prepared statements, advisory locks, SET, temp tables.
            conn.autocommit = True  # DISCARD ALL may not run in a transaction
            try:
                conn.execute(b"DISCARD ALL")
            finally:
                conn.autocommit = False


def _savepoint_intact(conn: psycopg.Connection[Any]) -> bool:
    """False if the code under test ended the outer transaction itself (a raw ``COMMIT``/``ROLLBACK``):
    then what it did before may be committed, and the database is no longer the template's."""
    import psycopg

    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}".encode())
    except psycopg.errors.InvalidSavepointSpecification:
        return False
    return True


def escaped(conn: psycopg.Connection[Any]) -> bool:
    """Whether the last :func:`rolled_back` block ended its transaction itself (so its work may persist)."""
    return bool(getattr(conn, "_svcenv_escaped", False))


def savepoint_connection(handle: PostgresHandle, dbname: str | None = None) -> psycopg.Connection[Any]:
    """A connection whose ``commit()``/``rollback()`` act on the savepoint of :func:`rolled_back`."""
    return _savepoint_connection_class().connect(handle.url_for(dbname or handle.dbname))
