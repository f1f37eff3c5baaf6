"""Settings of a small shop, as a team would write them for its development database.

Nothing here knows about svcenv: under pytest, svcenv points ``DATABASES`` (both
entries are Postgres) and the Redis ``CACHES`` entry at the session's services.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "orders",
    "audit",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shopsite.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "HOST": os.environ.get("SHOP_DB_HOST", "localhost"),
        "PORT": "5432",
        "USER": "shop",
        "PASSWORD": os.environ.get("SHOP_DB_PASSWORD", ""),
    },
    # The audit log lives in a database of its own (audit.routers sends the audit app there).
    "audit": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop_audit",
        "HOST": os.environ.get("SHOP_DB_HOST", "localhost"),
        "PORT": "5432",
        "USER": "shop",
        "PASSWORD": os.environ.get("SHOP_DB_PASSWORD", ""),
    },
}
DATABASE_ROUTERS = ["audit.routers.AuditRouter"]

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("SHOP_REDIS_URL", "redis://localhost:6379/0"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
