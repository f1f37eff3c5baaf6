"""The jobs worker: pops job ids from the Redis list, computes the result, records it in Postgres.

The result of a job is ``{"words": <word count>, "upper": <the text in upper case>}``.
Configuration comes from the environment: ``DATABASE_URL`` and ``REDIS_URL``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb

QUEUE = "jobs:queue"
"""The API pushes job ids here (on the right); the worker pops them (from the left)."""


def compute(text: str) -> dict[str, Any]:
    return {"words": len(text.split()), "upper": text.upper()}


def handle(conn: psycopg.Connection[Any], job_id: str) -> None:
    """Do one job: the row is locked while it is worked on and updated in the same transaction."""
    with conn.transaction():
        row = conn.execute("SELECT text FROM jobs WHERE id = %s AND status = 'queued' FOR UPDATE", (job_id,)).fetchone()
        if row is None:  # unknown, or already done (a job id delivered twice)
            return
        try:
            result = compute(row[0])
        except Exception as exc:  # a job that fails is recorded as failed; the worker goes on
            conn.execute(
                "UPDATE jobs SET status = 'failed', error = %s, finished_at = now() WHERE id = %s",
                (repr(exc), job_id),
            )
            return
        conn.execute(
            "UPDATE jobs SET status = 'done', result = %s, finished_at = now() WHERE id = %s",
            (Jsonb(result), job_id),
        )


def main() -> None:
    queue = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    queue.ping()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        print("worker: ready", flush=True)
        while True:
            item = queue.blpop([QUEUE], timeout=5)
            if item is not None:
                job_id = str(item[1])  # a str: the client decodes responses
                handle(conn, job_id)
                print(f"worker: job {job_id} handled", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container: stop promptly on `docker stop`
    main()
