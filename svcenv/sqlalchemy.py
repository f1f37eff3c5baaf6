"""SQLAlchemy and Alembic on svcenv's Postgres: migrations into the template, sessions rolled back.

Nothing here imports SQLAlchemy or Alembic until it is called, so ``import svcenv``
and the pytest plugin stay light for projects without them.

* :func:`alembic_upgrade` makes a template setup hook: Alembic's ``upgrade`` runs
  once per run into the template database that every fresh test database is
  cloned from. :data:`alembic_upgrade_head` is the ready-made one for the ini key::

      [pytest]
      svcenv_postgres_setup = svcenv.sqlalchemy:alembic_upgrade_head

* :func:`rollback_session` is SQLAlchemy 2's "Joining a Session into an External
  Transaction" recipe: a :class:`~sqlalchemy.orm.Session` whose work, its
  ``commit()`` calls included, is rolled back when the block ends.

The hook gives Alembic's ``env.py`` the connection to use, as Alembic's cookbook
("Sharing a Connection across one or more programmatic migration commands")
does: in ``config.attributes["connection"]``, inside a transaction that svcenv
commits. It also sets the ``sqlalchemy.url`` main option to the template
database, so an ``env.py`` that builds its engine with ``engine_from_config``
migrates the template too. An ``env.py`` that takes its URL from anywhere else (an
environment variable, application settings) must look at the attribute first::

    def run_migrations_online() -> None:
        connection = config.attributes.get("connection")
        if connection is not None:  # svcenv's template (or any caller that passes one)
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
            return
        ...  # the usual: build an engine, connect, configure, run
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, SvcenvError

if TYPE_CHECKING:
    import psycopg
    import sqlalchemy
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

__all__ = ["AlembicUpgradeFailed", "alembic_upgrade", "alembic_upgrade_head", "rollback_session", "session_escaped"]

ESCAPED = "svcenv_escaped"
"""The key in ``Session.info`` that :func:`rollback_session` sets when the block's transaction was ended by SQL."""

_LEFTOVER_WAIT_S = 5.0


class AlembicUpgradeFailed(SvcenvError):
    """Alembic's upgrade into a Postgres template database failed (the message names the database and the cause)."""


def alembic_upgrade(
    config_path: str | os.PathLike[str] = "alembic.ini", revision: str = "head"
) -> Callable[[psycopg.Connection[Any]], None]:
    """A template setup hook that runs ``alembic upgrade <revision>`` with the configuration at ``config_path``.

    Give it where svcenv takes a template setup: ``svcenv.pytest.fixtures(Postgres(),
    setup=[alembic_upgrade("db/alembic.ini")])``, ``PostgresTemplate(handle,
    setup=...)``, ``ServiceTestCase.postgres_setup``. A relative ``config_path`` is
    resolved from the current directory when the hook runs (pytest's: where it was
    started), as the ``alembic`` command does. The hook runs once per run, when the
    template is built (under pytest-xdist by the first worker, the others clone).

    ``env.py`` gets the connection in ``config.attributes["connection"]`` and the
    template's URL as ``sqlalchemy.url`` (see the module doc for what ``env.py``
    must do). The hook restores the logging configuration that ``env.py``'s usual
    ``fileConfig()`` call replaces, so pytest's log capture keeps working.

    Raises :class:`~svcenv.ConfigurationError` if the file is missing or Alembic
    refuses the configuration or revision, and :class:`AlembicUpgradeFailed` if a
    migration fails or leaves a connection to the template open.
    """
    if not str(config_path).strip() or not str(revision).strip():
        raise ConfigurationError(
            f"alembic_upgrade(config_path={str(config_path)!r}, revision={revision!r}): both must be non-empty"
        )

    def upgrade(conn: psycopg.Connection[Any]) -> None:
        _upgrade(conn, Path(config_path), revision)

    upgrade.__name__ = upgrade.__qualname__ = f"alembic_upgrade({str(config_path)!r}, {revision!r})"
    upgrade.__doc__ = f"Alembic upgrade to {revision!r} with {str(config_path)!r} (a svcenv template setup hook)."
    return upgrade


alembic_upgrade_head = alembic_upgrade()
"""``alembic upgrade head`` with ``alembic.ini`` from the current directory: for ``svcenv_postgres_setup``."""


def _template_url(conn: psycopg.Connection[Any]) -> sqlalchemy.URL:
    """A ``postgresql+psycopg`` URL for the database ``conn`` is connected to, with the same parameters."""
    import sqlalchemy

    info = conn.info
    params = info.get_parameters()  # non-default libpq parameters (sslmode, ...), never the password
    host = params.pop("host", info.host)
    port = params.pop("port", str(info.port))
    user = params.pop("user", info.user)
    dbname = params.pop("dbname", info.dbname)
    if host.startswith("/"):
        # A Unix-socket directory: SQLAlchemy's URL passes it as libpq's host parameter.
        params["host"] = host
        host_part: str | None = None
    else:
        host_part = host
    return sqlalchemy.URL.create(
        "postgresql+psycopg",
        username=user,
        password=info.password or None,
        host=host_part,
        port=int(port) if port and host_part else None,
        database=dbname,
        query=params,
    )


def _upgrade(conn: psycopg.Connection[Any], config_path: Path, revision: str) -> None:
    try:
        import sqlalchemy
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError
    except ImportError as exc:
        raise ConfigurationError(
            f"postgres template setup alembic_upgrade needs SQLAlchemy and Alembic: pip install alembic ({exc})"
        ) from exc

    path = config_path if config_path.is_absolute() else Path.cwd() / config_path
    if not path.is_file():
        raise ConfigurationError(
            f"postgres template setup alembic_upgrade: no Alembic configuration at {path}"
            + ("" if config_path.is_absolute() else f" (a relative path is resolved from {Path.cwd()})")
        )
    where = f"template database {conn.info.dbname!r} at {conn.info.host}:{conn.info.port}"
    # Earlier setup items ran on `conn`: Alembic's own connection must see their work.
    conn.commit()
    url = _template_url(conn)
    config = Config(str(path))
    # ConfigParser would read a '%' of a URL-quoted password as interpolation.
    config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with _logging_kept(), engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except CommandError as exc:
        raise ConfigurationError(f"alembic upgrade {revision} with {path} into the {where}: {exc}") from exc
    except SvcenvError:
        raise
    except Exception as exc:
        raise AlembicUpgradeFailed(
            f"alembic upgrade {revision} with {path} failed in the {where}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        config.attributes.pop("connection", None)
        engine.dispose()
    _wait_until_alone(conn, f"alembic upgrade {revision} with {path}", where)


def _wait_until_alone(conn: psycopg.Connection[Any], what: str, where: str) -> None:
    """Wait until no other session is connected to the template: ``CREATE DATABASE … TEMPLATE`` needs that."""
    from ._util import NotYet, poll

    query = b"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"

    def alone() -> None:
        row = conn.execute(query).fetchone()
        conn.commit()  # pg_stat_activity is a snapshot per transaction
        others = row[0] if row else 0
        if others:
            raise NotYet(
                f"{what} left {others} connection(s) open to the {where}; a template must have none. "
                "Does env.py build its own engine (dispose it, or use NullPool) instead of "
                'config.attributes["connection"]?'
            )

    try:
        poll(alone, _LEFTOVER_WAIT_S, first=0.01, cap=0.2)
    except NotYet as exc:
        raise AlembicUpgradeFailed(str(exc)) from None


@contextmanager
def _logging_kept() -> Iterator[None]:
    """Put the loggers back as they were: ``env.py``'s ``fileConfig()`` disables every existing logger."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [item for item in manager.loggerDict.values() if isinstance(item, logging.Logger)]
    saved = [(lg, lg.level, list(lg.handlers), lg.disabled, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers, disabled, propagate in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.disabled = disabled
            lg.propagate = propagate


@contextmanager
def rollback_session(bind: Engine | Connection, **session_kwargs: Any) -> Iterator[Session]:
    """A :class:`~sqlalchemy.orm.Session` whose work is rolled back when the block ends, commits included.

    SQLAlchemy 2's "Joining a Session into an External Transaction" recipe: a
    connection (``bind`` itself if it is a :class:`~sqlalchemy.engine.Connection`
    not in a transaction, else a new one from the engine, closed afterwards) begins
    a transaction, and the session joins it with
    ``join_transaction_mode="create_savepoint"``. So ``session.commit()`` and
    ``session.rollback()`` in the code under test act on a savepoint, and the outer
    transaction is rolled back at the end. Code that opens its own connections (its
    own engine, a pool) sees nothing of it; give such code a fresh database.

    A raw ``COMMIT`` or ``ROLLBACK`` sent as SQL ends the outer transaction itself,
    and what came before it persists. :func:`session_escaped` tells afterwards
    whether that happened (a marker savepoint under the session's is gone).
    """
    from sqlalchemy.engine import Connection
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

    if isinstance(bind, Connection):
        if bind.in_transaction():
            raise ConfigurationError("rollback_session(connection): the connection is already in a transaction")
        owned = None
        connection = bind
    else:
        owned = connection = bind.connect()
    try:
        transaction = connection.begin()
        # Starts the database transaction now (SQLAlchemy's begin() is lazy) and marks it as ours.
        connection.exec_driver_sql(f"SAVEPOINT {_MARK}")
        session = Session(bind=connection, join_transaction_mode="create_savepoint", **session_kwargs)
        try:
            yield session
        finally:
            try:
                session.close()  # rolls back the session's savepoint, which an escape took along
                _back_to_marker(connection)
                intact = True
            except DBAPIError as exc:
                if not _savepoint_gone(exc):
                    raise
                intact = False
            session.info[ESCAPED] = not intact
            if transaction.is_active:
                transaction.rollback()
    finally:
        if owned is not None:
            owned.close()


def session_escaped(session: Session) -> bool:
    """Whether the transaction of a finished :func:`rollback_session` block was ended by SQL (its work persists)."""
    return bool(session.info.get(ESCAPED, False))


_MARK = "svcenv_session"


def _savepoint_gone(exc: DBAPIError) -> bool:
    # 3B001 invalid_savepoint_specification; 25P01 no_active_sql_transaction (autocommit drivers)
    return getattr(exc.orig, "sqlstate", None) in ("3B001", "25P01")


def _back_to_marker(connection: Connection) -> None:
    """Roll back to the marker savepoint: fails (3B001) if SQL ended the outer transaction and began another."""
    if not (connection.invalidated or connection.closed):
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_MARK}")
