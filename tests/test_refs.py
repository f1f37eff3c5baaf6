"""Services refer to each other's addresses; the references are filled in once the referred-to one is ready."""

from __future__ import annotations

import pytest

from svcenv import ConfigurationError, Environment, Postgres, Redis, Service
from svcenv.backends import get_backend
from svcenv.probes import LogLine
from svcenv.refs import Ref, referenced

from .conftest import LeakCheck


def test_a_reference_is_a_string_that_composes_and_implies_a_dependency() -> None:
    pg = Postgres()
    assert isinstance(pg.internal_url, str)
    assert pg.internal_url == "${svcenv:postgres:internal_url}"
    api = Service("api", image="x", env={"DB": f"{pg.internal_url}?sslmode=disable"}, command=("run", pg.internal_host))
    assert referenced(api) == {"postgres"}
    env = Environment(pg, api)  # no depends_on: the reference orders the start
    assert env.plan  # constructed without a ConfigurationError


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ((Service("api", image="x", env={"DB": Postgres().internal_url}),), "'api' refers to 'postgres'"),
        (
            (
                Service("a", image="x", env={"B": Service("b", image="x").internal_url}),
                Service("b", image="x", env={"A": Service("a", image="x").internal_url}),
            ),
            "dependency cycle",
        ),
        ((Service("api", image="x", env={"DB": "${svcenv:api2:secret}"}), Service("api2", image="x")), "secret"),
    ],
)
def test_bad_references_fail_when_the_environment_is_made(services: tuple[Service, ...], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Environment(*services)


def test_an_unknown_attribute_is_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="internal_url"):
        Ref("postgres", "secret")


def test_an_app_container_gets_the_addresses_and_generated_passwords(leaks: LeakCheck, base_image: str) -> None:
    pg, rd = Postgres(), Redis()
    script = (
        'psql "$DATABASE_URL" -tAc "SELECT 40 + 2" && '
        'redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -a "$REDIS_PASSWORD" --no-auth-warning PING '
        '&& echo "db host $1" && sleep infinity'
    )
    app = Service(
        "app",
        image=base_image,
        command=("sh", "-c", script, "app", pg.internal_host),
        env={
            "DATABASE_URL": pg.internal_url,
            "REDIS_HOST": rd.internal_host,
            "REDIS_PORT": rd.internal_port,
            "REDIS_PASSWORD": rd.ref("password"),
        },
        probe=LogLine("db host"),
    )
    with Environment(app, pg, rd, labels=leaks.labels) as env:  # declared first, started last
        log = env[app].logs()
        for said in ("42", "PONG", "db host postgres"):
            assert said in log, log
        password = env[pg].password
        assert password
        assert password in env[app].descriptor.env["DATABASE_URL"]
        assert env.timings["app"].begin >= max(env.timings["postgres"].ready, env.timings["redis"].ready)


def test_on_the_local_backend_the_internal_address_is_the_host_one() -> None:
    reason = get_backend("local").supports(Redis())
    if reason is not None:
        pytest.skip(reason)
    with Environment(Redis(), backend="local") as env:
        handle = env["redis"]
        assert (handle.internal_host, handle.internal_port, handle.internal_url) == (
            handle.host,
            handle.port,
            handle.url,
        )
