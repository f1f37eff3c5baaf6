"""The jobs API: ``POST /jobs`` queues a job, ``GET /jobs/<id>`` tells how it went, ``GET /health``.

A job is a row in Postgres (``queued``, then ``done`` or ``failed`` with its result) and
its id on a Redis list, which the worker pops. Configuration comes from the environment:
``DATABASE_URL`` and ``REDIS_URL`` (and ``PORT``, default 8000, and ``HOST``, default all interfaces).
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from typing import Any

import psycopg
import redis
from flask import Flask, Response, jsonify, request

QUEUE = "jobs:queue"
"""The Redis list of job ids: the API pushes on the right, the worker pops from the left."""
MAX_TEXT = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          uuid PRIMARY KEY,
    text        text NOT NULL,
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'done', 'failed')),
    result      jsonb,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)
"""


def create_app(database_url: str, redis_url: str) -> Flask:
    app = Flask(__name__)
    queue = redis.Redis.from_url(redis_url)

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(database_url, connect_timeout=5)

    with connect() as conn:  # the API owns the schema; the worker starts after the API is healthy
        conn.execute(SCHEMA)

    @app.post("/jobs")
    def submit() -> tuple[Response, int, dict[str, str]] | tuple[Response, int]:
        data = request.get_json(silent=True)
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return jsonify(error=f'expected a JSON body {{"text": "..."}}, non-empty, at most {MAX_TEXT} chars'), 400
        job_id = str(uuid.uuid4())
        with connect() as conn:  # committed before the id is queued: the worker always finds the row
            conn.execute("INSERT INTO jobs (id, text) VALUES (%s, %s)", (job_id, text))
        queue.rpush(QUEUE, job_id)
        return jsonify(id=job_id, status="queued"), 202, {"Location": f"/jobs/{job_id}"}

    @app.get("/jobs/<uuid:job_id>")
    def status(job_id: uuid.UUID) -> tuple[Response, int]:
        with connect() as conn:
            row = conn.execute("SELECT status, result, error FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            return jsonify(error=f"no job {job_id}"), 404
        state, result, error = row
        return jsonify(id=str(job_id), status=state, result=result, error=error), 200

    @app.get("/health")
    def health() -> tuple[Response, int]:
        try:
            with connect() as conn:
                conn.execute("SELECT 1")
            queue.ping()
        except (psycopg.Error, redis.RedisError) as exc:
            return jsonify(status="unavailable", error=str(exc)), 503
        return jsonify(status="ok"), 200

    return app


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container: stop promptly on `docker stop`
    application = create_app(os.environ["DATABASE_URL"], os.environ["REDIS_URL"])
    # All interfaces in a container (its network is the environment's); svcenv's local backend says HOST=127.0.0.1.
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104
    application.run(host=host, port=int(os.environ.get("PORT", "8000")), threaded=True)
