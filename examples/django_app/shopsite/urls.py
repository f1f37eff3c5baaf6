from django.urls import path
from orders import views

urlpatterns = [
    path("products/", views.product_list, name="product-list"),
    path("orders/", views.place_order, name="place-order"),
]
