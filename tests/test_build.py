"""``Service(build=...)``: built on the engine once per context, rebuilt when what goes in changes.

Every image these tests build is removed afterwards (``built_images``); the
images they build FROM are the local test images (nothing is pulled).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from svcenv import BuildFailed, BuildSpec, ConfigurationError, Environment, Postgres, Service, ServiceStartError
from svcenv.backends import docker_build
from svcenv.backends.docker import DockerBackend
from svcenv.probes import LogLine

from .conftest import LeakCheck, docker

pytestmark = pytest.mark.docker


@pytest.fixture
def sdk(docker_engine: None) -> Iterator[docker_sdk.DockerClient]:
    client = docker_sdk.from_env()
    yield client
    client.close()


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tags svcenv builds (not those it finds built already), in order."""
    built: list[str] = []
    real = docker_build._build

    def counted(client: object, service: Service, build: BuildSpec, tag: str, *args: object) -> None:
        built.append(tag)
        real(client, service, build, tag, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(docker_build, "_build", counted)
    return built


def _context(path: Path, base: str, message: str = "hello") -> Path:
    (path / "message.txt").write_text(message)
    (path / "Dockerfile").write_text(
        f"FROM {base}\n"
        "ARG FLAVOUR=plain\n"
        "COPY message.txt /message.txt\n"
        'RUN echo "flavour $FLAVOUR" > /flavour.txt\n'
        'CMD ["sh", "-c", "cat /message.txt /flavour.txt; echo; echo up; exec sleep infinity"]\n'
    )
    (path / ".dockerignore").write_text("scratch/\n")
    (path / "scratch").mkdir(exist_ok=True)
    return path


def _container_image(handle_id: str) -> tuple[str, str]:
    """(image name, image id) a container was created from."""
    info = json.loads(docker("inspect", handle_id))[0]
    return str(info["Config"]["Image"]), str(info["Image"])


def test_first_build_cache_hit_and_rebuild_when_the_context_changes(
    leaks: LeakCheck, base_image: str, built_images: set[str], builds: list[str], tmp_path: Path, sdk: object
) -> None:
    app = Service("app", build=_context(tmp_path, base_image), probe=LogLine("up"))
    with Environment(app, labels=leaks.labels) as env:
        first_tag, first_id = _container_image(env["app"].id)
        assert "hello" in env["app"].logs()
        assert "flavour plain" in env["app"].logs()
    assert builds == [first_tag]
    assert first_tag.startswith("svcenv-build/app:")
    image = json.loads(docker("image", "inspect", first_tag))[0]
    assert image["Config"]["Labels"]["svcenv.build"] == "true"
    assert image["Config"]["Labels"]["svcenv.build-hash"].startswith(first_tag.rsplit(":", 1)[1])

    # Unchanged context (a file .dockerignore leaves out changes, and mtimes do): found, not built.
    (tmp_path / "scratch" / "notes.txt").write_text("ignored")
    os.utime(tmp_path / "message.txt")
    began = time.monotonic()
    with Environment(app, labels=leaks.labels) as env:
        assert _container_image(env["app"].id) == (first_tag, first_id)
    assert builds == [first_tag], "an unchanged context was built again"
    assert time.monotonic() - began < 10

    # A changed file: another hash, built again.
    (tmp_path / "message.txt").write_text("changed")
    with Environment(app, labels=leaks.labels) as env:
        second_tag, second_id = _container_image(env["app"].id)
        assert "changed" in env["app"].logs()
    assert second_tag != first_tag
    assert second_id != first_id
    assert builds == [first_tag, second_tag]

    # Build args and the Dockerfile are in the hash too.
    flavoured = Service("app", build=BuildSpec(tmp_path, args={"FLAVOUR": "spicy"}), probe=LogLine("up"))
    with Environment(flavoured, labels=leaks.labels) as env:
        assert "flavour spicy" in env["app"].logs()
        assert _container_image(env["app"].id)[0] not in (first_tag, second_tag)
    assert len(builds) == 3


def test_a_dockerfile_elsewhere_and_a_target_stage(
    leaks: LeakCheck, base_image: str, built_images: set[str], tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "data.txt").write_text("from the context")
    recipe = tmp_path / "recipes" / "app.Dockerfile"  # outside the context
    recipe.parent.mkdir()
    recipe.write_text(
        f"FROM {base_image} AS first\n"
        "COPY data.txt /data.txt\n"
        'CMD ["sh", "-c", "echo stage first; cat /data.txt; echo; exec sleep infinity"]\n'
        f"FROM {base_image} AS second\n"
        'CMD ["sh", "-c", "echo stage second; exec sleep infinity"]\n'
    )
    app = Service("app", build=BuildSpec(context, dockerfile=str(recipe), target="first"), probe=LogLine("stage"))
    with Environment(app, labels=leaks.labels) as env:
        log = env["app"].logs()
    assert "stage first" in log
    assert "from the context" in log


def test_a_failing_build_is_a_typed_error_with_the_log_tail_and_leaves_nothing(
    leaks: LeakCheck, base_image: str, built_images: set[str], tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(f'FROM {base_image}\nRUN echo "svcenv-marker: about to fail" && exit 7\n')
    images_before = set(docker("images", "-aq").split())
    app = Service("app", build=tmp_path)
    backend = DockerBackend()
    try:
        with pytest.raises(BuildFailed) as info:
            backend.create(app.resolve(), {**leaks.labels, "svcenv.environment": f"b{leaks.token}"})
    finally:
        backend.close()
    assert isinstance(info.value, ServiceStartError)
    assert info.value.service == "app"
    failure = info.value.failures[0]
    assert "svcenv-marker: about to fail" in failure.log_tail
    assert "non-zero code: 7" in failure.reason
    assert str(tmp_path) in str(info.value)
    assert failure.image is not None
    assert failure.image.startswith("svcenv-build/app:")

    # Through an environment: one ServiceStartError naming the service, with the build's last lines.
    with pytest.raises(ServiceStartError) as started:
        Environment(app, labels=leaks.labels).start()
    assert started.value.services == ("app",)
    assert "could not build its image" in str(started.value)
    assert "svcenv-marker: about to fail" in str(started.value)
    # No image (not even an intermediate one), no container, no network.
    assert set(docker("images", "-aq").split()) == images_before
    assert leaks.networks() == []


def test_a_postgres_built_from_the_test_image_starts_from_the_cache(
    leaks: LeakCheck, built_images: set[str], tmp_path: Path, sdk: docker_sdk.DockerClient
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {os.environ['SVCENV_POSTGRES_IMAGE']}\nLABEL org.example.built=yes\n")
    pg = Postgres(build=tmp_path)
    try:
        with Environment(pg, labels=leaks.labels) as env:
            with env[pg].connect() as conn:
                assert conn.execute("SELECT current_database()").fetchone() == ("test",)
            name, _ = _container_image(env[pg].id)
            assert name.startswith("svcenv-cache/postgres:"), name  # the pre-initialised image of the built one
            base = sdk.images.get(name).labels["svcenv.cache-base"]
            assert base.startswith("svcenv-build/postgres:")
    finally:
        for image in sdk.images.list(filters={"label": ["svcenv.cache=true", "org.example.built=yes"]}):
            sdk.images.remove(str(image.id), force=True)


def test_build_is_checked_when_the_descriptor_is_made(tmp_path: Path) -> None:
    assert Service("app", build=str(tmp_path)) == Service("app", build=BuildSpec(tmp_path))
    assert hash(BuildSpec(tmp_path, args={"N": 1})) == hash(BuildSpec(str(tmp_path), args={"N": "1"}))  # type: ignore[dict-item]
    assert Service("app", build=tmp_path).effective_image == "svcenv-build/app"
    with pytest.raises(ConfigurationError, match="image or build, not both"):
        Service("app", image="x:1", build=tmp_path)
    with pytest.raises(ConfigurationError, match="no image given"):
        _ = Service("app").effective_image
    with pytest.raises(ConfigurationError, match=r"build must be a path or a svcenv\.BuildSpec"):
        Service("app", build=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="is not a directory"):
        docker_build.context_digest("app", BuildSpec(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="no Dockerfile"):
        docker_build.context_digest("app", BuildSpec(tmp_path))
