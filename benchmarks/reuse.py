"""Postgres + Redis ready: attaching to reused services (warm) vs starting fresh ones (cold), side by side.

Usage::

    python benchmarks/reuse.py [--rounds 5] [--json benchmarks/results/reuse.json]

Each round runs every method, rotating which goes first, and times "nothing"
to "both services answer (``SELECT 1``, ``PING``) and their variables are known":

``cold``
    ``Environment(Postgres(), Redis()).start()``: two fresh containers (Postgres
    from the pre-initialised image, data on tmpfs). Teardown is not timed.
``warm``
    ``Environment(Postgres(), Redis(), reuse=Reuse(...))`` with both services recorded:
    per service, lock the hash, read the 0600 state file, check the container
    runs with that hash label, attach, and run the readiness probe once.
``cold-cli`` / ``warm-cli``
    Wall time of ``python -m svcenv run [--force-reuse] -- true`` in a project
    with ``[services.postgres]`` and ``[services.redis]``: what a shell sees,
    including the interpreter start, imports, and (cold) the teardown.

The reused services are started once before the rounds (not timed). Prints min
and median per method and the ratios warm/cold, writes JSON, and exits 1 if a
sample failed or a container was left behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svcenv import Environment, Postgres, Redis
from svcenv.reuse import Reuse
from svcenv.state import StateDir

METHODS = ("cold", "warm", "cold-cli", "warm-cli")
GOAL_S = 0.2


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _check(env: Environment) -> None:
    with env["postgres"].connect() as conn:  # type: ignore[attr-defined]
        conn.execute("SELECT 1")
    assert env["redis"].client().ping()  # type: ignore[attr-defined]
    assert env.env_vars()["DATABASE_URL"]


def _leftovers(state: Path) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=svcenv.state-dir={state}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "reuse.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="svcenv-bench-reuse-"))
    project = work / "project"
    project.mkdir()
    (project / "svcenv.toml").write_text("[services.postgres]\n[services.redis]\n")
    state = work / "state"
    os.environ["SVCENV_STATE_DIR"] = str(state)
    env_vars = {k: v for k, v in os.environ.items() if k not in ("SVCENV_REUSE", "SVCENV_CONFIG")}
    store = StateDir()
    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    failures: list[str] = []

    def cold() -> float:
        begin = time.perf_counter()
        env = Environment(Postgres(), Redis()).start()
        try:
            _check(env)
            return time.perf_counter() - begin
        finally:
            env.stop()

    def warm() -> float:
        begin = time.perf_counter()
        env = Environment(Postgres(), Redis(), reuse=Reuse(store, project)).start()
        try:
            _check(env)
            took = time.perf_counter() - begin
        finally:
            env.stop()
        if set(env.outcomes.values()) != {"attached"}:
            raise RuntimeError(f"warm round did not attach: {env.outcomes}")
        return took

    def cli(*flags: str) -> float:
        begin = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "svcenv", "run", *flags, "--", "true"],
            cwd=project,
            env=env_vars,
            check=True,
            capture_output=True,
            timeout=120,
        )
        return time.perf_counter() - begin

    methods: dict[str, Callable[[], float]] = {
        "cold": cold,
        "warm": warm,
        "cold-cli": lambda: cli("--no-reuse"),
        "warm-cli": lambda: cli("--force-reuse"),
    }
    try:
        with Environment(Postgres(), Redis(), reuse=Reuse(store, project)) as primed:  # start them, untimed
            _check(primed)
        for round_no in range(args.rounds):
            order = METHODS[round_no % len(METHODS) :] + METHODS[: round_no % len(METHODS)]
            for method in order:
                try:
                    samples[method].append(methods[method]())
                except Exception as exc:
                    failures.append(f"round {round_no} {method}: {exc}")
    finally:
        subprocess.run(
            [sys.executable, "-m", "svcenv", "down", "--all"],
            cwd=project,
            env=env_vars,
            capture_output=True,
            check=False,
        )
    leftovers = _leftovers(state)
    shutil.rmtree(work, ignore_errors=True)

    results: dict[str, Any] = {}
    print(f"{'method':<10} {'min':>9} {'median':>9} {'max':>9}   (n={args.rounds}, Postgres + Redis ready)")
    for method in METHODS:
        values = samples[method]
        if not values:
            continue
        results[method] = {
            "min_ms": _ms(min(values)),
            "median_ms": _ms(statistics.median(values)),
            "max_ms": _ms(max(values)),
            "samples_ms": [_ms(v) for v in values],
        }
        row = results[method]
        print(f"{method:<10} {row['min_ms']:>7.1f}ms {row['median_ms']:>7.1f}ms {row['max_ms']:>7.1f}ms")
    ratios = {}
    for warm_name, cold_name in (("warm", "cold"), ("warm-cli", "cold-cli")):
        if warm_name in results and cold_name in results:
            ratios[f"{warm_name}/{cold_name}"] = round(
                results[warm_name]["median_ms"] / results[cold_name]["median_ms"], 3
            )
    for name, ratio in ratios.items():
        print(f"ratio {name} (medians): {ratio:.3f}x")
    goal_met = "warm" in results and results["warm"]["median_ms"] <= GOAL_S * 1000
    print(f"goal: warm Postgres + Redis ready <= {GOAL_S:.1f}s: {'met' if goal_met else 'NOT met'}")
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "images": {k: os.environ.get(k) for k in ("SVCENV_POSTGRES_IMAGE", "SVCENV_REDIS_IMAGE")},
        "rounds": args.rounds,
        "methods": results,
        "ratios": ratios,
        "goal_s": GOAL_S,
        "goal_met": goal_met,
        "failures": failures,
        "leftover_containers": leftovers,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if leftovers:
        print(f"LEFT BEHIND: {leftovers}", file=sys.stderr)
    return 1 if failures or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
