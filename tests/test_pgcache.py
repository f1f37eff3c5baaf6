"""The pre-initialised Postgres cache: hit, miss, invalidation, opt-out, per-instance passwords."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from svcenv import Environment, Postgres
from svcenv.backends import pgcache
from svcenv.backends.docker import DockerBackend
from svcenv.descriptors import RAM_PGDATA

from .conftest import LeakCheck


@pytest.fixture
def backend(docker_engine: None) -> Iterator[DockerBackend]:
    backend = DockerBackend()
    backend.check()
    yield backend
    backend.close()


def _key(backend: DockerBackend, pg: Postgres) -> str:
    return pgcache.cache_key(backend.client, pg.resolve())


def _cached_images(backend: DockerBackend, key: str) -> list[str]:
    return [i.id for i in backend.client.images.list(filters={"label": f"{pgcache.KEY_LABEL}={key}"})]


def test_first_start_builds_the_cache_later_starts_use_it(backend: DockerBackend, leaks: LeakCheck) -> None:
    pg = Postgres(dbname=f"c{uuid.uuid4().hex[:8]}")  # a configuration of this test's own
    key = _key(backend, pg)
    assert _cached_images(backend, key) == []
    try:
        with Environment(pg, labels=leaks.labels) as first:
            first_password = first[pg].password
            assert _image_of(first[pg].id).startswith(pgcache.CACHE_REPOSITORY)
            with first[pg].connect() as conn:
                assert conn.execute("SHOW data_directory").fetchone() == (RAM_PGDATA,)  # copied into RAM
                conn.execute("CREATE TABLE leftover (x int)")
                conn.commit()
            miss_create = first.timings["postgres"].create_s
        assert len(_cached_images(backend, key)) == 1
        with Environment(pg, labels=leaks.labels) as second:
            handle = second[pg]
            assert handle.password != first_password
            with handle.connect() as conn:
                # A fresh instance: nothing from the previous one is there.
                assert conn.execute("SELECT to_regclass('public.leftover')").fetchone() == (None,)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(handle.url.replace(handle.password, first_password), connect_timeout=5)
            hit_create = second.timings["postgres"].create_s
        assert len(_cached_images(backend, key)) == 1  # no second build
        assert hit_create < miss_create
    finally:
        pgcache.clear(backend.client, key)
    assert _cached_images(backend, key) == []


def test_a_changed_configuration_gets_its_own_entry(backend: DockerBackend) -> None:
    base = Postgres(dbname="shared")
    assert _key(backend, base) == _key(backend, Postgres(dbname="shared", settings={"work_mem": "8MB"}))
    assert _key(backend, base) == _key(backend, Postgres(dbname="shared", password="given"))
    assert _key(backend, base) != _key(backend, Postgres(dbname="other"))
    assert _key(backend, base) != _key(backend, Postgres(dbname="shared", user="alice"))
    changed_env = Postgres(dbname="shared", env={"POSTGRES_INITDB_ARGS": "--data-checksums"})
    assert _key(backend, base) != _key(backend, changed_env)


def test_a_new_base_image_invalidates_the_entry(backend: DockerBackend, docker_engine: None) -> None:
    pg = Postgres(dbname="rebased")
    tag = f"svcenv-test/postgres-rebased:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {pg.effective_image}\nLABEL svcenv.test.rebuilt={tag}\n"
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=dockerfile,
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        assert _key(backend, pg) != _key(backend, Postgres(dbname="rebased", image=tag))
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], check=True, capture_output=True, timeout=60)


def _image_of(container_id: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", "{{.Config.Image}}", container_id], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_opt_out_uses_the_plain_image(leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = Postgres().effective_image
    with Environment(Postgres(cache=False), labels=leaks.labels) as env:
        assert _image_of(env["postgres"].id) == plain
    monkeypatch.setenv("SVCENV_POSTGRES_CACHE", "0")
    with Environment(Postgres(), labels=leaks.labels) as env:
        assert _image_of(env["postgres"].id) == plain
    with Environment(Postgres(tuned=False, cache=False), labels=leaks.labels) as env, env["postgres"].connect() as c:
        assert c.execute("SHOW data_directory").fetchone() == ("/var/lib/postgresql/data",)  # the image's own


def test_scram_verifier_is_accepted_by_postgres(leaks: LeakCheck) -> None:
    verifier = pgcache.scram_verifier("s3cret")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "s3cret" not in verifier
    with Environment(Postgres(), labels=leaks.labels) as env:
        handle = env["postgres"]
        with handle.connect(autocommit=True) as conn:
            conn.execute(f"CREATE ROLE probe LOGIN PASSWORD '{verifier}'")
        url = handle.url.replace(f"{handle.user}:{handle.password}", "probe:s3cret")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("probe",)


@pytest.mark.parametrize(
    "password",
    ["no\u00a0break space", "soft\u00adhyphen", "\uff26\uff55\uff4c\uff4c width"],
    ids=["nbsp", "soft-hyphen", "fullwidth"],
)
def test_a_password_that_saslprep_changes_works_on_the_cached_image(password: str, leaks: LeakCheck) -> None:
    # The server applies SASLprep to what the client sends; the verifier must have been made the same way.
    with Environment(Postgres(password=password, timeout=20), labels=leaks.labels) as env:
        handle = env["postgres"]
        with handle.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("backend_name", ["docker", "local"])
def test_a_generated_password_gets_a_cheap_verifier_a_given_one_the_default(
    backend_name: str, leaks: LeakCheck
) -> None:
    # 192 random bits need no key stretching; every connect's client pays for the iterations.
    iterations = (
        "SELECT split_part(split_part(rolpassword, '$', 2), ':', 1) FROM pg_authid WHERE rolname = current_user"
    )
    for pg, expected in ((Postgres(), "128"), (Postgres(password="given-by-the-user"), "4096")):
        with Environment(pg, backend=backend_name, labels=leaks.labels) as env, env[pg].connect() as conn:
            assert conn.execute(iterations).fetchone() == (expected,), pg
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(env[pg].url.replace(env[pg].password, "wrong"), connect_timeout=1)
