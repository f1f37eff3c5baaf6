# ruff: noqa: S608 (SQL built from the constants here and quote_ident-ed names)
"""Recycled test databases (svcenv.isolation.postgres_reset): handed out again only when equal to the template.

The property test drives random DDL/DML (and session tricks) in each handed-out
database and checks that every database the pool hands out has exactly the
template's catalog and data fingerprint, whichever way it was recycled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcenv import Environment, Postgres
from svcenv.handles import PostgresHandle
from svcenv.isolation import PostgresTemplate

TEMPLATE = """
DO $$ BEGIN CREATE ROLE svcenv_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE parent (id serial PRIMARY KEY, name text NOT NULL, mood mood DEFAULT 'ok');
CREATE TABLE child (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id int REFERENCES parent (id),
    note text,
    doubled int GENERATED ALWAYS AS (length(note) * 2) STORED
);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION log_parent() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO audit (what) VALUES ('parent ' || NEW.name); RETURN NEW; END $$;
CREATE TRIGGER parent_audit AFTER INSERT ON parent FOR EACH ROW EXECUTE FUNCTION log_parent();
CREATE TABLE empty (id serial PRIMARY KEY, payload jsonb);
CREATE TABLE measures (at int, v int) PARTITION BY RANGE (at);
CREATE TABLE measures_a PARTITION OF measures FOR VALUES FROM (0) TO (100);
CREATE TABLE measures_b PARTITION OF measures FOR VALUES FROM (100) TO (200);
CREATE UNLOGGED TABLE scratch (k text PRIMARY KEY, v text);
CREATE SEQUENCE tickets START 100;
CREATE VIEW parent_names AS SELECT name FROM parent;
GRANT SELECT ON parent TO svcenv_reader;
INSERT INTO parent (name) VALUES ('a'), ('b'), ('c');
INSERT INTO child (parent_id, note)
    SELECT 1, 'x' UNION ALL SELECT 2, string_agg(md5(i::text), '') FROM generate_series(1, 400) i;
INSERT INTO measures VALUES (1, 1), (150, 2);
SELECT setval('tickets', 105);
"""

DML = [
    "INSERT INTO parent (name) VALUES ('h')",  # fires the audit trigger
    "UPDATE parent SET name = name || '!' WHERE id = 1",
    "DELETE FROM child WHERE id = 1",
    "DELETE FROM parent WHERE id = 3",
    "INSERT INTO child (parent_id, note) VALUES (1, 'y')",
    "UPDATE child SET note = (SELECT string_agg(md5((i * 7)::text), '') FROM generate_series(1, 300) i) WHERE id = 2",
    "INSERT INTO empty (payload) VALUES ('{}')",
    "INSERT INTO measures VALUES (120, 9)",
    "INSERT INTO scratch VALUES ('k', 'v') ON CONFLICT DO NOTHING",
    "DELETE FROM audit",
    "SELECT nextval('tickets')",
    "SELECT setval('tickets', 7, false)",
    "SELECT nextval('parent_id_seq')",
    "SELECT * FROM parent FOR UPDATE",
    "SELECT count(*) FROM child",
    "COMMIT",  # raw: ends the transaction psycopg opened
]
CREATED = [  # objects a test makes that a reset drops again (outcome "undone")
    "CREATE TABLE extra (x int)",
    "CREATE TABLE linked (id serial PRIMARY KEY, parent_id int REFERENCES parent (id), body text)",
    "CREATE TABLE linked (id int); INSERT INTO linked VALUES (1)",
    "CREATE VIEW child_notes AS SELECT note FROM child",
    "CREATE SCHEMA s3; CREATE TABLE s3.t (x int); CREATE VIEW s3.v AS SELECT * FROM s3.t",
    "CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2'",
    "CREATE TYPE pair AS (a int, b int)",
    "CREATE TYPE colour AS ENUM ('red'); CREATE TABLE painted (c colour)",
    "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
    "CREATE SEQUENCE counter",
    "CREATE INDEX ON parent (name)",
    "CREATE TABLE measures_c PARTITION OF measures FOR VALUES FROM (200) TO (300)",
    "CREATE TABLE gone (x int); DROP TABLE gone",
]
OTHER = [
    *CREATED,
    "ALTER TABLE parent ADD COLUMN extra int",
    "CREATE INDEX ON child (note)",
    "DROP VIEW parent_names",
    "DROP TABLE scratch",
    "TRUNCATE audit",
    "GRANT SELECT ON child TO svcenv_reader",
    "REVOKE SELECT ON parent FROM svcenv_reader",
    "COMMENT ON TABLE parent IS 'changed'",
    "ALTER SEQUENCE tickets RESTART WITH 1",
    "CREATE TEMP TABLE tmp (x int)",
    "SELECT lo_create(0)",
    "ANALYZE parent",
    "ALTER TYPE mood ADD VALUE 'meh'",
    "CREATE OR REPLACE FUNCTION log_parent() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "SET session_replication_role = replica; CREATE TABLE sneaky (x int)",
    "ALTER TABLE parent DISABLE TRIGGER parent_audit",
    "SELECT pg_stat_reset()",
    "SELECT pg_stat_reset_single_table_counters('parent'::regclass)",
    "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET work_mem = ''8MB''', current_database()); END $$",
    "DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS ''x''', current_database()); END $$",
    "CREATE SCHEMA s2",
    "ALTER TABLE child ALTER COLUMN note SET DEFAULT 'd'",
    "CREATE MATERIALIZED VIEW mv AS SELECT * FROM parent",
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO svcenv_reader",
    "CREATE STATISTICS st ON id, name FROM parent",
    "other session: INSERT INTO parent (name) VALUES ('o')",
    "other session left open: SELECT 1",
]

_USER = "NOT LIKE 'pg\\_%' AND {col} <> 'information_schema'"


def _user(col: str) -> str:
    return f"{col} " + _USER.format(col=col)


CATALOG_QUERIES = [
    f"SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace WHERE {_user('nspname')}",
    "SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relowner::regrole::text, c.relacl::text,"
    " c.reloptions::text, c.relrowsecurity, c.relispartition, pg_get_expr(c.relpartbound, c.oid), c.relispopulated"
    f" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_user('n.nspname')}",
    "SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,"
    " a.attgenerated, a.attisdropped, pg_get_expr(d.adbin, d.adrelid), a.attacl::text"
    " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    f" WHERE a.attnum > 0 AND {_user('n.nspname')}",
    f"SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes WHERE {_user('schemaname')}",
    "SELECT conrelid::regclass::text, contypid::regtype::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
    f" WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE {_user('nspname')})",
    "SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal",
    f"SELECT schemaname, tablename, rulename, definition FROM pg_rules WHERE {_user('schemaname')}",
    "SELECT schemaname, tablename, policyname, qual FROM pg_policies",
    f"SELECT schemaname, viewname, definition FROM pg_views WHERE {_user('schemaname')}",
    "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,"
    " CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END, p.proacl::text, p.proowner::regrole::text"
    f" FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_user('n.nspname')}",
    "SELECT n.nspname, t.typname, t.typtype, t.typacl::text,"
    " (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)::text"
    f" FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {_user('n.nspname')}",
    "SELECT schemaname, sequencename, start_value, min_value, max_value, increment_by, cycle, cache_size,"
    f" data_type::text FROM pg_sequences WHERE {_user('schemaname')}",
    "SELECT extname, extversion FROM pg_extension",
    "SELECT evtname, evtevent, evtenabled FROM pg_event_trigger",
    "SELECT pubname FROM pg_publication",
    "SELECT oid, lomowner::regrole::text, lomacl::text FROM pg_largeobject_metadata",
    "SELECT loid, pageno, md5(data) FROM pg_largeobject",
    "SELECT defaclrole::regrole::text, defaclobjtype, defaclacl::text FROM pg_default_acl",
    "SELECT classoid::regclass::text, objoid, objsubid, description FROM pg_description WHERE objoid >= 16384",
    "SELECT stxname, pg_get_statisticsobjdef(oid) FROM pg_statistic_ext",
    "SELECT inhrelid::regclass::text, inhparent::regclass::text FROM pg_inherits",
    *(
        f"SELECT '{cat}', array_agg(oid ORDER BY oid) FROM {cat} WHERE oid >= 16384"
        for cat in [
            "pg_class",
            "pg_proc",
            "pg_type",
            "pg_operator",
            "pg_cast",
            "pg_collation",
            "pg_conversion",
            "pg_ts_config",
            "pg_ts_dict",
            "pg_opclass",
            "pg_opfamily",
            "pg_language",
            "pg_foreign_data_wrapper",
            "pg_foreign_server",
            "pg_namespace",
            "pg_trigger",
            "pg_rewrite",
            "pg_constraint",
            "pg_attrdef",
            "pg_policy",
            "pg_statistic_ext",
            "pg_default_acl",
            "pg_extension",
        ]
    ),
]
DATABASE_QUERY = """
SELECT (to_jsonb(d) - '{oid,datname,datfrozenxid,datminmxid}'::text[])::text,
       (SELECT array_agg(setconfig::text) FROM pg_db_role_setting WHERE setdatabase = d.oid),
       (SELECT array_agg(description) FROM pg_shdescription WHERE objoid = d.oid)
FROM pg_database d WHERE datname = %s
"""


def fingerprint(conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> dict[str, Any]:
    """Catalog and data of the database ``conn`` is on: everything a test could observe, bar physical layout."""
    found = {}
    for query in CATALOG_QUERIES:
        found[query] = sorted(conn.execute(query.encode()).fetchall(), key=repr)
    rels = conn.execute(
        b"SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c"
        b" JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') AND c.relispopulated"
        b" AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
    ).fetchall()
    for (rel,) in rels:
        found[rel] = conn.execute(f"SELECT array_agg(t::text ORDER BY t::text) FROM ONLY {rel} t".encode()).fetchone()
    seqs = conn.execute(
        b"SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences"
        b" WHERE schemaname NOT LIKE 'pg\\_%'"
    ).fetchall()
    for (seq,) in seqs:
        found[seq] = conn.execute(f"SELECT last_value, is_called FROM {seq}".encode()).fetchone()
    found["database"] = admin.execute(DATABASE_QUERY.encode(), (conn.info.dbname,)).fetchone()
    conn.rollback()
    return found


@pytest.fixture(scope="module")
def postgres(docker_engine: None) -> Iterator[PostgresHandle]:
    with Environment(Postgres(), labels={"svcenv.test": "isolation-reset"}) as env:
        yield env["postgres"]


@pytest.fixture
def admin(postgres: PostgresHandle) -> Iterator[psycopg.Connection[Any]]:
    with postgres.connect(autocommit=True) as conn:
        yield conn


def _pool(postgres: PostgresHandle, **kwargs: Any) -> PostgresTemplate:
    # One database at a time in circulation besides the one in use: each hand-out is a recycled one.
    kwargs = {"prefetch": 1, "max_prefetch": 1, "workers": 1, **kwargs}
    return PostgresTemplate(postgres, setup=TEMPLATE, **kwargs)


def _template_print(pool: PostgresTemplate, admin: psycopg.Connection[Any]) -> dict[str, Any]:
    name = pool.clone()
    try:
        with pool.handle.connect(name) as conn:
            found = fingerprint(conn, admin)
    finally:
        pool.drop(name)
    return found


def _run(conn: psycopg.Connection[Any], handle: PostgresHandle, ops: list[str]) -> list[psycopg.Connection[Any]]:
    """Run ``ops`` on ``conn`` (errors roll back, as in a test that catches them); return sessions left open."""
    left: list[psycopg.Connection[Any]] = []
    for op in ops:
        try:
            if op.startswith("other session"):
                other = handle.connect(conn.info.dbname, autocommit=True)
                other.execute(op.split(": ", 1)[1].encode())
                (left.append if "left open" in op else lambda c: c.close())(other)
            else:
                conn.execute(op.encode())
        except psycopg.Error:
            conn.rollback()
    return left


def test_every_handed_out_database_equals_the_template(
    postgres: PostgresHandle, admin: psycopg.Connection[Any]
) -> None:
    pool = _pool(postgres)
    expected = _template_print(pool, admin)
    seen: set[int] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(
        ops=st.lists(st.sampled_from(DML * 3 + CREATED * 2 + OTHER), max_size=5),
        end=st.sampled_from(["commit", "rollback", "left open"]),
    )
    def one_test(ops: list[str], end: str) -> None:
        name, conn = pool.acquire()
        assert conn is not None
        found = fingerprint(conn, admin)
        differs = sorted(k for k in {*expected, *found} if found.get(k) != expected.get(k))
        assert not differs, differs
        seen.add(conn.info.backend_pid)
        left = _run(conn, postgres, ops)
        if end == "commit":
            with suppress(psycopg.Error):
                conn.commit()
        elif end == "rollback":
            conn.rollback()
        pool.release(name, conn)
        for other in left:
            other.close()

    one_test()
    name, conn = pool.acquire()  # the last one returned
    assert conn is not None
    found = fingerprint(conn, admin)
    assert not sorted(k for k in {*expected, *found} if found.get(k) != expected.get(k))
    pool.release(name, conn)
    outcomes = dict(pool.outcomes)
    pool.destroy()
    assert outcomes.get("untouched", 0) > 0, outcomes
    assert outcomes.get("reset", 0) > 0, outcomes
    assert outcomes.get("cloned", 0) > 0, outcomes
    assert outcomes.get("undone", 0) > 0, outcomes


def _cycle(pool: PostgresTemplate, body: Callable[[psycopg.Connection[Any]], object]) -> tuple[str, str]:
    """Run ``body`` in a handed-out database; return (its name, the outcome of recycling it)."""
    before = dict(pool.outcomes)
    name, conn = pool.acquire()
    assert conn is not None
    body(conn)
    pool.release(name, conn)
    deadline = time.monotonic() + 20
    while sum(pool.outcomes.values()) == sum(before.values()) and time.monotonic() < deadline:
        time.sleep(0.005)  # the recycle runs in the background
    changed = [k for k, v in pool.outcomes.items() if v != before.get(k, 0)]
    return name, changed[0] if changed else ""


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("SELECT * FROM parent", "untouched"),
        ("INSERT INTO parent (name) VALUES ('z'); COMMIT", "reset"),
        ("INSERT INTO parent (name) VALUES ('z')", "reset"),  # left open: rolled back by the close, still counted
        ("SELECT nextval('tickets')", "reset"),
        ("CREATE TABLE t (x int); COMMIT", "undone"),
        (
            "CREATE TABLE t (id serial PRIMARY KEY, p int REFERENCES parent (id)); INSERT INTO t (p) VALUES (1)",
            "undone",
        ),
        (
            "CREATE SCHEMA s; CREATE TABLE s.t (x int); CREATE FUNCTION s.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "undone",
        ),
        ("CREATE TABLE t (x int); COMMENT ON TABLE t IS 'c'; INSERT INTO parent (name) VALUES ('z')", "undone"),
        ("ALTER TABLE parent ADD COLUMN extra int; COMMIT", "cloned"),
        ("COMMENT ON TABLE parent IS 'changed'; COMMIT", "cloned"),
        ("CREATE TRIGGER t2 AFTER INSERT ON child FOR EACH ROW EXECUTE FUNCTION log_parent(); COMMIT", "cloned"),
        ("DROP VIEW parent_names; COMMIT", "cloned"),
        ("CREATE TEMP TABLE tmp (x int); COMMIT", "cloned"),
        ("TRUNCATE audit; COMMIT", "cloned"),
        ("SELECT pg_stat_reset()", "cloned"),
    ],
)
def test_the_rule_per_case(postgres: PostgresHandle, body: str, outcome: str) -> None:
    pool = _pool(postgres)
    _, got = _cycle(pool, lambda conn: conn.execute(body.encode()))
    pool.destroy()
    assert got == outcome


def test_a_session_left_connected_means_a_fresh_clone(postgres: PostgresHandle) -> None:
    pool = _pool(postgres)
    others: list[psycopg.Connection[Any]] = []
    _, got = _cycle(pool, lambda conn: others.append(postgres.connect(conn.info.dbname)))
    pool.destroy()  # waits for the background drop
    assert got == "cloned"
    assert others[0].closed or others[0].broken or _dead(others[0])


def _dead(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_names_are_never_reused_and_nothing_is_left(postgres: PostgresHandle, admin: psycopg.Connection[Any]) -> None:
    pool = _pool(postgres, keep_connections=False)
    names = set()
    for _ in range(6):
        name, conn = pool.acquire()
        names.add(name)
        pool.release(name, conn)
    pool.destroy()
    assert len(names) == 6
    assert pool.outcomes["untouched"] >= 4
    left = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"%{pool.token}%",)).fetchall()
    assert left == []


def test_a_kept_connection_is_a_new_ones_equal(postgres: PostgresHandle, admin: psycopg.Connection[Any]) -> None:
    """The test's own connection serves the next test: same backend, but nothing of the last test's session."""
    from psycopg.rows import dict_row
    from psycopg.types.string import TextLoader

    class Shouting(TextLoader):
        def load(self, data: Any) -> str:
            return str(super().load(data)).upper()

    pool = _pool(postgres)
    name, conn = pool.acquire()
    assert conn is not None
    backend, defaults = conn.info.backend_pid, (conn.autocommit, conn.row_factory, conn.prepare_threshold)
    conn.autocommit = True
    conn.row_factory = dict_row
    conn.prepare_threshold = 0
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    conn.adapters.register_loader("text", Shouting)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    conn.execute("SET statement_timeout = 1234")
    conn.execute("PREPARE leftover AS SELECT 1")
    conn.execute("SELECT pg_advisory_lock(42)")
    conn.execute("LISTEN channel")
    conn.execute("INSERT INTO parent (name) VALUES ('z')")
    pool.release(name, conn)

    for _ in range(3):  # the pool hands out the database that was ready first; ours comes after it
        again, kept = pool.acquire()
        assert kept is not None
        if again == name:
            break
        pool.release(again, kept)
    assert (again, kept.info.backend_pid) == (name, backend), "not kept: the test proved nothing"
    assert (kept.autocommit, kept.row_factory, kept.prepare_threshold) == defaults
    assert kept.isolation_level is None
    assert kept.execute("SELECT name FROM parent ORDER BY id").fetchall() == [("a",), ("b",), ("c",)]
    assert kept.execute("SHOW statement_timeout").fetchone() != ("1234ms",)
    assert kept.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    mine = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert kept.execute(mine).fetchone() == (0,)
    assert kept.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
    kept.execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
    assert notices == [], "the last test's notice handler still ran"
    assert kept.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # autocommit off again
    pool.release(again, kept)
    outcomes = dict(pool.outcomes)
    pool.destroy()
    assert outcomes.get("reset", 0) >= 1, outcomes


def test_a_connection_with_company_is_not_kept(postgres: PostgresHandle, admin: psycopg.Connection[Any]) -> None:
    """Another session on the database (the application's pool, left open): renamed or dropped, never kept."""
    pool = _pool(postgres)
    name, conn = pool.acquire()
    assert conn is not None
    other = postgres.connect(name)
    pool.release(name, conn)
    handed = []
    for _ in range(3):
        again, fresh = pool.acquire()
        assert fresh is not None
        handed.append(again)
        pool.release(again, fresh)
    outcomes = dict(pool.outcomes)
    pool.destroy()  # waits for the background drop
    assert name not in handed, "a database with another session on it was handed out again"
    assert outcomes.get("cloned", 0) >= 1, outcomes
    assert _dead(other), "the session left on the old database still works"


def test_kill_switch(postgres: PostgresHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_POSTGRES_RESET", "0")
    pool = _pool(postgres)
    for _ in range(3):
        name, conn = pool.acquire()
        pool.release(name, conn)
    pool.destroy()
    assert pool.outcomes.get("untouched", 0) == pool.outcomes.get("reset", 0) == 0
    assert pool.outcomes["cloned"] >= 2


def test_pool_sizes_itself_within_bounds(postgres: PostgresHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    pool = PostgresTemplate(postgres, setup="CREATE TABLE t (x int)", prefetch=1)
    assert pool.max_prefetch == 4  # 16 databases over 4 workers
    for _ in range(20):  # tests much shorter than a recycle (each writes, so each is a re-clone)
        name, conn = pool.acquire()
        assert conn is not None
        conn.execute("CREATE TABLE u (x int)")
        conn.commit()
        pool.release(name, conn)
    assert pool.recycle_s is not None
    assert pool.use_s is not None
    assert 1 < pool.prefetch <= pool.max_prefetch
    pool.destroy()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "16")
    assert PostgresTemplate(postgres, prefetch=2).max_prefetch == 2


PLUGIN_TESTS = """
import pytest

@pytest.mark.parametrize("n", range(6))
def test_sees_the_template(postgres_connection, n):
    assert postgres_connection.execute("SELECT count(*) FROM items").fetchone() == (1,)
    assert postgres_connection.execute("SELECT nextval('items_id_seq')").fetchone() == (2,)
    postgres_connection.execute("INSERT INTO items (name) VALUES ('mine')")
    if n % 3 == 0:
        postgres_connection.execute("CREATE TABLE mine (x int)")
    postgres_connection.commit()
"""


def test_plugin_fixtures_recycle(pytester: pytest.Pytester, docker_engine: None) -> None:
    pytester.makeini(
        "[pytest]\nsvcenv_services = postgres\n"
        "svcenv_postgres_setup = CREATE TABLE items (id serial PRIMARY KEY, name text); "
        "INSERT INTO items (name) VALUES ('seed')\n"
    )
    pytester.makepyfile(test_recycled=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=6)


OIDS = """
import os
import pytest

@pytest.mark.parametrize("n", range(6))
def test_writes_rows(postgres_connection, n):
    oid = postgres_connection.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
    with open(os.environ["OIDS_FILE"], "a") as out:
        out.write(f"{oid[0]}\\n")
    postgres_connection.execute("INSERT INTO items (name) VALUES ('mine')")
    postgres_connection.commit()
"""


@pytest.mark.parametrize("reset", ["true", "false"])
def test_the_ini_key_turns_recycling_off(
    pytester: pytest.Pytester, docker_engine: None, monkeypatch: pytest.MonkeyPatch, reset: str
) -> None:
    """``svcenv_postgres_reset = false``: every test gets a fresh clone (a recycled database keeps its oid)."""
    oids = pytester.path / "oids.txt"
    monkeypatch.setenv("OIDS_FILE", str(oids))
    monkeypatch.delenv("SVCENV_POSTGRES_RESET", raising=False)
    pytester.makeini(
        "[pytest]\nsvcenv_services = postgres\nsvcenv_postgres_prefetch = 1\n"
        f"svcenv_postgres_reset = {reset}\n"
        "svcenv_postgres_setup = CREATE TABLE items (id serial PRIMARY KEY, name text)\n"
    )
    pytester.makepyfile(test_oids=OIDS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=300)
    result.assert_outcomes(passed=6)
    seen = oids.read_text().split()
    assert len(seen) == 6
    if reset == "false":
        assert len(set(seen)) == 6, seen  # six clones
    else:
        assert len(set(seen)) < 6, seen  # row-only changes: databases handed out again, reset
