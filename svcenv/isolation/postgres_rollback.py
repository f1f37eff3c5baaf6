"""Postgres isolation by rollback: a connection whose commits are savepoints, rolled back at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from ..handles import PostgresHandle

__all__ = ["escaped", "rollback_connection", "rolled_back", "savepoint_connection"]

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
    conn = _savepoint_connection_class().connect(handle.client_url_for(dbname or handle.dbname))
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
    return _savepoint_connection_class().connect(handle.client_url_for(dbname or handle.dbname))
