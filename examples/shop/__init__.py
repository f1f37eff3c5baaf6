"""A small shop: products in Postgres, a read-through cache in Redis, a Flask API.

``create_app()`` reads ``DATABASE_URL`` and ``REDIS_URL`` when no URLs are given.
"""

from .app import create_app
from .cache import ProductCache
from .repository import SCHEMA, Product, ProductRepository

__all__ = ["SCHEMA", "Product", "ProductCache", "ProductRepository", "create_app"]
