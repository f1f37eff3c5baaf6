"""examples/asgi_app, run as a user runs it: an ASGI app tested in-process, an RQ worker built by svcenv.

The example's own suite (``cd examples/asgi_app && python -m pytest tests``) runs in a
subprocess, as tests/test_example_jobs.py runs the jobs example: the worker's image is
built ``FROM`` the local base image (``ASGI_BASE_IMAGE``) and installs offline from wheels
``fetch_wheels.py`` downloads on the host. Its containers and network carry this test's
label (``SVCENV_LABELS``), so ``leaks`` sees anything it leaves; ``built_images`` removes
the image it built.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .conftest import LeakCheck, docker, fetch_example_wheels, need, run_example

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "asgi_app"
TIMEOUT_S = 600


@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist-2"])
def test_the_asgi_example_passes_and_leaves_nothing_behind(
    leaks: LeakCheck, base_image: str, built_images: set[str], workers: str | None
) -> None:
    for module in ("pytest_asyncio", "starlette", "httpx", "rq", "psycopg_pool"):
        if importlib.util.find_spec(module) is None:
            need(f"the asgi_app example needs {module} (pip install -e '.[test]')")
    fetch_example_wheels(EXAMPLE)
    # -n 2: one shared environment (one worker container) for both xdist workers.
    args = ["tests", *(["-n", workers] if workers else [])]
    out = run_example(
        EXAMPLE,
        leaks,
        args,
        {"ASGI_BASE_IMAGE": base_image},
        at_least=20,
        forbidden=r"failed|skipped|errors?|xfailed|warnings?",
        timeout=TIMEOUT_S,
    )
    if not workers:  # under xdist the summary is the workers' (not printed by the controller)
        # One environment for the run, the worker in it (svcenv's summary line names its services).
        summary = re.findall(r"environment \w+: (.*)", out)
        assert len(summary) == 1, out
        assert all(f"{name} " in summary[0] for name in ("postgres", "redis", "worker")), summary
    # svcenv built the worker's image (built_images removes it after this test); the jobs example's
    # worker image has the same repository, so it is told apart by its command.
    built = docker("images", "-q", "--no-trunc", "--filter", "label=svcenv.build=true").split()
    commands = docker("image", "inspect", "--format", "{{json .Config.Cmd}}", *built).split() if built else []
    assert '["python3","-m","rq.cli","worker","jobs"]' in commands, commands
    assert leaks.leftovers() == [], "the asgi_app example left containers"
    assert leaks.networks() == [], "the asgi_app example left its network"
    assert leaks.volumes() == [], "the asgi_app example left volumes"
