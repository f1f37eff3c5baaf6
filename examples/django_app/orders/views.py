"""Two views: the catalogue (its size cached in Redis) and placing an order (audited in the audit database)."""

from __future__ import annotations

import json

from audit.models import Entry
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Order, Product


@require_GET
def product_list(request: HttpRequest) -> HttpResponse:
    products = [{"name": p.name, "price_cents": p.price_cents} for p in Product.objects.order_by("name")]
    count = cache.get_or_set("product-count", len(products), timeout=60)
    return JsonResponse({"products": products, "count": count})


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body or b"{}")
    try:
        product = Product.objects.get(name=body.get("product"))
    except Product.DoesNotExist:
        return JsonResponse({"error": "no such product"}, status=404)
    quantity = int(body.get("quantity", 1))
    with transaction.atomic():
        order = Order.objects.create(product=product, quantity=quantity)
    Entry.objects.create(message=f"order {order.pk}: {quantity} x {product.name}")
    return JsonResponse({"id": order.pk, "total_cents": order.total_cents}, status=201)
