"""How long cleanup takes on each exit path of the fault matrix, on Docker and on local binaries.

Usage::

    python benchmarks/cleanup.py [--rounds 3] [--json benchmarks/results/cleanup.json]

Each round runs every scenario of tests/faults.py once per backend, in an owner
process (tests/fault_owner.py), and measures the cleanup time:

* exits the owner survives (normal, exception, failed start, probe timeout,
  missing image, Ctrl-C during start, a killed service): the environment's own
  teardown (``Environment.teardown_s``), after which nothing is left;
* SIGTERM and SIGKILL of the owner: from the signal until nothing is left,
  which is the Docker reaper's or the local watchdog's work.

Leftovers (containers, networks, new dangling volumes, local server dirs and
processes, reaper processes) are counted after every run; a run with any
leftover fails the script (exit 1). Prints the median per scenario and writes
JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults import DOCKER_ONLY, OWNER_SCENARIOS, run_owner  # noqa: E402

IMAGES = {
    "SVCENV_POSTGRES_IMAGE": "svcenv-test/postgres:15",
    "SVCENV_REDIS_IMAGE": "svcenv-test/redis:7",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="docker,local")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "cleanup.json")
    args = parser.parse_args(argv)
    for key, value in IMAGES.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("SVCENV_PULL", "never")
    backends = args.backends.split(",")
    samples: dict[str, list[float]] = {}
    leaks: list[str] = []
    for round_no in range(args.rounds):
        for backend in backends:
            for scenario in OWNER_SCENARIOS:
                if backend != "docker" and scenario in DOCKER_ONLY:
                    continue
                outcome = run_owner(scenario, backend)
                key = f"{backend}/{scenario}"
                samples.setdefault(key, []).append(outcome.cleanup_s)
                if outcome.left:
                    leaks.append(f"round {round_no}: {key}: {outcome.left}")
                print(f"round {round_no + 1} {key:<24} cleanup {outcome.cleanup_s * 1000:8.1f} ms", file=sys.stderr)
    rows: dict[str, Any] = {}
    print(f"\n{'backend/scenario':<26} {'median ms':>10} {'max ms':>10}  (n={args.rounds})")
    for key, values in samples.items():
        rows[key] = {
            "median_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
            "samples_ms": [round(v * 1000, 1) for v in values],
        }
        print(f"{key:<26} {rows[key]['median_ms']:>10.1f} {rows[key]['max_ms']:>10.1f}")
    print(f"leftovers after {sum(len(v) for v in samples.values())} runs: {len(leaks)}")
    for leak in leaks:
        print(f"  LEAK {leak}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "benchmark": "cleanup",
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "rounds": args.rounds,
                "scenarios": rows,
                "leaks": leaks,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
