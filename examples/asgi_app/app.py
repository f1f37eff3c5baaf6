"""An ASGI app (Starlette) on Postgres and Redis, with jobs run by an RQ worker.

Endpoints:

- ``POST /notes {"text": "..."}``: stores the note in Postgres, counts it in Redis
  (``notes:created``); ``201 {"id", "text", "created_at", "notes_created"}``.
- ``GET /notes/{id}``: the note, its views counted in Redis (``note:<id>:views``).
- ``POST /jobs {"text": "..."}``: inserts a ``queued`` row in Postgres and enqueues the RQ
  job ``tasks.analyse`` (run by the worker, which writes the result into the row);
  ``202 {"id", "status": "queued"}`` with ``Location: /jobs/<id>``.
- ``GET /jobs/{id}``: ``{"id", "status", "result", "error"}``; ``status`` is ``done`` or
  ``failed`` once the worker wrote it, else RQ's live status (``queued``, ``started``, ...).
- ``GET /health``: ``SELECT 1`` and ``PING``.

:func:`create_app` takes the URLs (tests pass svcenv's); :func:`from_env` reads
``DATABASE_URL`` and ``REDIS_URL`` (for an ASGI server: ``uvicorn --factory app:from_env``).
Postgres is reached through a psycopg 3 ``AsyncConnectionPool``, Redis through
``redis.asyncio``; RQ is synchronous, so enqueueing and job look-ups run in a thread.
The app creates its tables at start-up if they are missing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from rq import Callback, Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

QUEUE = "jobs"
"""The RQ queue the worker listens on."""
TASK = "tasks.analyse"
"""The job function, by name: it lives in the worker's image (worker/tasks.py)."""
ON_FAILURE = "tasks.record_failure"
NOTES_CREATED = "notes:created"
"""The Redis counter of notes created."""
MAX_TEXT = 10_000
BIGINT_MAX = 2**63 - 1

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS notes (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        text text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id uuid PRIMARY KEY,
        text text NOT NULL,
        status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'done', 'failed')),
        result jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz)""",
)
_SCHEMA_LOCK = 0x6E6F746573  # pg_advisory_xact_lock key: apps starting together create the tables once


class BadRequest(Exception):
    """The request body is not what the endpoint expects (answered with 400)."""


@dataclass
class Resources:
    """What the app holds while it runs (opened and closed by its lifespan)."""

    pool: AsyncConnectionPool
    redis: redis.asyncio.Redis
    queue: Queue


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def _text_of(request: Request) -> str:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("expected a JSON body") from None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise BadRequest('expected a JSON body {"text": "<non-empty string>"}')
    if len(text) > MAX_TEXT:
        raise BadRequest(f"text longer than {MAX_TEXT} characters")
    return text


async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    """400 with the reason."""
    return JSONResponse({"error": str(exc)}, status_code=400)


async def create_note(request: Request) -> JSONResponse:
    """``POST /notes``: store the note, count it."""
    text = await _text_of(request)
    res = _resources(request)
    async with res.pool.connection() as conn:
        cur = await conn.execute("INSERT INTO notes (text) VALUES (%s) RETURNING id, created_at", (text,))
        note_id, created_at = await cur.fetchone()  # type: ignore[misc]
    created = await res.redis.incr(NOTES_CREATED)
    body = {"id": note_id, "text": text, "created_at": created_at.isoformat(), "notes_created": created}
    return JSONResponse(body, status_code=201, headers={"Location": f"/notes/{note_id}"})


async def get_note(request: Request) -> JSONResponse:
    """``GET /notes/{id}``: the note and how often it was read."""
    note_id: int = request.path_params["note_id"]
    if note_id > BIGINT_MAX:
        return JSONResponse({"error": f"no note {note_id}"}, status_code=404)
    res = _resources(request)
    async with res.pool.connection() as conn:
        cur = await conn.execute("SELECT text, created_at FROM notes WHERE id = %s", (note_id,))
        row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": f"no note {note_id}"}, status_code=404)
    views = await res.redis.incr(f"note:{note_id}:views")
    return JSONResponse({"id": note_id, "text": row[0], "created_at": row[1].isoformat(), "views": views})


async def create_job(request: Request) -> JSONResponse:
    """``POST /jobs``: a ``queued`` row, then the RQ job (whose id is the row's)."""
    text = await _text_of(request)
    res = _resources(request)
    job_id = str(uuid.uuid4())
    # Committed before the job is enqueued: the worker may run it at once and must find the row.
    async with res.pool.connection() as conn:
        await conn.execute("INSERT INTO jobs (id, text) VALUES (%s, %s)", (job_id, text))
    try:
        await run_in_threadpool(
            res.queue.enqueue_call,
            TASK,
            args=(job_id, text),
            job_id=job_id,
            timeout=60,
            result_ttl=3600,
            failure_ttl=3600,
            on_failure=Callback(ON_FAILURE),
        )
    except Exception:  # not queued: remove the row no worker would ever complete
        async with res.pool.connection() as conn:
            await conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
        raise
    return JSONResponse({"id": job_id, "status": "queued"}, status_code=202, headers={"Location": f"/jobs/{job_id}"})


def _rq_state(queue: Queue, job_id: str) -> tuple[str | None, str | None]:
    """RQ's status of the job and, if it failed, the last line of its error (``None``: RQ has no such job)."""
    try:
        job = Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return None, None
    status = job.get_status().value
    error = None
    if status == "failed":
        result = job.latest_result()
        lines = (result.exc_string or "").strip().splitlines() if result else []
        error = lines[-1] if lines else "failed"
    return status, error


async def get_job(request: Request) -> JSONResponse:
    """``GET /jobs/{id}``: what the worker wrote, else what RQ knows."""
    try:
        job_id = str(uuid.UUID(request.path_params["job_id"]))
    except ValueError:
        return JSONResponse({"error": "not a job id"}, status_code=404)
    res = _resources(request)
    # RQ first, then the row: a job RQ calls finished has its row written (the task commits before returning).
    rq_status, rq_error = await run_in_threadpool(_rq_state, res.queue, job_id)
    async with res.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT status, result, error FROM jobs WHERE id = %s", (job_id,))
        row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
    job: dict[str, Any] = {"id": job_id, **row}
    if row["status"] == "queued" and rq_status is not None:
        job["status"] = rq_status  # queued, started, ... or failed before the failure callback ran
        job["error"] = rq_error
    return JSONResponse(job)


async def health(request: Request) -> JSONResponse:
    """``GET /health``: both servers answer."""
    res = _resources(request)
    async with res.pool.connection() as conn:
        await conn.execute("SELECT 1")
    await res.redis.ping()
    return JSONResponse({"status": "ok"})


async def create_schema(pool: AsyncConnectionPool) -> None:
    """The app's tables, if missing (serialised: several apps may start on one database at once)."""
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in SCHEMA:
            await conn.execute(statement)


def create_app(database_url: str, redis_url: str) -> Starlette:
    """The app on the Postgres database at ``database_url`` and the Redis db at ``redis_url``.

    Its lifespan opens (and closes) the connection pool and the clients and creates the
    tables; the worker must see the same two URLs (from its own network) for ``/jobs``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False)
        await pool.open(wait=True, timeout=10)
        async_redis = redis.asyncio.Redis.from_url(redis_url)
        sync_redis = redis.Redis.from_url(redis_url)  # RQ speaks synchronous redis-py
        try:
            await create_schema(pool)
            app.state.resources = Resources(pool=pool, redis=async_redis, queue=Queue(QUEUE, connection=sync_redis))
            yield
        finally:
            sync_redis.close()
            await async_redis.aclose()
            await pool.close()

    routes = [
        Route("/notes", create_note, methods=["POST"]),
        Route("/notes/{note_id:int}", get_note, methods=["GET"]),
        Route("/jobs", create_job, methods=["POST"]),
        Route("/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={BadRequest: bad_request})


def from_env() -> Starlette:
    """:func:`create_app` on ``DATABASE_URL`` and ``REDIS_URL`` (an ASGI server's ``--factory``)."""
    return create_app(os.environ["DATABASE_URL"], os.environ["REDIS_URL"])
