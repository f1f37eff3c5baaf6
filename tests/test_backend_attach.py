"""``Backend.attach`` and ``Backend.prune``: services another process started, asked through the backends only."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from svcenv import Environment, Redis
from svcenv.backends import get_backend

from .conftest import LeakCheck, containers, docker

REDIS_READY = "Ready to accept connections"


def _wait_for_exit(instance: object, timeout: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout
    status = instance.exit_status()  # type: ignore[attr-defined]
    while status is None and time.monotonic() < deadline:
        time.sleep(0.1)
        status = instance.exit_status()  # type: ignore[attr-defined]
    return status  # type: ignore[no-any-return]


def _attach_roundtrip(name: str, labels: dict[str, str] | None = None) -> None:
    redis = Redis()
    with Environment(redis, labels=labels, backend=name) as env:
        entry = env.snapshot()["services"]["redis"]
        assert entry["backend"] == name
        backend = get_backend(name)
        try:
            attached = backend.attach(entry)
            assert attached.id == entry["id"]
            assert attached.ports == {int(k): v for k, v in entry["ports"].items()}
            assert REDIS_READY in attached.logs()
            assert REDIS_READY in attached.logs(tail=50)
            assert attached.exit_status() is None
            attached.stop()  # an attached instance leaves the service running
            assert attached.exit_status() is None
            assert attached.state()[0] == "running"
            assert env[redis].client().ping()
        finally:
            backend.close()
    # the owner stopped it: the attached instance sees that
    assert _wait_for_exit(attached) is not None
    assert attached.state()[0] != "running"


def test_docker_attach_reads_the_container(leaks: LeakCheck) -> None:
    _attach_roundtrip("docker", leaks.labels)


def test_local_attach_reads_the_process() -> None:
    reason = get_backend("local").supports(Redis())
    if reason is not None:
        pytest.skip(reason)
    _attach_roundtrip("local")


def test_local_attach_remove_stops_the_server() -> None:
    reason = get_backend("local").supports(Redis())
    if reason is not None:
        pytest.skip(reason)
    with Environment(Redis(), backend="local") as env:
        attached = get_backend("local").attach(env.snapshot()["services"]["redis"])
        attached.remove()
        assert _wait_for_exit(attached) is not None


def test_docker_attach_to_a_missing_container(docker_engine: None) -> None:
    backend = get_backend("docker")
    try:
        gone = backend.attach({"backend": "docker", "id": "0" * 64, "host": "127.0.0.1", "ports": {}})
        assert gone.exit_status() == -1
        assert gone.state() == ("missing", {})
        gone.stop()
        gone.remove()  # nothing to remove is fine
    finally:
        backend.close()


def test_external_attach_is_inert() -> None:
    backend = get_backend("external")
    entry = {"backend": "external", "id": "redis://h:1", "host": "h", "ports": {"6379": 1}, "credentials": {}}
    attached = backend.attach(entry)
    assert attached.exit_status() is None
    assert attached.ports == {6379: 1}
    attached.stop()
    attached.remove()


def test_unattachable_backend_says_which() -> None:
    from svcenv.backends.base import Backend

    class Bare(Backend):
        name = "bare"

        def check(self) -> None:
            pass

        def create(self, resolved, labels):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def cleanup(self, labels):  # type: ignore[no-untyped-def]
            return 0

    with pytest.raises(NotImplementedError, match="bare backend"):
        Bare().attach({"backend": "bare", "id": "x"})
    assert Bare().remove_labelled({"a": "b"}) == 0
    assert Bare().prune(only={}, keep_alive=lambda labels: False) == 0


def test_docker_prune_spares_what_keep_alive_keeps(leaks: LeakCheck) -> None:
    """Two owner-less containers: the one the callback keeps survives, the other is removed."""
    image = os.environ["SVCENV_REDIS_IMAGE"]
    made = []
    for which in ("keep", "drop"):
        made.append(
            docker(
                "run", "-d", "--label", "svcenv.environment=prune-test", "--label", f"svcenv.test={leaks.token}",
                "--label", f"svcenv.prune-test={which}", image,
            ).strip()
        )  # fmt: skip
    backend = get_backend("docker")
    seen: list[str] = []

    def keep_alive(labels: object) -> bool:
        assert isinstance(labels, dict)
        seen.append(labels["svcenv.prune-test"])
        return bool(labels["svcenv.prune-test"] == "keep")

    try:
        removed = backend.prune(only={"svcenv.test": leaks.token}, keep_alive=keep_alive)
        assert removed == 1
        assert sorted(seen) == ["drop", "keep"]
        left = containers(f"svcenv.test={leaks.token}")
        assert len(left) == 1
        assert made[0].startswith(left[0])
        assert backend.remove_labelled({"svcenv.test": leaks.token}) == 1
    finally:
        backend.close()
        subprocess.run(["docker", "rm", "-fv", *made], capture_output=True, timeout=60, check=False)
