"""Following a service's log: ``handle.follow_logs()``, ``env.follow_logs(name, into=...)``.

On Docker the engine streams the log (``docker logs --follow``); the local backend's log file
is read as it grows. A follower copies every line in order, ends when the service exits, and
is stopped by the environment's teardown before the service is removed.
"""

from __future__ import annotations

import io
import logging
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from svcenv import ConfigurationError, Environment, LogFollower, Service
from svcenv.probes import LogLine

from .conftest import LeakCheck
from .test_local_backend import wait_for

TALKER = textwrap.dedent(
    """
    import sys, time
    print("talker: ready", flush=True)
    for i in range(5):
        time.sleep(0.2)
        print(f"line {i}", flush=True)
    if len(sys.argv) > 1:
        sys.exit(0)  # a job: the log ends with it
    time.sleep(3600)
    """
)


def _talker(backend: str, base_image: str | None, tmp_path: Path, *, exits: bool = False) -> Service:
    args = ("exit",) if exits else ()
    if backend == "local":
        (tmp_path / "talker.py").write_text(TALKER)
        command: tuple[str, ...] = (sys.executable, str(tmp_path / "talker.py"), *args)
        return Service("talker", command=command, probe=LogLine("talker: ready"))
    return Service(
        "talker",
        image=base_image,
        command=("python3", "-c", TALKER, *args),
        probe=LogLine("talker: ready"),
    )


@pytest.fixture(params=["local", "docker"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None, dict[str, str]]:
    """(backend, base image, labels); the docker case needs the engine (and counts leftovers)."""
    if request.param == "local":
        return "local", None, {}
    leaks: LeakCheck = request.getfixturevalue("leaks")
    return "docker", request.getfixturevalue("base_image"), leaks.labels


def test_followers_copy_every_line_in_order_into_a_file_a_logger_a_stream_and_a_function(
    backend: tuple[str, str | None, dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, image, labels = backend
    got: list[str] = []
    stream = io.StringIO()
    logger = logging.getLogger("svcenv.test.follow")
    caplog.set_level(logging.INFO, logger="svcenv.test.follow")
    with Environment(_talker(name, image, tmp_path), backend=name, labels=labels) as env:
        followers = [
            env.follow_logs("talker", tmp_path / "talker.log", tail=None),
            env.follow_logs("talker", logger, tail=None),
            env.follow_logs("talker", stream, tail=None),
            env.follow_logs("talker", got.append),  # tail=0: only what comes after
        ]
        assert all(isinstance(f, LogFollower) for f in followers)
        assert wait_for(lambda: all(f.lines >= 5 for f in followers), 15), followers
        assert followers[0].running
    # The teardown stopped them first.
    assert not any(f.running for f in followers)
    assert all(f.error is None for f in followers), [f.error for f in followers]
    expected = ["talker: ready", *(f"line {i}" for i in range(5))]
    assert (tmp_path / "talker.log").read_text().splitlines() == expected
    assert stream.getvalue().splitlines() == expected
    assert [r.getMessage() for r in caplog.records] == [f"talker | {line}" for line in expected]
    assert all(getattr(r, "svcenv_service", None) == "talker" for r in caplog.records)
    assert got[-5:] == [f"line {i}" for i in range(5)]  # what it said after the follower began
    assert "talker: ready" not in got[1:]


def test_handle_follow_logs_ends_when_the_service_exits(
    backend: tuple[str, str | None, dict[str, str]], tmp_path: Path
) -> None:
    name, image, labels = backend
    job = _talker(name, image, tmp_path, exits=True)
    with Environment(job, backend=name, labels=labels) as env:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(env["talker"].follow_logs(tail=1)), daemon=True)
        reader.start()
        reader.join(20)
        assert not reader.is_alive(), "following did not end with the service"
        expected = ["talker: ready", *(f"line {i}" for i in range(5))]
        # tail=1: the last line written before following began, then every later one, in order.
        assert lines == expected[len(expected) - len(lines) :], lines
        assert lines[-1] == "line 4"


def test_following_stops_on_request(backend: tuple[str, str | None, dict[str, str]], tmp_path: Path) -> None:
    name, image, labels = backend
    with Environment(_talker(name, image, tmp_path), backend=name, labels=labels) as env:
        stop = threading.Event()
        seen: list[str] = []

        def read() -> None:
            for line in env["talker"].follow_logs(tail=0, stop=stop):
                seen.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert wait_for(lambda: len(seen) >= 1, 10), seen
        stop.set()
        reader.join(5)
        assert not reader.is_alive(), "follow_logs ignored stop"


def test_an_unknown_sink_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "talker.py").write_text(TALKER)
    with Environment(_talker("local", None, tmp_path), backend="local") as env:
        message = r"follow_logs\('talker', into=...\): give a path"
        with pytest.raises(ConfigurationError, match=message):
            env.follow_logs("talker", 42)  # type: ignore[arg-type]


def test_loglines_are_read_incrementally(backend: tuple[str, str | None, dict[str, str]], tmp_path: Path) -> None:
    """A LogLine probe reads only what is new at each attempt (issue #18, row 11: it read the whole log)."""
    name, image, labels = backend
    with Environment(_talker(name, image, tmp_path), backend=name, labels=labels) as env:
        handle = env["talker"]
        instance = handle._instance
        assert wait_for(lambda: "line 4" in handle.logs(), 10)
        text, cursor = instance.log_since(None)
        assert text.splitlines() == ["talker: ready", *(f"line {i}" for i in range(5))]
        again, same = instance.log_since(cursor)
        assert again == ""  # nothing new: nothing read again
        assert same == cursor
        assert handle.log_matches(r"line \d") == 5
        assert handle.log_matches(r"line \d") == 5  # counted once, not once per call
