"""Shared test infrastructure: a real Docker engine, real images, leftover counting.

Tests that need Docker take the ``docker_engine`` fixture. Without an engine (or
without the test images) they are skipped on a developer machine and FAIL under
``CI=true``: CI must never pass by skipping what it was meant to test.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

IMAGES = {
    "SVCENV_POSTGRES_IMAGE": "svcenv-test/postgres:15",
    "SVCENV_REDIS_IMAGE": "svcenv-test/redis:7",
    "SVCENV_ELASTICSEARCH_IMAGE": "svcenv-test/es-standin:8",
}
"""What every docker test may use; ``docker_engine`` checks them."""
MYSQL_IMAGE = ("SVCENV_MYSQL_IMAGE", "svcenv-test/mariadb:10")
"""Checked only by the tests that start MySQL (``mysql_image``): a machine without it runs the rest."""
os.environ.setdefault(*MYSQL_IMAGE)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The tests never ask a registry for anything: a missing image fails at once (subprocesses inherit this).
os.environ.setdefault("SVCENV_PULL", "never")


ENGINE_FIXTURES = {"docker_engine", "leaks", "mysql_image", "base_image", "built_images", "podman_engine"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the engine (through these fixtures, directly or not, or runs with a parameter
    ``"docker"``) is marked ``docker``,
    so ``-m "not docker"`` runs without one."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_docker = callspec is not None and "docker" in callspec.params.values()  # e.g. a `backend` parameter
        if on_docker or ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


def need(reason: str) -> None:
    """Skip locally, fail in CI: the one rule for a missing service."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def docker(*args: str) -> str:
    """Run the docker CLI (inspection only) and return its stdout."""
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def containers(label: str = "svcenv.environment") -> list[str]:
    """Ids of all containers (running or not) that carry ``label`` (``key`` or ``key=value``).

    With no engine answering there are none (a test that needs one fails through ``docker_engine``).
    """
    if not _engine_answers():
        return []
    return docker("ps", "-aq", "--filter", f"label={label}").split()


@functools.cache
def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode == 0


def dangling_volumes() -> set[str]:
    """Anonymous volumes no container uses (named ones are counted by label: another session's may be
    between its containers for a moment)."""
    if not _engine_answers():
        return set()
    return {v for v in docker("volume", "ls", "-qf", "dangling=true").split() if re.fullmatch(r"[0-9a-f]{64}", v)}


def lasting_dangling_volumes(before: set[str], grace: float = 5.0) -> set[str]:
    """The anonymous volumes that were not dangling ``before`` and still are after ``grace`` seconds.

    Another test's container removal (`rm -v`) shows its volume dangling for a moment before the
    engine deletes it; a leak is one that stays.
    """
    leaked = dangling_volumes() - before
    deadline = time.monotonic() + grace
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked &= dangling_volumes()
    return leaked


def networks(label: str = "svcenv.environment") -> list[str]:
    """Names of the networks that carry ``label`` (``key`` or ``key=value``)."""
    if not _engine_answers():
        return []
    return docker("network", "ls", "--format", "{{.Name}}", "--filter", f"label={label}").split()


def named_volumes(label: str = "svcenv.environment") -> list[str]:
    """Names of the volumes that carry ``label`` (``key`` or ``key=value``)."""
    if not _engine_answers():
        return []
    return docker("volume", "ls", "-q", "--filter", f"label={label}").split()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A reachable Docker engine with the test images; the image env vars point at them."""
    try:
        import docker as docker_sdk

        client = docker_sdk.from_env()
        client.ping()
    except Exception as exc:
        need(f"no Docker engine answers ({exc}); run `bash .ci/dev test` to provision one")
    missing = []
    for var, default in IMAGES.items():
        image = os.environ.setdefault(var, default)
        try:
            client.images.get(image)
        except Exception:
            missing.append(image)
    client.close()
    if missing:
        need(f"test images missing: {missing}; build them with `bash tests/images/build.sh`")
    return


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> str:
    """A Debian image with python3 and bash to build test images ``FROM``: ``svcenv-test/base:bookworm``,
    else the newest ``svcenv-test/base`` tag (tests/images/build.sh tags it by its recipe's hash)."""
    tags = docker("images", "--format", "{{.Repository}}:{{.Tag}}", "svcenv-test/base").split()
    if "svcenv-test/base:bookworm" in tags:
        return "svcenv-test/base:bookworm"
    if not tags:
        need("no svcenv-test/base image; build the test images with `bash tests/images/build.sh`")
    return tags[0]  # `docker images` lists the newest first


@pytest.fixture
def built_images(docker_engine: None, leaks: LeakCheck) -> Iterator[set[str]]:
    """Removes, after the test, every image its environments built (label ``svcenv.build=true`` and
    the test's ``leaks`` label, which svcenv gives what an environment builds).

    Yields the ids of the built images that were there before the test (left alone). Another test's
    images (another xdist worker's, built meanwhile) carry another label and stay.
    """

    def ids(*labels: str) -> set[str]:
        filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
        return set(docker("images", "-q", "--no-trunc", *filters).split())

    before = ids("svcenv.build=true")
    yield before
    for image in ids("svcenv.build=true", f"svcenv.test={leaks.token}") - before:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def mysql_image(docker_engine: None) -> str:
    """The MySQL/MariaDB test image, present on the engine (else skipped locally, failed in CI)."""
    image = os.environ[MYSQL_IMAGE[0]]
    if not docker("images", "-q", image).strip():
        need(f"test image missing: {image}; build it with `bash tests/images/build.sh`")
    return image


class LeakCheck:
    """A label unique to one test; every environment of the test carries it."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:12]
        self.labels = {"svcenv.test": self.token}
        self.volumes_before = dangling_volumes()

    def leftovers(self) -> list[str]:
        return containers(f"svcenv.test={self.token}")

    def networks(self) -> list[str]:
        """The test's networks (each environment has one while it has containers)."""
        return networks(f"svcenv.test={self.token}")

    def volumes(self) -> list[str]:
        """The test's named volumes."""
        return named_volumes(f"svcenv.test={self.token}")

    def assert_clean(self) -> None:
        assert self.leftovers() == [], "svcenv containers leaked"
        assert self.networks() == [], "svcenv networks leaked"
        assert self.volumes() == [], "svcenv named volumes leaked"
        leaked_volumes = lasting_dangling_volumes(self.volumes_before)
        assert not leaked_volumes, f"anonymous volumes leaked: {leaked_volumes}"


@pytest.fixture
def leaks(docker_engine: None) -> Iterator[LeakCheck]:
    """Pass ``labels=leaks.labels`` to environments; the test fails if any container or volume is left."""
    check = LeakCheck()
    yield check
    check.assert_clean()


def fetch_example_wheels(example: Path) -> None:
    """Run an example's ``fetch_wheels.py`` (its images install offline: containers cannot reach PyPI)."""
    fetch = subprocess.run(
        [sys.executable, str(example / "fetch_wheels.py")], capture_output=True, text=True, timeout=300, check=False
    )
    if fetch.returncode != 0:
        tail = "\n".join(fetch.stderr.strip().splitlines()[-15:])
        need(f"cannot download the {example.name} example's wheels (is PyPI reachable?):\n{tail}")


def run_example(
    example: Path,
    leaks: LeakCheck | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    at_least: int = 1,
    forbidden: str = r"failed|skipped|errors?",
    timeout: float = 600,
) -> str:
    """Run an example's own suite as a user does (``python -m pytest`` in its directory); its output.

    A session of its own: none of this run's ``PYTEST_*`` variables (xdist worker ids, options)
    leak into it; its containers carry ``leaks``' label (None: a run without an engine). Fails
    unless it exits 0 with at least ``at_least`` passed and no outcome matching ``forbidden``.
    """
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    environ.update(env or {})
    if leaks is not None:
        environ["SVCENV_LABELS"] = f"svcenv.test={leaks.token}"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=example,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the {example.name} example did not finish within {timeout:g}s:\n{exc.output}") from None
    out = proc.stdout
    assert proc.returncode == 0, f"the {example.name} example failed:\n{out}"
    passed = re.search(r"\b(\d+) passed\b", out)
    assert passed, f"the {example.name} example did not report its tests passing:\n{out}"
    assert int(passed.group(1)) >= at_least, out
    assert not re.search(rf"\b\d+ ({forbidden})\b", out), out
    return out


CONNECT_VARS = ("SVCENV_DOCKER_BIND", "SVCENV_DOCKER_HOST_IP", "TESTCONTAINERS_HOST_OVERRIDE", "TC_HOST")
"""What decides where svcenv connects and publishes besides ``DOCKER_HOST``."""


def no_connect_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset :data:`CONNECT_VARS` (and testcontainers' copy of the host override) for the test."""
    from testcontainers.core.config import testcontainers_config

    for var in CONNECT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(testcontainers_config, "tc_host_override", None)
