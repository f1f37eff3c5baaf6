"""A data migration: the catalogue every database starts with.

It also appends one line to the file named by ``DJANGO_APP_MIGRATION_LOG`` (when
set) each time it runs, outside the database, so a test can count how often the
migrations ran: under svcenv, once per run, however many xdist workers.
"""

import os

from django.db import migrations

CATALOGUE = [("apple", 50), ("bread", 250), ("coffee", 899)]


def seed(apps, schema_editor):
    Product = apps.get_model("orders", "Product")
    alias = schema_editor.connection.alias
    Product.objects.using(alias).bulk_create(Product(name=n, price_cents=p) for n, p in CATALOGUE)
    log = os.environ.get("DJANGO_APP_MIGRATION_LOG")
    if log:
        database = schema_editor.connection.settings_dict["NAME"]
        with open(log, "a") as out:
            out.write(f"seed_products {os.getpid()} {alias} {database}\n")


def unseed(apps, schema_editor):
    Product = apps.get_model("orders", "Product")
    Product.objects.using(schema_editor.connection.alias).filter(name__in=[n for n, _ in CATALOGUE]).delete()


class Migration(migrations.Migration):
    dependencies = [("orders", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
