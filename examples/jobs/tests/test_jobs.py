"""The jobs stack end to end: POST a job to the API, the worker does it, GET the result."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from svcenv.handles import ServiceHandle

WAIT_S = 30.0
"""How long a job may take, queue and worker included, before the test fails."""


def wait_for_job(api: str, job_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll ``GET /jobs/<id>`` until the job is no longer queued; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"{api}/jobs/{job_id}", timeout=5)
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        if job["status"] != "queued":
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still queued after {timeout:.0f}s: {job}")
        time.sleep(0.1)


def test_a_posted_job_is_done_by_the_worker(api_service: ServiceHandle, postgres_service: Any) -> None:
    response = requests.post(f"{api_service.url}/jobs", json={"text": "hello real services"}, timeout=5)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"

    job = wait_for_job(api_service.url, job_id)
    assert job == {
        "id": job_id,
        "status": "done",
        "result": {"words": 3, "upper": "HELLO REAL SERVICES"},
        "error": None,
    }
    # The result is in Postgres, where the worker wrote it.
    with postgres_service.connect() as conn:
        row = conn.execute("SELECT status, finished_at IS NOT NULL FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("done", True)


def test_jobs_queued_together_are_all_done(api_service: ServiceHandle) -> None:
    texts = [" ".join(["word"] * n) for n in range(1, 11)]
    ids = [requests.post(f"{api_service.url}/jobs", json={"text": t}, timeout=5).json()["id"] for t in texts]
    words = [wait_for_job(api_service.url, job_id)["result"]["words"] for job_id in ids]
    assert words == list(range(1, 11))


@pytest.mark.parametrize(
    "body",
    [{"json": {}}, {"json": {"text": ""}}, {"json": {"text": 42}}, {"json": ["text"]}, {"data": "not json"}],
    ids=["no-text", "empty", "not-a-string", "not-an-object", "not-json"],
)
def test_a_bad_request_is_refused_with_400(api_service: ServiceHandle, body: dict[str, Any]) -> None:
    response = requests.post(f"{api_service.url}/jobs", timeout=5, **body)
    assert response.status_code == 400
    assert "expected a JSON body" in response.json()["error"]


def test_an_unknown_job_is_404(api_service: ServiceHandle) -> None:
    assert requests.get(f"{api_service.url}/jobs/00000000-0000-0000-0000-000000000000", timeout=5).status_code == 404
    assert requests.get(f"{api_service.url}/jobs/not-a-uuid", timeout=5).status_code == 404


def test_health(api_service: ServiceHandle) -> None:
    assert requests.get(f"{api_service.url}/health", timeout=5).json() == {"status": "ok"}
