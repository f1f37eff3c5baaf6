"""The session's environment is the stack: Postgres, Redis, the API and the worker (see stack.py).

``JOBS_BASE_IMAGE`` names the image the API and the worker are built from
(default ``python:3.11-slim``).
"""

from __future__ import annotations

from stack import services

from svcenv.pytest import environment_fixture, fixtures

STACK = services()

# The session's environment: all four services, started once, removed at the end of the run.
svcenv = environment_fixture(*STACK)
# api_service and worker_service: the running handles (postgres_service, redis_service come with svcenv).
globals().update(fixtures(*(s for s in STACK if s.name in ("api", "worker"))))
