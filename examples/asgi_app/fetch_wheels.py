"""Download the wheels the worker image installs, into ``worker/wheels/`` (run on the host).

The image installs its requirements offline, so its build needs no package index. This
is ``examples/jobs/fetch_wheels.py``'s ``fetch`` (same wheel selection, same
idempotence: a ``wheels/.requirements`` stamp that matches skips the network) for this
example's build context::

    python examples/asgi_app/fetch_wheels.py        # python 3.11, manylinux wheels for this machine's arch

Exits non-zero with pip's message if the download fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CONTEXTS = (HERE / "worker",)
JOBS_FETCH = HERE.parent / "jobs" / "fetch_wheels.py"


def _jobs_fetch() -> ModuleType:
    """The jobs example's script, loaded as a module (the examples are directories, not packages)."""
    spec = importlib.util.spec_from_file_location("_jobs_fetch_wheels", JOBS_FETCH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {JOBS_FETCH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    """Fill each context's ``wheels/``; 1 if a download failed."""
    jobs = _jobs_fetch()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--python-version", default="3.11", help="the image's Python (default 3.11)")
    parser.add_argument("--arch", default=jobs._arch(), help="the image's architecture (default: this machine's)")
    args = parser.parse_args(argv)
    for context in CONTEXTS:
        try:
            downloaded = jobs.fetch(context, args.python_version, args.arch)
        except subprocess.CalledProcessError as exc:
            print(f"fetch_wheels: pip download for {context.name} failed (exit {exc.returncode})", file=sys.stderr)
            return 1
        count = len(list((context / "wheels").glob("*.whl")))
        print(f"{context.name}: {count} wheels {'downloaded' if downloaded else 'up to date'} in {context / 'wheels'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
