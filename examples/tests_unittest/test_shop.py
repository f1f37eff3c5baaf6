# unittest's own assertions are the point of this example (the PT rules prefer pytest style).
# ruff: noqa: PT009, PT027
"""The shop's integration tests with unittest and ``svcenv.unittest.ServiceTestCase``.

Run from the repository root::

    python -m unittest discover -s examples/tests_unittest -t .
"""

from __future__ import annotations

import unittest

import psycopg

from examples.shop import SCHEMA, Product, ProductCache, ProductRepository, create_app
from svcenv import Postgres, Redis
from svcenv.unittest import ServiceTestCase, start_module_environment, stop_module_environment


def setUpModule() -> None:
    # One Postgres and one Redis for the module's classes. A class can also run its own:
    # `services = (Postgres(), Redis())`.
    start_module_environment(Postgres(), Redis())


def tearDownModule() -> None:
    stop_module_environment()  # unittest's module cleanup does this too; pytest needs it here


class ShopTest(ServiceTestCase):
    """A fresh database and a clean Redis db per test."""

    postgres_setup = SCHEMA  # built once per class into a template; fresh_database() clones it

    def setUp(self) -> None:
        self.conn = self.fresh_database()  # dropped after the test, even a failed one
        self.redis = self.clean_redis()  # FLUSHDB before and after
        self.repo = ProductRepository(self.conn)

    def test_repository_adds_gets_and_lists(self) -> None:
        tea = self.repo.add("tea", 450)
        cake = self.repo.add("cake", 300)
        self.assertEqual(self.repo.get(tea.id), tea)
        self.assertIsNone(self.repo.get(9999))
        self.assertEqual(self.repo.list(), [tea, cake])

    def test_each_test_starts_with_an_empty_table(self) -> None:
        self.assertEqual(self.repo.list(), [])

    def test_price_must_not_be_negative(self) -> None:
        with self.assertRaises(psycopg.errors.CheckViolation):
            self.repo.add("refund", -1)

    def test_rollback_connection_keeps_nothing(self) -> None:
        conn = self.rollback_connection()  # a shared clone; its work is rolled back after the test
        ProductRepository(conn).add("coffee", 350)
        conn.commit()  # acts on a savepoint
        self.assertEqual([p.name for p in ProductRepository(conn).list()], ["coffee"])

    def test_rollback_connection_sees_nothing_of_the_other_test(self) -> None:
        self.assertEqual(ProductRepository(self.rollback_connection()).list(), [])

    def test_cache_reads_through_once_and_sets_a_ttl(self) -> None:
        cache = ProductCache(self.redis, ttl=30)
        loads: list[int] = []

        def load(product_id: int) -> Product | None:
            loads.append(product_id)
            return Product(product_id, "tea", 450) if product_id == 1 else None

        self.assertEqual(cache.get(1, load), Product(1, "tea", 450))
        self.assertEqual(cache.get(1, load), Product(1, "tea", 450))
        self.assertIsNone(cache.get(2, load))
        self.assertIsNone(cache.get(2, load))
        self.assertEqual(loads, [1, 2])
        self.assertTrue(0 < self.redis.ttl(cache.key(1)) <= 30)

    def test_redis_db_is_clean(self) -> None:
        self.assertEqual(self.redis.dbsize(), 0)


class ShopApiTest(ServiceTestCase):
    """The Flask app as deployed: it reads DATABASE_URL and REDIS_URL from the environment."""

    postgres_setup = SCHEMA

    def setUp(self) -> None:
        self.conn = self.fresh_database()
        self.redis = self.clean_redis()
        self.use_env_vars()  # DATABASE_URL -> this test's database, REDIS_URL -> the clean db; restored after
        app = create_app()
        app.testing = True
        self.addCleanup(app.extensions["shop.redis"].close)
        self.client = app.test_client()

    def test_adds_and_lists_products(self) -> None:
        self.assertEqual(self.client.get("/products").get_json(), [])
        created = self.client.post("/products", json={"name": "tea", "price_cents": 450})
        self.assertEqual(created.status_code, 201)
        self.assertEqual(created.get_json(), {"id": 1, "name": "tea", "price_cents": 450})
        self.client.post("/products", json={"name": "cake", "price_cents": 300})
        self.assertEqual([p["name"] for p in self.client.get("/products").get_json()], ["tea", "cake"])

    def test_serves_a_product_through_the_cache(self) -> None:
        product_id = self.client.post("/products", json={"name": "tea", "price_cents": 450}).get_json()["id"]
        first = self.client.get(f"/products/{product_id}")
        second = self.client.get(f"/products/{product_id}")
        self.assertEqual((first.status_code, first.headers["X-Cache"]), (200, "miss"))
        self.assertEqual((second.status_code, second.headers["X-Cache"]), (200, "hit"))
        self.assertTrue(self.redis.exists(f"product:{product_id}"))

    def test_rejects_bad_input_and_duplicates(self) -> None:
        self.assertEqual(self.client.post("/products", json={"name": "", "price_cents": 1}).status_code, 400)
        self.assertEqual(self.client.post("/products", json={"name": "tea", "price_cents": 450}).status_code, 201)
        self.assertEqual(self.client.post("/products", json={"name": "tea", "price_cents": 450}).status_code, 409)
        self.assertEqual(self.client.get("/products/999").status_code, 404)

    def test_sees_data_the_test_commits(self) -> None:
        ProductRepository(self.conn).add("seeded", 100)
        self.conn.commit()
        self.assertEqual([p["name"] for p in self.client.get("/products").get_json()], ["seeded"])


if __name__ == "__main__":
    unittest.main()
