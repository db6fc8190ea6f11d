from django.db import models


class Order(models.Model):
    product = models.ForeignKey("catalog.Product", on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField(default=1)
    note = models.TextField(blank=True, default="")
    reference = models.CharField(max_length=32, blank=True, default="")
