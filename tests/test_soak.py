"""Soak: many start/stop cycles in one process, and many environments at once, leave nothing and leak nothing.

Marked ``soak`` (about a minute on two cores); deselect with ``-m "not soak"``.
The numbers are printed (``-s``), not asserted as times: what is asserted is
that file descriptors, threads and memory do not grow and nothing is left.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from svcenv import Environment, Postgres, Redis

from . import procs
from .conftest import LeakCheck

pytestmark = pytest.mark.soak
CYCLES = 50
WARM_UP = 3


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


TEST_ENGINES = ("remote_engine.py", "podman_engine.py", "svcenv-remote-", "svcenv-podman")
"""Command-line marks of the second engines other test files start for the session (their dockerd,
Podman service and guards are children of this worker too, and not svcenv's)."""


def children() -> list[str]:
    """Processes whose parent is this one (reapers, watchdogs, servers would show here)."""
    lines = [procs.cmdline(pid) for pid in procs.children(os.getpid())]
    return [line[:80] for line in lines if line and not any(mark in line for mark in TEST_ENGINES)]


def use(env: Environment) -> None:
    with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT 1").fetchone() == (1,)
    client = env["redis"].client()  # type: ignore[attr-defined]
    assert client.ping()
    client.close()


def slope(values: list[float]) -> float:
    """Least-squares growth per cycle."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def test_fifty_cycles_keep_fds_threads_and_memory_flat(leaks: LeakCheck) -> None:
    def cycle() -> float:
        began = time.monotonic()
        with Environment(Postgres(), Redis(), labels=leaks.labels) as env:
            use(env)
        return time.monotonic() - began

    for _ in range(WARM_UP):
        cycle()
    fds, threads, rss = [open_fds()], [threading.active_count()], [rss_mb()]
    seconds = []
    for _ in range(CYCLES):
        seconds.append(cycle())
        fds.append(open_fds())
        threads.append(threading.active_count())
        rss.append(rss_mb())
    growth = slope(rss[10:])
    print(
        f"\nsoak: {CYCLES} cycles, median {statistics.median(seconds):.2f}s per cycle; "
        f"fds {fds[0]} -> {fds[-1]} (max {max(fds)}); threads {threads[0]} -> {threads[-1]} (max {max(threads)}); "
        f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (slope {growth:.3f} MB/cycle over the last {len(rss) - 10})"
    )
    assert max(fds[1:]) <= fds[0] + 3, f"file descriptors grow: {fds}"
    assert max(threads[1:]) <= threads[0] + 1, f"threads grow: {threads}"
    assert rss[-1] - rss[10] < 20, f"memory grows: {rss}"
    assert growth < 0.3, f"memory grows {growth:.3f} MB per cycle"
    assert leaks.leftovers() == []
    assert children() == [], "a reaper or server process outlived its environment"


def test_ten_environments_at_once_from_threads(leaks: LeakCheck) -> None:
    def one(_: int) -> tuple[str, tuple[int, ...]]:
        with Environment(Postgres(), Redis(), labels=leaks.labels) as env:
            use(env)
            return env.id, tuple(handle.port for handle in env)

    began = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    print(f"\nsoak: 10 environments (20 services) from 10 threads in {time.monotonic() - began:.1f}s")
    ids = [env_id for env_id, _ in results]
    ports = [port for _, pair in results for port in pair]
    assert len(set(ids)) == 10
    assert len(set(ports)) == 20, "every service got its own host port"
    assert leaks.leftovers() == []
    assert children() == [], "a reaper or server process outlived its environment"
