from django.db import models


class Batch(models.Model):
    """One row per batch a backfill wrote: three rows when it ran once."""

    number = models.IntegerField()
