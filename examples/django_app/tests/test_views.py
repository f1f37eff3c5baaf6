"""The views through Django's test client; the catalogue's size is cached in svcenv's Redis."""

from __future__ import annotations

import json

import pytest
from audit.models import Entry
from django.conf import settings
from django.core.cache import cache
from django.test import Client
from orders.models import Order

from svcenv import Environment


def test_the_catalogue_view(client: Client, db: None) -> None:
    response = client.get("/products/")
    assert response.status_code == 200
    body = response.json()
    assert [p["name"] for p in body["products"]] == ["apple", "bread", "coffee"]
    assert body["count"] == 3


@pytest.mark.django_db(databases=["default", "audit"])
def test_placing_an_order_is_audited(client: Client) -> None:
    response = client.post(
        "/orders/", json.dumps({"product": "coffee", "quantity": 2}), content_type="application/json"
    )
    assert response.status_code == 201
    assert response.json()["total_cents"] == 1798
    assert Order.objects.count() == 1
    assert list(Entry.objects.values_list("message", flat=True)) == [f"order {response.json()['id']}: 2 x coffee"]


def test_an_unknown_product_is_a_404(client: Client, db: None) -> None:
    response = client.post("/orders/", json.dumps({"product": "caviar"}), content_type="application/json")
    assert response.status_code == 404


def test_the_cache_is_svcenvs_redis(db: None, svcenv: Environment) -> None:
    location = settings.CACHES["default"]["LOCATION"]
    assert location.startswith("redis://")
    assert f":{svcenv['redis'].port}/" in location  # not the settings' localhost:6379
    cache.set("greeting", "hello", timeout=30)
    assert cache.get("greeting") == "hello"
