"""The asgi_app example's environment: Postgres, Redis and the RQ worker, built by svcenv from worker/.

The app itself is not a service: the tests run it in their own process (through
``httpx.ASGITransport``). The worker is one: svcenv builds its image from
``worker/Dockerfile``, starts it once Postgres and Redis are ready, and removes it with
them. Its ``DATABASE_URL`` and ``RQ_REDIS_URL`` are references (``pg.internal_url``):
addresses on the environment's network, generated passwords filled in at start.

``ASGI_BASE_IMAGE`` names the image the worker is built ``FROM`` (default
``python:3.11-slim``). ``python stack.py`` brings the stack up by hand and prints the
variables to run the app against it (``DATABASE_URL``, ``REDIS_URL``); Ctrl-C removes it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from svcenv import BuildSpec, Environment, Postgres, Redis, Service
from svcenv.probes import LogLine

HERE = Path(__file__).resolve().parent
DEFAULT_BASE = "python:3.11-slim"
QUEUE = "jobs"
"""The RQ queue the worker listens on (the app's ``app.QUEUE``)."""


def services(base: str | None = None) -> list[Service]:
    """Postgres, Redis and ``worker`` (``rq worker jobs``, ready when it logs that it listens)."""
    base = base or os.environ.get("ASGI_BASE_IMAGE") or DEFAULT_BASE
    pg, redis = Postgres(), Redis()
    worker = Service(
        "worker",
        build=BuildSpec(HERE / "worker", args={"BASE": base}),
        command=("python3", "-m", "rq.cli", "worker", "--worker-ttl", "60", QUEUE),
        # In env, not argv: the URLs carry the generated passwords. RQ reads RQ_REDIS_URL itself.
        env={"RQ_REDIS_URL": redis.internal_url, "DATABASE_URL": pg.internal_url},
        probe=LogLine(rf"Listening on .*{QUEUE}"),
        depends_on=("postgres", "redis"),
    )
    return [pg, redis, worker]


def main() -> int:
    """Start the stack, print how to reach it, wait for Ctrl-C, remove it."""
    with Environment(*services()) as env:
        for name, timing in env.timings.items():
            print(f"{name:<8} ready in {timing.total_s:5.2f}s", file=sys.stderr)
        for key, value in env.env_vars(only=["postgres", "redis"]).items():
            print(f"{key}={value}")
        print("run the app with these (e.g. `uvicorn --factory app:from_env`); Ctrl-C stops it all", file=sys.stderr)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
