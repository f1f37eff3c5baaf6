"""The core against a real Docker engine: start, use, fail, and leave nothing.

Elasticsearch here is the stand-in image (tests/images/es-standin), not a real
Elasticsearch: no distribution can be obtained where these tests run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import psycopg
import pytest
import redis

from svcenv import (
    Elasticsearch,
    Environment,
    Postgres,
    Redis,
    Service,
    ServiceNotFound,
    ServiceStartError,
)
from svcenv.probes import HTTP, TCP, LogLine

from .conftest import LeakCheck, containers, docker


@pytest.fixture(scope="module")
def trio(docker_engine: None) -> tuple[Postgres, Redis, Elasticsearch]:
    return Postgres(), Redis(), Elasticsearch()


def test_postgres_redis_and_es_standin_work_through_their_factories(
    trio: tuple[Postgres, Redis, Elasticsearch], leaks: LeakCheck
) -> None:
    pg, rd, es = trio
    with Environment(pg, rd, es, labels=leaks.labels) as env:
        with env[pg].connect() as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
            conn.execute("INSERT INTO items (name) VALUES (%s), (%s)", ("apple", "pear"))
            conn.commit()
            rows = conn.execute("SELECT name FROM items ORDER BY id").fetchall()
        assert rows == [("apple",), ("pear",)]

        client = env[rd].client()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        client.close()

        health = env[es].client().cluster.health(wait_for_status="yellow", timeout="5s")
        assert health["status"] in ("green", "yellow")
        assert env["elasticsearch"] is env[es]
        assert len(leaks.leftovers()) == 3
    assert env.state == "stopped"


def test_env_vars_connect(trio: tuple[Postgres, Redis, Elasticsearch], leaks: LeakCheck) -> None:
    with Environment(*trio, labels=leaks.labels) as env:
        variables = env.env_vars()
        with psycopg.connect(variables["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
        with psycopg.connect(
            host=variables["PGHOST"],
            port=variables["PGPORT"],
            user=variables["PGUSER"],
            password=variables["PGPASSWORD"],
            dbname=variables["PGDATABASE"],
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client = redis.Redis.from_url(variables["REDIS_URL"])
        assert client.ping() is True
        client.close()
        with urllib.request.urlopen(variables["ELASTICSEARCH_URL"] + "/") as response:
            assert response.headers["X-Elastic-Product"] == "Elasticsearch"
        assert variables["POSTGRES_PORT"] == str(env["postgres"].port)
        assert variables["REDIS_HOST"] == "127.0.0.1"


def test_two_postgres_with_different_names_coexist(leaks: LeakCheck) -> None:
    main, analytics = Postgres(), Postgres(name="analytics", dbname="events", user="etl")
    with Environment(main, analytics, labels=leaks.labels) as env:
        assert env[main].port != env[analytics].port
        with env[analytics].connect() as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("etl", "events")
        with env[main].connect() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
        variables = env.env_vars()
        assert variables["DATABASE_URL"] == env[main].url
        assert variables["ANALYTICS_URL"] == env[analytics].url
        assert env[main].password != env[analytics].password


def test_services_start_in_parallel(trio: tuple[Postgres, Redis, Elasticsearch], leaks: LeakCheck) -> None:
    with Environment(*trio, labels=leaks.labels) as env:
        timings = env.timings
    assert set(timings) == {"postgres", "redis", "elasticsearch"}
    # Every service was being created before any of them was ready: the intervals overlap.
    assert max(t.begin for t in timings.values()) < min(t.ready for t in timings.values())
    slowest = max(t.total_s for t in timings.values())
    serial = sum(t.total_s for t in timings.values())
    assert slowest < serial * 0.8, timings


def test_depends_on_waits_for_readiness(leaks: LeakCheck) -> None:
    cache = Redis(name="cache")
    db = Postgres(depends_on=("cache",))
    with Environment(db, cache, labels=leaks.labels) as env:
        assert env.timings["postgres"].begin >= env.timings["cache"].ready


def test_ports_are_published_on_loopback_only(trio: tuple[Postgres, Redis, Elasticsearch], leaks: LeakCheck) -> None:
    with Environment(*trio, labels=leaks.labels) as env:
        for handle in env:
            info = json.loads(docker("inspect", handle.id))[0]
            for bindings in info["NetworkSettings"]["Ports"].values():
                assert bindings, f"{handle.name} publishes a port with no binding"
                assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (handle.name, bindings)
            assert handle.host == "127.0.0.1"
            labels = info["Config"]["Labels"]
            assert labels["svcenv.environment"] == env.id
            assert labels["svcenv.owner-pid"] == str(os.getpid())
            assert labels["svcenv.version"]


def test_missing_image_names_the_image_and_leaves_nothing(leaks: LeakCheck) -> None:
    ghost = Postgres(image="svcenv-test/no-such-image:1")
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info:
        Environment(ghost, labels=leaks.labels).start()
    assert time.monotonic() - started < 30
    failure = info.value.failures[0]
    assert failure.service == "postgres"
    assert failure.image == "svcenv-test/no-such-image:1"
    assert "svcenv-test/no-such-image:1" in str(info.value)
    assert "SVCENV_POSTGRES_IMAGE" in str(info.value)
    assert "not on the engine" in str(info.value)


def test_probe_that_never_succeeds_fails_within_deadline_with_log_tail(leaks: LeakCheck) -> None:
    stubborn = Service(
        "stubborn",
        image=os.environ["SVCENV_REDIS_IMAGE"],
        ports=(6379,),
        probe=LogLine("this line is never printed"),
        timeout=2.0,
    )
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info:
        Environment(stubborn, labels=leaks.labels).start()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 5.0, elapsed
    message = str(info.value)
    assert "stubborn" in message
    assert "not ready within 2s" in message
    assert "this line is never printed" in message  # the last probe error
    assert "Ready to accept connections" in info.value.failures[0].log_tail  # redis's own log


def test_container_that_exits_is_reported_at_once(leaks: LeakCheck) -> None:
    crasher = Service(
        "crasher",
        image=os.environ["SVCENV_REDIS_IMAGE"],
        ports=(6379,),
        command=("sh", "-c", "echo 'fatal: config is broken' >&2; exit 3"),
        probe=TCP(),
        timeout=30.0,
    )
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info:
        Environment(crasher, labels=leaks.labels).start()
    assert time.monotonic() - started < 10, "an exited container must not wait out the deadline"
    assert "exited with status 3" in str(info.value)
    assert "fatal: config is broken" in info.value.failures[0].log_tail


def test_one_of_three_failing_removes_the_others_and_reports_only_it(leaks: LeakCheck) -> None:
    broken = Service("broken", image=os.environ["SVCENV_REDIS_IMAGE"], ports=(6379,), probe=HTTP("/"), timeout=3.0)
    with pytest.raises(ServiceStartError) as info:
        Environment(Postgres(), Redis(), broken, labels=leaks.labels).start()
    assert info.value.services == ("broken",)
    assert "GET http://127.0.0.1:" in str(info.value)


def test_exception_in_body_still_tears_down(leaks: LeakCheck) -> None:
    env = Environment(Redis(), labels=leaks.labels)
    with pytest.raises(ZeroDivisionError), env:
        assert len(leaks.leftovers()) == 1
        1 / 0  # noqa: B018
    assert leaks.leftovers() == []
    env.stop()  # idempotent
    with pytest.raises(ServiceNotFound):
        env["redis"]


def test_passwords_are_generated_and_stay_out_of_reprs(leaks: LeakCheck) -> None:
    pg, rd = Postgres(), Redis()
    with Environment(pg, rd, labels=leaks.labels) as env:
        secret = env[pg].password
        assert len(secret) >= 22  # >= 128 bits from `secrets`
        assert env[rd].password
        assert env[rd].password != secret
        for text in (repr(pg), repr(env[pg]), repr(env), repr(env[rd]), repr(env.timings)):
            assert secret not in text
            assert env[rd].password not in text
        # The server really enforces the generated password.
        wrong = env[pg].url.replace(secret, "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=5)
    with Environment(Postgres(), labels=leaks.labels) as second:
        assert second["postgres"].password != secret


def test_redis_without_password_and_given_password(leaks: LeakCheck) -> None:
    open_redis, locked = Redis(name="open", password=""), Redis(name="locked", password="given-secret")
    with Environment(open_redis, locked, labels=leaks.labels) as env:
        assert env[open_redis].url.startswith("redis://127.0.0.1:")
        assert redis.Redis(host="127.0.0.1", port=env[open_redis].port).ping()
        assert env[locked].client().ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=env[locked].port, password="nope").ping()


def test_ctrl_c_during_start_leaves_nothing(docker_engine: None, tmp_path: object) -> None:
    """A real SIGINT to a process that is starting an environment."""
    token = os.urandom(6).hex()
    script = textwrap.dedent(
        f"""
        import sys
        from svcenv import Environment, Postgres, Elasticsearch
        slow = Elasticsearch(env={{"STANDIN_STARTUP_DELAY": "30"}})
        print("starting", flush=True)
        try:
            Environment(Postgres(), slow, labels={{"svcenv.test": "{token}"}}).start()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "starting"
    deadline = time.monotonic() + 20
    while len(containers(f"svcenv.test={token}")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(containers(f"svcenv.test={token}")) == 2, "containers were never created"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in out
    assert containers(f"svcenv.test={token}") == []


def test_async_twins(leaks: LeakCheck) -> None:
    import asyncio

    pg, rd = Postgres(), Redis()

    async def use(env: Environment) -> tuple[object, object]:
        conn = await env[pg].connect_async()
        async with conn:
            row = await (await conn.execute("SELECT 40 + 2")).fetchone()
        client = env[rd].async_client()
        await client.set("k", "v")
        value = await client.get("k")
        await client.aclose()
        return row, value

    with Environment(pg, rd, labels=leaks.labels) as env:
        assert asyncio.run(use(env)) == ((42,), b"v")


def test_generic_service_with_composed_probes(leaks: LeakCheck) -> None:
    from svcenv.probes import Command

    image = os.environ["SVCENV_REDIS_IMAGE"]
    cache = Service(
        "cache",
        image=image,
        ports=(6379,),
        command=("redis-server", "--save", ""),
        probe=TCP() & LogLine("Ready to accept connections") & Command(["redis-cli", "ping"]),
    )
    search = Service(
        "search",
        image=os.environ["SVCENV_ELASTICSEARCH_IMAGE"],
        ports=(9200,),
        env={"discovery.type": "single-node", "xpack.security.enabled": "false", "STANDIN_STARTUP_DELAY": "0.5"},
        probe=HTTP("/_cluster/health"),
        scheme="http",
    )
    with Environment(cache, search, labels=leaks.labels) as env:
        assert redis.Redis(port=env[cache].port).ping()
        assert env[search].url == f"http://127.0.0.1:{env[search].port}"
        assert env[cache].exec(["redis-cli", "ping"]) == (0, "PONG\n")
        assert "Ready to accept connections" in env[cache].logs(tail=5)
        assert env.env_vars()["SEARCH_URL"] == env[search].url


def test_es_descriptor_defaults_matter(leaks: LeakCheck) -> None:
    """The stand-in keeps the cluster red without single-node discovery, as a lone real node would."""
    lonely = Elasticsearch(env={"discovery.type": "multi-node", "STANDIN_STARTUP_DELAY": "0"}, timeout=3)
    with pytest.raises(ServiceStartError, match=r"cluster status 'red'|answered 408"):
        Environment(lonely, labels=leaks.labels).start()


def test_owned_postgres_is_tuned_for_tests_unless_told_not_to(leaks: LeakCheck) -> None:
    fast, safe = Postgres(), Postgres(name="safe", tuned=False)
    with Environment(fast, safe, labels=leaks.labels) as env:
        with env[fast].connect() as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
        with env[safe].connect() as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_sigkilled_owner_leaves_nothing(docker_engine: None) -> None:
    """No Ryuk: the reaper removes the containers (and volumes) of an owner killed with SIGKILL."""
    token = os.urandom(6).hex()
    script = textwrap.dedent(
        f"""
        import time
        from svcenv import Environment, Postgres, Redis
        env = Environment(Postgres(), Redis(), labels={{"svcenv.test": "{token}"}}).start()
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    volumes_before = set(docker("volume", "ls", "-qf", "dangling=true").split())
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    assert len(containers(f"svcenv.test={token}")) == 2
    proc.kill()
    proc.wait(timeout=10)
    killed = time.monotonic()
    while containers(f"svcenv.test={token}") and time.monotonic() - killed < 15:
        time.sleep(0.1)
    assert containers(f"svcenv.test={token}") == [], "the reaper did not remove the containers"
    assert time.monotonic() - killed < 15
    assert set(docker("volume", "ls", "-qf", "dangling=true").split()) <= volumes_before
