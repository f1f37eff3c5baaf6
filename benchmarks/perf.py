"""Near the physical limit: start-up and per-test costs, side by side in one run.

    python benchmarks/perf.py [--rounds 7] [--json benchmarks/results/perf.json] [--png benchmarks/results/perf.png]

Measured, each round interleaving the methods so machine drift hits all alike:

1. **A fresh Postgres ready** (from nothing to a password ``SELECT 1``):
   svcenv with the pre-initialised image cache (warm) · svcenv without it
   (``cache=False``) · testcontainers' ``PostgresContainer`` · the raw floor
   (``docker run`` + a 10 ms protocol poll).
2. **Postgres + Redis environment, cold start (cache warm)**: svcenv's parallel
   ``Environment`` vs testcontainers' ``PostgresContainer`` then ``RedisContainer``.
3. **A fresh database per test, as the test sees it, under ``pytest -n 2``**: the
   setup time pytest reports for ``postgres_connection`` with the pool, with a
   plain template clone (``svcenv_postgres_prefetch = 0``), and for
   ``postgres_transaction`` (rollback).

Prints a table (min / median / max, ratios of medians) and writes JSON and a PNG
of the distributions. testcontainers runs with Ryuk disabled (its image cannot be
pulled here) and ``TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1`` (this machine looks
like a container to it, and all traffic must stay on loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
import redis

from svcenv import Environment, Postgres, Redis

PG_IMAGE = os.environ.get("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")
REDIS_IMAGE = os.environ.get("SVCENV_REDIS_IMAGE", "svcenv-test/redis:7")


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 1. a fresh Postgres ------------------------------------------------------------------------


def svcenv_postgres(cache: bool) -> Callable[[], None]:
    def run() -> None:
        env = Environment(Postgres(cache=cache))
        env.start()
        with env["postgres"].connect() as conn:
            conn.execute("SELECT 1")
        _stop_untimed.append(env.stop)

    return run


def testcontainers_postgres() -> None:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(PG_IMAGE, driver=None)
    container.start()
    with psycopg.connect(container.get_connection_url()) as conn:
        conn.execute("SELECT 1")
    _stop_untimed.append(container.stop)


def raw_floor_postgres() -> None:
    password = "floor-" + os.urandom(6).hex()
    cid = subprocess.run(
        ["docker", "run", "-d", "-p", "127.0.0.1::5432", "-e", f"POSTGRES_PASSWORD={password}", PG_IMAGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _stop_untimed.append(lambda: subprocess.run(["docker", "rm", "-fv", cid], capture_output=True, check=True))
    port = subprocess.run(["docker", "port", cid, "5432"], capture_output=True, text=True, check=True)
    host_port = port.stdout.split(":")[-1].strip()
    while True:
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=host_port,
                user="postgres",
                password=password,
                dbname="postgres",
                connect_timeout=2,
            ) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError:
            time.sleep(0.01)


# -- 2. postgres + redis ------------------------------------------------------------------------


def svcenv_pg_redis() -> None:
    env = Environment(Postgres(), Redis())
    env.start()
    with env["postgres"].connect() as conn:
        conn.execute("SELECT 1")
    env["redis"].client().ping()
    _stop_untimed.append(env.stop)


def testcontainers_pg_redis() -> None:
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    pg = PostgresContainer(PG_IMAGE, driver=None)
    pg.start()
    _stop_untimed.append(pg.stop)
    rd = RedisContainer(REDIS_IMAGE)
    rd.start()
    _stop_untimed.append(rd.stop)
    with psycopg.connect(pg.get_connection_url()) as conn:
        conn.execute("SELECT 1")
    client: redis.Redis = rd.get_client()
    client.ping()


_stop_untimed: list[Callable[[], object]] = []


def _cleanup() -> None:
    while _stop_untimed:
        _stop_untimed.pop()()


# -- 3. per-test databases under xdist ----------------------------------------------------------

PER_TEST_SUITE = """
import time, pytest

@pytest.mark.parametrize("n", range(60))
def test_fresh(postgres_connection, n):
    postgres_connection.execute("INSERT INTO t0 (name) VALUES ('x')")
    time.sleep(0.05)

@pytest.mark.parametrize("n", range(60))
def test_rollback(postgres_transaction, n):
    postgres_transaction.execute("INSERT INTO t0 (name) VALUES ('x')")
    time.sleep(0.05)
"""

RECORDER = """
import json, os
def pytest_runtest_logreport(report):
    if report.when == "setup":
        with open(os.environ["SETUP_TIMES"], "a") as f:
            f.write(json.dumps([report.nodeid.split("::")[1].split("[")[0], report.duration]) + "\\n")
"""


def per_test_setup_times(prefetch: int) -> dict[str, list[float]]:
    schema = "".join(f"CREATE TABLE t{i} (id serial PRIMARY KEY, name text);" for i in range(10))
    with tempfile.TemporaryDirectory(prefix="svcenv-perf-") as tmp:
        root = Path(tmp)
        (root / "test_perf.py").write_text(PER_TEST_SUITE)
        (root / "conftest.py").write_text(RECORDER)
        (root / "pytest.ini").write_text(
            f"[pytest]\nsvcenv_services = postgres\nsvcenv_postgres_setup = {schema}\n"
            f"svcenv_postgres_prefetch = {prefetch}\n"
        )
        times = root / "times.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["SETUP_TIMES"] = str(times)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise SystemExit(f"per-test suite failed:\n{result.stdout[-3000:]}")
        rows = [json.loads(line) for line in times.read_text().splitlines()]
    by_test: dict[str, list[float]] = {}
    # The first setup of each worker includes the session start; the per-test cost is what follows.
    for name, seconds in rows:
        by_test.setdefault(name, []).append(seconds)
    return {name: sorted(values)[:-2] for name, values in by_test.items()}


# -- reporting ----------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        ("fresh Postgres ready (s)", [k for k in samples if k.startswith("1.")]),
        ("Postgres + Redis ready (s)", [k for k in samples if k.startswith("2.")]),
        ("fresh database per test, -n 2 (ms)", [k for k in samples if k.startswith("3.")]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (title, keys) in zip(axes, groups, strict=True):
        scale = 1000 if "(ms)" in title else 1
        ax.boxplot([[v * scale for v in samples[k]] for k in keys], orientation="horizontal", showfliers=True)
        ax.set_yticks(range(1, len(keys) + 1), [k[3:] for k in keys], fontsize=8)
        ax.set_title(title)
        if scale == 1000:
            ax.set_xscale("log")  # a worker's first setup includes the session's start
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("svcenv benchmarks (same run, same images, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default="benchmarks/results/perf.json")
    parser.add_argument("--png", default="benchmarks/results/perf.png")
    args = parser.parse_args()

    # Warm-up: builds the pre-initialised image once (that one-off cost is not a "fresh instance").
    with Environment(Postgres(), Redis()):
        pass
    methods = {
        "1. svcenv, cached image": svcenv_postgres(cache=True),
        "1. svcenv, no cache": svcenv_postgres(cache=False),
        "1. testcontainers PostgresContainer": testcontainers_postgres,
        "1. raw floor (docker run + 10 ms poll)": raw_floor_postgres,
        "2. svcenv Environment(pg, redis)": svcenv_pg_redis,
        "2. testcontainers pg then redis": testcontainers_pg_redis,
    }
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for round_no in range(args.rounds):
        order = list(methods.items())
        order = order[round_no % len(order) :] + order[: round_no % len(order)]
        for name, fn in order:
            try:
                samples[name].append(_timed(fn))
            finally:
                _cleanup()
    for label, prefetch in (("pool", 2), ("plain template clone", 0)):
        times = per_test_setup_times(prefetch)
        samples[f"3. postgres_connection, {label}"] = times["test_fresh"]
        if prefetch:
            samples["3. postgres_transaction (rollback)"] = times["test_rollback"]

    summary = {name: _summary(values) for name, values in samples.items()}
    med = {name: s["median"] for name, s in summary.items()}
    ratios = {
        "cached / testcontainers": med["1. svcenv, cached image"] / med["1. testcontainers PostgresContainer"],
        "cached / raw floor": med["1. svcenv, cached image"] / med["1. raw floor (docker run + 10 ms poll)"],
        "no cache / testcontainers": med["1. svcenv, no cache"] / med["1. testcontainers PostgresContainer"],
        "pg+redis: svcenv / testcontainers": med["2. svcenv Environment(pg, redis)"]
        / med["2. testcontainers pg then redis"],
    }
    print(f"{'method':<44} {'min':>8} {'median':>8} {'max':>8}")
    for name, s in summary.items():
        unit, scale = ("ms", 1000) if name.startswith("3.") else ("s", 1)
        print(f"{name:<44} {s['min'] * scale:>8.3f} {s['median'] * scale:>8.3f} {s['max'] * scale:>8.3f} {unit}")
    for name, ratio in ratios.items():
        print(f"{name:<44} {ratio:>8.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"rounds": args.rounds, "summary": summary, "ratios": ratios, "samples": samples}, indent=2)
    )
    _plot(samples, Path(args.png))
    print(f"wrote {out} and {args.png}")
    leftovers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=svcenv.environment"], capture_output=True, text=True, check=True
    ).stdout.split()
    if leftovers:
        raise SystemExit(f"leftover svcenv containers: {leftovers}")


if __name__ == "__main__":
    main()
