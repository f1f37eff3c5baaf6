"""The shop against real services with a plain ``with Environment(...)``: no test runner.

Run from the repository root: ``python examples/plain_environment.py``. It exits 0 when
every check passes; the services are removed on every exit path.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.shop import SCHEMA, Product, ProductCache, ProductRepository, create_app
from svcenv import Environment, Postgres, Redis


def main() -> int:
    postgres, redis = Postgres(), Redis()
    with Environment(postgres, redis) as env:
        for name, timing in env.timings.items():
            print(f"{name} ready in {timing.total_s:.2f}s")

        with env[postgres].connect() as conn:
            conn.execute(SCHEMA.read_text(encoding="utf-8").encode())
            repo = ProductRepository(conn)
            tea = repo.add("tea", 450)
            assert repo.get(tea.id) == tea
            assert repo.list() == [tea]
        # the block committed on exit

        client = env[redis].client()
        cache = ProductCache(client, ttl=30)
        loads: list[int] = []

        def load(product_id: int) -> Product | None:
            loads.append(product_id)
            with env[postgres].connect() as conn:
                return ProductRepository(conn).get(product_id)

        assert cache.get(tea.id, load) == tea
        assert cache.get(tea.id, load) == tea
        assert loads == [tea.id], "the second read must come from Redis"
        assert 0 < client.ttl(cache.key(tea.id)) <= 30
        client.flushdb()
        client.close()

        variables = env.env_vars()  # DATABASE_URL, REDIS_URL, PG*, ...
        app = create_app(variables["DATABASE_URL"], variables["REDIS_URL"])
        api = app.test_client()
        assert [p["name"] for p in api.get("/products").get_json()] == ["tea"]
        created = api.post("/products", json={"name": "cake", "price_cents": 300})
        assert created.status_code == 201, created.get_data(as_text=True)
        cake_id = created.get_json()["id"]
        assert api.get(f"/products/{cake_id}").headers["X-Cache"] == "miss"
        assert api.get(f"/products/{cake_id}").headers["X-Cache"] == "hit"
        assert api.get("/products/999").status_code == 404
        app.extensions["shop.redis"].close()
    print("all checks passed; services removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
