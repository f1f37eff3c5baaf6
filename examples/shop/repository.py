"""Products in Postgres (psycopg 3). The caller owns the connection and its transactions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SCHEMA = Path(__file__).with_name("schema.sql")
"""The SQL that creates the tables."""


@dataclass(frozen=True)
class Product:
    """One product; prices are in cents."""

    id: int
    name: str
    price_cents: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"id": self.id, "name": self.name, "price_cents": self.price_cents}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Product:
        """The inverse of :meth:`to_dict`."""
        return cls(id=int(data["id"]), name=str(data["name"]), price_cents=int(data["price_cents"]))


class ProductRepository:
    """add/get/list on the ``products`` table through one connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def add(self, name: str, price_cents: int) -> Product:
        """Insert a product and return it with its id (not committed here)."""
        row = self.conn.execute(
            "INSERT INTO products (name, price_cents) VALUES (%s, %s) RETURNING id, name, price_cents",
            (name, price_cents),
        ).fetchone()
        assert row is not None
        return Product(*row)

    def get(self, product_id: int) -> Product | None:
        """The product with this id, or None."""
        row = self.conn.execute("SELECT id, name, price_cents FROM products WHERE id = %s", (product_id,)).fetchone()
        return Product(*row) if row else None

    def list(self) -> list[Product]:
        """All products, by id."""
        rows = self.conn.execute("SELECT id, name, price_cents FROM products ORDER BY id").fetchall()
        return [Product(*row) for row in rows]
