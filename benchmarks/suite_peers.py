"""One 200-test suite, fresh database per test: svcenv (Docker, local) vs pytest-postgresql, with raw floors.

Each test creates a table in its own database (cloned from a 10-table
template), inserts, commits and selects; its body is padded to ~2 ms or ~50 ms.
It runs with ``-n 0`` and ``-n 2`` under:

* **pytest empty**: the same number of empty tests, no fixtures: pytest's own
  cost (start, collection, reporting; xdist's at ``-n 2``);
* **svcenv docker fresh / rollback**: ``postgres_connection`` (a fresh database
  from the pool) and ``postgres_transaction`` (rolled back), on the Docker
  backend (image ``svcenv-test/postgres:15``, ``SVCENV_PULL=never``);
* **svcenv local fresh / rollback**: the same on the local backend (Postgres
  from ``/usr/lib/postgresql/*/bin`` on tmpfs);
* **svcenv docker reused**: ``postgres_connection`` with ``--svcenv-reuse``
  against a container left running by a warm-up run before the rounds (removed
  with ``python -m svcenv down`` after them): like pytest-postgresql below, it
  pays no server start, only the template build and the pool;
* **pytest-postgresql**: its ``postgresql`` fixture (``DatabaseJanitor``: a
  template built by ``load``, ``CREATE DATABASE … TEMPLATE`` per test, dropped
  after) through ``postgresql_noproc``, against a server this script starts
  from the same local binaries, tuned like svcenv's (``fsync``,
  ``synchronous_commit`` and ``full_page_writes`` off, data under ``/dev/shm``,
  SCRAM on TCP), as user ``postgres`` when run as root. That server is started
  once, so its runs do not pay a server start; svcenv's runs include theirs.

Every method runs with the same interpreter, the clean peers venv
(``--peers-python``, default ``/tmp/bench-peers/bin/python``), which holds only
pytest, pytest-xdist, pytest-postgresql, psycopg and svcenv (editable, from this
repository), so no method pays for plugins the others do not load; each run also
disables the other library's plugin (``-p no:svcenv`` / ``-p no:pytest_postgresql``).
The script creates that venv when it is missing and installs what it lacks
(``python -m venv``, then ``pip install pytest-postgresql pytest-xdist
'psycopg[binary]'`` and ``pip install -e <repo>``). The header and the JSON name
the interpreter and the versions of pytest, pytest-postgresql, pytest-xdist and svcenv.

A conftest hook in each generated project records every test's setup duration
(pytest's ``setup`` report) per process. The first setup in a process includes
the session start (server start, template build): **session s** is the largest
of those over the run's processes. The others are the **in-test wait**: their
median and p95, in ms (teardown medians are in the JSON). Raw floors on the
peer server, per operation: ``CREATE DATABASE … TEMPLATE`` + connect + ``DROP
DATABASE``; ``TRUNCATE`` of the 10 tables; ``BEGIN`` … ``ROLLBACK`` of the
test's statements. Methods run interleaved, round by round; the table shows
medians over rounds, per-test milliseconds and the ratio to pytest-postgresql's
median at the same body and ``-n``.

Run from the repository root (the Docker backend needs the test image)::

    .venv/bin/python benchmarks/suite_peers.py [--tests 200] [--rounds 3] [--bodies 2,50] [--workers 0,2]
        [--methods ...] [--peers-python /tmp/bench-peers/bin/python] [--json benchmarks/results/suite_peers.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SCHEMA = "".join(f"CREATE TABLE t{i} (id serial PRIMARY KEY, name text, payload jsonb);" for i in range(10))
TUNED = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

TEST_BODY = """
import time
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_order(db, n):
    started = time.perf_counter()
    db.execute("CREATE TABLE mine (id serial PRIMARY KEY, name text)")
    db.execute("INSERT INTO mine (name) VALUES (%s)", (f"order-{{n}}",))
    db.execute("INSERT INTO t0 (name) VALUES ('x')")
    db.commit()
    assert db.execute("SELECT count(*) FROM mine").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM t0").fetchone() == (1,)
    time.sleep(max(0.0, {body_s} - (time.perf_counter() - started)))
"""

EMPTY_BODY = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_empty(n):
    pass
"""

# Appended to every generated conftest: one line per setup/teardown report, in a file per process
# (``BENCH_TIMINGS_DIR/<pid>.txt``). Under xdist the controller replays the workers' reports with
# ``report.node`` set; those are skipped, the workers have written them already.
TIMING_HOOK = """

def pytest_runtest_logreport(report):
    import os

    if report.when not in ("setup", "teardown") or hasattr(report, "node"):
        return
    folder = os.environ.get("BENCH_TIMINGS_DIR")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "a") as out:
            out.write(f"{report.when} {report.duration!r}\\n")
"""

SVCENV_CONFTEST = """
import pytest

@pytest.fixture
def db({fixture}):
    return {fixture}
"""

PEERS_CONFTEST = """
from pathlib import Path

import pytest
from pytest_postgresql import factories

postgresql_noproc = factories.postgresql_noproc(
    host="127.0.0.1", port={port}, user="postgres", password={password!r}, dbname="bench", load=[Path({schema!r})]
)
postgresql = factories.postgresql("postgresql_noproc")

@pytest.fixture
def db(postgresql):
    return postgresql
"""

EMPTY = "pytest empty"
REUSED = "svcenv docker reused"
METHODS = ["svcenv docker fresh", REUSED, "svcenv docker rollback", "svcenv local fresh", "svcenv local rollback"]
PEER = "pytest-postgresql"
REPO = Path(__file__).resolve().parent.parent
PEER_PACKAGES = ["pytest-postgresql", "pytest-xdist", "psycopg[binary]"]
VERSIONED = ["pytest", "pytest-postgresql", "pytest-xdist", "psycopg", "svcenv"]
PROBE = """
import importlib.metadata, importlib.util, json, platform, sys
versions = {}
for name in sys.argv[1:]:
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
spec = importlib.util.find_spec("svcenv")
print(json.dumps({"python": sys.executable, "python_version": platform.python_version(), "versions": versions,
                  "svcenv_origin": spec.origin if spec else None}))
"""


def _probe(python: Path) -> dict:
    result = subprocess.run([str(python), "-I", "-c", PROBE, *VERSIONED], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{python} cannot run: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def _pip(python: Path, *args: str) -> None:
    print(f"peers venv: pip install {' '.join(args)}", flush=True)
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"pip install {' '.join(args)} failed in {python}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def peers_venv(python: str) -> dict:
    """The venv every method runs in: created and filled when missing or short of packages; its versions."""
    path = Path(python)
    venv = path.parent.parent
    if not path.exists():
        print(f"peers venv: creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    info = _probe(path)
    if any(info["versions"][name] is None for name in ("pytest", "pytest-postgresql", "pytest-xdist", "psycopg")):
        _pip(path, *PEER_PACKAGES)
    origin = info["svcenv_origin"]
    if origin is None or not Path(origin).resolve().is_relative_to(REPO / "svcenv"):
        _pip(path, "-e", str(REPO))
    info = _probe(path)
    missing = [name for name, version in info["versions"].items() if version is None]
    if missing:
        raise SystemExit(f"peers venv {venv} still lacks {missing} after pip install")
    return info


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise SystemExit("no Postgres binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


@contextlib.contextmanager
def peer_server() -> Iterator[tuple[int, str]]:
    """A tuned Postgres from the local binaries, data under /dev/shm, run as ``postgres`` when we are root."""
    bindir, password, port = _bindir(), "bench-" + os.urandom(6).hex(), _free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(
        tempfile.mkdtemp(prefix="svcenv-bench-peers-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    )
    data = root / "data"
    (root / "pw").write_text(password)
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(data), "--username=postgres", f"--pwfile={root / 'pw'}"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"]
    subprocess.run([*as_user, *initdb], check=True, capture_output=True, cwd=root)
    argv = [str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}"]
    argv += ["-c", f"unix_socket_directories={root}", "-c", "dynamic_shared_memory_type=mmap"]
    for key, value in TUNED.items():
        argv += ["-c", f"{key}={value}"]
    with open(root / "server.log", "wb") as logfile:
        server = subprocess.Popen([*as_user, *argv], stdout=logfile, stderr=subprocess.STDOUT, cwd=root)
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(
                    host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres"
                ).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"peer server did not start: {(root / 'server.log').read_text()}") from None
                time.sleep(0.02)
        yield port, password
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def floors(port: int, password: str, count: int = 100) -> dict[str, float]:
    """Median milliseconds of the raw operations on the peer server."""
    import psycopg

    def url(db: str) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{port}/{db}"

    out: dict[str, list[float]] = {"clone+connect+drop": [], "truncate 10 tables": [], "transaction rollback": []}
    with psycopg.connect(url("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS floor_tpl")
        admin.execute("CREATE DATABASE floor_tpl")
        with psycopg.connect(url("floor_tpl")) as conn:
            conn.execute(SCHEMA)
        for i in range(count):
            start = time.perf_counter()
            admin.execute(f"CREATE DATABASE floor_{i} TEMPLATE floor_tpl")
            psycopg.connect(url(f"floor_{i}")).close()
            admin.execute(f"DROP DATABASE floor_{i} WITH (FORCE)")
            out["clone+connect+drop"].append(time.perf_counter() - start)
        with psycopg.connect(url("floor_tpl")) as conn:
            tables = ", ".join(f"t{i}" for i in range(10))
            for _ in range(count):
                conn.execute("INSERT INTO t0 (name) VALUES ('x')")
                conn.commit()
                start = time.perf_counter()
                conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
                conn.commit()
                out["truncate 10 tables"].append(time.perf_counter() - start)
            for _ in range(count):
                start = time.perf_counter()
                conn.execute("CREATE TABLE mine (id serial PRIMARY KEY, name text)")
                conn.execute("INSERT INTO mine (name) VALUES ('x')")
                conn.rollback()
                out["transaction rollback"].append(time.perf_counter() - start)
        admin.execute("DROP DATABASE floor_tpl")
    return {name: 1000 * statistics.median(values) for name, values in out.items()}


def _project(root: Path, method: str, tests: int, body_ms: int, peer: tuple[int, str]) -> Path:
    project = root / f"{method.replace(' ', '-')}-{body_ms}ms"
    project.mkdir()
    if method == EMPTY:
        (project / "test_suite.py").write_text(EMPTY_BODY.format(tests=tests))
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "conftest.py").write_text(TIMING_HOOK)
        return project
    (project / "test_suite.py").write_text(TEST_BODY.format(tests=tests, body_s=body_ms / 1000))
    if method == PEER:
        (project / "schema.sql").write_text(SCHEMA)
        (project / "pytest.ini").write_text("[pytest]\n")
        conftest = PEERS_CONFTEST.format(port=peer[0], password=peer[1], schema=str(project / "schema.sql"))
    else:
        (project / "pytest.ini").write_text(f"[pytest]\nsvcenv_services = postgres\nsvcenv_postgres_setup = {SCHEMA}\n")
        conftest = SVCENV_CONFTEST.format(
            fixture="postgres_transaction" if "rollback" in method else "postgres_connection"
        )
    (project / "conftest.py").write_text(conftest + TIMING_HOOK)
    return project


def _percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def _timings(folder: Path) -> dict[str, float]:
    """Session start (largest first setup over processes), in-test wait and teardown, from the hook's files."""
    firsts: list[float] = []
    waits: list[float] = []
    teardowns: list[float] = []
    for file in sorted(folder.glob("*.txt")):
        setups = []
        for line in file.read_text().splitlines():
            when, duration = line.split()
            (setups if when == "setup" else teardowns).append(float(duration))
        if setups:
            firsts.append(setups[0])
            waits += setups[1:]
    return {
        "processes": len(firsts),
        "session_start_s": max(firsts) if firsts else float("nan"),
        "wait_median_ms": 1000 * statistics.median(waits) if waits else float("nan"),
        "wait_p95_ms": 1000 * _percentile(waits, 95),
        "teardown_median_ms": 1000 * statistics.median(teardowns) if teardowns else float("nan"),
        "teardown_p95_ms": 1000 * _percentile(teardowns, 95),
    }


def _run(project: Path, method: str, workers: int, tests: int, python: str) -> tuple[float, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.setdefault("SVCENV_POSTGRES_IMAGE", "svcenv-test/postgres:15")
    env.setdefault("SVCENV_PULL", "never")
    args = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    if method.startswith("svcenv"):
        args += ["-p", "no:pytest_postgresql", "--svcenv-backend", method.split()[1]]
        args += ["--svcenv-reuse"] if method == REUSED else []
    else:  # each method loads only its own library's plugin
        args += ["-p", "no:svcenv"] + (["-p", "no:pytest_postgresql"] if method == EMPTY else [])
    with tempfile.TemporaryDirectory(prefix="timings-", dir=project) as folder:
        env["BENCH_TIMINGS_DIR"] = folder
        start = time.perf_counter()
        result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=1800, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0 or f"{tests} passed" not in result.stdout:
            raise SystemExit(f"{method} suite failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        timings = _timings(Path(folder))
    if timings["processes"] != max(workers, 1):
        print(f"warning: {method} -n {workers}: setup timings from {timings['processes']} processes", flush=True)
    return elapsed, timings


@contextlib.contextmanager
def _reused(projects: list[Path], tests: int, python: str) -> Iterator[None]:
    """Leave each reused project's services running (a warm-up run), and remove them afterwards."""
    try:
        for project in projects:
            _run(project, REUSED, 0, tests, python)
        yield
    finally:
        for project in projects:
            subprocess.run([python, "-m", "svcenv", "down"], cwd=project, capture_output=True, timeout=120, check=False)


def _rounds(
    args: argparse.Namespace,
    bodies: list[int],
    workers: list[int],
    methods: list[str],
    projects: dict[tuple[str, int], Path],
    samples: dict[str, list[float]],
    setups: dict[str, list[dict[str, float]]],
) -> None:
    for _ in range(args.rounds):
        for b in bodies:
            for w in workers:
                for m in methods:  # interleaved: drift hits every method alike
                    key = f"{b}ms|-n {w}|{m}"
                    elapsed, timings = _run(projects[m, b], m, w, args.tests, args.peers_python)
                    samples.setdefault(key, []).append(elapsed)
                    setups.setdefault(key, []).append(timings)


def main() -> None:
    # SIGTERM ends the run like Ctrl-C: the peer server and the reused containers are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bodies", default="2,50", help="comma list of test body durations in ms")
    parser.add_argument("--workers", default="0,2", help="comma list of xdist worker counts (0: no xdist)")
    parser.add_argument("--methods", default=",".join([EMPTY, *METHODS, PEER]))
    parser.add_argument("--peers-python", default="/tmp/bench-peers/bin/python", help="venv python every method runs")
    parser.add_argument("--json", default="benchmarks/results/suite_peers.json")
    args = parser.parse_args()
    bodies = [int(b) for b in args.bodies.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    methods = args.methods.split(",")
    unknown = set(methods) - {EMPTY, *METHODS, PEER}
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    venv = peers_venv(args.peers_python)
    samples: dict[str, list[float]] = {}
    setups: dict[str, list[dict[str, float]]] = {}
    with peer_server() as peer, tempfile.TemporaryDirectory(prefix="svcenv-peers-bench-") as tmp:
        floor_ms = floors(*peer)
        projects = {(m, b): _project(Path(tmp), m, args.tests, b, peer) for m in methods for b in bodies}
        with _reused([projects[m, b] for m, b in projects if m == REUSED], args.tests, args.peers_python):
            _rounds(args, bodies, workers, methods, projects, samples, setups)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    setup_medians = {
        key: {name: statistics.median(run[name] for run in runs) for name in runs[0]} for key, runs in setups.items()
    }
    ratios: dict[str, float] = {}
    versions = ", ".join(f"{name} {venv['versions'][name]}" for name in VERSIONED)
    print(f"{args.tests} tests, fresh state per test ({args.rounds} rounds; ratio: / {PEER}, same body and -n)")
    print(f"python {venv['python_version']} ({venv['python']}); {versions}")
    print("session s: largest first setup over processes; wait: the other setups (median, p95)")
    header = f"{'body':>5} {'-n':>3} {'method':<28} {'min s':>7} {'median s':>9} {'per test ms':>12}"
    print(f"{header} {'session s':>10} {'wait ms':>8} {'p95 ms':>7} {'ratio':>6}")
    for key, values in samples.items():
        b, w, m = key.split("|")
        peer_key = f"{b}|{w}|{PEER}"
        ratio = medians[key] / medians[peer_key] if peer_key in medians else float("nan")
        ratios[key] = ratio
        per_test = 1000 * medians[key] / args.tests
        t = setup_medians[key]
        line = f"{b:>5} {w[3:]:>3} {m:<28} {min(values):>7.2f} {medians[key]:>9.2f} {per_test:>12.1f}"
        session, wait, p95 = t["session_start_s"], t["wait_median_ms"], t["wait_p95_ms"]
        print(f"{line} {session:>10.3f} {wait:>8.2f} {p95:>7.2f} {ratio:>6.2f}")
    print("raw floors on the tuned local server (median ms per operation):")
    for name, ms in floor_ms.items():
        print(f"  {name:<24} {ms:>7.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "tests": args.tests,
        "rounds": args.rounds,
        "python": venv["python"],
        "python_version": venv["python_version"],
        "versions": venv["versions"],
        "samples_s": samples,
        "medians_s": medians,
        "ratios": ratios,
        "setup_runs": setups,
        "setup_medians": setup_medians,
        "floors_ms": floor_ms,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
