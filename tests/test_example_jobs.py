"""examples/jobs, run as a user runs it: an API and a worker built by svcenv, on Postgres and Redis.

The example's own suite (``cd examples/jobs && python -m pytest tests``) runs in a
subprocess, its images built ``FROM`` the local base image (``JOBS_BASE_IMAGE``)
and installed offline from wheels that ``fetch_wheels.py`` downloads on the host.
Its containers carry this test's label (``SVCENV_LABELS``), so ``leaks`` sees
anything it leaves; ``built_images`` removes the two images it built. Without an
engine, the same suite runs the API and the worker as local commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .conftest import LeakCheck, docker, fetch_example_wheels, need, run_example
from .procs import alive, processes_mentioning

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "jobs"


def test_the_jobs_example_passes_and_leaves_nothing_behind(
    leaks: LeakCheck, base_image: str, built_images: set[str]
) -> None:
    fetch_example_wheels(EXAMPLE)
    run_example(EXAMPLE, leaks, ["tests"], {"JOBS_BASE_IMAGE": base_image}, at_least=5)
    # svcenv built the api and the worker (built_images removes them after this test).
    built = docker("images", "--filter", "label=svcenv.build=true", "--format", "{{.Repository}}").split()
    assert {"svcenv-build/api", "svcenv-build/worker"} <= set(built), built
    assert leaks.leftovers() == [], "the jobs example left containers"
    assert leaks.networks() == [], "the jobs example left its network"


CLIENT = """
import json, os, time, urllib.request
api = f"http://{os.environ['API_HOST']}:{os.environ['API_PORT']}"
request = urllib.request.Request(api + "/jobs", data=json.dumps({"text": "one two three"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
job = json.load(urllib.request.urlopen(request, timeout=10))
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    got = json.load(urllib.request.urlopen(f"{api}/jobs/{job['id']}", timeout=10))
    if got["status"] == "done":
        print("result", json.dumps(got["result"], sort_keys=True))
        break
    time.sleep(0.2)
"""


def test_the_jobs_compose_file_runs_through_svcenv(leaks: LeakCheck, base_image: str, built_images: set[str]) -> None:
    fetch_example_wheels(EXAMPLE)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update(
        SVCENV_LABELS=f"svcenv.test={leaks.token}",
        JOBS_BASE_IMAGE=base_image,
        JOBS_POSTGRES_IMAGE=os.environ["SVCENV_POSTGRES_IMAGE"],
        JOBS_REDIS_IMAGE=os.environ["SVCENV_REDIS_IMAGE"],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "svcenv", "run", "-f", "compose.yaml", "--", sys.executable, "-c", CLIENT],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'result {"upper": "ONE TWO THREE", "words": 3}' in proc.stdout, proc.stdout + proc.stderr
    assert "stopped; nothing left running" in proc.stderr
    assert leaks.leftovers() == []


def test_the_jobs_example_runs_as_local_commands_without_an_engine() -> None:
    """The same suite, with the API and the worker as local commands beside local Postgres and Redis."""
    if shutil.which("redis-server") is None:
        need("redis-server is not installed (apt-get install redis-server postgresql-15)")
    # Its servers' and commands' private dirs, apart from other tests'; traversable by the account
    # Postgres runs as under root (pytest's tmp_path is not).
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    private = Path(tempfile.mkdtemp(prefix="svcenv-jobs-local-", dir=shm))
    try:
        private.chmod(0o755)
        env = {
            "SVCENV_BACKEND": "local",
            "DOCKER_HOST": "unix:///nonexistent/svcenv-no-engine.sock",
            "SVCENV_LOCAL_TMPDIR": str(private),
        }
        out = run_example(EXAMPLE, None, ["tests"], env, at_least=5, timeout=300)
        summary = re.findall(r"environment \w+: (.*)", out)
        assert summary, out
        for name in ("postgres", "redis", "api", "worker"):
            assert re.search(rf"\b{name} [\d.]+s \(local\)", summary[0]), summary
        # Nothing of it is left: no process of the API or the worker, no private directory.
        for program in (EXAMPLE / "api" / "app.py", EXAMPLE / "worker" / "worker.py"):
            assert [pid for pid in processes_mentioning(str(program)) if alive(pid)] == [], program
        assert [p.name for p in private.iterdir()] == []
    finally:
        shutil.rmtree(private, ignore_errors=True)
