"""The Docker reaper's gaps, on a real engine: a fork of the owner, and a killed reaper.

* An owner that forks (``multiprocessing``'s ``fork`` start method) and is then
  SIGKILLed: its environment goes at once, while the fork still runs. The fork
  inherits the write end of the reaper's pipe; the backend closes that copy in
  the child, and the reaper watches the owner process itself as well.
* A reaper killed by SIGKILL is started again by its owner (a new pid, for the
  same environment), and that one reaps when the owner is SIGKILLed in turn.

Each owner is a real process (``python -c`` :data:`OWNER`) that prints one JSON
line once its environment is up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from svcenv._util import pid_alive, process_start
from svcenv.backends import _docker_reaper

from .conftest import LeakCheck
from .procs import reapers

ROOT = Path(__file__).resolve().parents[1]
REAP_LIMIT_S = 5.0
"""How long after the owner's SIGKILL its containers, network and volumes may take to go."""

OWNER = textwrap.dedent(
    """
    import json, multiprocessing, os, sys, time
    from svcenv import Environment, Redis

    def linger():
        time.sleep(60)

    env = Environment(Redis(), labels=json.loads(sys.argv[1])).start()
    child = None
    if sys.argv[2] == "fork":
        child = multiprocessing.get_context("fork").Process(target=linger)
        child.start()
    print(json.dumps({"id": env.id, "pid": os.getpid(), "child": child and child.pid}), flush=True)
    time.sleep(600)
    """
)


def _until(check: Callable[[], bool], limit: float) -> float | None:
    """Seconds until ``check()`` held (polling), or None if it did not within ``limit``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def _replaced(env_id: str, old: int) -> bool:
    """Whether one reaper of ``env_id`` runs, and it is not ``old``."""
    return reapers(env_id) not in ([], [old])


def _nothing_left(leaks: LeakCheck, env_id: str) -> bool:
    return not (leaks.leftovers() or leaks.networks() or leaks.volumes() or reapers(env_id))


def _remove(leaks: LeakCheck) -> None:
    """Remove what carries the test's label (no reaper was left to do it: the test fails anyway)."""
    for kind, ids in (("container", leaks.leftovers()), ("network", leaks.networks()), ("volume", leaks.volumes())):
        if ids:
            extra = ["-fv"] if kind == "container" else []
            subprocess.run(["docker", kind, "rm", *extra, *ids], capture_output=True, timeout=60, check=False)


def _kill(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def owner(leaks: LeakCheck) -> Iterator[Callable[[str], tuple[subprocess.Popen[str], dict[str, Any]]]]:
    """Start an owner (``"fork"``: it forks a lingering child too); SIGKILL whatever is left of it afterwards."""
    started: list[tuple[subprocess.Popen[str], dict[str, Any]]] = []

    def start(mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, json.dumps(leaks.labels), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail(f"the owner ended before its environment was up:\n{proc.stderr.read() if proc.stderr else ''}")
        info: dict[str, Any] = json.loads(line)
        started.append((proc, info))
        return proc, info

    yield start
    for proc, info in started:
        _kill(proc.pid)
        proc.wait(timeout=30)
        _kill(info.get("child"))
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        # What a failed test left goes now (a reaper sees its pipe close), before `leaks` counts it.
        if _until(functools.partial(_nothing_left, leaks, info["id"]), 15) is None:
            _remove(leaks)


def test_a_forked_child_does_not_keep_a_killed_owners_containers(
    leaks: LeakCheck, owner: Callable[[str], tuple[subprocess.Popen[str], dict[str, Any]]]
) -> None:
    proc, info = owner("fork")
    child = int(info["child"])
    assert len(leaks.leftovers()) == 1
    assert len(reapers(info["id"])) == 1
    assert pid_alive(child)

    proc.send_signal(signal.SIGKILL)  # the owner only: its fork lingers for 60 s
    killed = time.monotonic()
    proc.wait(timeout=10)
    gone = _until(lambda: not leaks.leftovers(), REAP_LIMIT_S)
    print(f"containers gone {time.monotonic() - killed:.2f}s after the owner's SIGKILL (child alive)" if gone else "")
    assert gone is not None, "the forked child kept the killed owner's containers"
    assert pid_alive(child), "the child died with its owner: the test proved nothing"

    os.kill(child, signal.SIGKILL)
    assert _until(lambda: not pid_alive(child), 10) is not None
    assert _until(lambda: _nothing_left(leaks, info["id"]), REAP_LIMIT_S) is not None, (
        f"left: containers {leaks.leftovers()}, networks {leaks.networks()}, volumes {leaks.volumes()}, "
        f"reapers {reapers(info['id'])}"
    )
    leaks.assert_clean()


def test_a_killed_reaper_is_started_again(
    leaks: LeakCheck, owner: Callable[[str], tuple[subprocess.Popen[str], dict[str, Any]]]
) -> None:
    proc, info = owner("plain")
    env_id = info["id"]
    assert len(leaks.leftovers()) == 1
    (first,) = reapers(env_id)
    assert Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid), (
        "the reaper is the owner's child"
    )

    os.kill(first, signal.SIGKILL)
    rearmed = _until(functools.partial(_replaced, env_id, first), 5)
    print(f"reaper {first} killed; a new one ran {rearmed:.2f}s later: {reapers(env_id)}" if rearmed else "none")
    assert rearmed is not None, "no new reaper after the first was killed"
    (second,) = reapers(env_id)
    assert second != first
    time.sleep(0.5)  # past its startup checks: it waits on its owner now
    assert pid_alive(second), "the new reaper ended while its owner lives"
    assert leaks.leftovers(), "the new reaper must not reap while its owner lives"

    proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=10)
    gone = _until(lambda: _nothing_left(leaks, env_id), REAP_LIMIT_S)
    print(f"everything gone {time.monotonic() - killed:.2f}s after the owner's SIGKILL" if gone else "")
    assert gone is not None, (
        f"left: containers {leaks.leftovers()}, networks {leaks.networks()}, volumes {leaks.volumes()}, "
        f"reapers {reapers(env_id)}"
    )
    leaks.assert_clean()


EXITS_UNSTOPPED = textwrap.dedent(
    """
    import json, os, sys
    from svcenv import Environment, Redis

    env = Environment(Redis(), labels=json.loads(sys.argv[1])).start()
    print(json.dumps({"id": env.id, "pid": os.getpid(), "child": None}), flush=True)
    """
)


def test_an_owner_that_exits_unstopped_exits_at_once_and_is_reaped_once(leaks: LeakCheck) -> None:
    """The reaper's watcher neither keeps the interpreter alive nor starts a reaper as it exits."""
    proc = subprocess.run(
        [sys.executable, "-c", EXITS_UNSTOPPED, json.dumps(leaks.labels)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TeardownWarning" not in proc.stderr, proc.stderr
    env_id = json.loads(proc.stdout)["id"]
    assert _until(lambda: _nothing_left(leaks, env_id), REAP_LIMIT_S) is not None, reapers(env_id)
    time.sleep(1)  # a reaper started at exit (wrongly) would show now
    assert reapers(env_id) == []
    leaks.assert_clean()


def test_a_reaper_killed_too_often_is_not_started_again_and_that_is_said(leaks: LeakCheck) -> None:
    from svcenv import Environment, Redis, TeardownWarning
    from svcenv.backends.docker import REARMS

    env = Environment(Redis(), labels=leaks.labels).start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TeardownWarning)
            (reaper,) = reapers(env.id)
            for _ in range(REARMS):
                os.kill(reaper, signal.SIGKILL)
                assert _until(functools.partial(_replaced, env.id, reaper), 5) is not None
                (reaper,) = reapers(env.id)
            os.kill(reaper, signal.SIGKILL)
            # The watcher warns from its thread once it has waited for the reaper.
            said = _until(lambda: any(issubclass(w.category, TeardownWarning) for w in caught), 5)
        assert said is not None, "no warning that the environment is no longer protected"
        (warning,) = [w for w in caught if issubclass(w.category, TeardownWarning)]
        assert "no longer protected against a crash of its owner" in str(warning.message)
        assert env.id in str(warning.message)
        time.sleep(0.5)
        assert reapers(env.id) == [], "the reaper was started again past the bound"
        assert len(leaks.leftovers()) == 1, "no reaper reaps while its owner lives"
    finally:
        env.stop()


@pytest.fixture(params=["pidfd", "poll"])
def watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the reaper watches its owner: a pidfd, or (where there are none) a look every 0.5 s."""
    if request.param == "poll":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open here")
    return str(request.param)


def _waiting(owner: _docker_reaper.Owner, fd: int) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(_docker_reaper.wait_for_owner(owner, fd)), daemon=True)
    thread.start()
    return thread, result


def test_the_reaper_ends_its_wait_when_the_owner_ends_though_its_pipe_is_open(watch: str) -> None:
    """Here the "owner" is a sleep process, not this process's parent: its pid and start time name it."""
    read, write = os.pipe()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        owner = _docker_reaper.Owner(sleeper.pid, process_start(sleeper.pid))
        assert not owner.ended
        thread, result = _waiting(owner, read)
        thread.join(0.7)
        assert thread.is_alive(), "it must wait while the owner lives"
        sleeper.kill()  # a zombie until waited for: that is an ended owner too
        thread.join(3)
        assert result == [False], "the owner ended: reap"
        sleeper.wait()
        # An owner already gone when the reaper starts (its pid names no process, or another one).
        assert _docker_reaper.Owner(sleeper.pid, process_start(sleeper.pid)).ended
        assert _docker_reaper.wait_for_owner(_docker_reaper.Owner(os.getpid(), "1"), read) is False
    finally:
        sleeper.kill()
        sleeper.wait()
        os.close(read)
        os.close(write)


def test_a_disarm_wins_over_the_owners_end(watch: str) -> None:
    read, write = os.pipe()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        owner = _docker_reaper.Owner(sleeper.pid, process_start(sleeper.pid))
        thread, result = _waiting(owner, read)
        os.write(write, b"disarm")  # the pipe stays open (a fork holds it, say): disarmed all the same
        thread.join(3)
        assert result == [True]
        read2, write2 = os.pipe()
        os.write(write2, b"disarm")
        sleeper.kill()
        sleeper.wait()
        assert _docker_reaper.wait_for_owner(_docker_reaper.Owner(sleeper.pid, None), read2) is True
        os.close(read2)
        os.close(write2)
    finally:
        sleeper.kill()
        sleeper.wait()
        os.close(read)
        os.close(write)


def test_the_owner_tells_its_reaper_what_it_could_not_prove_removed() -> None:
    """``owe KIND NAME`` lines reach the reaper (which then waits for proof, see test_remote_engine);
    only a last line ``disarm`` disarms it."""
    read, write = os.pipe()
    try:
        os.write(write, b"owe network svcenv-abc\nowe volume svcenv-abc-data\nowe nonsense x\n")
        os.close(write)
        received = bytearray()
        assert _docker_reaper.wait_for_owner(None, read, received) is False, "EOF without disarm: reap"
        assert _docker_reaper.owed_in(received) == [("network", "svcenv-abc"), ("volume", "svcenv-abc-data")]
    finally:
        os.close(read)
    read, write = os.pipe()
    try:
        os.write(write, b"owe network svcenv-abc\ndisarm")
        assert _docker_reaper.wait_for_owner(None, read) is True
    finally:
        os.close(read)
        os.close(write)
