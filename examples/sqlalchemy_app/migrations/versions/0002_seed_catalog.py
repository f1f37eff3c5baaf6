"""Data migration: the catalog the shop starts with.

Each execution appends a line to the file named by ``SHOP_MIGRATION_LOG`` (when
set), outside the database, so a test run can count how often it ran.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

categories = sa.table("categories", sa.column("id", sa.Integer), sa.column("slug"), sa.column("title"))
products = sa.table(
    "products",
    sa.column("sku"),
    sa.column("name"),
    sa.column("price_cents", sa.Integer),
    sa.column("stock", sa.Integer),
    sa.column("category_id", sa.Integer),
)


def upgrade() -> None:
    op.bulk_insert(categories, [{"id": 1, "slug": "books", "title": "Books"}, {"id": 2, "slug": "tea", "title": "Tea"}])
    op.execute(sa.text("SELECT setval(pg_get_serial_sequence('categories', 'id'), 2)"))
    op.bulk_insert(
        products,
        [
            {"sku": "B-001", "name": "SQL for mortals", "price_cents": 2500, "stock": 3, "category_id": 1},
            {"sku": "T-001", "name": "Sencha, 100 g", "price_cents": 900, "stock": 10, "category_id": 2},
        ],
    )
    log = os.environ.get("SHOP_MIGRATION_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"0002 pid={os.getpid()} worker={os.environ.get('PYTEST_XDIST_WORKER', 'main')}\n")


def downgrade() -> None:
    op.execute(products.delete().where(products.c.sku.in_(["B-001", "T-001"])))
    op.execute(categories.delete().where(categories.c.slug.in_(["books", "tea"])))
