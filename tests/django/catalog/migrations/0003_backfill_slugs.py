"""A slow data migration that records every run: concurrent `migrate` runs it twice."""

import os
import time

from django.db import migrations


def backfill(apps, schema_editor):
    MigrationRun = apps.get_model("catalog", "MigrationRun")
    Product = apps.get_model("catalog", "Product")
    MigrationRun.objects.using(schema_editor.connection.alias).create(migration="0003_backfill_slugs")
    time.sleep(float(os.environ.get("SLOW_MIGRATION_SECONDS", "1")))
    for product in Product.objects.using(schema_editor.connection.alias).filter(slug=""):
        product.slug = product.sku.lower()
        product.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_product_sku_index")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
