"""Jobs: enqueued through the app, run by the RQ worker the environment started, results read back.

The worker is a container of the session's environment (see stack.py), so these tests
neither start nor stop it; they only wait, at most ``WAIT_S`` seconds per job.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis
from rq import Queue, Worker

from svcenv.handles import PostgresHandle, RedisHandle, ServiceHandle

WAIT_S = 30.0
"""How long a job may take, queue and worker included, before the test fails."""
PENDING = {"queued", "started", "deferred", "scheduled"}


async def wait_for_job(
    client: httpx.AsyncClient, job_id: str, worker: ServiceHandle, timeout: float = WAIT_S
) -> dict[str, Any]:
    """Poll ``GET /jobs/<id>`` until the job is done or failed; fail after ``timeout`` s, with the worker's log."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] not in PENDING:
            return job
        if time.monotonic() > deadline:
            pytest.fail(
                f"job {job_id} still {job['status']} after {timeout:.0f}s: {job}\n"
                f"worker exit status: {worker.exit_status()}; its last log lines:\n{worker.logs(tail=20)}",
                pytrace=False,
            )
        await asyncio.sleep(0.1)


async def test_a_posted_job_is_done_by_the_worker(
    jobs_client: httpx.AsyncClient, worker_service: ServiceHandle, postgres_service: PostgresHandle
) -> None:
    response = await jobs_client.post("/jobs", json={"text": "the cat saw the other cat and the dog"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{job_id}"

    job = await wait_for_job(jobs_client, job_id, worker_service)
    assert job == {
        "id": job_id,
        "status": "done",
        "result": {"words": 9, "unique": 6, "top": ["the", "cat", "and"]},
        "error": None,
    }
    # The worker wrote the result into Postgres, and it was the environment's worker that ran it.
    conn = await postgres_service.connect_async()
    try:
        cur = await conn.execute("SELECT status, finished_at IS NOT NULL FROM jobs WHERE id = %s", (job_id,))
        assert await cur.fetchone() == ("done", True)
    finally:
        await conn.close()
    assert job_id in worker_service.logs()


async def test_jobs_queued_together_are_all_done(jobs_client: httpx.AsyncClient, worker_service: ServiceHandle) -> None:
    texts = [" ".join(["word"] * n) for n in range(1, 11)]
    posted = await asyncio.gather(*(jobs_client.post("/jobs", json={"text": t}) for t in texts))
    ids = [response.json()["id"] for response in posted]
    jobs = await asyncio.gather(*(wait_for_job(jobs_client, job_id, worker_service) for job_id in ids))
    assert [job["status"] for job in jobs] == ["done"] * 10
    assert [job["result"]["words"] for job in jobs] == list(range(1, 11))


async def test_a_job_the_worker_cannot_do_is_failed_with_its_error(
    jobs_client: httpx.AsyncClient, worker_service: ServiceHandle
) -> None:
    job_id = (await jobs_client.post("/jobs", json={"text": "?! 42 ..."})).json()["id"]
    job = await wait_for_job(jobs_client, job_id, worker_service)
    assert job["status"] == "failed", job
    assert job["result"] is None
    assert job["error"] == "ValueError: no words in '?! 42 ...'"


def test_the_worker_listens_on_the_apps_queue(redis_service: RedisHandle, worker_service: ServiceHandle) -> None:
    with redis.Redis.from_url(redis_service.url) as conn:
        workers = Worker.all(queue=Queue("jobs", connection=conn))
    assert len(workers) == 1, workers
    assert worker_service.exit_status() is None  # still running: the environment stops it after the session


@pytest.mark.parametrize(
    "body",
    [{"json": {}}, {"json": {"text": ""}}, {"json": {"text": "x" * 10_001}}, {"content": "{"}],
    ids=["no-text", "empty", "too-long", "not-json"],
)
async def test_a_bad_job_is_refused_with_400(jobs_client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await jobs_client.post("/jobs", **body)
    assert response.status_code == 400, response.text


async def test_an_unknown_job_is_404(jobs_client: httpx.AsyncClient) -> None:
    assert (await jobs_client.get("/jobs/00000000-0000-0000-0000-000000000000")).status_code == 404
    assert (await jobs_client.get("/jobs/not-a-uuid")).status_code == 404
