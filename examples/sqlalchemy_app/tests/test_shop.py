"""The shop's tests, on svcenv's Postgres with the schema and catalog that Alembic built into the template.

* ``postgres_session``: a Session whose commits are rolled back after the test.
* ``postgres_engine`` / ``postgres_async_engine``: engines on the test's own fresh database,
  for code that opens its own sessions and commits for real.
"""

from __future__ import annotations

import os

import pytest
from shop_sa.models import Category, Order, Product
from shop_sa.service import OutOfStock, add_product, category_titles, place_order, revenue_cents
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session


def test_the_template_is_at_alembic_head(postgres_session: Session) -> None:
    assert postgres_session.scalar(text("SELECT version_num FROM alembic_version")) == "0002"
    assert postgres_session.scalars(select(Category.slug).order_by(Category.slug)).all() == ["books", "tea"]


@pytest.mark.parametrize("quantity", [1, 2, 3])
def test_commits_are_rolled_back_after_each_test(postgres_session: Session, quantity: int) -> None:
    # Three of these on two workers: at least two run one after the other on one worker's database.
    assert postgres_session.scalar(select(func.count()).select_from(Order)) == 0
    assert postgres_session.scalar(select(Product.stock).where(Product.sku == "B-001")) == 3
    order = place_order(postgres_session, "B-001", quantity)  # commits
    add_product(postgres_session, "T-002", "Genmaicha, 100 g", 700, 5, "tea")  # commits; the SKU is unique
    assert order.total_cents == 2500 * quantity
    assert revenue_cents(postgres_session) == 2500 * quantity
    assert postgres_session.scalar(select(Product.stock).where(Product.sku == "B-001")) == 3 - quantity
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    print(f"rollback-session worker={worker} database={postgres_session.get_bind().engine.url.database}")


def test_out_of_stock_rolls_back_only_the_savepoint(postgres_session: Session) -> None:
    place_order(postgres_session, "T-001", 4)
    with pytest.raises(OutOfStock):
        place_order(postgres_session, "T-001", 7)
    assert postgres_session.scalar(select(Product.stock).where(Product.sku == "T-001")) == 6
    assert revenue_cents(postgres_session) == 3600


def test_code_with_its_own_sessions_uses_the_engine(postgres_engine: Engine, postgres_database: str) -> None:
    assert postgres_engine.url.database == postgres_database
    with Session(postgres_engine) as session:
        place_order(session, "T-001", 1)
    with Session(postgres_engine) as other:  # another connection: the commit was real
        assert revenue_cents(other) == 900


@pytest.mark.asyncio
async def test_the_async_engine(postgres_async_engine: AsyncEngine, postgres_database: str) -> None:
    assert postgres_async_engine.url.database == postgres_database
    async with AsyncSession(postgres_async_engine) as session:
        assert await category_titles(session) == ["Books", "Tea"]
        session.add(Category(slug="coffee", title="Coffee"))
        await session.commit()
    async with postgres_async_engine.connect() as conn:
        assert (await conn.scalar(select(func.count()).select_from(Category))) == 3
