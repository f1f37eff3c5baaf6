"""Records: every probe svcenv ships survives a spec round trip (state files, reuse); others are refused."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from svcenv import ConfigurationError, Postgres, Redis, Service
from svcenv.probes import (
    HTTP,
    RECORDABLE,
    TCP,
    Command,
    Completed,
    ElasticsearchHealth,
    Healthy,
    LogLine,
    PostgresQuery,
    Probe,
    RedisPing,
    from_record,
    to_record,
)
from svcenv.records import build_service, spec_of

SHIPPED = [
    TCP(port=5432, timeout=3.0, settle=0.1),
    HTTP("/health", status=204, port=8080, scheme="https", timeout=4.0),
    LogLine("ready to accept", times=2),
    Command(["pg_isready", "-q"], exit_code=0),
    PostgresQuery(timeout=5),
    RedisPing(timeout=2.0),
    ElasticsearchHealth("green", timeout=3.0),
    Healthy(),
    Completed(),
    TCP() & HTTP("/") & LogLine("up"),
]


def test_every_shipped_probe_is_covered() -> None:
    covered = {type(p).__name__ for p in SHIPPED} | {"AllOf"}
    assert set(RECORDABLE) - {"MySQLQuery"} <= covered, set(RECORDABLE) - covered


@pytest.mark.parametrize("probe", SHIPPED, ids=lambda p: type(p).__name__)
def test_probe_round_trips_through_json_and_a_descriptor_spec(probe: Probe) -> None:
    assert from_record(json.loads(json.dumps(to_record(probe)))) == probe
    service = Service("web", image="nginx:1", ports=(80,), probe=probe)
    rebuilt = build_service(json.loads(json.dumps(spec_of(service))))
    assert rebuilt.probe == probe
    assert rebuilt == service


def test_kind_descriptors_round_trip_with_their_probe() -> None:
    for service in (Postgres(user="app", probe=PostgresQuery(timeout=7)), Redis(name="cache", probe=RedisPing())):
        rebuilt = build_service(json.loads(json.dumps(spec_of(service))))
        assert type(rebuilt) is type(service)
        assert rebuilt.probe == service.probe


def test_a_probe_svcenv_does_not_ship_is_refused_clearly() -> None:
    @dataclass(frozen=True)
    class Custom(Probe):
        def check(self, service: object) -> None:
            return None

    with pytest.raises(ConfigurationError, match=r"Custom.*cannot be recorded.*only the probes svcenv ships"):
        spec_of(Service("web", image="nginx:1", ports=(80,), probe=Custom()))
    with pytest.raises(ConfigurationError, match="unknown probe record"):
        from_record({"probe": "Custom"})


def test_jobs_entrypoints_labels_and_local_commands_round_trip_through_a_spec() -> None:
    job = Service("migrate", image="app:1", entrypoint=("/bin/sh", "-c"), command=("migrate",), one_shot=True)
    labelled = Service("api", image="app:1", labels={"team": "payments"})
    local = Service("worker", command=("python3", "worker.py"), ports=(8000,))
    for service in (job, labelled, local):
        rebuilt = build_service(json.loads(json.dumps(spec_of(service))))
        assert rebuilt == service
    assert "image" not in spec_of(local)
