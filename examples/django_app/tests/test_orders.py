"""Models, the data migration's catalogue, a transactional test and a test on both databases."""

from __future__ import annotations

import pytest
from audit.models import Entry
from django.db import connection, connections, transaction
from orders.models import Order, Product


def test_the_data_migration_seeded_the_catalogue(db: None) -> None:
    assert sorted(Product.objects.values_list("name", flat=True)) == ["apple", "bread", "coffee"]


def test_an_order_totals_its_lines(db: None) -> None:
    order = Order.objects.create(product=Product.objects.get(name="bread"), quantity=3)
    assert order.total_cents == 750


@pytest.mark.parametrize("n", range(4))
def test_each_test_starts_from_the_catalogue(db: None, n: int) -> None:
    # Rolled back after every test: the previous parametrized case's product is gone.
    assert Product.objects.count() == 3
    Product.objects.create(name=f"extra-{n}", price_cents=n)
    assert Product.objects.count() == 4


def test_the_test_database_is_the_workers_own(db: None) -> None:
    name = connection.settings_dict["NAME"]
    assert name.startswith("test_shop")
    assert connections["audit"].settings_dict["NAME"].startswith("test_shop_audit")


@pytest.mark.django_db(transaction=True)
def test_commits_for_real_and_runs_on_commit_callbacks() -> None:
    ran: list[int] = []
    with transaction.atomic():
        product, _ = Product.objects.get_or_create(name="apple", defaults={"price_cents": 50})
        order = Order.objects.create(product=product, quantity=2)
        transaction.on_commit(lambda: ran.append(order.pk))
    assert ran == [order.pk]  # only a real commit runs it: this test is not wrapped in a transaction
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM orders_order")
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(databases=["default", "audit"])
def test_both_databases_in_one_test() -> None:
    Entry.objects.create(message="hello")
    assert Entry.objects.using("audit").count() == 1
    assert Entry.objects.db == "audit"
    with connections["audit"].cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == connections["audit"].settings_dict["NAME"]
