"""The application's service layer: what the tests exercise, sync and async.

Each function takes the session it works in and commits its own unit of work,
as application code does; the tests' rollback session turns those commits into
savepoints.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .models import Category, Order, Product


class OutOfStock(Exception):
    """The product has fewer items in stock than the order asks for."""


def add_product(session: Session, sku: str, name: str, price_cents: int, stock: int, category: str) -> Product:
    """Add a product to an existing category (by slug) and commit."""
    found = session.scalars(select(Category).where(Category.slug == category)).one()
    product = Product(sku=sku, name=name, price_cents=price_cents, stock=stock, category=found)
    session.add(product)
    session.commit()
    return product


def place_order(session: Session, sku: str, quantity: int) -> Order:
    """Take ``quantity`` items of ``sku`` out of stock and record the order, in one commit."""
    product = session.scalars(select(Product).where(Product.sku == sku).with_for_update()).one()
    if product.stock < quantity:
        session.rollback()
        raise OutOfStock(f"{sku}: {product.stock} in stock, {quantity} ordered")
    product.stock -= quantity
    order = Order(product=product, quantity=quantity, total_cents=quantity * product.price_cents)
    session.add(order)
    session.commit()
    return order


def revenue_cents(session: Session) -> int:
    """The total of every order so far."""
    return int(session.scalar(select(func.coalesce(func.sum(Order.total_cents), 0))) or 0)


async def category_titles(session: AsyncSession) -> list[str]:
    """The titles of all categories, in slug order (the async side of the app)."""
    return list((await session.scalars(select(Category.title).order_by(Category.slug))).all())
