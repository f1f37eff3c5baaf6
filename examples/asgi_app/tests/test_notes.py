"""Notes through the app (httpx, in-process), checked in Postgres and Redis with svcenv's async fixtures.

Each test has its own fresh database and a flushed Redis db, so counts start at zero.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest


async def test_a_posted_note_is_stored_in_postgres_and_counted_in_redis(
    client: httpx.AsyncClient, postgres_async_connection: Any, redis_async_client: Any
) -> None:
    response = await client.post("/notes", json={"text": "buy milk"})
    assert response.status_code == 201, response.text
    note = response.json()
    assert note["text"] == "buy milk"
    assert note["notes_created"] == 1
    assert response.headers["Location"] == f"/notes/{note['id']}"

    cur = await postgres_async_connection.execute("SELECT id, text FROM notes")
    assert await cur.fetchall() == [(note["id"], "buy milk")]
    assert await redis_async_client.get("notes:created") == b"1"


async def test_reading_a_note_counts_its_views(client: httpx.AsyncClient, redis_async_client: Any) -> None:
    note = (await client.post("/notes", json={"text": "call Ada"})).json()
    first = await client.get(f"/notes/{note['id']}")
    second = await client.get(f"/notes/{note['id']}")
    assert first.status_code == second.status_code == 200
    assert first.json() == {**{k: note[k] for k in ("id", "text", "created_at")}, "views": 1}
    assert second.json()["views"] == 2
    assert await redis_async_client.get(f"note:{note['id']}:views") == b"2"


@pytest.mark.parametrize("run", [1, 2])
async def test_every_test_starts_with_no_notes(
    client: httpx.AsyncClient, postgres_async_connection: Any, redis_async_client: Any, run: int
) -> None:
    # Whichever runs second sees neither the other's row nor its count.
    cur = await postgres_async_connection.execute("SELECT count(*) FROM notes")
    assert await cur.fetchone() == (0,)
    assert await redis_async_client.get("notes:created") is None
    assert (await client.post("/notes", json={"text": f"run {run}"})).json()["notes_created"] == 1


async def test_concurrent_requests_share_the_pool(
    client: httpx.AsyncClient, postgres_async_connection: Any, redis_async_client: Any
) -> None:
    responses = await asyncio.gather(*(client.post("/notes", json={"text": f"note {i}"}) for i in range(25)))
    assert {r.status_code for r in responses} == {201}
    assert sorted(r.json()["notes_created"] for r in responses) == list(range(1, 26))
    cur = await postgres_async_connection.execute("SELECT count(DISTINCT id) FROM notes")
    assert await cur.fetchone() == (25,)
    assert await redis_async_client.get("notes:created") == b"25"


async def test_an_unknown_note_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/notes/12345")).status_code == 404
    assert (await client.get("/notes/99999999999999999999")).status_code == 404
    assert (await client.get("/notes/not-a-number")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"json": {}}, {"json": {"text": "  "}}, {"json": {"text": 42}}, {"json": ["text"]}, {"content": "not json"}],
    ids=["no-text", "blank", "not-a-string", "not-an-object", "not-json"],
)
async def test_a_bad_note_is_refused_with_400(
    client: httpx.AsyncClient, postgres_async_connection: Any, body: dict[str, Any]
) -> None:
    response = await client.post("/notes", **body)
    assert response.status_code == 400
    assert "expected a JSON body" in response.json()["error"]
    cur = await postgres_async_connection.execute("SELECT count(*) FROM notes")
    assert await cur.fetchone() == (0,)


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.json() == {"status": "ok"}
