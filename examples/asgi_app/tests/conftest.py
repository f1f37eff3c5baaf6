"""The session's environment is the stack (Postgres, Redis, the RQ worker; see stack.py); the app runs here.

``client`` calls the app on the test's own fresh database (``postgres_database``, the one
``postgres_async_connection`` is on) and on the Redis db of ``redis_async_client``
(flushed before and after): what a test writes, no other test sees.

``jobs_client`` calls the app on what the worker uses: the server's main database and Redis
db 0 (the worker's ``DATABASE_URL``/``RQ_REDIS_URL``). Jobs are told apart by their ids.

``ASGI_BASE_IMAGE`` names the image the worker is built from (default ``python:3.11-slim``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from app import create_app
from stack import services
from starlette.applications import Starlette

from svcenv.handles import PostgresHandle, RedisHandle, ServiceHandle
from svcenv.pytest import environment_fixture, fixtures

STACK = services()

# The session's environment: Postgres, Redis and the worker, started once, removed at the end of the run.
svcenv = environment_fixture(*STACK)
# worker_service: the worker's running handle (postgres_service, redis_service come with svcenv).
globals().update(fixtures(*(s for s in STACK if s.name == "worker")))


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process, inside its lifespan (ASGITransport runs none)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            yield client


@pytest.fixture
async def client(
    postgres_service: PostgresHandle, postgres_database: str, redis_service: RedisHandle, redis_async_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app on this test's fresh database and this worker's (flushed) Redis db."""
    redis_db = redis_async_client.connection_pool.connection_kwargs["db"]
    created = create_app(postgres_service.url_for(postgres_database), redis_service.url_for(redis_db))
    async with serve(created) as http:
        yield http


@pytest.fixture
async def jobs_client(
    postgres_service: PostgresHandle, redis_service: RedisHandle, worker_service: ServiceHandle
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app on the database and Redis db the running worker uses."""
    async with serve(create_app(postgres_service.url, redis_service.url)) as http:
        yield http
