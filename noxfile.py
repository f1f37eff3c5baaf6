"""Sessions: ``tests`` (the suite, on real services), ``tests313`` (the suite under Python 3.13),
``nodocker`` (what runs without an engine), ``lint`` (ruff + mypy), ``bench`` (benchmarks)."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "nodocker", "tests", "tests313"]
nox.options.reuse_existing_virtualenvs = True

TEST_IMAGES = {
    "SVCENV_POSTGRES_IMAGE": "svcenv-test/postgres:15",
    "SVCENV_REDIS_IMAGE": "svcenv-test/redis:7",
    "SVCENV_ELASTICSEARCH_IMAGE": "svcenv-test/es-standin:8",
    "SVCENV_MYSQL_IMAGE": "svcenv-test/mariadb:10",
}


def _image_env() -> dict[str, str]:
    return {key: os.environ.get(key, default) for key, default in TEST_IMAGES.items()}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite against real services (needs the engine and images `.ci/dev` provisions)."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-n", "2", "--dist", "loadfile"]), env=_image_env())


@nox.session(python=False)
def tests313(session: nox.Session) -> None:
    """The suite under Debian 13's Python 3.13, in a debootstrapped root that uses this engine (``.ci/py313``)."""
    session.run("bash", ".ci/py313", *session.posargs, env=_image_env(), external=True)


@nox.session
def nodocker(session: nox.Session) -> None:
    """The tests that need no engine (``-m "not docker"``), with DOCKER_HOST pointing at nothing."""
    session.install("-e", ".[test]")
    env = {**_image_env(), "DOCKER_HOST": "unix:///nonexistent/svcenv-no-engine.sock"}
    session.run("pytest", "-m", "not docker", "-n", "2", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict on the package."""
    session.install("-e", ".[lint]")
    paths = [p for p in ("svcenv", "tests", "benchmarks", "examples", "noxfile.py") if os.path.exists(p)]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Start-up benchmarks: svcenv vs testcontainers vs the raw floor (prints a table, writes JSON)."""
    session.install("-e", ".[test]", "matplotlib")
    scripts = session.posargs or [
        "benchmarks/startup.py",
        "benchmarks/isolation.py",
        "benchmarks/local_start.py",
        "benchmarks/perf.py",
        "benchmarks/suite.py",
        "benchmarks/suite_peers.py",
        "benchmarks/reuse.py",
        "benchmarks/cleanup.py",
    ]
    for script in scripts:
        session.run("python", script, env=_image_env())
