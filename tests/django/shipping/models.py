from django.db import models


class Shipment(models.Model):
    code = models.CharField(max_length=20)
    weight = models.IntegerField()
    note = models.CharField(max_length=50, default="")

    class Meta:
        indexes = [models.Index(fields=["code"], name="shipping_code_idx")]
