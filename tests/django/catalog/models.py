from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=200)
    sku = models.CharField(max_length=40)
    slug = models.SlugField(max_length=200, blank=True)

    class Meta:
        indexes = [models.Index(fields=["sku"], name="catalog_product_sku_idx")]


class MigrationRun(models.Model):
    """One row each time the data migration runs: it must run exactly once."""

    migration = models.CharField(max_length=100)
    ran_at = models.DateTimeField(auto_now_add=True)
