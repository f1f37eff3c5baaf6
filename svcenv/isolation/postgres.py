"""Postgres isolation: a template database cloned per test (recycled when provably clean), and rollback."""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from .._util import flag, owner_tag, tag_gone
from .postgres_reset import (
    DATABASE_CHECK,
    Baseline,
    TemplateState,
    drop_database,
    recycle,
    reset_enabled,
    rollback_prepared,
)
from .postgres_rollback import escaped, rollback_connection, rolled_back, savepoint_connection
from .postgres_setup import Setup, run_setup
from .postgres_setup import ident as _ident

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
    "sweep_abandoned",
]


KEEP_CONNECTIONS_ENV = "SVCENV_POSTGRES_KEEP_CONNECTIONS"
"""``0`` makes every recycled database renamed and reached by a new connection (no name handed out twice)."""
_SVCENV_DATABASES = b"SELECT datname FROM pg_database WHERE datname LIKE 'svcenv\\_%'"


def sweep_abandoned(admin: psycopg.Connection[Any]) -> list[str]:
    """Drop the templates and test databases of runs that ended without cleaning up; return their names.

    Only svcenv's names whose owner (:func:`~svcenv._util.owner_tag` in the name) is
    provably gone: a process of this host and pid namespace that no longer runs.
    Databases of running owners, of owners elsewhere (another machine or container
    sharing the server) and every other database are left alone.
    """
    dropped = []
    for (name,) in admin.execute(_SVCENV_DATABASES).fetchall():
        if tag_gone(str(name)):
            try:
                drop_database(admin, str(name), patience=0.0)
            except Exception as exc:  # another sweeper got it first, or no right to drop it
                logging.getLogger("svcenv").debug("svcenv: could not drop abandoned database %s: %s", name, exc)
            else:
                dropped.append(str(name))
    if dropped:
        logging.getLogger("svcenv").info("svcenv: dropped %d databases killed runs left: %s", len(dropped), dropped)
    return dropped


class PostgresTemplate:
    """A template database built once, cloned into a fresh database per test.

    ::

        template = PostgresTemplate(env[postgres], setup="schema.sql")
        with template.fresh_database() as dbname:
            with env[postgres].connect(dbname) as conn: ...

    With ``prefetch`` > 0, background workers (each with its own admin connection)
    keep that many databases ready, each with an open connection, and recycle
    returned ones, so a test waits only for a hand-over, not for ``CREATE
    DATABASE`` and ``DROP DATABASE``. A returned database is handed out again
    when it is provably the template's, after a reset of the tables the
    test wrote if needed, else dropped and replaced by a fresh clone: see
    :mod:`svcenv.isolation.postgres_reset` for the rule, ``reset=False`` or
    ``SVCENV_POSTGRES_RESET=0`` to always re-clone. A recycled database stays on
    the test's own connection when that was the only session on it (then set back
    to a new connection's state, :func:`~svcenv.isolation.postgres_reset.keep_connection`),
    which spares a connect and keeps its name; else it is renamed, so a name is
    handed out again only to the connection that had it.
    ``keep_connections=False`` or ``SVCENV_POSTGRES_KEEP_CONNECTIONS=0``: always
    renamed and reconnected, no name handed out twice.
    Names carry a random token, so several processes (xdist workers, parallel
    sessions) can share one server without colliding, and the owner's tag, so
    the next template built on a server drops what killed runs left there
    (:func:`sweep_abandoned`).

    The pool sizes itself: from the measured time a test holds a database and the
    time a recycle takes it keeps about ``recycle / test + 1`` ready, never fewer
    than ``prefetch`` nor more than ``max_prefetch`` (default
    ``max(prefetch, min(8, 16 // xdist workers))``, so all workers together stay
    bounded on one server).
    """

    def __init__(
        self,
        handle: PostgresHandle,
        setup: Setup = None,
        name: str | None = None,
        prefetch: int = 0,
        workers: int | None = None,
        reset: bool | None = None,
        max_prefetch: int | None = None,
        keep_connections: bool | None = None,
    ) -> None:
        self.handle = handle
        self.setup = setup
        self.prefetch = prefetch
        self.min_prefetch = prefetch
        xdist = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "") or 1)
        self.max_prefetch = max(prefetch, min(8, 16 // max(1, xdist))) if max_prefetch is None else max_prefetch
        self.reset = reset_enabled(reset)
        self.keep_connections = (
            flag(KEEP_CONNECTIONS_ENV, default=True) if keep_connections is None else keep_connections
        )
        """Whether a recycled database may stay on the test's own connection (and so keep its name)."""
        self.outcomes: Counter[str] = Counter()
        """How returned databases went: ``untouched``, ``reset``, ``undone`` (objects the test made dropped),
        ``cloned`` (dropped, a new clone made) or ``shrunk`` (dropped: the pool got smaller)."""
        # Names say which process owns them (owner_tag), so a later run can drop what a killed one left
        # on a server that outlives it (an external one): see sweep_abandoned.
        self.token = f"{secrets.token_hex(3)}_{owner_tag()}"
        self.name = name or f"svcenv_tpl_{self.token}"
        self._counter = itertools.count(1)
        self._admin: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._sizing = threading.Lock()
        self._built = False
        self._ready: queue.Queue[tuple[str, psycopg.Connection[Any] | None] | BaseException] = queue.Queue()
        self._tasks: queue.Queue[tuple[str, str, psycopg.Connection[Any] | None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        if workers is None:  # recycling waits on the server (backends exiting, connecting): overlap more on a quiet one
            workers = max(2, min(4, 2 * (os.cpu_count() or 2) // max(1, xdist)))
        self.workers = max(1, workers)
        self._state: TemplateState | None = None
        self._baselines: dict[str, Baseline] = {}
        self._handed_at: dict[str, float] = {}
        self._epoch = 0  # bumped when an admin connection fails (the server may have restarted)
        self._discarding = False  # destroy(discard=True): the server goes, so nothing is dropped
        self._shrink = 0
        self.use_s: float | None = None
        """Moving average of how long a test holds a database (seconds)."""
        self.recycle_s: float | None = None
        """Moving average of what recycling one costs a worker (seconds)."""

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
            sweep_abandoned(self._conn())
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
                    drop_database(self._conn(), self.name)
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
            drop_database(self._conn(), name)

    # -- the prefetching pool -------------------------------------------------------------------

    def _start_worker(self) -> None:
        self.build()
        first = self._capture() if self.reset else None
        if first is not None:
            self._ready.put(first)
        # Several workers (each with its own admin connection) keep up with short tests.
        self._workers = [
            threading.Thread(target=self._work, name=f"svcenv-pool-{self.token}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._workers:
            thread.start()
        self._worker = self._workers[0]
        for _ in range(self.prefetch + 1 - (first is not None)):  # one more for the test in progress
            self._tasks.put(("clone", "", None))

    def _capture(self) -> tuple[str, psycopg.Connection[Any]] | None:
        """Clone once and read from it what resets need (:class:`TemplateState`); the clone goes to the pool."""
        name = self.clone()
        conn = self.handle.connect(name, autocommit=True)
        try:
            with self._lock:
                row = self._conn().execute(DATABASE_CHECK, (name,)).fetchone()
            assert row is not None
            self._state = TemplateState.capture(conn, row[0])
            if self._state is not None:
                self._baselines[name] = Baseline.take(conn, self._epoch)
        except Exception as exc:
            logging.getLogger("svcenv").warning("svcenv: database resets are off (%s)", exc)
            self._state = None
        conn.autocommit = False
        return name, conn

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
                action, name, used = task
                started = time.perf_counter()
                if action == "recycle":
                    with self._sizing:
                        shrink, self._shrink = self._shrink > 0, max(0, self._shrink - 1)
                    if shrink:
                        self.outcomes["shrunk"] += 1
                        if used is not None:
                            used.close()
                        self._baselines.pop(name, None)
                        drops.append(name)
                        continue
                    recycled = self._recycle_or_name(admin, name, used)
                    if not isinstance(recycled, str):
                        self._ready.put(recycled)
                        self.recycle_s = _average(self.recycle_s, time.perf_counter() - started)
                        continue
                    drops.append(recycled)
                    self.outcomes["cloned"] += 1
                admin = self._healthy(admin)
                try:
                    self._ready.put(self._new_clone(admin))
                except Exception as exc:
                    self._ready.put(exc)
                    admin = self._healthy(admin)
                if action == "recycle":
                    self.recycle_s = _average(self.recycle_s, time.perf_counter() - started)
            for name in drops if not self._discarding else ():
                self._drop_quietly(admin, name)
        finally:
            admin.close()

    def _healthy(self, admin: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        """``admin``, or a new connection when it failed (then databases handed out before are not trusted)."""
        if not (admin.closed or admin.broken):
            return admin
        self._epoch += 1
        admin.close()
        with suppress(Exception):
            return self.handle.connect(autocommit=True)
        return admin  # the server is gone: later requests fail with its error

    def _new_clone(self, admin: psycopg.Connection[Any]) -> tuple[str, psycopg.Connection[Any]]:
        name = self._new_name()
        admin.execute(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(self.name)}".encode())
        conn = self.handle.connect(name, autocommit=True)
        if self._state is not None:
            self._baselines[name] = Baseline.take(conn, self._epoch, flush=False)  # nothing written yet
        conn.autocommit = False
        return name, conn

    def _recycle_or_name(
        self, admin: psycopg.Connection[Any], name: str, used: psycopg.Connection[Any] | None
    ) -> tuple[str, psycopg.Connection[Any]] | str:
        """The returned database ``name`` ready again (renamed, or on the test's own connection), or the
        name to drop it by."""
        baseline, state = self._baselines.pop(name, None), self._state
        if state is None or baseline is None or baseline.epoch != self._epoch:
            if used is not None:
                used.close()
            return name
        done = recycle(admin, self.handle, state, baseline, name, self._new_name(), used)
        if isinstance(done, str):
            return done
        renamed, conn, self._baselines[renamed], outcome = done
        self.outcomes[outcome] += 1
        return renamed, conn

    def _drop_quietly(self, admin: psycopg.Connection[Any], name: str) -> None:
        """Drop a used clone; a failure (the server went away) must not end the worker, whose clone
        requests then fail at once with the server's error instead of leaving tests waiting."""
        try:
            try:
                drop_database(admin, name)
            except Exception:
                if not rollback_prepared(admin, self.handle, name):
                    raise
                drop_database(admin, name)
        except Exception as exc:
            logging.getLogger("svcenv").warning("could not drop test database %s: %s", name, exc)

    def acquire(self, timeout: float = 60.0) -> tuple[str, psycopg.Connection[Any] | None]:
        """A fresh database (name, and an open connection to it when prefetched).

        The pool adapts to demand: when a caller finds it empty, one more database
        is kept ready from then on, up to :attr:`max_prefetch`.
        """
        if self.prefetch <= 0:
            return self.clone(), None
        if self._worker is None:
            self._start_worker()
        if self._ready.empty() and self._tasks.empty() and self.prefetch < self.max_prefetch:
            # Nothing ready and the workers are idle: too few databases in the pool. (With work queued,
            # one more clone would only queue behind it, and cost more than the recycles it waits for.)
            with self._sizing:
                self.prefetch += 1
            self._tasks.put(("clone", "", None))
        item = self._ready.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        self._handed_at[item[0]] = time.perf_counter()
        return item

    def release(self, name: str, conn: psycopg.Connection[Any] | None = None) -> None:
        """Give a database back: recycled or dropped in the background when prefetching, else dropped now.

        ``conn`` is the connection :meth:`acquire` handed out: recycling may keep it for the next test
        (see :func:`~svcenv.isolation.postgres_reset.recycle`); otherwise it is closed.
        """
        if self._worker is None:
            if conn is not None:
                conn.close()
            self.drop(name)
            return
        handed_at = self._handed_at.pop(name, None)
        if handed_at is not None:
            self.use_s = _average(self.use_s, time.perf_counter() - handed_at)
            self._resize()
        if conn is not None and (self._state is None or not self.keep_connections):
            conn.close()
            conn = None
        # The worker decides whether the connection can serve the next test (recycle's rule), else closes it.
        self._tasks.put(("recycle", name, conn))

    def _resize(self) -> None:
        """One step towards ``ceil(recycle / use) + 1`` ready databases, within [prefetch, max_prefetch]."""
        if self.use_s is None or self.recycle_s is None:
            return
        want = math.ceil(self.recycle_s / max(self.use_s, 0.001)) + 1
        want = min(self.max_prefetch, max(self.min_prefetch, want))
        with self._sizing:
            if want > self.prefetch:
                self.prefetch += 1
                self._tasks.put(("clone", "", None))
            elif 2 * want <= self.prefetch:  # not at every dip: a shrunk pool grows again by cloning
                self.prefetch -= 1
                self._shrink += 1

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A fresh database for the block; recycled or dropped afterwards even if the block fails."""
        name, conn = self.acquire()
        try:
            yield name
        finally:
            self.release(name, conn)

    @contextmanager
    def fresh_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection to a fresh database; closed and the database recycled or dropped afterwards."""
        name, conn = self.acquire()
        try:
            if conn is None:
                conn = self.handle.connect(name)
            yield conn
        finally:
            self.release(name, conn)

    def destroy(self, keep_template: bool = False, discard: bool = False) -> None:
        """Drop every pooled database and (unless ``keep_template``) the template, and close connections.

        ``discard``: the server itself is removed next (a container or local server of this run
        alone), and its databases with it: nothing is dropped, pending recycles are skipped, and
        the connections are closed.
        """
        if self._worker is not None:
            self._discarding = discard
            while discard:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None and task[2] is not None:
                    task[2].close()
            for _ in self._workers:
                self._tasks.put(None)
            for thread in self._workers:
                thread.join(timeout=60)
            self._worker = None
            while not self._ready.empty():
                item = self._ready.get_nowait()
                if isinstance(item, BaseException):
                    continue
                if not discard:
                    self.release(*item)
                elif item[1] is not None:
                    item[1].close()
        self._baselines.clear()
        if self._built and not keep_template and not discard:
            self.drop(self.name)
        self._built = False
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def _average(current: float | None, sample: float) -> float:
    """An exponential moving average (a fifth of the new sample)."""
    return sample if current is None else 0.8 * current + 0.2 * sample
