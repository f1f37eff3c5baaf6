"""svcenv's containers are its own: no testcontainers label, no network nobody asked for, one image name.

A Ryuk that testcontainers starts in the same process removes every container
labelled with its session id; svcenv's containers must never carry that label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

import svcenv
from svcenv import Environment, Postgres, Redis, ServiceStartError

from .conftest import LeakCheck

pytestmark = pytest.mark.docker

SESSION_LABEL = "org.testcontainers.session-id"


@pytest.fixture
def sdk(docker_engine: None) -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def _svcenv_containers(sdk: docker.DockerClient, leaks: LeakCheck) -> list[Any]:
    return list(sdk.containers.list(all=True, filters={"label": f"svcenv.test={leaks.token}"}))


def test_a_testcontainers_session_reaper_leaves_svcenv_containers_alone(
    sdk: docker.DockerClient, leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    # No Ryuk image can be pulled here: this test does Ryuk's work itself.
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)  # in case the config read it already
    rd = Redis()
    with Environment(rd, labels=leaks.labels) as env:
        ours = _svcenv_containers(sdk, leaks)
        assert len(ours) == 1
        with DockerContainer("svcenv-test/redis:7").with_command("redis-server") as tc:
            theirs = sdk.containers.get(tc.get_wrapped_container().id)
            session = theirs.attrs["Config"]["Labels"][SESSION_LABEL]
            labelled = {c.id for c in sdk.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={session}"})}
            assert theirs.id in labelled  # the filter Ryuk uses does find the session's containers
            assert ours[0].id not in labelled
        # What Ryuk does once the session's process lets go: remove every container of the session.
        for container in sdk.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={session}"}):
            container.remove(force=True, v=True)
        ours[0].reload()
        assert ours[0].status == "running"
        client = env[rd].client()  # type: ignore[attr-defined]
        assert client.ping()
        client.close()


def test_svcenv_containers_carry_only_svcenv_labels_and_only_the_environments_network(
    sdk: docker.DockerClient, leaks: LeakCheck
) -> None:
    with Environment(Redis(), Postgres(), labels=leaks.labels) as env:
        ours = _svcenv_containers(sdk, leaks)
        assert len(ours) == 2
        for container in ours:
            labels = container.attrs["Config"]["Labels"] or {}
            assert not [k for k in labels if k.startswith("org.testcontainers")], labels
            assert {k for k in labels if not k.startswith("svcenv.")} == set(), labels
            assert labels["svcenv.test"] == leaks.token
            # Neither the default bridge nor any network of the caller's: the environment's own, and only it.
            assert set(container.attrs["NetworkSettings"]["Networks"]) == {f"svcenv-{env.id}"}


@pytest.mark.parametrize("service", [Redis, Postgres])
def test_pull_never_refuses_the_prefixed_image_that_would_be_created(
    service: type[svcenv.Service], leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_PULL", "never")
    monkeypatch.setenv("TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX", "example.invalid/")
    descriptor = service()
    with pytest.raises(ServiceStartError) as info, Environment(descriptor, labels=leaks.labels):
        pass
    assert f"example.invalid/{descriptor.effective_image}" in str(info.value)


def test_the_prefixed_image_is_the_one_created(
    sdk: docker.DockerClient, leaks: LeakCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"svcenv-{leaks.token}.invalid/"
    rd, pg = Redis(), Postgres()
    tagged = []
    for descriptor in (rd, pg):
        repository, tag = f"{prefix}{descriptor.effective_image}".rsplit(":", 1)
        sdk.images.get(descriptor.effective_image).tag(repository, tag)
        tagged.append(f"{repository}:{tag}")
    monkeypatch.setenv("SVCENV_PULL", "never")
    monkeypatch.setenv("TESTCONTAINERS_HUB_IMAGE_NAME_PREFIX", prefix)
    try:
        with Environment(rd, pg, labels=leaks.labels) as env:
            images = {c.labels["svcenv.service"]: c.attrs["Config"]["Image"] for c in _svcenv_containers(sdk, leaks)}
            assert images[env[rd].name] == f"{prefix}{rd.effective_image}"
            pg_image = sdk.images.get(images[env[pg].name])
            # Postgres starts from its pre-initialised image, built from the prefixed base.
            if images[env[pg].name] != f"{prefix}{pg.effective_image}":
                assert pg_image.labels["svcenv.cache-base"] in (f"{prefix}{pg.effective_image}", pg.effective_image)
    finally:
        for name in tagged:
            sdk.images.remove(name)  # removes the tag only: the image has its other name


def test_the_images_declared_volume_carries_the_environments_labels(sdk: docker.DockerClient, leaks: LeakCheck) -> None:
    # The postgres image declares VOLUME /var/lib/postgresql/data: its anonymous volume is labelled,
    # so a sweep by label finds it should the container's removal leave it (see docs/guarantees.md).
    with Environment(Postgres(), labels=leaks.labels) as env:
        mounts = sdk.containers.get(env["postgres"].id).attrs["Mounts"]
        declared = [m for m in mounts if m["Destination"] == "/var/lib/postgresql/data"]
        assert len(declared) == 1, mounts
        assert declared[0]["Type"] == "volume"
        labels = sdk.volumes.get(declared[0]["Name"]).attrs["Labels"]
        assert labels["svcenv.environment"] == env.id
        assert labels["svcenv.test"] == leaks.token
        name = declared[0]["Name"]
    assert not sdk.volumes.list(filters={"name": name}), "the volume goes with its container"
