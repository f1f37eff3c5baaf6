"""The shop's integration tests with svcenv's pytest plugin: real Postgres and Redis, isolated per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from flask.testing import FlaskClient

from examples.shop import Product, ProductCache, ProductRepository, create_app


@pytest.fixture
def client(
    postgres_connection: psycopg.Connection[Any], redis_client: redis.Redis, svcenv_env_vars: dict[str, str]
) -> Iterator[FlaskClient]:
    """The app as deployed: it reads DATABASE_URL (this test's fresh database) and REDIS_URL (a flushed db)."""
    app = create_app()
    app.testing = True
    with app.test_client() as test_client:
        yield test_client
    app.extensions["shop.redis"].close()


def test_repository_adds_gets_and_lists(postgres_connection: psycopg.Connection[Any]) -> None:
    repo = ProductRepository(postgres_connection)
    tea = repo.add("tea", 450)
    cake = repo.add("cake", 300)
    assert repo.get(tea.id) == tea
    assert repo.get(9999) is None
    assert repo.list() == [tea, cake]


def test_each_test_starts_with_an_empty_table(postgres_connection: psycopg.Connection[Any]) -> None:
    # The test above committed nothing but added rows; this one has its own database anyway.
    assert ProductRepository(postgres_connection).list() == []


def test_repository_in_a_rolled_back_transaction(postgres_transaction: psycopg.Connection[Any]) -> None:
    repo = ProductRepository(postgres_transaction)
    repo.add("coffee", 350)
    postgres_transaction.commit()  # acts on a savepoint; everything is rolled back after the test
    assert [p.name for p in repo.list()] == ["coffee"]


def test_price_must_not_be_negative(postgres_connection: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        ProductRepository(postgres_connection).add("refund", -1)


def test_cache_reads_through_once_and_sets_a_ttl(redis_client: redis.Redis) -> None:
    cache = ProductCache(redis_client, ttl=30)
    loads: list[int] = []

    def load(product_id: int) -> Product | None:
        loads.append(product_id)
        return Product(product_id, "tea", 450) if product_id == 1 else None

    assert cache.get(1, load) == Product(1, "tea", 450)
    assert cache.get(1, load) == Product(1, "tea", 450)
    assert cache.get(2, load) is None
    assert cache.get(2, load) is None
    assert loads == [1, 2]  # one load per id, misses included
    assert 0 < redis_client.ttl(cache.key(1)) <= 30
    cache.invalidate(1)
    cache.get(1, load)
    assert loads == [1, 2, 1]


def test_redis_db_is_clean(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_api_adds_and_lists_products(client: FlaskClient) -> None:
    assert client.get("/products").get_json() == []
    created = client.post("/products", json={"name": "tea", "price_cents": 450})
    assert created.status_code == 201
    assert created.get_json() == {"id": 1, "name": "tea", "price_cents": 450}
    client.post("/products", json={"name": "cake", "price_cents": 300})
    assert [p["name"] for p in client.get("/products").get_json()] == ["tea", "cake"]


def test_api_serves_a_product_through_the_cache(client: FlaskClient, redis_client: redis.Redis) -> None:
    product_id = client.post("/products", json={"name": "tea", "price_cents": 450}).get_json()["id"]
    first = client.get(f"/products/{product_id}")
    second = client.get(f"/products/{product_id}")
    assert (first.status_code, first.headers["X-Cache"]) == (200, "miss")
    assert (second.status_code, second.headers["X-Cache"]) == (200, "hit")
    assert second.get_json() == first.get_json()
    assert redis_client.exists(f"product:{product_id}")  # the app writes to the test's own Redis db


def test_api_rejects_bad_input_and_duplicates(client: FlaskClient) -> None:
    assert client.post("/products", json={"name": "", "price_cents": 1}).status_code == 400
    assert client.post("/products", json={"name": "tea", "price_cents": -5}).status_code == 400
    assert client.post("/products", json={"name": "tea", "price_cents": 450}).status_code == 201
    assert client.post("/products", json={"name": "tea", "price_cents": 450}).status_code == 409
    assert client.get("/products/999").status_code == 404


def test_api_sees_data_the_test_commits(client: FlaskClient, postgres_connection: psycopg.Connection[Any]) -> None:
    ProductRepository(postgres_connection).add("seeded", 100)
    postgres_connection.commit()  # the app uses its own connections: it sees committed data only
    assert [p["name"] for p in client.get("/products").get_json()] == ["seeded"]
