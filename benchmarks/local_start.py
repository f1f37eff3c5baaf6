"""Local Postgres start-up: ``initdb`` every time vs svcenv's copy of a cached template, side by side.

Usage::

    python benchmarks/local_start.py [--rounds 7] [--json benchmarks/results/local_start.json]

Both methods end in the same state: a server on a free 127.0.0.1 port that
accepts the role's password over TCP (``scram-sha-256``) in database ``test``,
with the same server settings (svcenv's test-tuned defaults), data in the same
temp location (``/dev/shm`` if writable), run as the same account. Each round
runs both methods, alternating which goes first, and times "nothing" to "a TCP
client's ``SELECT 1`` answered":

``initdb``
    ``initdb`` (svcenv's flags) into a fresh directory, start ``postgres``,
    wait for its ready status, ``CREATE DATABASE test`` and set the password over
    the unix socket, then connect over TCP with the password and ``SELECT 1``.
``svcenv-local``
    ``Environment(Postgres(), backend=LocalBackend()).start()`` until it returns
    (copy of the cached template, start through the watchdog, password, and the
    readiness probe, which is a TCP ``SELECT 1``). The one-time template build is
    done before the rounds and reported on its own. The per-phase medians come
    from ``env.timings``.

Teardown is timed separately and not part of either sample. Prints min and
median per method and the ratio svcenv-local/initdb, writes JSON, and exits 1
if a sample failed or a server or directory of its own was left behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svcenv import Environment, Postgres
from svcenv.backends import local
from svcenv.backends.local import LocalBackend

METHODS = ("initdb", "svcenv-local")
PASSWORD = secrets.token_urlsafe(16)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _wait_ready(data: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``postmaster.pid`` for the ready status, as pg_ctl does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with status {proc.returncode}")
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("postgres was not ready in time")


def plain_initdb(install: local.PostgresInstall, account: local.Account | None) -> tuple[float, float]:
    """One ``initdb`` start to a TCP-usable server; returns (start seconds, teardown seconds)."""
    import psycopg
    from psycopg import sql

    begin = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="svcenv-bench-initdb-", dir=local.tmp_base()))
    as_account: dict[str, Any] = {"user": account.uid, "group": account.gid} if account else {}
    proc: subprocess.Popen[bytes] | None = None
    try:
        if account:
            os.chown(workdir, account.uid, account.gid)
        data = workdir / "data"
        initdb = [str(install.initdb), "-D", str(data), "--username=postgres", *local.INITDB_ARGS]
        subprocess.run(initdb, check=True, capture_output=True, cwd=workdir, **as_account)
        port = local.free_port()
        argv = [str(install.postgres), "-D", str(data), "-p", str(port)]
        settings = {**Postgres().server_settings, "listen_addresses": "127.0.0.1", "unix_socket_directories": workdir}
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        log = (workdir / "server.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_account)
        log.close()
        _wait_ready(data, proc)
        with psycopg.connect(host=str(workdir), port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE test")
            c.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(PASSWORD)))
        url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
        with psycopg.connect(url) as conn:
            conn.execute("SELECT 1").fetchone()
        started = time.perf_counter() - begin
    finally:
        stop_begin = time.perf_counter()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return started, time.perf_counter() - stop_begin


def svcenv_local() -> tuple[float, float, dict[str, float]]:
    """One start through Environment + LocalBackend; (start seconds, teardown seconds, phases)."""
    begin = time.perf_counter()
    env = Environment(Postgres(), backend=LocalBackend())
    try:
        env.start()
        started = time.perf_counter() - begin
        timing = env.timings["postgres"]
        phases = {"create_s": timing.create_s, "start_s": timing.start_s, "ready_s": timing.ready_s}
    finally:
        stop_begin = time.perf_counter()
        env.stop()
    return started, time.perf_counter() - stop_begin, phases


def _leftovers() -> list[str]:
    base = local.tmp_base()
    mine = [p.name for p in base.glob(f"{local.TMP_PREFIX}{os.getpid()}-*")]
    return mine + [p.name for p in base.glob("svcenv-bench-initdb-*")]


def _summary(samples: list[float]) -> dict[str, float]:
    return {"min_ms": _ms(min(samples)), "median_ms": _ms(statistics.median(samples)), "max_ms": _ms(max(samples))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "local_start.json")
    args = parser.parse_args()

    install = local.find_postgres()
    account = local.server_account()
    print(f"postgres {install.version} at {install.bindir}; data under {local.tmp_base()}", file=sys.stderr)

    build_begin = time.perf_counter()
    _, built = local.postgres_template(install, account, "postgres", "test")
    build_s = time.perf_counter() - build_begin
    print(f"template: {'built' if built else 'cached'} in {_ms(build_s)} ms", file=sys.stderr)
    svcenv_local()  # warm-up: imports, page cache
    plain_initdb(install, account)

    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    teardown: dict[str, list[float]] = {m: [] for m in METHODS}
    phases: dict[str, list[float]] = {"create_s": [], "start_s": [], "ready_s": []}
    failures: list[str] = []
    for round_no in range(args.rounds):
        order = METHODS if round_no % 2 == 0 else METHODS[::-1]
        for method in order:
            try:
                if method == "initdb":
                    start_s, stop_s = plain_initdb(install, account)
                else:
                    start_s, stop_s, got = svcenv_local()
                    for key, value in got.items():
                        phases[key].append(value)
            except Exception as exc:
                failures.append(f"round {round_no} {method}: {exc}")
                continue
            samples[method].append(start_s)
            teardown[method].append(stop_s)
        print(
            f"round {round_no + 1}/{args.rounds}: "
            + ", ".join(f"{m} {_ms(samples[m][-1])} ms" for m in METHODS if samples[m]),
            file=sys.stderr,
        )

    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "postgres": {
            "version": install.version,
            "bindir": str(install.bindir),
            "account": account.name if account else None,
        },
        "tmp_base": str(local.tmp_base()),
        "rounds": args.rounds,
        "template_build_ms": _ms(build_s) if built else None,
        "methods": {
            m: {**_summary(samples[m]), "samples_ms": [_ms(s) for s in samples[m]]} for m in METHODS if samples[m]
        },
        "teardown": {m: _summary(teardown[m]) for m in METHODS if teardown[m]},
        "svcenv_local_phases_median_ms": {k: _ms(statistics.median(v)) for k, v in phases.items() if v},
        "failures": failures,
    }
    if all(samples[m] for m in METHODS):
        a, b = (statistics.median(samples[m]) for m in METHODS)
        result["ratio_median_b_over_a"] = round(b / a, 3)
        result["ratio_min_b_over_a"] = round(min(samples["svcenv-local"]) / min(samples["initdb"]), 3)
    leaked = _leftovers()
    result["leftovers"] = leaked
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'method':<14}{'min ms':>10}{'median ms':>12}{'teardown ms':>14}")
    for method in METHODS:
        if samples[method]:
            s, t = result["methods"][method], result["teardown"][method]
            print(f"{method:<14}{s['min_ms']:>10}{s['median_ms']:>12}{t['median_ms']:>14}")
    if "ratio_median_b_over_a" in result:
        print(
            f"svcenv-local / initdb: {result['ratio_median_b_over_a']} (median), {result['ratio_min_b_over_a']} (min)"
        )
    print(f"svcenv-local phases (median ms): {result['svcenv_local_phases_median_ms']}")
    print(f"wrote {args.json}")
    for problem in failures + [f"left behind: {name}" for name in leaked]:
        print(problem, file=sys.stderr)
    return 1 if failures or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
