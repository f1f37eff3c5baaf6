"""Isolation primitives on a real Postgres: the template, its prefetching pool, rollback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from svcenv import Environment, Postgres
from svcenv.handles import PostgresHandle
from svcenv.isolation import PostgresTemplate, rollback_connection

from .conftest import LeakCheck


@pytest.fixture(scope="module")
def postgres(docker_engine: None) -> Iterator[PostgresHandle]:
    with Environment(Postgres(), labels={"svcenv.test": "isolation"}) as env:
        yield env["postgres"]


def _databases(handle: PostgresHandle, token: str) -> set[str]:
    with handle.connect(autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"%{token}%",)).fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(("prefetch", "keep"), [(0, None), (2, False), (2, True)])
def test_a_name_goes_only_to_the_connection_that_had_it_and_none_is_left(
    postgres: PostgresHandle, prefetch: int, keep: bool | None
) -> None:
    template = PostgresTemplate(postgres, setup="CREATE TABLE items (x int)", prefetch=prefetch, keep_connections=keep)
    names, owners = [], {}
    for _ in range(12):
        with template.fresh_connection() as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)
            conn.execute("INSERT INTO items VALUES (1)")
            conn.commit()
            names.append(conn.info.dbname)
            # A name handed out again is on the same connection (the one that had it), never on a new one.
            assert owners.setdefault(conn.info.dbname, id(conn)) == id(conn)
    if keep:
        assert len(set(names)) < 12, "the tests' own connections were kept, names and all"
    else:
        assert len(set(names)) == 12
    template.destroy()
    assert _databases(postgres, template.token) == set()


def test_a_crashing_test_still_gets_its_database_dropped(postgres: PostgresHandle) -> None:
    template = PostgresTemplate(postgres, prefetch=2)
    with pytest.raises(RuntimeError), template.fresh_connection() as conn:
        crashed = conn.info.dbname
        raise RuntimeError("the test crashed")
    template.destroy()  # waits for the background drops
    assert crashed not in _databases(postgres, template.token)
    assert _databases(postgres, template.token) == set()


def test_pool_grows_when_tests_find_it_empty(postgres: PostgresHandle) -> None:
    template = PostgresTemplate(postgres, prefetch=1)
    held = [template.acquire() for _ in range(4)]  # more at once than prefetched
    assert template.prefetch > 1
    assert template.prefetch <= template.max_prefetch
    for name, conn in held:
        template.release(name, conn)
    template.destroy()
    assert _databases(postgres, template.token) == set()


def test_rollback_connection_isolates_commits(postgres: PostgresHandle, leaks: LeakCheck) -> None:
    with postgres.connect(autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS rb (x int)")
    with rollback_connection(postgres) as conn:
        conn.execute("INSERT INTO rb VALUES (1)")
        conn.commit()
        conn.execute("INSERT INTO rb VALUES (2)")
        conn.rollback()  # back to the last commit, inside the test's transaction
        assert conn.execute("SELECT array_agg(x) FROM rb").fetchone() == ([1],)
    with postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM rb").fetchone() == (0,)
