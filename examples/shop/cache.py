"""A read-through cache for products in Redis, with a TTL."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from .repository import Product


class ProductCache:
    """``get(id, load)``: the cached product, or ``load(id)``, stored for ``ttl`` seconds.

    A product that does not exist is cached too (as ``null``), so repeated
    lookups of a missing id do not reach the database either.
    """

    def __init__(self, client: redis.Redis, ttl: int = 60, prefix: str = "product:") -> None:
        self.client = client
        self.ttl = ttl
        self.prefix = prefix

    def key(self, product_id: int) -> str:
        """The Redis key of a product."""
        return f"{self.prefix}{product_id}"

    def get(self, product_id: int, load: Callable[[int], Product | None]) -> Product | None:
        """The product from the cache, else from ``load`` (and then cached)."""
        return self.lookup(product_id, load)[0]

    def lookup(self, product_id: int, load: Callable[[int], Product | None]) -> tuple[Product | None, bool]:
        """Like :meth:`get`, and whether the cache answered (a hit)."""
        cached = self.client.get(self.key(product_id))
        if cached is not None:
            data = json.loads(cached)
            return (None if data is None else Product.from_dict(data)), True
        product = load(product_id)
        self.client.set(self.key(product_id), json.dumps(product.to_dict() if product else None), ex=self.ttl)
        return product, False

    def invalidate(self, product_id: int) -> None:
        """Forget a product."""
        self.client.delete(self.key(product_id))
