"""The examples, run as a user runs them: three commands from the repository root, real services.

Each command must pass and leave nothing behind. The containers a command created
are found through Docker's event log by their ``svcenv.owner-pid`` label, and the
volumes through the log's mount events of those containers, so environments of
tests running at the same time (xdist) do not count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import containers, docker

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "pytest": [sys.executable, "-m", "pytest", "examples/tests_pytest", "-p", "no:cacheprovider"],
    "unittest": [sys.executable, "-m", "unittest", "discover", "-s", "examples/tests_unittest", "-t", "."],
    "plain": [sys.executable, "examples/plain_environment.py"],
}
PASSED = {
    "pytest": r"\b(\d+) passed\b",
    "unittest": r"Ran (\d+) tests? in .*\n\nOK\b",
    "plain": r"()all checks passed; services removed",
}


def _events(since: float, until: float, *filters: str, fmt: str) -> list[str]:
    args = ["events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format", fmt]
    for item in filters:
        args += ["--filter", item]
    return docker(*args).splitlines()


def _created_by(pid: int, since: float, until: float) -> tuple[list[str], set[str]]:
    """Containers the process ``pid`` created in the window, and the volumes they mounted (engine events)."""
    created = _events(since, until, "type=container", "event=create", f"label=svcenv.owner-pid={pid}", fmt="{{.ID}}")
    mounts = _events(
        since, until, "type=volume", "event=mount", fmt='{{.Actor.ID}} {{index .Actor.Attributes "container"}}'
    )
    volumes = {volume for volume, container in (line.split() for line in mounts) if container in created}
    return created, volumes


@pytest.mark.parametrize("runner", list(COMMANDS))
def test_example_passes_and_leaves_nothing_behind(docker_engine: None, runner: str) -> None:
    # The example run is its own session: no xdist worker id or options of this run leak into it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    since = time.time() - 1
    proc = subprocess.Popen(
        COMMANDS[runner], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{runner} example did not finish within 300s:\n{output}")
    assert proc.returncode == 0, f"{runner} example failed:\n{output}"
    match = re.search(PASSED[runner], output)
    assert match, f"{runner} example did not report success:\n{output}"
    if match.group(1):
        assert int(match.group(1)) > 0
    created, volumes = _created_by(proc.pid, since, time.time())
    assert len(created) == 2, f"expected Postgres and Redis from the {runner} example, it created {created}"
    assert volumes, "the postgres image declares a VOLUME: its container mounts an anonymous volume"
    assert containers(f"svcenv.owner-pid={proc.pid}") == [], f"the {runner} example left containers"
    left = volumes & set(docker("volume", "ls", "-q").split())
    assert not left, f"the {runner} example left volumes: {left}"
