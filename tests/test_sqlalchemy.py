"""SQLAlchemy and Alembic on svcenv's Postgres: driver URLs, the Alembic template hook, the fixtures."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from svcenv import Environment, Postgres
from svcenv.errors import ConfigurationError
from svcenv.handles import PostgresHandle
from svcenv.isolation import PostgresTemplate
from svcenv.sqlalchemy import AlembicUpgradeFailed, alembic_upgrade, rollback_session, session_escaped

PASSWORD = "p@ss:w/rd%?#&=+ é"  # every character a URL must quote


def test_importing_svcenv_and_its_plugin_loads_neither_sqlalchemy_nor_alembic() -> None:
    code = (
        "import sys, svcenv, svcenv.pytest, svcenv.sqlalchemy, svcenv.pytest._sqlalchemy; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'asyncpg', 'greenlet')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def postgres(docker_engine: None) -> Iterator[PostgresHandle]:
    with Environment(Postgres(password=PASSWORD), labels={"svcenv.test": "sqlalchemy"}) as env:
        yield env["postgres"]


def test_sqlalchemy_urls_for_each_driver(postgres: PostgresHandle) -> None:
    url = postgres.sqlalchemy_url()
    assert url.startswith("postgresql+psycopg://postgres:")
    assert url.endswith(f"@{postgres.host}:{postgres.port}/{postgres.dbname}")
    assert sqlalchemy.make_url(url).password == PASSWORD  # quoted, and SQLAlchemy unquotes it
    assert postgres.sqlalchemy_url("psycopg2", "other").startswith("postgresql+psycopg2://")
    assert sqlalchemy.make_url(postgres.sqlalchemy_url("asyncpg", "other")).database == "other"
    internal = postgres.sqlalchemy_url(internal=True)
    assert f"@{postgres.internal_host}:{postgres.internal_port}/" in internal
    with pytest.raises(ConfigurationError, match=r"postgres service 'postgres': no SQLAlchemy driver 'mysqldb'"):
        postgres.sqlalchemy_url("mysqldb")


def test_the_sync_and_async_drivers_connect(postgres: PostgresHandle) -> None:
    import asyncio

    engine = sqlalchemy.create_engine(postgres.sqlalchemy_url())
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT current_user")) == "postgres"
    engine.dispose()

    async def ask(driver: str) -> str:
        made = create_async_engine(postgres.sqlalchemy_url(driver))
        try:
            async with made.connect() as conn:
                return str(await conn.scalar(text("SELECT current_database()")))
        finally:
            await made.dispose()

    assert asyncio.run(ask("psycopg")) == postgres.dbname
    assert asyncio.run(ask("asyncpg")) == postgres.dbname


# -- the Alembic template hook --------------------------------------------------------------------

ENV_PY = """
from alembic import context
from logging.config import fileConfig
from sqlalchemy import engine_from_config, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
MODE = {mode!r}

def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()

if MODE == "attribute":
    run(config.attributes["connection"])
elif MODE == "url":
    engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(connection)
        connection.commit()
elif MODE == "leak":
    LEAKED = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.").connect()
    run(config.attributes["connection"])
"""

INI = """
[alembic]
script_location = %(here)s/migrations
sqlalchemy.url = postgresql+psycopg://nobody@127.0.0.1:1/nowhere

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)s %(message)s
"""

REVISION = """
from alembic import op
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

def upgrade():
    op.execute({sql!r})

def downgrade():
    pass
"""


def _project(tmp_path: Path, mode: str = "attribute", sql: str = "CREATE TABLE widgets (id int)") -> Path:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(INI, encoding="utf-8")
    (tmp_path / "migrations" / "env.py").write_text(ENV_PY.format(mode=mode), encoding="utf-8")
    (tmp_path / "migrations" / "versions" / "0001_first.py").write_text(REVISION.format(sql=sql), encoding="utf-8")
    return tmp_path / "alembic.ini"


@pytest.mark.parametrize("mode", ["attribute", "url"])
def test_alembic_upgrade_builds_the_template(postgres: PostgresHandle, tmp_path: Path, mode: str) -> None:
    mine = logging.getLogger("svcenv.test.kept")
    template = PostgresTemplate(postgres, setup=alembic_upgrade(_project(tmp_path, mode)))
    try:
        with template.fresh_connection() as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
            assert conn.execute("SELECT count(*) FROM widgets").fetchone() == (0,)
    finally:
        template.destroy()
    assert not mine.disabled, "env.py's fileConfig() disabled an existing logger and svcenv did not restore it"


def test_a_relative_config_path_is_resolved_from_the_current_directory(
    postgres: PostgresHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    template = PostgresTemplate(postgres, setup="svcenv.sqlalchemy:alembic_upgrade_head")
    try:
        with template.fresh_connection() as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
    finally:
        template.destroy()


@pytest.fixture
def scratch(postgres: PostgresHandle) -> Iterator[str]:
    """A database of its own for hooks called by hand (what a template build gives them)."""
    with postgres.connect(autocommit=True) as admin:
        admin.execute("CREATE DATABASE scratch")
    yield "scratch"
    with postgres.connect(autocommit=True) as admin:
        admin.execute("DROP DATABASE scratch WITH (FORCE)")


def test_alembic_upgrade_errors_name_the_cause(postgres: PostgresHandle, tmp_path: Path, scratch: str) -> None:
    with postgres.connect(scratch) as conn:
        with pytest.raises(ConfigurationError, match=r"no Alembic configuration at .*missing\.ini"):
            alembic_upgrade(tmp_path / "missing.ini")(conn)
        ini = _project(tmp_path / "bad_revision")
        with pytest.raises(ConfigurationError, match=r"alembic upgrade nosuch with .* into the template database"):
            alembic_upgrade(ini, "nosuch")(conn)
        failing = _project(tmp_path / "failing", sql="SELECT * FROM no_such_table")
        with pytest.raises(AlembicUpgradeFailed, match=r"failed in the template database .*no_such_table"):
            alembic_upgrade(failing)(conn)
        leaking = _project(tmp_path / "leaking", mode="leak")
        with pytest.raises(AlembicUpgradeFailed, match=r"left 1 connection\(s\) open to the template database"):
            alembic_upgrade(leaking)(conn)
        conn.rollback()
    with pytest.raises(ConfigurationError, match="must be non-empty"):
        alembic_upgrade("alembic.ini", "")


# -- rollback_session -----------------------------------------------------------------------------


@pytest.fixture
def engine(postgres: PostgresHandle) -> Iterator[sqlalchemy.Engine]:
    made = sqlalchemy.create_engine(postgres.sqlalchemy_url())
    with made.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS notes; CREATE TABLE notes (body text)"))
    yield made
    with made.begin() as conn:
        conn.execute(text("DROP TABLE notes"))
    made.dispose()


def _count(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM notes")) or 0)


def test_rollback_session_undoes_commits(engine: sqlalchemy.Engine) -> None:
    with rollback_session(engine) as session:
        session.execute(text("INSERT INTO notes VALUES ('one')"))
        session.commit()
        session.execute(text("INSERT INTO notes VALUES ('two')"))
        session.rollback()
        assert session.scalar(text("SELECT count(*) FROM notes")) == 1
    assert not session_escaped(session)
    assert _count(engine) == 0


def test_rollback_session_survives_a_failed_statement(engine: sqlalchemy.Engine) -> None:
    with rollback_session(engine) as session:
        session.execute(text("INSERT INTO notes VALUES ('one')"))
        session.commit()
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            session.execute(text("SELECT * FROM no_such_table"))
    assert not session_escaped(session)
    assert _count(engine) == 0


@pytest.mark.parametrize("after", ["", "INSERT INTO notes VALUES ('after')"])
def test_rollback_session_reports_a_raw_commit(engine: sqlalchemy.Engine, after: str) -> None:
    with rollback_session(engine) as session:
        session.execute(text("INSERT INTO notes VALUES ('escaped')"))
        session.execute(text("COMMIT"))
        if after:
            session.execute(text(after))  # a new transaction, without svcenv's marker
    assert session_escaped(session)
    assert _count(engine) == 1


def test_rollback_session_on_a_given_connection(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as conn:
        with rollback_session(conn) as session:
            session.execute(text("INSERT INTO notes VALUES ('one')"))
            session.commit()
        assert not conn.closed
        conn.begin()
        with pytest.raises(ConfigurationError, match="already in a transaction"), rollback_session(conn):
            pass
    assert _count(engine) == 0


# -- the fixtures, in a pytest run of their own -------------------------------------------------------

FIXTURE_TESTS = """
import os
import time

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

CONNECTED = "SELECT pid FROM pg_stat_activity WHERE datname = %s"


@pytest.fixture
def watch(request, postgres_service, postgres_database, postgres_connection):
    # Set up before the engine fixtures, torn down after them: sees what they left connected.
    yield
    svcenv_own = postgres_connection.info.backend_pid
    deadline = time.monotonic() + 5
    with postgres_service.connect(autocommit=True) as admin:
        while True:
            pids = {row[0] for row in admin.execute(CONNECTED, (postgres_database,))} - {svcenv_own}
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert not pids, f"{request.node.name} left connections {pids} to {postgres_database}"
    print(f"clean {request.node.name}")


def test_engine(watch, postgres_engine, postgres_database):
    assert postgres_engine.url.database == postgres_database
    with postgres_engine.connect() as a, postgres_engine.connect() as b:  # two pooled connections
        assert a.scalar(text("SELECT 1")) == b.scalar(text("SELECT 1")) == 1


@pytest.mark.asyncio
async def test_async_engine(watch, postgres_async_engine, postgres_database):
    async with postgres_async_engine.connect() as conn:
        assert await conn.scalar(text("SELECT current_database()")) == postgres_database


def test_session_commit_is_rolled_back_1(postgres_session):
    assert postgres_session.scalar(text("SELECT count(*) FROM pg_class WHERE relname = 'mine'")) == 0
    postgres_session.execute(text("CREATE TABLE mine (x int)"))
    postgres_session.commit()


def test_session_commit_is_rolled_back_2(postgres_session):
    assert postgres_session.scalar(text("SELECT count(*) FROM pg_class WHERE relname = 'mine'")) == 0


def test_session_raw_commit_escapes(postgres_session):
    postgres_session.execute(text("CREATE TABLE mine (x int)"))
    postgres_session.execute(text("COMMIT"))


def test_session_after_the_escape_gets_a_clean_database(postgres_session):
    assert postgres_session.scalar(text("SELECT count(*) FROM pg_class WHERE relname = 'mine'")) == 0
"""


def test_the_fixtures_isolate_and_leave_no_connection(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_fixtures=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-s")
    result.assert_outcomes(passed=6, warnings=1)
    result.stdout.fnmatch_lines(["*clean test_engine*", "*clean test_async_engine*"])
    result.stdout.fnmatch_lines(["*IsolationWarning*test_session_raw_commit_escapes ended postgres_session's*"])
