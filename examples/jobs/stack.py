"""The jobs example's environment: Postgres, Redis, and the API and worker built from their Dockerfiles.

The API and the worker get ``DATABASE_URL`` and ``REDIS_URL`` as references
(``pg.internal_url``): addresses on the environment's network, with the generated
passwords filled in once Postgres and Redis are ready. So the API starts after
both; the worker starts after the API is healthy (the API creates the schema).

``JOBS_BASE_IMAGE`` names the image both Dockerfiles build ``FROM`` (default
``python:3.11-slim``). With ``SVCENV_BACKEND=local`` (no Docker), the API and the worker
run as local commands of this Python instead (it needs flask, psycopg and redis), beside
local Postgres and Redis servers; the references then give loopback addresses.
Run ``python stack.py`` to bring the stack up by hand: it prints the variables
(``API_URL`` among them), and removes everything on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from svcenv import BuildSpec, Environment, Postgres, Redis, Service
from svcenv.probes import HTTP, LogLine

HERE = Path(__file__).resolve().parent
DEFAULT_BASE = "python:3.11-slim"


def services(base: str | None = None, *, local: bool | None = None) -> list[Service]:
    """Postgres, Redis, ``api`` (port 8000, ready when ``GET /health`` answers 200) and ``worker``.

    ``local`` (default: ``SVCENV_BACKEND=local``): the API and the worker as local commands.
    """
    base = base or os.environ.get("JOBS_BASE_IMAGE") or DEFAULT_BASE
    pg, redis = Postgres(), Redis()
    urls = {"DATABASE_URL": pg.internal_url, "REDIS_URL": redis.internal_url}
    if local if local is not None else os.environ.get("SVCENV_BACKEND") == "local":
        # The same programs, run by this Python; the API is told its free port through PORT.
        api = Service(
            "api",
            command=(sys.executable, str(HERE / "api" / "app.py")),
            ports=(8000,),
            scheme="http",
            env=urls,
            probe=HTTP("/health"),
        )
        worker = Service(
            "worker",
            command=(sys.executable, str(HERE / "worker" / "worker.py")),
            env=urls,
            probe=LogLine("worker: ready"),
            depends_on=("api",),
        )
        return [pg, redis, api, worker]
    api = Service(
        "api",
        build=BuildSpec(HERE / "api", args={"BASE": base}),
        ports=(8000,),
        scheme="http",  # the handle's url: http://127.0.0.1:<published port>
        env=urls,
        probe=HTTP("/health"),
    )
    worker = Service(
        "worker",
        build=BuildSpec(HERE / "worker", args={"BASE": base}),
        env=urls,
        probe=LogLine("worker: ready"),
        depends_on=("api",),
    )
    return [pg, redis, api, worker]


def main() -> int:
    with Environment(*services()) as env:
        for name, timing in env.timings.items():
            print(f"{name:<8} ready in {timing.total_s:5.2f}s", file=sys.stderr)
        for key, value in env.env_vars().items():
            print(f"{key}={value}")
        print("press Ctrl-C to stop and remove them", file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
