"""A 200-test suite, each test on a fresh database and a clean Redis: svcenv vs hand-written fixtures.

    python benchmarks/suite.py [--tests 200] [--rounds 3] [--workers 0,2] [--json PATH]

The same test bodies run twice per round, side by side:

* **svcenv**: the plugin's ``postgres_connection`` and ``redis_client`` fixtures
  (template built once, prefetching pool, tuned server, pre-initialised image);
* **testcontainers**: what projects write today: session ``PostgresContainer``
  and ``RedisContainer`` started one after the other, a template database built
  once, and a function fixture doing ``CREATE DATABASE … TEMPLATE`` + connect +
  ``DROP DATABASE`` and ``FLUSHDB`` per test.

Wall time of the whole ``pytest`` run is measured (start-up, tests, teardown),
with and without pytest-xdist. Both use the same locally built images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SCHEMA = "".join(f"CREATE TABLE t{i} (id serial PRIMARY KEY, name text, payload jsonb);" for i in range(10))

TEST_BODY = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_order(postgres_connection, redis_client, n):
    postgres_connection.execute("INSERT INTO t0 (name) VALUES (%s)", (f"order-{{n}}",))
    assert postgres_connection.execute("SELECT count(*) FROM t0").fetchone() == (1,)
    redis_client.incr("orders")
    assert redis_client.get("orders") == b"1"
"""

SVCENV_INI = f"""
[pytest]
svcenv_services = postgres redis
svcenv_postgres_setup = {SCHEMA}
"""

TESTCONTAINERS_CONFTEST = f"""
import itertools, os
import psycopg, pytest, redis
from testcontainers.postgres import PostgresContainer
from testcontainers.redis import RedisContainer

SCHEMA = {SCHEMA!r}
counter = itertools.count()

@pytest.fixture(scope="session")
def pg():
    with PostgresContainer(os.environ["SVCENV_POSTGRES_IMAGE"], driver=None) as container:
        url = container.get_connection_url()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE tpl")
            with psycopg.connect(url.rsplit("/", 1)[0] + "/tpl") as conn:
                conn.execute(SCHEMA)
        yield url

@pytest.fixture(scope="session")
def rd():
    with RedisContainer(os.environ["SVCENV_REDIS_IMAGE"]) as container:
        yield container.get_client()

@pytest.fixture
def postgres_connection(pg):
    name = f"t_{{os.getpid()}}_{{next(counter)}}"
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {{name}} TEMPLATE tpl")
        try:
            with psycopg.connect(pg.rsplit("/", 1)[0] + "/" + name) as conn:
                yield conn
        finally:
            admin.execute(f"DROP DATABASE {{name}} WITH (FORCE)")

@pytest.fixture
def redis_client(rd):
    rd.flushdb()
    yield rd
    rd.flushdb()
"""


def _project(root: Path, kind: str, tests: int) -> Path:
    project = root / kind
    project.mkdir()
    (project / "test_suite.py").write_text(TEST_BODY.format(tests=tests))
    if kind == "svcenv":
        (project / "pytest.ini").write_text(SVCENV_INI)
    else:
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "conftest.py").write_text(textwrap.dedent(TESTCONTAINERS_CONFTEST))
    return project


def _run(project: Path, kind: str, workers: int, tests: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    if kind == "testcontainers":
        # Ryuk's image cannot be pulled here, and testcontainers would otherwise connect through the
        # docker bridge gateway (this machine looks like a container to it): keep traffic on loopback.
        env.update(TESTCONTAINERS_RYUK_DISABLED="true", TESTCONTAINERS_HOST_OVERRIDE="127.0.0.1")
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    if workers:
        args += ["-n", str(workers)]
    else:
        args += ["-p", "no:xdist"]
    if kind == "testcontainers":
        args += ["-p", "no:svcenv"]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or f"{tests} passed" not in result.stdout:
        raise SystemExit(f"{kind} suite failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,2", help="comma list of xdist worker counts (0: no xdist)")
    parser.add_argument("--json", default="benchmarks/results/suite.json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="svcenv-suite-bench-") as tmp:
        projects = {kind: _project(Path(tmp), kind, args.tests) for kind in ("svcenv", "testcontainers")}
        for _ in range(args.rounds):
            for w in workers:
                for kind, project in projects.items():  # interleaved: drift hits both
                    samples.setdefault(f"{kind} -n {w}", []).append(_run(project, kind, w, args.tests))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{args.tests}-test suite, each test on a fresh database and a clean Redis ({args.rounds} rounds)")
    print(f"{'method':<24} {'min s':>8} {'median s':>9} {'per test ms':>12}")
    for name, values in samples.items():
        print(f"{name:<24} {min(values):>8.2f} {medians[name]:>9.2f} {1000 * medians[name] / args.tests:>12.1f}")
    ratios = {f"-n {w}": medians[f"svcenv -n {w}"] / medians[f"testcontainers -n {w}"] for w in workers}
    for label, ratio in ratios.items():
        print(f"svcenv / testcontainers ({label}): {ratio:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"tests": args.tests, "samples_s": samples, "medians_s": medians, "ratios": ratios}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
