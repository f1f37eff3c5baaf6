"""Reuse, keep and attach are features of ``Environment``, on the one start/teardown engine.

Docker: a reused service is recorded and found again by the next environment;
a kept one outlives ``stop()``; a failed start removes what it started but
leaves what was recorded. Local: servers end with their owner, so reuse and
keep are refused before anything starts, and attach works in the process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from svcenv import ConfigurationError, Environment, Redis, Service, ServiceStartError
from svcenv.backends import get_backend
from svcenv.backends.base import LABEL_KEEP, LABEL_REUSE_HASH
from svcenv.probes import TCP, LogLine
from svcenv.recorded import remove_entry
from svcenv.reuse import Reuse
from svcenv.state import StateDir

from .conftest import LeakCheck, containers, docker

SESSION_LABEL = "org.testcontainers.session-id"


@pytest.fixture
def reuse(tmp_path: Path) -> Reuse:
    project = tmp_path / "project"
    project.mkdir()
    return Reuse(StateDir(tmp_path / "state"), project)


def _remove_recorded(reuse: Reuse) -> None:
    backend = get_backend("docker")
    try:
        for record in reuse.store.reused():
            remove_entry(backend, record["service"])
            reuse.store.delete(reuse.store.reuse_file(str(record["hash"])))
    finally:
        backend.close()


def _running(container_id: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", container_id).strip() == "true"


def test_reuse_records_then_attaches_to_the_same_container(leaks: LeakCheck, reuse: Reuse) -> None:
    try:
        first = Environment(Redis(), labels=leaks.labels, reuse=reuse).start()
        assert first.outcomes == {"redis": "kept"}
        container_id = first["redis"].id
        first["redis"].client().set("left-by", "first")  # type: ignore[attr-defined]
        first.stop()
        assert _running(container_id), "stop() removed a reused service"
        [record] = reuse.store.reused()
        assert record["service"]["snapshot"]["id"] == container_id

        with Environment(Redis(), labels=leaks.labels, reuse=reuse) as second:
            assert second.outcomes == {"redis": "attached"}
            assert second["redis"].id == container_id
            assert second["redis"].client().get("left-by") == b"first"  # type: ignore[attr-defined]
            assert "Ready to accept connections" in second["redis"].logs()
            assert second.records()["redis"]["reuse_hash"] == record["hash"]
        assert _running(container_id)

        # Another configuration has another hash: a fresh container beside the first.
        with Environment(Redis(env={"X": "1"}), labels=leaks.labels, reuse=reuse) as third:
            assert third.outcomes == {"redis": "kept"}
            assert third["redis"].id != container_id
        assert len(leaks.leftovers()) == 2
    finally:
        _remove_recorded(reuse)


def test_a_gone_recorded_service_is_replaced(leaks: LeakCheck, reuse: Reuse) -> None:
    try:
        with Environment(Redis(), labels=leaks.labels, reuse=reuse) as env:
            gone = env["redis"].id
        docker("rm", "-fv", gone)
        with Environment(Redis(), labels=leaks.labels, reuse=reuse) as env:
            assert env.outcomes == {"redis": "kept"}
            assert env["redis"].id != gone
            assert env["redis"].client().ping()  # type: ignore[attr-defined]
        assert [r["service"]["snapshot"]["id"] for r in reuse.store.reused()] != [gone]
    finally:
        _remove_recorded(reuse)


def test_a_failed_start_removes_what_it_started_and_keeps_what_it_recorded(leaks: LeakCheck, reuse: Reuse) -> None:
    broken = Service(
        "broken", image="svcenv-test/redis:7", command=("false",), ports=(6379,), probe=TCP(), depends_on=("redis",)
    )
    try:
        with pytest.raises(ServiceStartError) as info:
            Environment(Redis(), broken, labels=leaks.labels, reuse=reuse, timeout=20).start()
        assert "broken" in str(info.value)
        kept = leaks.leftovers()
        assert len(kept) == 1, "the broken service was left, or the recorded one removed"
        assert docker("inspect", "-f", '{{index .Config.Labels "svcenv.service"}}', kept[0]).strip() == "redis"
        assert len(reuse.store.reused()) == 1
    finally:
        _remove_recorded(reuse)


def test_keep_leaves_services_running_and_attach_finds_them(leaks: LeakCheck) -> None:
    env = Environment(Redis(), labels=leaks.labels, keep=True).start()
    try:
        snapshot = env.snapshot()
        assert env.outcomes == {"redis": "kept"}
        env.stop()
        [container_id] = leaks.leftovers()
        assert docker("inspect", "-f", f'{{{{index .Config.Labels "{LABEL_KEEP}"}}}}', container_id).strip() == "true"
        attached = Environment.attach(snapshot, Redis())
        assert attached.attached
        assert attached["redis"].client().ping()  # type: ignore[attr-defined]
        attached.stop()  # an attached environment leaves them running
        assert _running(container_id)
    finally:
        backend = get_backend("docker")
        backend.remove_labelled(leaks.labels)
        backend.close()


def test_keep_after_start_leaves_them_to_a_later_run(leaks: LeakCheck) -> None:
    env = Environment(Redis(), labels=leaks.labels).start()
    try:
        env.keep()
        env.stop()
        [container_id] = leaks.leftovers()
        assert _running(container_id)
    finally:
        backend = get_backend("docker")
        backend.remove_labelled(leaks.labels)
        backend.close()


def test_a_testcontainers_reaper_spares_kept_and_reused_containers(
    leaks: LeakCheck, reuse: Reuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    # No Ryuk image can be pulled here: this test does Ryuk's work itself.
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    try:
        kept = Environment(Redis(), labels=leaks.labels, keep=True).start()
        kept.stop()
        with Environment(Redis(env={"R": "1"}), labels=leaks.labels, reuse=reuse):
            pass
        ours = leaks.leftovers()
        assert len(ours) == 2
        with DockerContainer(os.environ["SVCENV_REDIS_IMAGE"]).with_command("redis-server") as tc:
            session = tc.get_wrapped_container().labels[SESSION_LABEL]
        for theirs in containers(f"{SESSION_LABEL}={session}"):
            docker("rm", "-fv", theirs)
        assert all(_running(c) for c in ours)
        assert len(containers(f"{LABEL_REUSE_HASH}")) >= 1
    finally:
        _remove_recorded(reuse)
        backend = get_backend("docker")
        backend.remove_labelled(leaks.labels)
        backend.close()


def _local_or_skip() -> None:
    reason = get_backend("local").supports(Redis())
    if reason is not None:
        pytest.skip(reason)


def test_local_reuse_and_keep_are_refused_before_anything_starts(tmp_path: Path, reuse: Reuse) -> None:
    _local_or_skip()
    for kwargs in ({"reuse": reuse}, {"keep": True}):
        env = Environment(Redis(), backend="local", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="'redis' would run on the local backend"):
            env.start()
        assert env.state == "stopped"
    assert reuse.store.reused() == []


def test_local_attach_and_keep_refused_after_start() -> None:
    _local_or_skip()
    with Environment(Redis(), backend="local") as env:
        attached = Environment.attach(env.snapshot(), Redis())
        assert attached["redis"].client().ping()  # type: ignore[attr-defined]
        attached.stop()
        assert env["redis"].client().ping()  # type: ignore[attr-defined]
        with pytest.raises(ConfigurationError, match="local backend"):
            env.keep()
    assert env.outcomes == {"redis": "started"}


REACH_REDIS = (
    "import os, socket, time\n"
    "s = socket.create_connection((os.environ['REDIS_HOST'], int(os.environ['REDIS_PORT'])), timeout=5)\n"
    "s.sendall(b'AUTH ' + os.environ['REDIS_PASSWORD'].encode() + b'\\r\\nPING\\r\\n')\n"
    "said = b''\n"
    "while b'PONG' not in said and len(said) < 200:\n"
    "    said += s.recv(200)\n"
    "print('reached redis', flush=True)\n"
    "time.sleep(3600)\n"
)


def test_a_reused_service_joins_the_network_of_the_environment_that_attaches_it(
    leaks: LeakCheck, reuse: Reuse, base_image: str
) -> None:
    redis = Redis()
    try:
        first = Environment(redis, labels=leaks.labels, reuse=reuse).start()
        container_id, first_port = first["redis"].id, first["redis"].port
        first.stop()  # the kept container stays on the first environment's network

        app = Service(
            "app",
            image=base_image,
            command=("python3", "-c", REACH_REDIS),
            env={
                "REDIS_HOST": redis.internal_host,
                "REDIS_PORT": redis.internal_port,
                "REDIS_PASSWORD": redis.ref("password"),
            },
            probe=LogLine("reached redis"),
            timeout=20,
        )
        with Environment(redis, app, labels=leaks.labels) as second:  # the app is not reused; redis is
            pass  # (second only checks that an unreused environment does not attach)
        ports = docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", container_id)
        with Environment(redis, app, labels=leaks.labels, reuse=reuse) as third:
            assert third.outcomes["redis"] == "attached"
            assert third["redis"].id == container_id
            assert third["redis"].internal_host == "redis"
            # The app joined the reused service's network (it reached redis: its probe passed);
            # redis itself was left alone, its published port unchanged for whoever uses it.
            app_networks = docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", third["app"].id)
            assert f"svcenv-{first.id}" in app_networks
            assert docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", container_id) == ports
            assert third["redis"].port == first_port
        assert _running(container_id)
        assert second.outcomes["redis"] == "started"
    finally:
        _remove_recorded(reuse)
    leaks.assert_clean()
