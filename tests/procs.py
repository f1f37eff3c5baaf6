"""Processes as /proc shows them: the small helpers tests and their guard scripts share.

Standard library only: ``tests/remote_engine.py`` and ``tests/podman_engine.py`` import it
when they run as guard scripts too (with ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "alive",
    "children",
    "cmdline",
    "group_members",
    "processes_mentioning",
    "reapers",
    "reapers_of_engine",
    "signal_all",
    "wait_gone",
]

REAPER = "svcenv.backends._docker_reaper"
"""The module the Docker backend runs as its reaper process (``python -m …``)."""


def cmdline(pid: int) -> str:
    """``pid``'s command line, words joined by spaces ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited and does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (of all its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                    found.append(int(entry.name))
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (servers and watchdogs name their workdir)."""
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and text in cmdline(int(e.name))]


def reapers(env_id: str) -> list[int]:
    """Pids of the live Docker reaper processes of environment ``env_id``."""
    return [pid for pid in processes_mentioning(env_id) if {REAPER, env_id} <= set(cmdline(pid).split()) and alive(pid)]


def reapers_of_engine(docker_host: str) -> list[int]:
    """Pids of the live Docker reaper processes that talk to the engine at ``docker_host``."""
    found = []
    for pid in processes_mentioning(REAPER):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"DOCKER_HOST={docker_host}".encode() in environ and alive(pid):
                found.append(pid)
    return found


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` (those gone already are skipped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
