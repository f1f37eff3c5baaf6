"""svcenv's own clients reach a local engine's containers straight over its bridge, not through the port proxy.

URLs, variables and ``host``/``port`` stay the published 127.0.0.1 ones; only
``connect()``/``client()`` (and the pools and fixtures built on them) use the
container's own address, and only when this host's routing table sends that
address out of the environment's bridge. A remote engine is tested in
tests/test_remote_engine.py (its connections go to the engine's host).
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from svcenv import Environment, Postgres, Redis
from svcenv.backends._route import routes_directly

from .conftest import LeakCheck, docker

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def _table(*rows: tuple[str, str, str, str, str]) -> str:
    return HEADER + "".join(f"{i}\t{d}\t{g}\t{f}\t0\t0\t0\t{m}\t0\t0\t0\n" for i, d, g, f, m in rows)


# 172.17.0.0/16 on docker0, 192.0.2.0/24 on eth0, default via 192.0.2.1 (the kernel's byte order).
TABLE = _table(
    ("eth0", "00000000", "010200C0", "0003", "00000000"),
    ("docker0", "000011AC", "00000000", "0001", "0000FFFF"),
    ("eth0", "000200C0", "00000000", "0001", "00FFFFFF"),
)


def test_the_route_must_be_the_most_specific_one_out_of_that_interface_with_no_gateway() -> None:
    assert routes_directly("172.17.0.2", "docker0", TABLE)
    assert not routes_directly("172.17.0.2", "eth0", TABLE), "another interface's route"
    assert not routes_directly("172.18.0.2", "docker0", TABLE), "only the default route (a gateway) covers it"
    assert not routes_directly("10.0.0.5", "eth0", TABLE), "the default route has a gateway"
    narrower = TABLE + _table(("tun0", "000211AC", "00000000", "0001", "00FFFFFF"))[len(HEADER) :]
    assert not routes_directly("172.17.2.9", "docker0", narrower), "a /24 elsewhere wins over the /16"
    assert routes_directly("172.17.3.9", "docker0", narrower)
    down = _table(("docker0", "000011AC", "00000000", "0000", "0000FFFF"))
    assert not routes_directly("172.17.0.2", "docker0", down), "a route that is not up"
    via_gateway = _table(("docker0", "000011AC", "010011AC", "0003", "0000FFFF"))
    assert not routes_directly("172.17.0.2", "docker0", via_gateway)
    for bad in ("", "172.17.0", "::1", "postgres", "172.17.0.2; rm"):
        assert not routes_directly(bad, "docker0", TABLE), bad


def _network_of(container_id: str) -> dict[str, Any]:
    networks: dict[str, Any] = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container_id))
    assert len(networks) == 1, networks
    return next(iter(networks.values()))


@pytest.mark.docker
def test_clients_connect_straight_to_the_container_and_urls_stay_published(leaks: LeakCheck) -> None:
    with Environment(Postgres(), Redis(), labels=leaks.labels) as env:
        pg, rd = env["postgres"], env["redis"]
        for handle in (pg, rd):
            network = _network_of(handle.id)
            assert handle._instance.direct_host == network["IPAddress"]
            assert handle._instance.direct_via == f"br-{network['NetworkID'][:12]}"
            assert handle.host == "127.0.0.1"
        assert f"@127.0.0.1:{pg.port}/" in pg.url
        assert env.env_vars()["REDIS_HOST"] == "127.0.0.1"
        with pg.connect() as conn:  # type: ignore[attr-defined]
            assert (conn.info.host, conn.info.port) == (pg._instance.direct_host, 5432)
            assert conn.execute("SELECT 1").fetchone() == (1,)  # no proxy listens there: this is the container
        client = rd.client()  # type: ignore[attr-defined]
        try:
            assert client.connection_pool.connection_kwargs["host"] == rd._instance.direct_host
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        with psycopg.connect(pg.url, connect_timeout=5) as conn:  # the published port works as well
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.docker
def test_svcenv_direct_0_keeps_clients_on_the_published_port(leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVCENV_DIRECT", "0")
    with Environment(Postgres(), labels=leaks.labels) as env:
        pg = env["postgres"]
        assert pg._instance.direct_host is None
        with pg.connect() as conn:  # type: ignore[attr-defined]
            assert (conn.info.host, conn.info.port) == ("127.0.0.1", pg.port)


@pytest.mark.docker
def test_an_attached_environment_checks_the_route_again(leaks: LeakCheck) -> None:
    with Environment(Postgres(), labels=leaks.labels) as env:
        snapshot = env.snapshot()
        entry = snapshot["services"]["postgres"]
        assert entry["direct_host"] == env["postgres"]._instance.direct_host
        attached = Environment.attach(snapshot, Postgres())
        with attached["postgres"].connect() as conn:  # type: ignore[attr-defined]
            assert conn.info.host == entry["direct_host"]
        # A snapshot read where that bridge is not (another host or network namespace): the published port.
        elsewhere = {**snapshot, "services": {"postgres": {**entry, "direct_via": "br-000000000000"}}}
        attached = Environment.attach(elsewhere, Postgres())
        with attached["postgres"].connect() as conn:  # type: ignore[attr-defined]
            assert (conn.info.host, conn.info.port) == ("127.0.0.1", env["postgres"].port)
    assert leaks.leftovers() == []  # attaching leaves the owner's containers to the owner


@pytest.mark.docker
def test_a_killed_containers_connect_fails_at_once(leaks: LeakCheck) -> None:
    # Its address answers nothing once it is gone (a connect there would wait seconds for ARP):
    # the client goes to the published port, which refuses at once.
    with Environment(Postgres(), labels=leaks.labels) as env:
        pg = env["postgres"]
        docker("kill", pg.id)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            pg.connect()  # type: ignore[attr-defined]
        assert time.monotonic() - started < 1.0
