"""The fault matrix's driver: run an owner process into a fault, then count what is left.

Shared by tests/test_faults.py (asserts zero leftovers) and benchmarks/cleanup.py
(reports how long the cleanup took). Leftovers are counted by what svcenv
creates: containers and networks carrying the run's label, new dangling volumes,
the local backend's private directories and the processes running from them,
and the Docker reaper processes of the owner's environments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conftest import _engine_answers

OWNER = Path(__file__).with_name("fault_owner.py")
ROOT = OWNER.parents[1]
OWNER_SCENARIOS = (
    "normal",
    "exception",
    "one_fails",
    "probe_timeout",
    "image_missing",
    "ctrl_c_start",
    "sigterm",
    "sigkill",
    "service_killed",
)
DOCKER_ONLY = {"image_missing"}
SETTLE_S = 20.0
"""How long leftovers may take to disappear after a fault before the scenario fails."""


def _docker(*args: str) -> list[str]:
    """The docker CLI's words; nothing when no engine answers (nothing can be left in it then)."""
    if not _engine_answers():
        return []
    done = subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.split()


def dangling_volumes() -> set[str]:
    return set(_docker("volume", "ls", "-qf", "dangling=true"))


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


@dataclass
class Leftovers:
    """What a run left: every field must be empty."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    local_dirs: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    state_files: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)

    def total(self) -> int:
        return sum(len(getattr(self, f)) for f in self.__dataclass_fields__)


class Run:
    """One scenario's label, owner pids and environment ids, and how to count what they left."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:12]
        self.volumes_before = dangling_volumes()
        self.owner_pids: set[int] = set()
        self.env_ids: set[str] = set()
        self.state_dirs: list[Path] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment for processes of this run: their containers carry its label."""
        return {**os.environ, "SVCENV_LABELS": f"svcenv.test={self.token}", "PYTHONPATH": str(ROOT)}

    def leftovers(self) -> Leftovers:
        from svcenv.backends.local import TMP_PREFIX, tmp_base

        label = f"label=svcenv.test={self.token}"
        found = Leftovers(
            containers=_docker("ps", "-aq", "--filter", label),
            networks=_docker("network", "ls", "-q", "--filter", label),
            volumes=sorted(dangling_volumes() - self.volumes_before),
        )
        prefixes = [f"{TMP_PREFIX}{pid}-" for pid in self.owner_pids]
        found.local_dirs = [p.name for p in tmp_base().iterdir() if p.name.startswith(tuple(prefixes))]
        for pid, cmdline in _cmdlines().items():
            if pid == os.getpid():
                continue
            mine = any(prefix in cmdline for prefix in prefixes)
            reaper = "_docker_reaper" in cmdline and any(env_id in cmdline for env_id in self.env_ids)
            if mine or reaper:
                found.processes.append(f"{pid}: {cmdline[:100]}")
        for directory in self.state_dirs:
            if directory.is_dir():
                found.state_files += [p.name for p in directory.iterdir() if p.suffix == ".json"]
        return found

    def settle(self, since: float, limit: float = SETTLE_S) -> tuple[float, Leftovers]:
        """Poll until nothing is left (or ``limit``); return seconds from ``since`` and the last count."""
        while True:
            left = self.leftovers()
            now = time.monotonic()
            if not left or now - since > limit:
                return now - since, left
            time.sleep(0.05)


@dataclass
class Outcome:
    scenario: str
    backend: str
    returncode: int | None
    events: dict[str, dict[str, Any]]
    cleanup_s: float
    """Fault to nothing left: the owner's own teardown, or (signals) until the reaper/watchdog finished."""
    left: Leftovers
    stderr: str = ""


def run_owner(scenario: str, backend: str, run: Run | None = None) -> Outcome:
    """Run tests/fault_owner.py into ``scenario`` on ``backend`` and count what is left."""
    run = run or Run()
    proc = subprocess.Popen(
        [sys.executable, str(OWNER), scenario, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run.env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    events: dict[str, dict[str, Any]] = {}
    signalled_at: float | None = None
    try:
        for line in proc.stdout:
            event, _, data = line.partition(" ")
            if not data.startswith("{"):
                continue
            events[event] = json.loads(data)
            if event == "environment":
                run.owner_pids.add(int(events[event]["pid"]))
                run.env_ids.add(str(events[event]["id"]))
            if event == "starting" and scenario == "ctrl_c_start":
                time.sleep(0.4)  # services are being created and probed now
                signalled_at = time.monotonic()
                proc.send_signal(signal.SIGINT)
            if event == "ready" and scenario in ("sigterm", "sigkill"):
                signalled_at = time.monotonic()
                proc.send_signal(signal.SIGTERM if scenario == "sigterm" else signal.SIGKILL)
        returncode = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    ended = time.monotonic()
    settled, left = run.settle(ended)
    teardown = next((e["teardown_s"] for e in events.values() if e.get("teardown_s") is not None), None)
    if signalled_at is not None and scenario != "ctrl_c_start":
        cleanup = ended + settled - signalled_at  # killed: the reaper or watchdog did the work
    else:
        cleanup = float(teardown) if teardown is not None else settled
    return Outcome(scenario, backend, returncode, events, cleanup, left, stderr)
