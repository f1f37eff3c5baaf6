"""Teardown guarantees when the engine refuses removals or stops answering, on the real engine.

Everything here runs real containers on the real Docker engine, through
:class:`~tests.engine_proxy.EngineProxy`, a proxy in front of its socket. The one
thing that cannot be real is the fault itself: a healthy engine neither refuses
deletes nor hangs, so the proxy injects exactly that (``refuse_deletes``: every
DELETE and container kill/stop answered 500; ``hang``: requests read and never
answered) while every other request reaches the engine unchanged.

The guarantees: a teardown that could not remove something says so (a
``TeardownWarning``, ``teardown_problems``, the CLI's exit status 1 and message,
the pytest session's failure, ``ServiceStartError``'s message), it is bounded by
``teardown_timeout`` even against an engine that never answers, the Docker
reaper stays armed for what is left, and ``stop()`` racing ``start()`` leaves
nothing. Each test labels its containers (``leaks``), removes what the fault left
through the real socket, and disarms the reapers it left armed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from svcenv import Environment, Redis, Service, ServiceStartError, TeardownWarning
from svcenv.cli._common import EXIT_FAILED
from svcenv.probes import TCP

from .conftest import LeakCheck
from .engine_proxy import REFUSED_MESSAGE, EngineProxy, engine_proxy_fixture  # noqa: F401 (the fixture)
from .procs import reapers


def _eventually(check: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _real_engine(proxy: EngineProxy) -> docker.DockerClient:
    """A client of the engine itself, past the proxy."""
    return docker.DockerClient(base_url=f"unix://{proxy.upstream}", timeout=60)


def _remove_left(proxy: EngineProxy, leaks: LeakCheck, env: Environment | None = None) -> None:
    """Faults off; remove what carries the test's label through the real socket; disarm ``env``'s reapers."""
    proxy.normal()
    label = {"label": f"svcenv.test={leaks.token}"}
    with contextlib.closing(_real_engine(proxy)) as client:

        def containers() -> list[Container]:
            return client.containers.list(all=True, filters=dict(label), ignore_removed=True)

        for container in containers():
            _tolerant(functools.partial(container.remove, force=True, v=True))
        # A removal already under way elsewhere (a reaper, a released request's retry) must end first.
        _eventually(lambda: not containers(), 30)
        for network in client.networks.list(filters=dict(label)):
            _tolerant(network.remove)
        for volume in client.volumes.list(filters=dict(label)):
            _tolerant(volume.remove)
    if env is not None:
        for backend in set(env._backends.values()):
            backend.close()


def _tolerant(remove: Callable[[], object]) -> None:
    """``remove()``; gone already (404) or being removed by another path (409) is fine."""
    try:
        remove()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise


def test_refused_removal_warns_names_the_service_and_keeps_the_reaper_armed(
    leaks: LeakCheck, engine_proxy: EngineProxy
) -> None:
    assert issubclass(TeardownWarning, UserWarning), "shown by default: what is left may still run"
    env = Environment(Redis(), labels=leaks.labels).start()
    try:
        container_id = env["redis"].id
        assert engine_proxy.count("forwarded"), "the environment did not go through the proxy"
        engine_proxy.refuse_deletes()
        with pytest.warns(TeardownWarning) as warned:
            env.stop()
        message = str(warned[0].message)
        assert env.id in message
        assert "prune" in message
        assert env.state == "stopped"
        assert engine_proxy.count("refused"), "no removal reached the proxy"
        problems = "; ".join(env.teardown_problems)
        assert any(p.startswith("redis:") for p in env.teardown_problems), problems
        assert REFUSED_MESSAGE in problems, "the engine's own words are kept"
        with contextlib.closing(_real_engine(engine_proxy)) as client:
            assert client.containers.get(container_id).status == "running"
        running = reapers(env.id)
        assert running, "the reaper was disarmed although the container still runs"

        engine_proxy.normal()
        _remove_left(engine_proxy, leaks, env)
        assert _eventually(lambda: not reapers(env.id), 10), f"reaper {running} still runs after close()"
    finally:
        _remove_left(engine_proxy, leaks, env)


@pytest.fixture
def project(tmp_path: Path, leaks: LeakCheck, engine_proxy: EngineProxy) -> tuple[Path, dict[str, str]]:
    """A project dir with ``[services.redis]`` and the environment for a CLI run through the proxy."""
    directory = tmp_path / "proj"
    directory.mkdir()
    (directory / "svcenv.toml").write_text("[services.redis]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    env["DOCKER_HOST"] = engine_proxy.url
    env["SVCENV_STATE_DIR"] = str(tmp_path / "state")
    env["SVCENV_LABELS"] = f"svcenv.test={leaks.token}"
    env["SVCENV_BACKEND"] = "docker"
    return directory, env


def test_cli_run_exits_1_when_the_teardown_is_incomplete(
    project: tuple[Path, dict[str, str]], leaks: LeakCheck, engine_proxy: EngineProxy
) -> None:
    directory, env = project
    engine_proxy.refuse_deletes()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "svcenv", "run", "--", "true"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert engine_proxy.count("refused"), done.stderr
        assert done.returncode == EXIT_FAILED == 1, done.stderr
        assert "teardown was incomplete" in done.stderr, done.stderr
        assert "nothing left running" not in done.stderr, done.stderr
        assert leaks.leftovers(), "the message says something is left: it is"
    finally:
        _remove_left(engine_proxy, leaks)


def test_pytest_session_fails_when_the_teardown_is_incomplete(
    leaks: LeakCheck, engine_proxy: EngineProxy, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVCENV_LABELS", f"svcenv.test={leaks.token}")
    monkeypatch.delenv("SVCENV_REUSE", raising=False)
    pytester.makepyfile(test_x="def test_x(redis_client):\n    redis_client.ping()\n")
    engine_proxy.refuse_deletes()
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svcenv-backend", "docker", timeout=300)
        output = result.stdout.str() + result.stderr.str()
        assert engine_proxy.count("refused"), output
        result.assert_outcomes(passed=1)
        assert result.ret != 0, output
        assert "teardown incomplete" in output, output
    finally:
        _remove_left(engine_proxy, leaks)


def test_stop_against_a_hung_engine_is_bounded_by_teardown_timeout(leaks: LeakCheck, engine_proxy: EngineProxy) -> None:
    env = Environment(Redis(), labels=leaks.labels, teardown_timeout=4).start()
    try:
        engine_proxy.hang()
        began = time.monotonic()
        with pytest.warns(TeardownWarning):
            env.stop()
        took = time.monotonic() - began
        assert took < 10, f"stop() took {took:.1f}s against a 4s teardown_timeout"
        assert engine_proxy.count("hung"), "no request reached the hung proxy"
        assert env.state == "stopped"
        problems = "; ".join(env.teardown_problems)
        assert "not removed within 4s" in problems or "not done within 4s" in problems, problems
        assert reapers(env.id), "the reaper was disarmed although nothing was removed"
    finally:
        _remove_left(engine_proxy, leaks, env)


def test_failed_start_whose_teardown_is_incomplete_says_so(leaks: LeakCheck, engine_proxy: EngineProxy) -> None:
    bad = Service("bad", image=os.environ["SVCENV_REDIS_IMAGE"], command=("false",), ports=(6379,), probe=TCP())
    env = Environment(bad, labels=leaks.labels, timeout=15)
    engine_proxy.refuse_deletes()
    try:
        with pytest.warns(TeardownWarning), pytest.raises(ServiceStartError) as caught:
            env.start()
        error = caught.value
        assert error.services == ("bad",)
        assert error.teardown_problems, str(error)
        assert error.teardown_problems == env.teardown_problems
        assert "teardown after it was incomplete" in str(error), str(error)
        assert env.state == "stopped"
        assert leaks.leftovers(), "the message says something is left: it is"
    finally:
        _remove_left(engine_proxy, leaks, env)


def test_stop_racing_start_leaves_nothing(leaks: LeakCheck) -> None:
    env = Environment(Redis(), labels=leaks.labels)
    raised: list[BaseException] = []

    def stop() -> None:
        try:
            env.stop()
        except BaseException as exc:
            raised.append(exc)

    stopper = threading.Timer(0.2, stop)
    stopper.start()
    try:
        with pytest.raises(ServiceStartError, match=r"stop\(\) was called") as caught:
            env.start()
        # When start() raises, its teardown is over: nothing runs, the environment is stopped.
        state, left = env.state, leaks.leftovers()
        assert (state, left) == ("stopped", []), textwrap.shorten(str(caught.value), 300)
    finally:
        stopper.join(60)
    assert not raised, raised
    assert env.state == "stopped"
    assert env.teardown_problems == ()
    assert _eventually(lambda: not reapers(env.id), 10), "the reaper is still armed after a clean stop"


def test_stop_racing_start_on_a_refusing_engine_reports_what_is_left(
    leaks: LeakCheck, engine_proxy: EngineProxy
) -> None:
    """The cancelled start's error may claim a clean teardown only if its teardown is over and was clean."""
    env = Environment(Redis(), labels=leaks.labels)
    engine_proxy.refuse_deletes()
    stopper = threading.Timer(0.2, lambda: env.stop())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TeardownWarning)  # the stopping thread's: asserted below
            stopper.start()
            with pytest.raises(ServiceStartError, match=r"stop\(\) was called") as caught:
                env.start()
            left = leaks.leftovers()
            stopper.join(60)
        assert env.teardown_problems, "the engine refused every removal: the teardown cannot be complete"
        assert left, "the refused container is still there"
        assert caught.value.teardown_problems, f"start() raised with {left} left and says nothing of it"
        assert "teardown after it was incomplete" in str(caught.value)
    finally:
        stopper.join(60)
        _remove_left(engine_proxy, leaks, env)


def test_a_file_copy_the_engine_fails_once_is_tried_again(leaks: LeakCheck, engine_proxy: EngineProxy) -> None:
    # Redis gets its configuration (its password) as a file copied in before start.
    engine_proxy.fail_copies(2)
    with Environment(Redis(), labels=leaks.labels) as env:
        assert env["redis"].client().ping()  # type: ignore[attr-defined]
    assert engine_proxy.count("refused") == 2
    engine_proxy.fail_copies(3)  # more than svcenv tries: the start fails, naming the engine's answer
    with pytest.raises(ServiceStartError, match=REFUSED_MESSAGE):
        Environment(Redis(), labels=leaks.labels).start()
    assert leaks.leftovers() == []
