"""The HTTP API: ``GET /products``, ``POST /products``, ``GET /products/<id>``."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import redis
from flask import Flask, Response, jsonify, request

from .cache import ProductCache
from .repository import Product, ProductRepository


def create_app(database_url: str | None = None, redis_url: str | None = None, cache_ttl: int = 60) -> Flask:
    """The Flask app; the URLs default to ``DATABASE_URL`` and ``REDIS_URL``.

    Each request opens its own database connection and commits at its end.
    ``GET /products/<id>`` goes through the cache and says ``X-Cache: hit`` or ``miss``.
    The Redis client is ``app.extensions["shop.redis"]``; close it when done.
    """
    database_url = database_url or os.environ["DATABASE_URL"]
    redis_url = redis_url or os.environ["REDIS_URL"]
    app = Flask(__name__)
    client = redis.Redis.from_url(redis_url)
    cache = ProductCache(client, ttl=cache_ttl)
    app.extensions["shop.redis"] = client
    app.extensions["shop.cache"] = cache

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(database_url)

    @app.get("/products")
    def list_products() -> Response:
        with connect() as conn:
            return jsonify([p.to_dict() for p in ProductRepository(conn).list()])

    @app.post("/products")
    def add_product() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("name"), str)
            or not data["name"]
            or not isinstance(data.get("price_cents"), int)
            or data["price_cents"] < 0
        ):
            return jsonify(error="expected {name: non-empty string, price_cents: integer >= 0}"), 400
        try:
            with connect() as conn:
                product = ProductRepository(conn).add(data["name"], data["price_cents"])
        except psycopg.errors.UniqueViolation:
            return jsonify(error=f"product {data['name']!r} exists"), 409
        cache.invalidate(product.id)  # a cached "missing" for this id must go
        return jsonify(product.to_dict()), 201

    @app.get("/products/<int:product_id>")
    def get_product(product_id: int) -> tuple[Response, int, dict[str, str]]:
        def load(pid: int) -> Product | None:
            with connect() as conn:
                return ProductRepository(conn).get(pid)

        product, hit = cache.lookup(product_id, load)
        headers = {"X-Cache": "hit" if hit else "miss"}
        if product is None:
            return jsonify(error="not found"), 404, headers
        return jsonify(product.to_dict()), 200, headers

    return app
