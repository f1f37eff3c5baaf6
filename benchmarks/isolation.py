"""Per-test isolation costs, as a test sees them, measured side by side in one run.

    python benchmarks/isolation.py [--rounds 200] [--json benchmarks/results/isolation.json]

For each strategy, one "test" = set up the isolation, do one small query, tear
it down, exactly what the pytest fixtures do:

* fresh database: ``CREATE DATABASE … TEMPLATE`` (template with a 10-table
  schema) + connect + query + close + ``DROP DATABASE … WITH (FORCE)``;
* fresh database from the prefetch pool (what ``postgres_connection`` does):
  hand-over of a pre-cloned, pre-connected database + query; the drop and the
  next clone run in the background during a simulated test body of 10 ms and of
  50 ms, which is subtracted from the samples (a body shorter than one clone
  cycle drains the pool);
* transaction rollback: savepoint connection already open, query, rollback;
* Redis: ``FLUSHDB`` before and after a SET;
* Elasticsearch prefix cleanup (against the stand-in, not Elasticsearch):
  create an index under the prefix, then find and delete the prefix's indices.

Prints median and p95 per strategy in milliseconds and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svcenv import Elasticsearch, Environment, Postgres, Redis
from svcenv.isolation import PostgresTemplate, delete_indices, rollback_connection

SCHEMA = "\n".join(
    f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, name text NOT NULL, created timestamptz DEFAULT now(), "
    f"payload jsonb, ref bigint); CREATE INDEX t{i}_name ON t{i} (name);"
    for i in range(10)
)


def _measure(fn: Callable[[], None], rounds: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", default="benchmarks/results/isolation.json")
    args = parser.parse_args()

    pg, rd, es = Postgres(), Redis(), Elasticsearch(env={"STANDIN_STARTUP_DELAY": "0.2"})
    results: dict[str, dict[str, float]] = {}
    samples: dict[str, list[float]] = {}
    with Environment(pg, rd, es) as env:
        template = PostgresTemplate(env[pg], setup=SCHEMA)
        template.build()
        pool = PostgresTemplate(env[pg], setup=SCHEMA, prefetch=2)

        def fresh_database() -> None:
            with template.fresh_database() as name, env[pg].connect(name) as conn:
                conn.execute("SELECT count(*) FROM t0").fetchone()

        def from_pool(work_s: float) -> Callable[[], None]:
            def fresh_from_pool() -> None:
                with pool.fresh_connection() as conn:
                    conn.execute("SELECT count(*) FROM t0").fetchone()
                    time.sleep(work_s)  # the test's own work, during which the pool refills

            return fresh_from_pool

        rollback_db = template.clone()
        with rollback_connection(env[pg], rollback_db) as conn:

            def rollback() -> None:
                conn.execute("INSERT INTO t0 (name) VALUES ('x')")
                conn.execute("SELECT count(*) FROM t0").fetchone()
                conn.rollback()

            samples["transaction rollback"] = _measure(rollback, args.rounds)
        template.drop(rollback_db)
        samples["fresh database (template clone)"] = _measure(fresh_database, args.rounds)
        template.destroy()
        for work_ms in (10, 50):
            raw = _measure(from_pool(work_ms / 1000), args.rounds)
            name = f"fresh database (pool, {work_ms} ms test body)"
            samples[name] = [ms - work_ms for ms in raw]  # minus the simulated work
        pool.destroy()

        client = env[rd].client(db=1)

        def flush() -> None:
            client.flushdb()
            client.set("k", "v")
            client.flushdb()

        samples["redis FLUSHDB"] = _measure(flush, args.rounds)
        client.close()

        es_client = env[es].client()
        counter = iter(range(10**9))

        def es_prefix() -> None:
            prefix = f"bench_{next(counter)}_"
            es_client.indices.create(index=prefix + "books")
            delete_indices(es_client, prefix)

        samples["elasticsearch prefix cleanup (stand-in)"] = _measure(es_prefix, max(20, args.rounds // 4))
        es_client.close()

    print(f"{'strategy':<42} {'median ms':>10} {'p95 ms':>10}   ({args.rounds} rounds)")
    for name, values in samples.items():
        results[name] = _summary(values)
        print(f"{name:<42} {results[name]['median_ms']:>10.2f} {results[name]['p95_ms']:>10.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "postgres_image": pg.effective_image,
                "results": results,
                "samples_ms": samples,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
